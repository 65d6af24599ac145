/**
 * End-to-end: peers that misbehave on purpose. A TLS 1.2 server that asks for a renegotiation
 * and then never takes part in it, and a client that sends its ClientHello in slow parts.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_hostile_test.ts
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import {
  closeQuietly,
  concat,
  encode,
  readExactly,
  waitClosed,
  writeAll,
} from "./harness/bytes.ts";
import { echoServer, freePort, tcpConnect, tcpServer } from "./harness/net.ts";
import { sClientEcho } from "./harness/openssl.ts";
import { makePki, serverCertLines } from "./harness/pki.ts";
import { e2e, spawn } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { pollUntil, sleep } from "./harness/timing.ts";

/**
 * A TLS 1.2 server (node, so OpenSSL) that answers each handshake with a HelloRequest and from
 * then on ignores what it receives: it never answers the renegotiation it asked for. Then, by
 * `mode`: "close" sends close_notify and closes TCP, "close_notify" sends close_notify and keeps
 * TCP open, "silent" sends nothing more. It says "heard" when the renegotiation's ClientHello
 * comes in (it can only come after the HelloRequest).
 */
const HELLO_REQUEST_SERVER = `
const net = require("node:net");
const tls = require("node:tls");
const { Duplex } = require("node:stream");
const [port, cert, key, mode] = process.argv.slice(1);
const context = tls.createSecureContext({ cert, key, minVersion: "TLSv1.2", maxVersion: "TLSv1.2" });
net.createServer((raw) => {
  let deaf = false;
  raw.on("error", () => {});
  const wire = new Duplex({
    read() {},
    write(chunk, _encoding, done) { raw.write(chunk, done); },
    final(done) {
      if (mode === "close") raw.end();
      done();
    },
  });
  raw.on("data", (data) => deaf ? console.log("heard") : wire.push(data));
  raw.on("end", () => wire.push(null));
  raw.on("finish", () => raw.destroy());
  const socket = new tls.TLSSocket(wire, { isServer: true, secureContext: context });
  socket.on("error", () => {});
  socket.on("secure", () => {
    deaf = true;
    socket.renegotiate({}, () => {});
    if (mode !== "silent") socket.end();
  });
}).listen(Number(port), "127.0.0.1", () => console.log("listening"));
`;

function openFds(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].length;
}

/**
 * Client mode to the server above: a plain client sends data once the renegotiation waits for
 * the server, so that SSL_write waits for it too. The connection must still end, logged, within
 * `timeout` (1 s) and a margin, and give back its descriptors.
 */
async function renegotiationNeverAnswered(
  mode: "close" | "close_notify" | "silent",
  timeout: "TIMEOUTclose" | "TIMEOUTidle",
): Promise<string> {
  const pki = await makePki();
  const serverPort = freePort();
  const [cert, key] = [pki.serverEc.cert, pki.serverEc.key].map((f) => Deno.readTextFileSync(f));
  const server = spawn(["node", "-e", HELLO_REQUEST_SERVER, String(serverPort), cert, key, mode]);
  await server.waitForOutput(/listening/);
  const port = freePort();
  const proxy = await startProxy(
    GLOBALS +
      `[hostile]\nclient = yes\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${serverPort}\n` +
      `${timeout} = 1\n`,
  );
  // Every thread listens by now: the descriptors count only the connection's own from here.
  await proxy.waitForLog(/Accepting new connections/);
  const idle = openFds(proxy.pid);
  const conn = await tcpConnect(port);
  if (mode === "silent") await server.waitForOutput(/heard/);
  // The server's close_notify comes to the client as EOF, after the HelloRequest.
  else assertEquals(await waitClosed(conn, 5000), "eof");
  // stunnel may have closed already (it sees the server's hangup): the write may fail then.
  await writeAll(conn, encode("for a renegotiation that never ends\n")).catch(() => {});
  // stunnel says "closed/reset" when it resets only the plain side (the TLS side had an alert).
  await proxy.waitForLog(/Connection (closed|reset|closed\/reset): /, 5000);
  await pollUntil(() => openFds(proxy.pid) <= idle, 2000, "the connection's descriptors closed");
  return proxy.log();
}

e2e("client mode: HelloRequest, close_notify and close from the server end the connection", {
  timeoutMs: 20_000,
}, async () => {
  await renegotiationNeverAnswered("close", "TIMEOUTclose");
});

// The server has closed its side, but the client's data waits: TIMEOUTidle, not TIMEOUTclose.
e2e("client mode: HelloRequest and close_notify, then nothing: TIMEOUTidle ends it", {
  timeoutMs: 20_000,
}, async () => {
  const log = await renegotiationNeverAnswered("close_notify", "TIMEOUTidle");
  assertMatch(log, /transfer: s_poll_wait: TIMEOUTidle exceeded: sending reset/);
});

e2e("client mode: HelloRequest, then silence: TIMEOUTidle ends it", {
  timeoutMs: 20_000,
}, async () => {
  const log = await renegotiationNeverAnswered("silent", "TIMEOUTidle");
  assertMatch(log, /transfer: s_poll_wait: TIMEOUTidle exceeded: sending reset/);
});

/**
 * A relay to `port` that passes the client's first TLS record (its ClientHello) on in three
 * parts, each after its delay, and then everything else as it comes.
 */
function slowHelloRelay(port: number, delays: [number, number, number]): number {
  const relay = tcpServer(async (client) => {
    const server = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      const header = await readExactly(client, 5);
      const body = await readExactly(client, (header[3] << 8) | header[4]);
      const hello = concat([header, body]);
      const cuts = [0, 3, hello.length >> 1, hello.length];
      for (const [i, delay] of delays.entries()) {
        await sleep(delay);
        await writeAll(server, hello.subarray(cuts[i], cuts[i + 1]));
      }
      await Promise.all([forward(client, server), forward(server, client)]);
    } catch {
      // one side went away
    } finally {
      closeQuietly(server);
    }
  });
  return relay.port;
}

async function forward(from: Deno.Conn, to: Deno.Conn): Promise<void> {
  const buf = new Uint8Array(16384);
  for (let n; (n = await from.read(buf)) !== null;) await writeAll(to, buf.subarray(0, n));
  await to.closeWrite();
}

/**
 * openssl s_client through the relay (its ClientHello delayed by `delays`) to the proxy, which
 * has TIMEOUTbusy = 2, and on to an echo server: whether a line came back, and the proxy's log.
 */
async function slowHandshake(delays: [number, number, number]): Promise<[boolean, string]> {
  const echo = echoServer();
  const port = freePort();
  const proxy = await startProxy(
    GLOBALS + (await serverCertLines()) +
      `[slow]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\nTIMEOUTbusy = 2\n`,
  );
  const line = "through a slow handshake";
  const out = await sClientEcho(slowHelloRelay(port, delays), [], line);
  return [out.split("\n").includes(line), proxy.log()];
}

e2e("TIMEOUTbusy bounds each wait of the handshake, not the whole handshake", {
  timeoutMs: 30_000,
}, async () => {
  // 2.7 s for the ClientHello, but never 2 s without a byte.
  const [through, log] = await slowHandshake([900, 900, 900]);
  assert(through, "the handshake did not complete");
  assertNotMatch(log, /TIMEOUTbusy/);
});

e2e("TIMEOUTbusy still ends a handshake when one of its waits exceeds it", {
  timeoutMs: 30_000,
}, async () => {
  const [through, log] = await slowHandshake([0, 4000, 0]);
  assert(!through, "the handshake completed");
  assertMatch(log, /ssl_start: s_poll_wait: TIMEOUTbusy exceeded: sending reset/);
});
