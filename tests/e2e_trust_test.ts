/**
 * End-to-end: a resumed session never skips a check that a full handshake would apply now.
 * Sessions (tickets in TLS 1.3 and 1.2) issued before a reload that changes a service's
 * authentication (client verification added, a CA file's contents replaced, a PSK identity
 * removed) do not resume after it, with random ticket keys or with ticket secrets; a reload that
 * changes nothing keeps them resumable. A session from sessiond made under other settings is
 * not resumed either. A TLS 1.3 ticket of a primary service does not carry a client into an SNI
 * secondary service that verifies its clients, nor a TLS 1.2 session of a secondary service
 * into its primary one.
 *
 * openssl s_client carries the session from one connection to the next (-sess_out / -sess_in).
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_trust_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { REPO } from "./harness/command.ts";
import { type Backend, echoServer, freePorts } from "./harness/net.ts";
import { sClientEcho } from "./harness/openssl.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";

const LINE = "hello trust";
const ALICE = "00112233445566778899aabbccddeeff";
const BOB = "0123456789abcdef0123456789abcdef0123";
const VERSIONS = ["-tls1_3", "-tls1_2"];
const TICKET_SECRETS = "ticketKeySecret = 000102030405060708090a0b0c0d0e0f\n" +
  "ticketMacSecret = f0e0d0c0b0a090807060504030201000f0e0d0c0b0a090807060504030201000\n";

/** A server-mode section on `accept` forwarding to `backend`, plus `extra` lines. */
function section(name: string, accept: number, backend: Backend, extra: string): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backend.port}\n${extra}`;
}

interface Attempt {
  /** "New TLSv1.3", "Reused TLSv1.2", ... or "none" when s_client printed no session line. */
  outcome: string;
  /** The line came back from the backend. */
  echoed: boolean;
  output: string;
}

/** One s_client connection that sends LINE through the echo backend (harness/openssl.ts sClientEcho). */
async function attempt(port: number, args: string[]): Promise<Attempt> {
  const output = await sClientEcho(port, args, LINE);
  const m = output.match(/^(New|Reused), (TLSv1\.[23]), Cipher is \S+$/m);
  return {
    outcome: m ? `${m[1]} ${m[2]}` : "none",
    echoed: output.split("\n").includes(LINE),
    output,
  };
}

/**
 * A new session through `port`, saved in `file` once the echo came back (in TLS 1.3 its ticket
 * has arrived by then). Quietly: s_client in TLS 1.3 with a client certificate does not print
 * what it reads otherwise (ours and stunnel alike), and an external PSK reads "Reused".
 */
async function newSession(port: number, version: string, file: string, args: string[] = []) {
  const r = await attempt(port, [version, "-quiet", "-no_ign_eof", "-sess_out", file, ...args]);
  assert(r.echoed, `no echo:\n${r.output}`);
  assert(await Deno.stat(file).then(() => true, () => false), `no session saved:\n${r.output}`);
}

/** The session of `file` offered again: it must get nowhere (no resumption, no backend). */
async function refusedResumption(
  port: number,
  version: string,
  file: string,
  args: string[] = [],
): Promise<void> {
  const r = await attempt(port, [version, "-sess_in", file, ...args]);
  assert(!r.outcome.startsWith("Reused"), `the old session resumed (${version}):\n${r.output}`);
  assert(!r.echoed, `the backend was reached (${version}):\n${r.output}`);
}

/** The server certificate lines of a section. */
function serverCert(pki: Pki): string {
  return `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
}

/** s_client's arguments for the harness's client certificate. */
function clientCert(pki: Pki): string[] {
  return ["-cert", pki.client.cert, "-key", pki.client.key];
}

/** Rewrites the configuration and reloads; resolves once the reload was applied. */
async function reload(proxy: Proxy, text: string, times: number): Promise<void> {
  await proxy.writeConfig(text);
  proxy.signal("SIGHUP");
  await proxy.waitForLogCount(/Configuration successful/, times);
}

/** Session files of one test: one per TLS version (and label). */
async function sessionFiles(scope: Scope) {
  const dir = await scope.tempDir("e2e-trust-");
  return (version: string, label = "") => `${dir}/session${label}${version}.pem`;
}

// ---------------------------------------------------------------------------------------------
// Reloads

e2e("reload: client verification added, sessions issued before it do not resume", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const file = await sessionFiles(scope);
  const base = GLOBALS + section("auth", port, echo, serverCert(pki));
  const proxy = await startProxy(base);
  for (const version of VERSIONS) await newSession(port, version, file(version));
  await reload(proxy, base + `CAfile = ${pki.ca}\nverifyChain = yes\n`, 2);
  const before = echo.connections;
  for (const version of VERSIONS) await refusedResumption(port, version, file(version));
  await proxy.waitForLog(/SSL_accept: .*peer did not return a certificate/);
  assertEquals(echo.connections, before);
  // A client with a certificate from the CA is let through, as before the reload.
  const ok = await attempt(port, ["-tls1_3", "-quiet", "-no_ign_eof", ...clientCert(pki)]);
  assert(ok.echoed, ok.output);
});

e2e("reload: a CA file replaced under the same name, sessions issued before do not resume", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const file = await sessionFiles(scope);
  const caFile = `${await scope.tempDir("e2e-trust-ca-")}/ca.pem`;
  await Deno.copyFile(pki.ca, caFile);
  const text = GLOBALS +
    section("ca", port, echo, serverCert(pki) + `CAfile = ${caFile}\nverifyChain = yes\n`);
  const proxy = await startProxy(text);
  const cert = clientCert(pki);
  for (const version of VERSIONS) await newSession(port, version, file(version), cert);
  // The client's CA is no longer trusted: the configuration text itself is unchanged.
  await Deno.copyFile(pki.otherCa, caFile);
  await reload(proxy, text, 2);
  const before = echo.connections;
  for (const version of VERSIONS) await refusedResumption(port, version, file(version), cert);
  await proxy.waitForLog(/CERT: Pre-verification error: unable to get local issuer certificate/);
  assertEquals(echo.connections, before);
});

e2e("reload: a PSK identity removed, sessions issued to it do not resume", {
  timeoutMs: 40_000,
}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const file = await sessionFiles(scope);
  const secrets = `${await scope.tempDir("e2e-trust-psk-")}/psk.txt`;
  await Deno.writeTextFile(secrets, `alice:${ALICE}\nbob:${BOB}\n`);
  await Deno.chmod(secrets, 0o600);
  const text = GLOBALS + section("psk", port, echo, `PSKsecrets = ${secrets}\n`);
  const proxy = await startProxy(text);
  const alice = ["-psk_identity", "alice", "-psk", ALICE];
  const bob = ["-psk_identity", "bob", "-psk", BOB];
  for (const version of VERSIONS) await newSession(port, version, file(version), alice);
  await Deno.writeTextFile(secrets, `bob:${BOB}\n`);
  await reload(proxy, text, 2);
  const before = echo.connections;
  // alice still offers her key too: without the session, her full handshake fails.
  for (const version of VERSIONS) await refusedResumption(port, version, file(version), alice);
  assertEquals(echo.connections, before);
  // bob is still welcome.
  const ok = await attempt(port, ["-tls1_3", "-quiet", "-no_ign_eof", ...bob]);
  assert(ok.echoed, ok.output);
});

e2e("reload: nothing changed for the service, its sessions still resume", {
  extra: "stunnel 5.68 makes new ticket keys on every reload: no session survives one",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const other = echoServer();
  const [port, otherPort] = freePorts(2);
  const file = await sessionFiles(scope);
  const service = section(
    "same",
    port,
    echo,
    serverCert(pki) + `CAfile = ${pki.ca}\nverifyChain = yes\n`,
  );
  const proxy = await startProxy(GLOBALS + service);
  const cert = clientCert(pki);
  for (const version of VERSIONS) await newSession(port, version, file(version), cert);
  // The reload adds another service; this one keeps its settings (and its listener).
  await reload(
    proxy,
    GLOBALS + service + section("other", otherPort, other, serverCert(pki)),
    2,
  );
  for (const version of VERSIONS) {
    const r = await attempt(port, [version, "-sess_in", file(version), ...cert]);
    assertEquals(r.outcome, `Reused ${version === "-tls1_3" ? "TLSv1.3" : "TLSv1.2"}`, r.output);
    assert(r.echoed, r.output);
  }
});

e2e("reload with ticket secrets: verification added, tickets issued before do not resume", {
  extra: "stunnel 5.68 decrypts the old tickets with the unchanged secrets and resumes them " +
    "without a client certificate",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const file = await sessionFiles(scope);
  const base = GLOBALS + section("secrets", port, echo, serverCert(pki) + TICKET_SECRETS);
  const proxy = await startProxy(base);
  for (const version of VERSIONS) await newSession(port, version, file(version));
  // The same secrets after the reload: the tickets still decrypt, and are not resumed.
  await reload(proxy, base + `CAfile = ${pki.ca}\nverifyChain = yes\n`, 2);
  const before = echo.connections;
  for (const version of VERSIONS) await refusedResumption(port, version, file(version));
  await proxy.waitForLog(/SSL_accept: .*peer did not return a certificate/);
  assertEquals(echo.connections, before);
});

e2e("sessiond: a session of an instance that verifies nobody does not resume where one does", {
  extra: "stunnel 5.68 resumes the session the external cache returns (its session ID context " +
    "is the service name, whatever the settings) without a client certificate",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [open, strict] = freePorts(2);
  const file = await sessionFiles(scope);
  const cache = spawn([Deno.execPath(), "run", "-A", `${REPO}/tests/sessiond_server.ts`, "0"]);
  const [, cachePort] = await cache.waitForOutput(/^listening (\d+)$/m, 15_000);
  // The same service (name) sharing the cache; the settings differ. A reload frees the old
  // contexts, whose sessions are removed from the cache with them: two instances here.
  const conf = (accept: number, extra: string) =>
    GLOBALS +
    section(
      "shared",
      accept,
      echo,
      serverCert(pki) + `sessiond = 127.0.0.1:${cachePort}\n${extra}`,
    );
  await startProxy(conf(open, ""));
  const proxy = await startProxy(conf(strict, `CAfile = ${pki.ca}\nverifyChain = yes\n`));
  // A TLS 1.2 session ID, which the other instance finds in the external cache.
  const noTicket = ["-no_ticket"];
  await newSession(open, "-tls1_2", file("-tls1_2"), noTicket);
  const before = echo.connections;
  await refusedResumption(strict, "-tls1_2", file("-tls1_2"), noTicket);
  await cache.stdout.waitFor(
    () => /^get \S+ hit$/m.test(cache.stdout.text()),
    10_000,
    "the cache to return the session",
  );
  await proxy.waitForLog(/SSL_accept: .*peer did not return a certificate/);
  assertEquals(echo.connections, before);
});

// ---------------------------------------------------------------------------------------------
// SNI

e2e("SNI: a primary service's ticket does not resume into a secondary that verifies clients", {
  extra: "stunnel 5.68 resumes the primary's TLS 1.3 session after switching to the secondary " +
    "service and connects without a client certificate",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const main = echoServer();
  const secure = echoServer();
  const [port] = freePorts(1);
  const file = await sessionFiles(scope);
  const certLines = serverCert(pki);
  const proxy = await startProxy(
    GLOBALS + section("main", port, main, certLines) +
      `[secure]\nsni = main:secure.example.com\nconnect = 127.0.0.1:${secure.port}\n` +
      certLines + `CAfile = ${pki.ca}\nverifyChain = yes\n`,
  );
  const cert = clientCert(pki);
  await newSession(port, "-tls1_3", file("-tls1_3"));
  await newSession(port, "-tls1_3", file("-tls1_3", "-secure"), [
    "-servername",
    "secure.example.com",
    ...cert,
  ]);
  const before = main.connections;
  assertEquals(secure.connections, 1);
  await refusedResumption(port, "-tls1_3", file("-tls1_3"), ["-servername", "secure.example.com"]);
  await proxy.waitForLog(/SSL_accept: .*peer did not return a certificate/);
  assertEquals([main.connections, secure.connections], [before, 1]);
  assertMatch(proxy.log(), /SNI: switched to service \[secure\]/);
  // The same session still resumes with the primary service.
  const again = await attempt(port, ["-tls1_3", "-sess_in", file("-tls1_3")]);
  assertEquals(again.outcome, "Reused TLSv1.3", again.output);
  // A session of the secondary service resumes there, certificate and all.
  const own = await attempt(port, [
    "-tls1_3",
    "-sess_in",
    file("-tls1_3", "-secure"),
    "-servername",
    "secure.example.com",
    ...cert,
  ]);
  assertEquals(own.outcome, "Reused TLSv1.3", own.output);
  assert(own.echoed, own.output);
  assertEquals(secure.connections, 2);
});

e2e("SNI: a TLS 1.2 session whose first server name selects another service now is refused", {
  extra: "stunnel 5.68 resumes the secondary service's session in its primary service, which " +
    "requires a client certificate, and connects without one",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const main = echoServer();
  const open = echoServer();
  const [port] = freePorts(1);
  const file = await sessionFiles(scope);
  const certLines = serverCert(pki);
  const config = (pattern: string) =>
    GLOBALS + section("main", port, main, certLines + `CAfile = ${pki.ca}\nverifyChain = yes\n`) +
    `[open]\nsni = main:${pattern}\nconnect = 127.0.0.1:${open.port}\n` + certLines;
  const proxy = await startProxy(config("a.example.com"));
  await newSession(port, "-tls1_2", file("-tls1_2"), ["-servername", "a.example.com"]);
  assertEquals(open.connections, 1);
  // The secondary service is now chosen by another name. In TLS 1.2 OpenSSL gives the
  // servername callback the name of the session's first handshake, which selects nothing now.
  await reload(proxy, config("b.example.com"), 2);
  const before = main.connections;
  await refusedResumption(port, "-tls1_2", file("-tls1_2"), ["-servername", "b.example.com"]);
  await proxy.waitForLog(/SNI: session of service \[open\] not resumed by service \[main\]/);
  assertEquals([main.connections, open.connections], [before, 1]);
});
