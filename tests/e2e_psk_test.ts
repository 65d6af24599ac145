/**
 * End-to-end: pre-shared keys (PSKsecrets, PSKidentity). A server with PSK secrets and no
 * certificate, reached by openssl s_client in TLS 1.3 and TLS 1.2; a client-mode instance
 * talking to a server-mode one (ours to ours, ours to stunnel4 and stunnel4 to ours); wrong keys
 * and unknown identities; the PSKsecrets file's rules and stunnel's messages about it.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_psk_test.ts
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { decode, encode, readAll, readExactly, writeAll } from "./harness/bytes.ts";
import { echoServer, freePorts, tcpConnect } from "./harness/net.ts";
import { e2e, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { startStunnel4 } from "./harness/stunnel4.ts";
import { TimeoutError } from "./harness/timing.ts";

const ALICE = "00112233445566778899aabbccddeeff";
const BOB = "0123456789abcdef0123456789abcdef0123";

/** A PSKsecrets file (mode 0600 unless given) in a fresh directory of the scope. */
async function pskFile(scope: Scope, text: string, mode = 0o600): Promise<string> {
  const path = `${await scope.tempDir("e2e-psk-")}/psk.txt`;
  await Deno.writeTextFile(path, text);
  await Deno.chmod(path, mode);
  return path;
}

function server(name: string, accept: number, connect: number, extra: string): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n${extra}`;
}

function client(name: string, accept: number, connect: number, extra: string): string {
  return `[${name}]\nclient = yes\naccept = 127.0.0.1:${accept}\n` +
    `connect = 127.0.0.1:${connect}\n${extra}`;
}

/** openssl s_client with a PSK: the echo of one line, or what it said when that failed. */
async function pskClient(port: number, args: string[]): Promise<{ echoed: boolean; out: string }> {
  const p = spawn(["openssl", "s_client", "-connect", `127.0.0.1:${port}`, "-quiet", ...args]);
  await p.write("psk line\n");
  const echoed = await p.stdout.waitFor(() => p.stdout.text().includes("psk line\n"), 8000, "echo")
    .then(() => true, () => false);
  await p.stop();
  return { echoed, out: p.output.text() };
}

/** A line through the plain side of a client-mode service and back from the echo backend. */
async function roundTrip(port: number, line: string): Promise<void> {
  const conn = await tcpConnect(port);
  await writeAll(conn, encode(line));
  assertEquals(decode(await readExactly(conn, line.length)), line);
  conn.close();
}

/** The connection fails: the plain client sees its end (or a reset) and never the echo. */
async function refused(port: number): Promise<void> {
  const conn = await tcpConnect(port);
  await writeAll(conn, encode("never echoed\n")).catch(() => {});
  const received = await readAll(conn).catch((e) => {
    if (e instanceof TimeoutError) throw e;
    return new Uint8Array(0); // reset
  });
  assertEquals(decode(received), "");
  conn.close();
}

e2e("server: a PSK without a certificate, TLS 1.3 and TLS 1.2 (s_client)", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const secrets = await pskFile(scope, `alice:${ALICE}\nbob:${BOB}\n`);
  const proxy = await startProxy(
    GLOBALS + server("psk", port, echo.port, `PSKsecrets = ${secrets}\n`),
  );
  for (const version of ["-tls1_3", "-tls1_2"]) {
    const r = await pskClient(port, [version, "-psk_identity", "bob", "-psk", BOB]);
    assert(r.echoed, `no echo with ${version}:\n${r.out}`);
  }
  await proxy.waitForLogCount(/Key configured for PSK identity "bob"/, 2);
  // An external PSK is no resumed session (OpenSSL would say so).
  await proxy.waitForLogCount(/TLS accepted: new session negotiated/, 2);
  assertNotMatch(proxy.log(), /previous session reused/);
  assertMatch(proxy.log(), /TLSv1\.2 ciphersuite: \S*PSK\S* /);
  assertMatch(proxy.log(), /PSK identities: 2 retrieved/);
});

e2e("server: a wrong key or an unknown identity gets nowhere", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const secrets = await pskFile(scope, `alice:${ALICE}\n`);
  const proxy = await startProxy(
    GLOBALS + server("psk", port, echo.port, `PSKsecrets = ${secrets}\n`),
  );
  const wrong = ALICE.replace(/.$/, "0");
  for (
    const args of [
      ["-tls1_3", "-psk_identity", "alice", "-psk", wrong],
      ["-tls1_2", "-psk_identity", "alice", "-psk", wrong],
      ["-tls1_3", "-psk_identity", "carol", "-psk", ALICE],
    ]
  ) {
    const r = await pskClient(port, args);
    assert(!r.echoed, `echoed with ${args.join(" ")}`);
  }
  await proxy.waitForLogCount(/Connection (reset|closed)/, 3);
  assertEquals(echo.connections, 0);
  assertMatch(proxy.log(), /binder does not verify/);
  assertMatch(proxy.log(), /PSK identity not found \(session resumption\?\)/);
});

e2e(
  "client to server: TLS 1.3 and TLS 1.2, the first identity or PSKidentity",
  {},
  async (scope) => {
    const echo = echoServer();
    const [tlsPort, first, bob, tls12] = freePorts(4);
    const secrets = await pskFile(scope, `alice:${ALICE}\nbob:${BOB}\n`);
    const serverSide = await startProxy(
      GLOBALS + server("psk-in", tlsPort, echo.port, `PSKsecrets = ${secrets}\n`),
    );
    await startProxy(
      GLOBALS +
        client("first", first, tlsPort, `PSKsecrets = ${secrets}\n`) +
        client("bob", bob, tlsPort, `PSKsecrets = ${secrets}\nPSKidentity = bob\n`) +
        client("tls12", tls12, tlsPort, `PSKsecrets = ${secrets}\nsslVersion = TLSv1.2\n`),
    );
    await roundTrip(first, "through alice\n");
    await serverSide.waitForLog(/Key configured for PSK identity "alice"/);
    assertNotMatch(serverSide.log(), /PSK identity "bob"/);
    await roundTrip(bob, "through bob\n");
    await serverSide.waitForLog(/Key configured for PSK identity "bob"/);
    await roundTrip(tls12, "through TLS 1.2\n");
    await serverSide.waitForLog(/TLSv1\.2 ciphersuite: \S*PSK\S* /);
    assertMatch(serverSide.log(), /TLSv1\.3 ciphersuite: /);
  },
);

e2e("client to server: interoperates with stunnel4 both ways", {}, async (scope) => {
  const echo = echoServer();
  const [oursIn, theirsIn, oursOut, theirsOut] = freePorts(4);
  const secrets = await pskFile(scope, `alice:${ALICE}\n`);
  const psk = `PSKsecrets = ${secrets}\n`;
  await startProxy(
    GLOBALS + server("in", oursIn, echo.port, psk) + client("out", oursOut, theirsIn, psk),
  );
  await startStunnel4(
    GLOBALS + server("in", theirsIn, echo.port, psk) + client("out", theirsOut, oursIn, psk),
  );
  await roundTrip(oursOut, "ours to stunnel4\n");
  await roundTrip(theirsOut, "stunnel4 to ours\n");
});

e2e("client to server: a different key fails the handshake", {}, async (scope) => {
  const echo = echoServer();
  const [tlsPort, plainPort] = freePorts(2);
  const serverSecrets = await pskFile(scope, `alice:${ALICE}\n`);
  const clientSecrets = await pskFile(scope, `alice:${BOB}\n`);
  const serverSide = await startProxy(
    GLOBALS + server("in", tlsPort, echo.port, `PSKsecrets = ${serverSecrets}\n`),
  );
  await startProxy(GLOBALS + client("out", plainPort, tlsPort, `PSKsecrets = ${clientSecrets}\n`));
  await refused(plainPort);
  await serverSide.waitForLog(/binder does not verify/);
  assertEquals(echo.connections, 0);
});

/** Starts the proxy on a bad configuration; returns its log once it has exited non-zero. */
async function failedStart(text: string): Promise<string> {
  const proxy: Proxy = await startProxy(text, { allowFailure: true, waitPorts: [] });
  const status = await proxy.process.wait(10_000);
  assert(status.code !== 0, `the configuration was accepted:\n${proxy.log()}`);
  assertMatch(proxy.log(), /Configuration failed/);
  return proxy.log();
}

e2e("PSKsecrets: the file's rules and stunnel's messages", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const backend = echo.port;
  const section = (path: string, extra = "") =>
    GLOBALS + server("psk", port, backend, `PSKsecrets = ${path}\n${extra}`);
  const cases: [string, RegExp][] = [
    [`alice:0011\n`, /PSKsecrets line 1: Key shorter than 16 bytes/],
    [`alice:${ALICE}\nno separator here\n`, /PSKsecrets line 2: Not in identity:key format/],
    [`${"x".repeat(256)}:${ALICE}\n`, /PSKsecrets line 1: Identity longer than 256 characters/],
    [`\n\n`, /"PSKsecrets = [^"]*": Failed to read PSK secrets/],
  ];
  for (const [text, expected] of cases) {
    const path = await pskFile(scope, text);
    const log = await failedStart(section(path));
    assertMatch(log, expected);
    assertMatch(log, new RegExp(`:\\d+: "PSKsecrets = ${path}": Failed to read PSK secrets`));
  }
  const missing = `${await scope.tempDir("e2e-psk-")}/missing.txt`;
  assertMatch(await failedStart(section(missing)), /missing\.txt: No such file or directory \(2\)/);
  // A client must have a key for the identity it presents.
  const good = await pskFile(scope, `alice:${ALICE}\n`);
  assertMatch(
    await failedStart(
      GLOBALS + client("c", port, backend, `PSKsecrets = ${good}\nPSKidentity = bob\n`),
    ),
    /Service \[c\]: No key found for the specified PSK identity/,
  );
  // World-readable: only a warning. A key that is not hexadecimal is taken as it is; CR is
  // dropped and empty lines are skipped.
  const loose = await pskFile(scope, `ascii:abcdefghijklmnopqrstuvwxyz\r\n\n#c:${ALICE}\n`, 0o644);
  const proxy = await startProxy(section(loose, "PSKidentity = ascii\n"));
  assertMatch(proxy.log(), new RegExp(`LOG4\\[ui\\]: Insecure file permissions on ${loose}`));
  assertMatch(proxy.log(), /PSKsecrets line 1: 26-byte ASCII key configured for identity "ascii"/);
  assertMatch(
    proxy.log(),
    /PSKsecrets line 3: 16-byte hexadecimal key configured for identity "#c"/,
  );
  assertMatch(proxy.log(), /PSK identity is ignored in the server mode/);
  const hex = Array.from(encode("abcdefghijklmnopqrstuvwxyz"), (b) => b.toString(16)).join("");
  const r = await pskClient(port, ["-psk_identity", "ascii", "-psk", hex]);
  assert(r.echoed, r.out);
});
