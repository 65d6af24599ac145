/**
 * End-to-end: costs that must not grow with the load, and a target the socks service must not
 * trust.
 *
 * - [extra] The CPU time of one failed connection (`reset = yes`, in server mode and in client
 *   mode, where the socket to reset is one the proxy connected) and of one connection with a
 *   local socket option of its own (`l:`) is the same with 600 other connections open as with
 *   none: the socket of a connection is not looked for among all of the process's descriptors.
 * - A sessiond cache that does not answer costs the clients that offer a session their
 *   resumption, and nobody else anything: with 20 ClientHellos a second offering unknown session
 *   ids, another client's handshake still takes well under a second.
 * - [extra] The socks service refuses every target that is this host itself, whatever its form:
 *   0.0.0.0 and ::ffff:127.0.0.1 (as addresses or names) and :: reach the loopback as surely as
 *   127.0.0.1 and ::1, the two that stunnel refuses.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_load_trust_test.ts
 */

import dgram from "node:dgram";
import { assert, assertEquals } from "./harness/assert.ts";
import { closeQuietly, encode, readExactly, waitClosed, writeAll } from "./harness/bytes.ts";
import { echoServer, freePorts, tcpConnect, tcpServer, tlsConnect } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { sleep } from "./harness/timing.ts";

const certLines = (pki: Pki) => `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;

// ------------------------------------------------------------------ cost of a connection

/** CPU time (user + system, in clock ticks) the process `pid` has used so far. */
async function cpuTicks(pid: number): Promise<number> {
  const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
  // After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/** A connection that fails the handshake: plain text where a ClientHello belongs. */
async function failedConnection(port: number): Promise<void> {
  const conn = await tcpConnect(port);
  await writeAll(conn, encode("GET / HTTP/1.0\r\n\r\n"));
  await waitClosed(conn);
  closeQuietly(conn);
}

/** CPU ticks the proxy spends on `count` failed connections to `port`, four at a time. */
async function costOfFailures(pid: number, port: number, count: number): Promise<number> {
  const before = await cpuTicks(pid);
  for (let i = 0; i < count; i += 4) {
    await Promise.all([0, 1, 2, 3].map(() => failedConnection(port)));
  }
  return await cpuTicks(pid) - before;
}

e2e("the cost of a failed connection does not grow with the connections open", {
  extra: "stunnel 5.68 runs a thread per connection: with 600 of them open, a failed " +
    "connection costs it several times as much CPU",
  timeoutMs: 120_000,
  attempts: 2,
}, async () => {
  const pki = await makePki();
  const [resetting, ownOptions, clientMode, idle, backend] = freePorts(5);
  // For the client-mode service: a server that answers the ClientHello with plain text.
  const notTls = tcpServer(async (conn) => {
    await conn.read(new Uint8Array(4096));
    await writeAll(conn, encode("HTTP/1.0 400 Bad Request\r\n\r\n"));
    await waitClosed(conn);
  });
  const service = (name: string, port: number, extra: string) =>
    `[${name}]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend}\n` +
    certLines(pki) + extra;
  // [reset]: reset = yes (the default) resets the failed connection's socket. [options]: the
  // accept option gives the listener another keepalive time than l:, so that l: is set on each
  // accepted socket (reset = no: only the option touches the socket).
  const proxy = await startProxy(
    GLOBALS.replace("debug = debug", "debug = notice") +
      service("reset", resetting, "") +
      service(
        "options",
        ownOptions,
        "reset = no\nsocket = a:TCP_KEEPIDLE=300\nsocket = l:TCP_KEEPIDLE=77\n",
      ) +
      service("idle", idle, "") +
      `[client]\nclient = yes\naccept = 127.0.0.1:${clientMode}\n` +
      `connect = 127.0.0.1:${notTls.port}\n`,
  );
  const count = 200;
  // Warm-up: the first connections of each thread compile the code paths.
  await costOfFailures(proxy.pid, resetting, 40);
  await costOfFailures(proxy.pid, ownOptions, 40);
  await costOfFailures(proxy.pid, clientMode, 40);
  const alone = {
    reset: await costOfFailures(proxy.pid, resetting, count),
    options: await costOfFailures(proxy.pid, ownOptions, count),
    client: await costOfFailures(proxy.pid, clientMode, count),
  };
  // 600 connections that stay open (waiting in the handshake), once the proxy has taken them in.
  const open = await Promise.all(Array.from({ length: 600 }, () => tcpConnect(idle)));
  await proxy.waitForLogCount(/Service \[idle\] accepted connection/, 600, 30_000);
  await sleep(500);
  const crowded = {
    reset: await costOfFailures(proxy.pid, resetting, count),
    options: await costOfFailures(proxy.pid, ownOptions, count),
    client: await costOfFailures(proxy.pid, clientMode, count),
  };
  for (const c of open) closeQuietly(c);
  const report = `CPU ticks for ${count} failed connections: alone ${JSON.stringify(alone)}, ` +
    `with 600 open ${JSON.stringify(crowded)}`;
  console.log(report);
  // Before the fix every one of them went through the 600 descriptors: about 5 times the cost.
  assert(crowded.reset < 2 * alone.reset + 10, report);
  assert(crowded.options < 2 * alone.options + 10, report);
  assert(crowded.client < 2 * alone.client + 10, report);
});

// ------------------------------------------------------------------ sessiond that does not answer

/**
 * A TLS 1.2 ClientHello record that offers `sessionId` (ECDHE-ECDSA/RSA-AES128-GCM-SHA256, no
 * extensions): enough for the server to look the session up.
 */
function clientHello(sessionId: Uint8Array): Uint8Array {
  const body = [
    ...[3, 3],
    ...crypto.getRandomValues(new Uint8Array(32)),
    sessionId.length,
    ...sessionId,
    ...[0, 4, 0xc0, 0x2b, 0xc0, 0x2f],
    ...[1, 0],
  ];
  const handshake = [1, 0, body.length >> 8, body.length & 0xff, ...body];
  return Uint8Array.from([
    0x16,
    3,
    1,
    handshake.length >> 8,
    handshake.length & 0xff,
    ...handshake,
  ]);
}

/** One ClientHello with a random session id; the connection is left when the server answers. */
async function helloWithUnknownSession(port: number): Promise<void> {
  const conn = await tcpConnect(port);
  try {
    await writeAll(conn, clientHello(crypto.getRandomValues(new Uint8Array(32))));
    await readExactly(conn, 1, 15_000).catch(() => {});
  } finally {
    closeQuietly(conn);
  }
}

e2e("sessiond that does not answer: other handshakes do not wait for it", {
  timeoutMs: 60_000,
  attempts: 2,
}, async (scope) => {
  const pki = await makePki();
  // The cache: a UDP socket that reads every request and answers none.
  const silent = dgram.createSocket("udp4");
  let gets = 0;
  silent.on("message", (msg: Uint8Array) => gets += msg[1] === 1 ? 1 : 0);
  await new Promise<void>((resolve) => silent.bind(0, "127.0.0.1", resolve));
  scope.defer(() => silent.close());
  const [port, backend] = freePorts(2);
  await startProxy(
    GLOBALS + `[sessiond]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend}\n` +
      `${certLines(pki)}sessiond = 127.0.0.1:${silent.address().port}\n`,
  );
  // A handshake on each thread first: the timed ones find the code ready.
  for (let i = 0; i < 4; i++) (await tlsConnect(port, pki.caPem)).close();
  // 20 ClientHellos a second, each offering a session id nobody knows.
  let flooding = true;
  const hellos: Promise<void>[] = [];
  const flood = (async () => {
    while (flooding) {
      hellos.push(helloWithUnknownSession(port));
      await sleep(50);
    }
  })();
  await sleep(1500);
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const start = performance.now();
    (await tlsConnect(port, pki.caPem)).close();
    times.push(Math.round(performance.now() - start));
  }
  flooding = false;
  await flood;
  await Promise.all(hellos);
  console.log(`${hellos.length} hellos, ${gets} gets; handshakes: ${times.join(", ")} ms`);
  assert(gets >= 20, `the proxy asked the cache ${gets} times`);
  // stunnel: a few tens of milliseconds; each hello that blocked the thread 200 ms: seconds.
  assert(Math.max(...times) < 1000, `handshakes during the hellos took ${times.join(", ")} ms`);
});

// ------------------------------------------------------------------ socks: this host itself

const be16 = (n: number) => [n >> 8, n & 0xff];

e2e("socks: a target on this host itself is refused, whatever its form", {
  extra: "stunnel 5.68 refuses 127.0.0.0/8 and ::1 only: 0.0.0.0, :: and ::ffff:127.0.0.1 " +
    "reach its loopback services",
  timeoutMs: 40_000,
}, async () => {
  const pki = await makePki();
  // Were the filter to let one through, this backend on the loopback would get a connection.
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[socks]\naccept = 127.0.0.1:${port}\n${certLines(pki)}protocol = socks\n`,
  );
  const p = be16(echo.port);
  const v6 = (...tail: number[]) => [...Array(16 - tail.length).fill(0), ...tail];
  const name = (host: string) => [3, host.length, ...encode(host)];
  const v4Refused = [5, 0, 5, 2, 0, 1, 0, 0, 0, 0, 0, 0];
  // [what, request, reply]: SOCKS 4 answers 91, SOCKS 5 "not allowed by ruleset" (2).
  const cases: [string, number[], number[]][] = [
    ["SOCKS 4 0.0.0.0", [4, 1, ...p, 0, 0, 0, 0, 0], [0, 91, ...p, 0, 0, 0, 0]],
    [
      "SOCKS 4a name 0.0.0.0",
      [4, 1, ...p, 0, 0, 0, 1, 0, ...encode("0.0.0.0"), 0],
      [0, 91, ...p, 0, 0, 0, 1],
    ],
    ["SOCKS 5 0.0.0.0", [5, 1, 0, 5, 1, 0, 1, 0, 0, 0, 0, ...p], [
      5,
      0,
      5,
      2,
      0,
      1,
      0,
      0,
      0,
      0,
      ...p,
    ]],
    ["SOCKS 5 name 0.0.0.0", [5, 1, 0, 5, 1, 0, ...name("0.0.0.0"), ...p], v4Refused],
    [
      "SOCKS 5 ::ffff:127.0.0.1",
      [5, 1, 0, 5, 1, 0, 4, ...v6(0xff, 0xff, 127, 0, 0, 1), ...p],
      [5, 0, 5, 2, 0, 4, ...v6(0xff, 0xff, 127, 0, 0, 1), ...p],
    ],
    [
      "SOCKS 5 name ::ffff:127.0.0.1",
      [5, 1, 0, 5, 1, 0, ...name("::ffff:127.0.0.1"), ...p],
      v4Refused,
    ],
    [
      "SOCKS 5 ::ffff:0.0.0.0",
      [5, 1, 0, 5, 1, 0, 4, ...v6(0xff, 0xff, 0, 0, 0, 0), ...p],
      [5, 0, 5, 2, 0, 4, ...v6(0xff, 0xff, 0, 0, 0, 0), ...p],
    ],
    ["SOCKS 5 ::", [5, 1, 0, 5, 1, 0, 4, ...v6(), ...p], [5, 0, 5, 2, 0, 4, ...v6(), ...p]],
  ];
  for (const [what, request, reply] of cases) {
    const conn = await tlsConnect(port, pki.caPem);
    await writeAll(conn, Uint8Array.from(request));
    assertEquals([...await readExactly(conn, reply.length)], reply, what);
    await waitClosed(conn);
    conn.close();
  }
  await proxy.waitForLogCount(/SOCKS connection to the IPv4 loopback rejected/, 7);
  await proxy.waitForLog(/SOCKS connection to the IPv6 loopback rejected/);
  assertEquals(echo.connections, 0, "a connection reached the loopback backend");
});
