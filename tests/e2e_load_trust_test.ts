/**
 * End-to-end: costs that must not grow with the load, and a target the socks service must not
 * trust.
 *
 * - The CPU time of one failed connection (`reset = yes`) and of one connection with a local
 *   socket option of its own (`l:`) is the same with 600 other connections open as with none:
 *   the socket of a connection is not looked for among all of the process's descriptors.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_load_trust_test.ts
 */

import {
  assert,
  closeQuietly,
  e2e,
  encode,
  freePorts,
  GLOBALS,
  makePki,
  type Pki,
  startProxy,
  tcpConnect,
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
