/**
 * End-to-end: session resumption. Server mode with openssl s_client carrying a session from one
 * connection to the next (-sess_out / -sess_in), in TLS 1.3 and TLS 1.2; sessionResume = no;
 * sessionCacheTimeout; ticketKeySecret/ticketMacSecret across a restart and across instances
 * (ours and stunnel4, in both directions); client mode reusing its session toward the same
 * server; the configuration errors of the ticket secrets.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_session_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, readExactly, writeAll } from "./harness/bytes.ts";
import { echoServer, freePorts, tcpConnect, waitForPort } from "./harness/net.ts";
import { sClientEcho, sServer } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, type Scope } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { startStunnel4 } from "./harness/stunnel4.ts";
import { sleep } from "./harness/timing.ts";

const KEY = "000102030405060708090a0b0c0d0e0f";
const MAC =
  "f0:e0:d0:c0:b0:a0:90:80:70:60:50:40:30:20:10:00:0f:0e:0d:0c:0b:0a:09:08:07:06:05:04:03:02:01:00";
const OTHER_MAC = "00112233445566778899aabbccddeeff";

/** A server-mode service named `name` on `accept`, forwarding to `backend`, plus `extra`. */
async function serverConf(
  name: string,
  accept: number,
  backend: number,
  extra = "",
): Promise<string> {
  const pki = await makePki();
  return GLOBALS +
    `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backend}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n${extra}`;
}

function secrets(key = KEY, mac = MAC): string {
  return `ticketKeySecret = ${key}\nticketMacSecret = ${mac}\n`;
}

/** One s_client connection through the echo backend (harness/openssl.ts sClientEcho). */
function sClientOnce(port: number, args: string[]): Promise<string> {
  return sClientEcho(port, args, "hello session");
}

/** The "New, ..." or "Reused, ..." line of s_client's output. */
function outcome(out: string): string {
  const m = out.match(/^(New|Reused), (TLSv1\.[23]), Cipher is (\S+)$/m);
  assert(m, `no session line in s_client's output:\n${out}`);
  return `${m[1]} ${m[2]}`;
}

/** A session from `from`, then offered to `to`: the outcome of the second connection. */
async function resumeAcross(
  scope: Scope,
  from: number,
  to: number,
  version: string,
): Promise<string> {
  const file = `${await scope.tempDir("e2e-sess-")}/session.pem`;
  const first = outcome(await sClientOnce(from, [version, "-sess_out", file]));
  assertMatch(first, /^New /);
  // s_client writes a session only once it can be resumed (in TLS 1.3: a ticket came).
  const saved = await Deno.stat(file).then(() => true, () => false);
  if (!saved) return "no session";
  return outcome(await sClientOnce(to, [version, "-sess_in", file]));
}

e2e("server: a TLS 1.3 and a TLS 1.2 session resume (tickets)", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(await serverConf("resume", port, echo.port));
  assertEquals(await resumeAcross(scope, port, port, "-tls1_3"), "Reused TLSv1.3");
  assertEquals(await resumeAcross(scope, port, port, "-tls1_2"), "Reused TLSv1.2");
  await proxy.waitForLogCount(/TLS accepted: previous session reused/, 2);
  await proxy.waitForLogCount(/TLS accepted: new session negotiated/, 2);
});

e2e("server: sessionResume = no resumes nothing", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    await serverConf("noresume", port, echo.port, "sessionResume = no\n"),
  );
  // No ticket and no session ID: s_client gets nothing it could offer again.
  assertEquals(await resumeAcross(scope, port, port, "-tls1_3"), "no session");
  assertEquals(await resumeAcross(scope, port, port, "-tls1_2"), "no session");
  assertMatch(proxy.log(), /Session resumption disabled/);
});

e2e("server: sessionCacheTimeout ends a session's life", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  await startProxy(await serverConf("short", port, echo.port, "sessionCacheTimeout = 1\n"));
  const dir = await scope.tempDir("e2e-sess-");
  for (const version of ["-tls1_3", "-tls1_2"]) {
    const file = `${dir}/session${version}.pem`;
    assertMatch(outcome(await sClientOnce(port, [version, "-sess_out", file])), /^New /);
    await sleep(2500);
    assertMatch(outcome(await sClientOnce(port, [version, "-sess_in", file])), /^New /);
  }
});

e2e("ticket secrets: a session resumes after a restart, random keys do not", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-sess-");
  const restart = async (text: string, proxy: Proxy) => {
    await proxy.stop();
    return await startProxy(text);
  };
  for (const [extra, expected] of [[secrets(), "Reused"], ["", "New"]]) {
    const text = await serverConf("restart", port, echo.port, extra);
    let proxy = await startProxy(text);
    const files = { tls13: `${dir}/a.pem`, tls12: `${dir}/b.pem` };
    assertMatch(outcome(await sClientOnce(port, ["-tls1_3", "-sess_out", files.tls13])), /^New/);
    assertMatch(outcome(await sClientOnce(port, ["-tls1_2", "-sess_out", files.tls12])), /^New/);
    proxy = await restart(text, proxy);
    assertEquals(
      outcome(await sClientOnce(port, ["-tls1_3", "-sess_in", files.tls13])),
      `${expected} TLSv1.3`,
    );
    assertEquals(
      outcome(await sClientOnce(port, ["-tls1_2", "-sess_in", files.tls12])),
      `${expected} TLSv1.2`,
    );
    await proxy.stop();
  }
});

e2e(
  "ticket secrets: instances sharing them resume each other's sessions (ours and stunnel4)",
  { timeoutMs: 40_000 },
  async (scope) => {
    const echo = echoServer();
    const [a, b, c, d] = freePorts(4);
    // The same service name everywhere: a session belongs to its service (session id context).
    await startProxy(await serverConf("cluster", a, echo.port, secrets()));
    await startProxy(await serverConf("cluster", b, echo.port, secrets()));
    await startStunnel4(await serverConf("cluster", c, echo.port, secrets()));
    await startProxy(await serverConf("cluster", d, echo.port, secrets(KEY, OTHER_MAC)));
    assertEquals(await resumeAcross(scope, a, b, "-tls1_3"), "Reused TLSv1.3");
    assertEquals(await resumeAcross(scope, b, a, "-tls1_2"), "Reused TLSv1.2");
    // stunnel's ticket format: its sessions resume here, and ours there.
    assertEquals(await resumeAcross(scope, c, a, "-tls1_3"), "Reused TLSv1.3");
    assertEquals(await resumeAcross(scope, a, c, "-tls1_3"), "Reused TLSv1.3");
    assertEquals(await resumeAcross(scope, a, c, "-tls1_2"), "Reused TLSv1.2");
    // Another MAC secret: the ticket does not verify, a new session is negotiated.
    assertEquals(await resumeAcross(scope, a, d, "-tls1_3"), "New TLSv1.3");
  },
);

e2e("client mode: the next connection to the same server resumes the session", {}, async () => {
  const pki = await makePki();
  const [server13, server12, port13, port12] = freePorts(4);
  const s13 = sServer(server13, pki.serverEc);
  const s12 = sServer(server12, { ...pki.serverEc, args: ["-tls1_2"] });
  await waitForPort(server13);
  await waitForPort(server12);
  const client = (name: string, accept: number, connect: number, extra = "") =>
    `[${name}]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\n${extra}`;
  const proxy = await startProxy(
    GLOBALS + client("out13", port13, server13) +
      client("out12", port12, server12, "sslVersion = TLSv1.2\n"),
  );
  for (const [port, server] of [[port13, s13], [port12, s12]] as const) {
    for (let i = 1; i <= 3; i++) {
      const conn = await tcpConnect(port);
      const line = `connection ${port}/${i}\n`;
      await writeAll(conn, encode(line));
      await server.stdout.waitFor(
        () => decode(server.stdout.bytes()).includes(line),
        10_000,
        "s_server to receive the line",
      );
      // The reply comes after the server's tickets: the client has them once it is here.
      await server.write(`reply ${i}\n`);
      assertEquals(decode(await readExactly(conn, 8)), `reply ${i}\n`);
      conn.close();
      await proxy.waitForLogCount(/Connection (closed|reset)/, (port === port13 ? 0 : 3) + i);
    }
  }
  const connected = proxy.lines().filter((l) => /TLS connected: /.test(l));
  assertEquals(connected.map((l) => l.replace(/^.*TLS connected: /, "")), [
    "new session negotiated",
    "previous session reused",
    "previous session reused",
    "new session negotiated",
    "previous session reused",
    "previous session reused",
  ]);
});

e2e(
  "sessionCacheSize: TLS 1.2 session IDs are cached, as many as the size allows",
  {
    extra: "stunnel 5.68 keeps no internal session cache (only sessiond); ours resumes a TLS " +
      "1.2 session ID when the client comes back to the same thread",
  },
  async (scope) => {
    const pki = await makePki();
    const echo = echoServer();
    const [small, large] = freePorts(2);
    const text = await serverConf("small", small, echo.port, "sessionCacheSize = 1\n") +
      `[large]\naccept = 127.0.0.1:${large}\nconnect = 127.0.0.1:${echo.port}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
    // One thread: the cache of a context is its thread's.
    const threads = Deno.env.get("STUNNEL_THREADS");
    Deno.env.set("STUNNEL_THREADS", "1");
    try {
      await startProxy(text);
    } finally {
      if (threads === undefined) Deno.env.delete("STUNNEL_THREADS");
      else Deno.env.set("STUNNEL_THREADS", threads);
    }
    const dir = await scope.tempDir("e2e-sess-");
    const noTicket = ["-tls1_2", "-no_ticket"];
    for (const port of [small, large]) {
      for (const name of ["a", "b"]) {
        const file = `${dir}/${port}-${name}.pem`;
        assertMatch(outcome(await sClientOnce(port, [...noTicket, "-sess_out", file])), /^New/);
      }
    }
    const resume = async (port: number, name: string) =>
      outcome(await sClientOnce(port, [...noTicket, "-sess_in", `${dir}/${port}-${name}.pem`]));
    // A cache of one keeps the latest session only; the default one keeps both.
    assertEquals(await resume(small, "b"), "Reused TLSv1.2");
    assertEquals(await resume(small, "a"), "New TLSv1.2");
    assertEquals(await resume(large, "a"), "Reused TLSv1.2");
    assertEquals(await resume(large, "b"), "Reused TLSv1.2");
  },
);

e2e("ticket secrets: stunnel's checks and messages", {}, async () => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const failing: [string, RegExp[]][] = [
    ["ticketKeySecret = 0011", [
      /ticketKeySecret value has 2 bytes instead of required 16 or 32 bytes/,
      /:\d+: "ticketKeySecret = 0011": Failed to read ticketKeySecret/,
    ]],
    ["ticketMacSecret = 00:11:zz", [
      /Required ticketMacSecret is 16 or 32 byte hexadecimal key/,
      /:\d+: "ticketMacSecret = 00:11:zz": Failed to read ticketMacSecret/,
    ]],
    [`ticketKeySecret = ${KEY}`, [
      /Service \[secrets\]: "ticketKeySecret" and "ticketMacSecret" must be set together/,
    ]],
  ];
  for (const [line, expected] of failing) {
    const proxy = await startProxy(await serverConf("secrets", port, echo.port, `${line}\n`), {
      allowFailure: true,
    });
    const status = await proxy.process.wait(10_000);
    assert(status.code !== 0, `"${line}" was accepted:\n${proxy.log()}`);
    for (const re of expected) assertMatch(proxy.log(), re);
    assertMatch(proxy.log(), /Configuration failed/);
  }
  // In client mode the secrets are ignored, with a notice.
  const client = GLOBALS + `[c]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
    `connect = 127.0.0.1:${echo.port}\n${secrets()}`;
  const proxy = await startProxy(client);
  assertMatch(proxy.log(), /LOG5\[ui\]: ticketKeySecret is ignored in the client mode/);
  assertMatch(proxy.log(), /LOG5\[ui\]: ticketMacSecret is ignored in the client mode/);
});
