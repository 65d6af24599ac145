/**
 * End-to-end: `sessiond`, stunnel's external session cache. Two proxy processes share a cache
 * server (tests/sessiond_server.ts, stunnel's UDP protocol); a session made through one is
 * resumed through the other (openssl s_client -sess_out / -sess_in), in TLS 1.2 and TLS 1.3.
 * Without an answering cache, a handshake still completes (a new session).
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_sessiond_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { REPO } from "./harness/command.ts";
import { echoServer, freePorts } from "./harness/net.ts";
import { sClientEcho } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, type Scope, spawn, type Spawned } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";

/** The cache server on a free UDP port of 127.0.0.1; resolves once it listens. */
async function sessiondServer(): Promise<{ port: number; server: Spawned }> {
  const server = spawn([Deno.execPath(), "run", "-A", `${REPO}/tests/sessiond_server.ts`, "0"]);
  const [, port] = await server.waitForOutput(/^listening (\d+)$/m, 15_000);
  return { port: Number(port), server };
}

async function serverConf(name: string, accept: number, backend: number, sessiond: number) {
  const pki = await makePki();
  return GLOBALS +
    `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backend}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nsessiond = 127.0.0.1:${sessiond}\n`;
}

/** One s_client connection through an echo backend; its "New, ..."/"Reused, ..." outcome. */
async function sClientOnce(port: number, args: string[]): Promise<string> {
  const output = await sClientEcho(port, args, "hello cache");
  const m = output.match(/^(New|Reused), (TLSv1\.[23]), Cipher is \S+$/m);
  assert(m, `no session line in s_client's output:\n${output}`);
  return `${m[1]} ${m[2]}`;
}

/** A session made through `from`, then offered through `to`. */
async function resumeAcross(scope: Scope, from: number, to: number, version: string) {
  const file = `${await scope.tempDir("e2e-sessiond-")}/session.pem`;
  assertMatch(await sClientOnce(from, [version, "-sess_out", file]), /^New /);
  return await sClientOnce(to, [version, "-sess_in", file]);
}

e2e("sessiond: a session made by one instance resumes through another", {
  timeoutMs: 40_000,
}, async (scope) => {
  const echo = echoServer();
  const { port: cache, server } = await sessiondServer();
  const [a, b] = freePorts(2);
  const first = await startProxy(await serverConf("shared", a, echo.port, cache));
  const second = await startProxy(await serverConf("shared", b, echo.port, cache));
  assertMatch(first.log(), /TLS options: 0x[0-9A-F]+ \(\+0x4000, -0x0\)/);
  assertEquals(await resumeAcross(scope, a, b, "-tls1_2"), "Reused TLSv1.2");
  assertEquals(await resumeAcross(scope, b, a, "-tls1_3"), "Reused TLSv1.3");
  await first.waitForLog(/cache_transfer: request=new, timeout=300, id=[0-9A-F]{64}, length=\d+/);
  await second.waitForLog(/cache_transfer: request=get, timeout=0, id=[0-9A-F]{64}, length=0/);
  await second.waitForLog(/cache_transfer: session found/);
  await first.waitForLog(/cache_transfer: session found/);
  assertMatch(server.stdout.text(), /^get [0-9A-F]{64} hit$/m);
});

e2e("sessiond: without an answer from the cache, the handshake makes a new session", {
  timeoutMs: 30_000,
}, async (scope) => {
  const echo = echoServer();
  // A UDP port where nothing answers: every request times out.
  const [a, b, silent] = freePorts(3);
  await startProxy(await serverConf("alone", a, echo.port, silent));
  const second = await startProxy(await serverConf("alone", b, echo.port, silent));
  assertEquals(await resumeAcross(scope, a, b, "-tls1_2"), "New TLSv1.2");
  await second.waitForLog(/cache_transfer: request=get, /);
  await second.waitForLog(/cache_transfer: recv timeout/);
  assertMatch(second.log(), /New session callback/);
});
