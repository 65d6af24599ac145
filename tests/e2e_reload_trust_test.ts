/**
 * End-to-end: what a reload may be trusted with. Overlapping SIGHUPs leave exactly the file's
 * listeners (on every thread) and route every service to its new backend; the log lines of a
 * connection that outlives a reload go to the log output of the time.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_reload_trust_test.ts
 */

import { assert, assertEquals, assertMatch, assertRejects } from "./harness/assert.ts";
import { decode, readExactly } from "./harness/bytes.ts";
import { type Backend, echoRoundTrip, echoServer, freePorts, tlsConnect } from "./harness/net.ts";
import { makePki, serverCertLines } from "./harness/pki.ts";
import { e2e } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { pollUntil, sleep } from "./harness/timing.ts";

function service(name: string, accept: number, connect: number, host = "127.0.0.1"): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = ${host}:${connect}\n`;
}

/** The TCP ports the process `pid` itself listens on, with the number of its sockets on each. */
async function listenersOf(pid: number): Promise<Record<number, number>> {
  const inodes = new Set<string>();
  for await (const entry of Deno.readDir(`/proc/${pid}/fd`)) {
    try {
      const m = (await Deno.readLink(`/proc/${pid}/fd/${entry.name}`)).match(/^socket:\[(\d+)\]$/);
      if (m) inodes.add(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  const ports: Record<number, number> = {};
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of (await Deno.readTextFile(file)).split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      // f[1]: local address:port (hex), f[3]: state (0A: LISTEN), f[9]: inode.
      if (f.length < 10 || f[3] !== "0A" || !inodes.has(f[9])) continue;
      const port = parseInt(f[1].slice(f[1].lastIndexOf(":") + 1), 16);
      ports[port] = (ports[port] ?? 0) + 1;
    }
  }
  return ports;
}

const RELOAD_STARTED = /Reading configuration from/g;
const RELOAD_ENDED = /Configuration successful|Failed to reload the configuration file/g;

/** Waits until every reload asked for has ended and none has started for a second. */
async function reloadsSettled(proxy: Proxy): Promise<void> {
  let last = "";
  let since = Date.now();
  await pollUntil(
    () => {
      const log = proxy.log();
      const started = log.match(RELOAD_STARTED)?.length ?? 0;
      const ended = log.match(RELOAD_ENDED)?.length ?? 0;
      const state = `${started}/${ended}`;
      if (state !== last) [last, since] = [state, Date.now()];
      return started === ended && Date.now() - since >= 1000;
    },
    30_000,
    "the reloads to end",
  );
}

/** The greeting of the backend that a TLS connection to `port` reaches through the proxy. */
async function backendOf(port: number, caPem: string): Promise<string> {
  const conn = await tlsConnect(port, caPem);
  try {
    return decode(await readExactly(conn, 4));
  } finally {
    conn.close();
  }
}

e2e(
  "Overlapping SIGHUPs: exactly the file's listeners on every thread, each service to its new backend",
  { timeoutMs: 120_000 },
  async () => {
    const pki = await makePki();
    const cert = await serverCertLines();
    const backends: Record<string, Backend> = {
      "old\n": echoServer({ greeting: "old\n" }),
      "new\n": echoServer({ greeting: "new\n" }),
    };
    const ports = freePorts(31);
    const moved = ports[30];
    /** A configuration: service name → [accept port, backend greeting]. */
    type Layout = Map<string, [number, string]>;
    const layout = (assign: (i: number) => [number, string] | undefined): Layout => {
      const services: Layout = new Map();
      for (let i = 0; i < 30; i++) {
        const where = assign(i);
        if (where) services.set(`s${i}`, where);
      }
      return services;
    };
    // By name: a reload then waits for the resolver, and a SIGHUP can come in meanwhile.
    const configText = (services: Layout) =>
      GLOBALS + cert +
      [...services].map(([name, [port, greeting]]) =>
        service(name, port, backends[greeting].port, "localhost")
      ).join("");

    const first = layout((i) => [ports[i], "old\n"]);
    const proxy = await startProxy(configText(first), { timeoutMs: 60_000 });
    // Every thread has bound its sockets by then.
    await proxy.waitForLog(/Accepting new connections/);
    const initial = await listenersOf(proxy.pid);
    const perPort = initial[ports[0]] ?? 0;
    assert(perPort >= 1, "the proxy's own listening sockets are not visible in /proc");
    assertEquals(
      initial,
      Object.fromEntries(ports.slice(0, 30).map((p) => [p, perPort])),
      "listeners after start",
    );

    const check = async (services: Layout, gone: number[]) => {
      await reloadsSettled(proxy);
      const expected = Object.fromEntries([...services.values()].map(([port]) => [port, perPort]));
      assertEquals(await listenersOf(proxy.pid), expected, "the proxy's listeners");
      // Several connections per service: the kernel spreads them over the threads' sockets.
      await Promise.all([...services].map(async ([name, [port, greeting]]) => {
        for (let n = 0; n < 4; n++) {
          assertEquals(await backendOf(port, pki.caPem), greeting, `the backend of [${name}]`);
        }
      }));
      for (const port of gone) {
        await assertRejects(
          () => Deno.connect({ hostname: "127.0.0.1", port }),
          `port ${port} of a deleted service still accepts`,
        );
      }
    };

    // New backends, s28 moved to another port, s29 deleted; two SIGHUPs 30 ms apart.
    const second = layout((i) =>
      i === 29 ? undefined : i === 28 ? [moved, "new\n"] : [ports[i], "new\n"]
    );
    await proxy.writeConfig(configText(second));
    proxy.signal("SIGHUP");
    await sleep(30);
    proxy.signal("SIGHUP");
    await check(second, [ports[28], ports[29]]);

    // Back to the old backend, s27 deleted, s29 back again; five SIGHUPs at once.
    const third = layout((i) =>
      i === 27 ? undefined : i === 28 ? [moved, "old\n"] : [ports[i], "old\n"]
    );
    await proxy.writeConfig(configText(third));
    for (let n = 0; n < 5; n++) proxy.signal("SIGHUP");
    await check(third, [ports[27], ports[28]]);
  },
);

/** A proxy logging to `output`, with one connection open through it. */
async function connectionAcrossReload(dir: string, output: string, after: string) {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const cert = await serverCertLines();
  const config = (file: string) =>
    GLOBALS + `output = ${file}\n` + cert + service("kept", port, echo.port);
  const proxy = await startProxy(config(output), { dir });
  const open = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(open, "before the reload\n");

  await proxy.writeConfig(config(after));
  proxy.signal("SIGHUP");
  await proxy.waitForLogCount(/Reading configuration from/, 2);
  // Signals are handled in turn: the list comes once every thread has reloaded.
  proxy.signal("SIGUSR2");
  await proxy.waitForLog(/Listed 1 active connection\(s\)/);
  await echoRoundTrip(open, "after the reload\n");
  open.close();
  const closed = /LOG5\[(\d+)\]: Connection closed: 35 byte\(s\) sent to TLS, 35 byte\(s\) sent/;
  const [, id] = await proxy.waitForLog(closed);
  const finished = new RegExp(`LOG7\\[${id}\\]: Service \\[kept\\] finished`);
  await proxy.waitForLog(finished);
  const text = await Deno.readTextFile(after);
  assertMatch(text, closed, `the connection's end is not in ${after}`);
  assertMatch(text, finished, `the connection's end is not in ${after}`);
}

e2e("output = FILE: a connection open across a SIGHUP logs its end to the file", {}, async (s) => {
  const dir = await s.tempDir("e2e-reload-log-");
  await connectionAcrossReload(dir, `${dir}/proxy.log`, `${dir}/proxy.log`);
});

e2e(
  "output changed by a SIGHUP: a connection open across it logs its end to the new file",
  {},
  async (s) => {
    const dir = await s.tempDir("e2e-reload-log-");
    await connectionAcrossReload(dir, `${dir}/before.log`, `${dir}/after.log`);
  },
);
