/**
 * End-to-end: more examples of the stunnel(8) manual, kept as fixtures under fixtures/manual/
 * and run unchanged but for the ports and the programs: the pppd VPN example (`exec` on a
 * `pty`, with a stand-in pppd) and the SoftHSM example whose token gives both the certificate
 * and the private key of a client-mode service (OpenSSL's pkcs11 engine), against an
 * `openssl s_server` that requires a client certificate.
 *
 * Needs the Debian packages softhsm2, libengine-pkcs11-openssl and opensc (dev.sh installs them).
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_manual2_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, LineReader, readExactly, writeAll } from "./harness/bytes.ts";
import { REPO } from "./harness/command.ts";
import { freePorts, tcpConnect, tlsConnect, waitForPort } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, spawn } from "./harness/process.ts";
import { GLOBALS, loadFixture, startProxy } from "./harness/proxy.ts";
import { SOFTHSM_MODULE, softHsmToken } from "./harness/softhsm.ts";

/** A line of the program on the terminal, with the terminal's CR LF. */
async function ptyLine(lines: LineReader): Promise<string> {
  const line = await lines.readLine(10_000);
  assert(line !== null, "the program's output ended early");
  return line;
}

e2e("manual: the pppd VPN example (exec + execArgs on a pty), with a stand-in pppd", {
  timeoutMs: 30_000,
}, async () => {
  const pki = await makePki();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    await loadFixture("manual/pppd-vpn.conf", {
      GLOBALS: GLOBALS + `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
      ACCEPT: `127.0.0.1:${port}`,
      PPPD: `${REPO}/fixtures/manual/pppd-standin/pppd`,
    }),
  );
  const tls = await tlsConnect(port, pki.caPem);
  const lines = new LineReader(tls);
  // The program's terminal is a pseudo-terminal; its arguments are execArgs' ("pppd local").
  const tty = await ptyLine(lines);
  assertMatch(tty, /^\/dev\/pts\/\d+\r\n$/);
  assertEquals(await ptyLine(lines), "argv0=pppd argv1=local argc=1\r\n");
  await writeAll(tls, encode("LCP ConfReq\n"));
  // The cooked terminal echoes the line, then the program answers it.
  assertEquals(await ptyLine(lines), "LCP ConfReq\r\n");
  assertEquals(await ptyLine(lines), "pppd-standin got: LCP ConfReq\r\n");
  await writeAll(tls, encode("LCP TermReq\n"));
  assertEquals(await ptyLine(lines), "LCP TermReq\r\n");
  assertEquals(await ptyLine(lines), "pppd-standin got: LCP TermReq\r\n");
  tls.close();
  await proxy.waitForLog(/Service \[vpn\] accepted connection from 127\.0\.0\.1:\d+/);
  await proxy.waitForLog(new RegExp(`TTY=${tty.trim()} allocated`));
  await proxy.waitForLog(/Local mode child started \(PID=\d+\)/);
  await proxy.waitForLog(/Connection (closed|reset): /);
});

e2e("manual: the SoftHSM example, certificate and key of a client service from one token", {
  timeoutMs: 45_000,
}, async (scope) => {
  const pki = await makePki();
  // The token of the manual's example: one label for the key and its certificate (same id).
  const token = await softHsmToken(scope, "MyToken", "12345");
  await token.importKey(pki.client.key, "KeyCert", "4b43");
  await token.importCert(pki.client.cert, "KeyCert", "4b43");

  const [accept, backendPort] = freePorts(2);
  // The TLS server demands a client certificate signed by the test CA.
  const backend = spawn([
    "openssl",
    "s_server",
    "-accept",
    `127.0.0.1:${backendPort}`,
    "-cert",
    pki.serverEc.cert,
    "-key",
    pki.serverEc.key,
    "-Verify",
    "1",
    "-CAfile",
    pki.ca,
    "-verify_return_error",
    "-quiet",
  ]);
  await waitForPort(backendPort);
  const proxy = await startProxy(
    await loadFixture("manual/pkcs11-keycert.conf", {
      GLOBALS,
      MODULE: SOFTHSM_MODULE,
      ACCEPT: `127.0.0.1:${accept}`,
      CONNECT: `127.0.0.1:${backendPort}`,
    }),
  );
  const uri = "pkcs11:token=MyToken;object=KeyCert";
  assertMatch(proxy.log(), new RegExp(`Certificate loaded from engine ID: ${uri}`));
  assertMatch(proxy.log(), new RegExp(`Private key initialized on engine ID: ${uri}`));

  // A plain TCP client of the client-mode service.
  const conn = await tcpConnect(accept);
  await writeAll(conn, encode("hello through the token\n"));
  await backend.stdout.waitFor(
    () => backend.stdout.text().includes("hello through the token\n"),
    10_000,
    "the line at the TLS server",
  );
  // The server verified the token's certificate: the client's subject arrived.
  assertMatch(backend.output.text(), /depth=0 CN ?= ?client\b/);
  assertMatch(backend.output.text(), /depth=1 CN ?= ?Test-Root-CA/);
  await backend.write("and back\n");
  assertEquals(decode(await readExactly(conn, 9)), "and back\n");
  conn.close();
  await proxy.waitForLog(/TLS connected: new session negotiated/);
  await proxy.waitForLog(/Connection (closed|reset): /);
});

e2e("manual: the example's MODULEPATH is not a command of Debian's pkcs11 engine", {
  timeoutMs: 20_000,
}, async () => {
  const [port] = freePorts(1);
  const config = GLOBALS + `engine = pkcs11\nengineCtrl = MODULEPATH:${SOFTHSM_MODULE}\n` +
    `[service]\nclient = yes\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:1\n`;
  const proxy = await startProxy(config, { allowFailure: true, waitPorts: [] });
  await proxy.waitForLog(/Configuration failed/);
  assertMatch(proxy.log(), /ENGINE_ctrl_cmd_string: .*invalid cmd name/);
  assertMatch(
    proxy.log(),
    /:6: "engineCtrl = MODULEPATH:[^"]*": Failed to execute the engine control command$/m,
  );
  await proxy.exited;
  // Nothing listens.
  const refused = await tcpConnect(port).then((c) => (c.close(), false), () => true);
  assert(refused, "the service must not listen");
});
