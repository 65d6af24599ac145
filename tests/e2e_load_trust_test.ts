/**
 * End-to-end: costs that must not grow with the load, and a target the socks service must not
 * trust.
 *
 * - The CPU time of one failed connection (`reset = yes`) and of one connection with a local
 *   socket option of its own (`l:`) is the same with 600 other connections open as with none:
 *   the socket of a connection is not looked for among all of the process's descriptors.
 * - [extra] The socks service refuses every target that is this host itself, whatever its form:
 *   0.0.0.0 and ::ffff:127.0.0.1 (as addresses or names) and :: reach the loopback as surely as
 *   127.0.0.1 and ::1, the two that stunnel refuses.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_load_trust_test.ts
 */

import {
  assert,
  assertEquals,
  closeQuietly,
  e2e,
  echoServer,
  encode,
  freePorts,
  GLOBALS,
  makePki,
  type Pki,
  readExactly,
  startProxy,
  tcpConnect,
  tlsConnect,
  waitClosed,
  writeAll,
} from "./helpers.ts";

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
  timeoutMs: 120_000,
}, async () => {
  const pki = await makePki();
  const [resetting, ownOptions, idle, backend] = freePorts(4);
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
      service("idle", idle, ""),
  );
  const count = 200;
  // Warm-up: the first connections of each thread compile the code paths.
  await costOfFailures(proxy.pid, resetting, 40);
  await costOfFailures(proxy.pid, ownOptions, 40);
  const alone = {
    reset: await costOfFailures(proxy.pid, resetting, count),
    options: await costOfFailures(proxy.pid, ownOptions, count),
  };
  // 600 connections that stay open (waiting in the handshake).
  const open = await Promise.all(Array.from({ length: 600 }, () => tcpConnect(idle)));
  const crowded = {
    reset: await costOfFailures(proxy.pid, resetting, count),
    options: await costOfFailures(proxy.pid, ownOptions, count),
  };
  for (const c of open) closeQuietly(c);
  const report = `CPU ticks for ${count} failed connections: alone ${JSON.stringify(alone)}, ` +
    `with 600 open ${JSON.stringify(crowded)}`;
  console.log(report);
  // Before the fix every one of them went through the 600 descriptors: about 5 times the cost.
  assert(crowded.reset < 2 * alone.reset + 10, report);
  assert(crowded.options < 2 * alone.options + 10, report);
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
