/**
 * End-to-end: server mode and client mode, with real programs as peers (openssl s_client and
 * s_server, curl, stunnel4, Deno's TLS client), bulk transfers with sha256 checks, bad input
 * on the TLS port, and the log lines of one connection.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_core_test.ts
 */

import { createHash } from "node:crypto";
import { assertEquals, assertMatch } from "./harness/assert.ts";
import {
  decode,
  encode,
  MiB,
  patternDigest,
  readExactly,
  sha256Hex,
  waitClosed,
  writeAll,
} from "./harness/bytes.ts";
import {
  curl,
  echoServer,
  freePorts,
  httpServer,
  streamServer,
  tcpConnect,
  tcpTransfer,
  tlsConnect,
  waitForPort,
} from "./harness/net.ts";
import { sClient, sServer } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e } from "./harness/process.ts";
import { GLOBALS, LOG_LINE, startProxy } from "./harness/proxy.ts";
import { startStunnel4 } from "./harness/stunnel4.ts";

/** A server-mode service: TLS on `accept`, plain to `connect`. */
function serverService(name: string, accept: number, connect: number, certLines: string): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n${certLines}\n`;
}

/** A client-mode service verifying the server against `ca` for the name localhost. */
function clientService(name: string, accept: number, connect: number, ca: string): string {
  return `[${name}]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `CAfile = ${ca}\nverifyChain = yes\ncheckHost = localhost\n`;
}

/** Echo round trip over a plain or TLS connection. */
async function echoRoundTrip(conn: Deno.Conn, message: string): Promise<void> {
  await writeAll(conn, encode(message));
  assertEquals(decode(await readExactly(conn, encode(message).length)), message);
}

e2e("server mode: openssl s_client -> proxy -> echo backend", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  const proxy = await startProxy(GLOBALS + serverService("echo", port, echo.port, cert));
  const client = sClient(port, { ca: pki.ca });
  const message = "hello through s_client\n".repeat(50);
  await client.write(message);
  assertEquals(decode(await client.readStdout(message.length)), message);
  await client.write("second line\n");
  assertEquals(
    decode(await client.readStdout(message.length + 12)).slice(message.length),
    "second line\n",
  );
  // s_client goes away without close_notify: stunnel still calls that a clean close.
  await client.stop();
  await proxy.waitForLog(
    /Connection closed: 1162 byte\(s\) sent to TLS, 1162 byte\(s\) sent to socket/,
  );
});

e2e("server mode: curl -> proxy -> HTTP backend", {}, async () => {
  const pki = await makePki();
  const http = httpServer("hello over https\n");
  const [port] = freePorts(1);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  await startProxy(GLOBALS + serverService("https", port, http.port, cert));
  const r = await curl(port, pki.ca, ["-w", "\\n%{http_code}"]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, "hello over https\n\n200");
  const req = await http.requests.next(5000);
  assertEquals(new URL(req.url).pathname, "/");
});

e2e("server mode: Deno TLS client -> proxy (RSA certificate) -> echo", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const cert = `cert = ${pki.serverRsa.cert}\nkey = ${pki.serverRsa.key}`;
  await startProxy(GLOBALS + serverService("echo", port, echo.port, cert));
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "ping from Deno\n");
  await echoRoundTrip(conn, "x".repeat(100_000));
  conn.close();
});

e2e("cert: one PEM file holding key and certificate (no key =)", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  await startProxy(GLOBALS + serverService("combined", port, echo.port, `cert = ${pki.combined}`));
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "combined pem\n");
  conn.close();
});

e2e("cert: PKCS#12 bundle without password", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  await startProxy(GLOBALS + serverService("p12", port, echo.port, `cert = ${pki.p12}`));
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "pkcs12\n");
  conn.close();
});

e2e("client mode: plain TCP -> proxy (client = yes) -> openssl s_server", {}, async () => {
  const pki = await makePki();
  const [port, serverPort] = freePorts(2);
  const server = sServer(serverPort, pki.serverEc);
  await waitForPort(serverPort);
  await startProxy(GLOBALS + clientService("tls-out", port, serverPort, pki.ca));
  const conn = await tcpConnect(port);
  await writeAll(conn, encode("from the plain client\n"));
  await server.stdout.waitFor(
    () => decode(server.stdout.bytes()).includes("from the plain client\n"),
    10_000,
    "s_server to receive the client's data",
  );
  await server.write("from s_server\n");
  assertEquals(decode(await readExactly(conn, 14)), "from s_server\n");
  conn.close();
});

e2e("interop: stunnel4 client mode -> proxy server mode -> echo", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [stunnelPort, proxyPort] = freePorts(2);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  const proxy = await startProxy(GLOBALS + serverService("in", proxyPort, echo.port, cert));
  await startStunnel4(GLOBALS + clientService("out", stunnelPort, proxyPort, pki.ca));
  const conn = await tcpConnect(stunnelPort);
  await echoRoundTrip(conn, "stunnel4 -> proxy\n");
  await proxy.waitForLog(/TLS accepted: new session negotiated/);
  conn.close();
});

e2e("interop: proxy client mode -> stunnel4 server mode -> echo", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [proxyPort, stunnelPort] = freePorts(2);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  const peer = await startStunnel4(GLOBALS + serverService("in", stunnelPort, echo.port, cert));
  const proxy = await startProxy(GLOBALS + clientService("out", proxyPort, stunnelPort, pki.ca));
  const conn = await tcpConnect(proxyPort);
  await echoRoundTrip(conn, "proxy -> stunnel4\n");
  await proxy.waitForLog(/TLS connected: new session negotiated/);
  await peer.waitForLog(/TLS accepted: new session negotiated/);
  conn.close();
});

/**
 * One proxy process with both ends of a tunnel: plain -> [client = yes] -> TLS ->
 * [server mode] -> backend.
 */
async function tunnel(backendPort: number) {
  const pki = await makePki();
  const [plainPort, tlsPort] = freePorts(2);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  const proxy = await startProxy(
    GLOBALS + clientService("tls-out", plainPort, tlsPort, pki.ca) +
      serverService("tls-in", tlsPort, backendPort, cert),
  );
  return { proxy, plainPort, tlsPort };
}

const BIG = 100 * MiB;

e2e("100 MiB client -> backend, sender half-closes and still gets the reply", {
  timeoutMs: 60_000,
}, async () => {
  const sink = streamServer({ replyDigest: true });
  const { plainPort } = await tunnel(sink.port);
  const r = await tcpTransfer(plainPort, { send: BIG, seed: 7, timeoutMs: 55_000 });
  const atBackend = await sink.results.next(10_000);
  const expected = patternDigest(BIG, 7);
  assertEquals(r.sent, expected);
  assertEquals(atBackend.received, expected);
  // The reply the backend sent after the half-close arrived in full.
  const reply = `${expected.sha256} ${BIG}\n`;
  assertEquals(r.received.bytes, reply.length);
  assertEquals(r.received.sha256, sha256Hex(reply));
});

e2e("100 MiB backend -> client, backend closes first", { timeoutMs: 60_000 }, async () => {
  const source = streamServer({ send: BIG, seed: 11 });
  const { plainPort } = await tunnel(source.port);
  const r = await tcpTransfer(plainPort, { send: 0, halfClose: false, timeoutMs: 55_000 });
  assertEquals(r.received, patternDigest(BIG, 11));
  const atBackend = await source.results.next(10_000);
  assertEquals(atBackend.sent, patternDigest(BIG, 11));
  assertEquals(atBackend.received.bytes, 0);
});

e2e("100 MiB each way at the same time", { timeoutMs: 60_000 }, async () => {
  const peer = streamServer({ send: BIG, seed: 3 });
  const { plainPort } = await tunnel(peer.port);
  // The client half-closes only after the backend's EOF arrived (see the next test for why).
  const r = await tcpTransfer(plainPort, {
    send: BIG,
    seed: 4,
    halfCloseAfterEof: true,
    timeoutMs: 55_000,
  });
  const atBackend = await peer.results.next(10_000);
  assertEquals(r.received, patternDigest(BIG, 3));
  assertEquals(atBackend.received, patternDigest(BIG, 4));
});

e2e("large reply sent after the client half-closed arrives in full", {
  timeoutMs: 60_000,
  extra: "stunnel 5.68 sometimes drops the tail of the reply: once it has shut down the write " +
    "side to the backend and the backend's FIN arrives, poll() reports POLLHUP and stunnel logs " +
    "'Read socket closed (HUP)' while data is still buffered in the socket",
}, async () => {
  const size = 16 * MiB;
  const backend = streamServer({ send: size, seed: 9, sendAfterEof: true });
  const { plainPort } = await tunnel(backend.port);
  const r = await tcpTransfer(plainPort, { send: 1000, seed: 8, timeoutMs: 55_000 });
  assertEquals(r.received, patternDigest(size, 9));
  assertEquals((await backend.results.next(10_000)).received, patternDigest(1000, 8));
});

e2e("garbage and plain HTTP on the TLS port are dropped; a transfer keeps flowing", {
  timeoutMs: 60_000,
}, async () => {
  const pki = await makePki();
  const total = 32 * MiB;
  const source = streamServer({ send: total, seed: 5 });
  const [port] = freePorts(1);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  const proxy = await startProxy(GLOBALS + serverService("bulk", port, source.port, cert));

  // A good connection, paused after its first MiB.
  const good = await tlsConnect(port, pki.caPem);
  const h = createHash("sha256");
  h.update(await readExactly(good, MiB));

  // Garbage that is not TLS.
  const junk = await tcpConnect(port);
  await writeAll(junk, encode("this is not TLS at all\r\n\r\n".repeat(20)));
  await waitClosed(junk, 10_000);
  await proxy.waitForLog(/SSL_accept: .*wrong version number/);

  // A plain HTTP request.
  const http = await tcpConnect(port);
  await writeAll(http, encode("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
  await waitClosed(http, 10_000);
  await proxy.waitForLog(/SSL_accept: .*http request/);
  await proxy.waitForLogCount(
    /Connection (reset|closed): 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/,
    2,
  );

  // The good connection still delivers everything.
  const buf = new Uint8Array(256 * 1024);
  let bytes = MiB;
  while (true) {
    const n = await good.read(buf);
    if (n === null) break;
    h.update(buf.subarray(0, n));
    bytes += n;
  }
  assertEquals({ sha256: h.digest("hex"), bytes }, patternDigest(total, 5));
  good.close();
});

e2e("log format and the lines of one connection with byte counts", {}, async () => {
  const pki = await makePki();
  const greeting = "HELLO\n";
  const echo = echoServer({ greeting });
  const [port] = freePorts(1);
  const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}`;
  const proxy = await startProxy(GLOBALS + serverService("logfmt", port, echo.port, cert));

  const conn = await tlsConnect(port, pki.caPem);
  const clientPort = (conn.localAddr as Deno.NetAddr).port;
  assertEquals(decode(await readExactly(conn, greeting.length)), greeting);
  const payload = "0123456789".repeat(100);
  await echoRoundTrip(conn, payload);
  conn.close();

  const sentToTls = greeting.length + payload.length;
  await proxy.waitForLog(
    new RegExp(
      `LOG5\\[[^\\]]+\\]: Connection closed: ${sentToTls} byte\\(s\\) sent to TLS, ` +
        `${payload.length} byte\\(s\\) sent to socket`,
    ),
  );
  const log = proxy.log();
  for (const line of log.split("\n").filter((l) => l !== "")) assertMatch(line, LOG_LINE);
  const backendSide = echo.peers[0].port;
  const expected = [
    `LOG5\\[[^\\]]+\\]: Service \\[logfmt\\] accepted connection from 127\\.0\\.0\\.1:${clientPort}$`,
    `LOG5\\[[^\\]]+\\]: s_connect: connected 127\\.0\\.0\\.1:${echo.port}$`,
    `LOG5\\[[^\\]]+\\]: Service \\[logfmt\\] connected remote server from 127\\.0\\.0\\.1:${backendSide}$`,
    `LOG6\\[[^\\]]+\\]: TLS accepted: new session negotiated$`,
  ];
  for (const re of expected) assertMatch(log, new RegExp(re, "m"));
  // All lines of the connection carry the same id, distinct from the startup lines' id.
  const id = log.match(/LOG5\[([^\]]+)\]: Service \[logfmt\] accepted connection/)![1];
  assertMatch(log, new RegExp(`LOG5\\[${id}\\]: Connection closed: `));
});
