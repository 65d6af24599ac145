/**
 * End-to-end: process lifecycle. SIGHUP reload with a connection open, SIGUSR1 log reopen,
 * SIGTERM with a pid file, a bad configuration, and the informational command-line options.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_lifecycle_test.ts
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertNotMatch,
  assertRejects,
} from "./harness/assert.ts";
import { PROXY } from "./harness/command.ts";
import {
  echoRoundTrip,
  echoServer,
  freePorts,
  isListening,
  tlsConnect,
  waitForPort,
  waitForPortClosed,
} from "./harness/net.ts";
import { makePki, serverCertLines } from "./harness/pki.ts";
import { e2e, run as runCommand, spawn } from "./harness/process.ts";
import { runProxy, startProxy } from "./harness/proxy.ts";
import { pollUntil } from "./harness/timing.ts";

const HEADER = "foreground = yes\nsyslog = no\ndebug = debug\n";

function service(name: string, accept: number, connect: number): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n`;
}

async function fileExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

e2e(
  "SIGHUP reloads: open connection survives, new service added, removed one stops",
  {},
  async () => {
    const pki = await makePki();
    const echo = echoServer();
    const [portA, portB, portC] = freePorts(3);
    const globals = HEADER + "pid =\n" + await serverCertLines();
    const proxy = await startProxy(
      globals + service("keep", portA, echo.port) + service("removed", portB, echo.port),
    );
    assert(!(await isListening(portC)));

    const open = await tlsConnect(portA, pki.caPem);
    await echoRoundTrip(open, "before reload\n");

    await proxy.writeConfig(
      globals + service("keep", portA, echo.port) + service("added", portC, echo.port),
    );
    proxy.signal("SIGHUP");
    await waitForPort(portC, 10_000);
    await waitForPortClosed(portB, 10_000);

    // The connection opened before the reload keeps working and completes normally.
    await echoRoundTrip(open, "after reload\n");
    open.close();
    await proxy.waitForLog(
      /Connection closed: 27 byte\(s\) sent to TLS, 27 byte\(s\) sent to socket/,
    );

    // The added service accepts; the kept one still does; the removed one is gone.
    const added = await tlsConnect(portC, pki.caPem);
    await echoRoundTrip(added, "new service\n");
    added.close();
    await proxy.waitForLog(/Service \[added\] accepted connection from 127\.0\.0\.1:/);
    const kept = await tlsConnect(portA, pki.caPem);
    await echoRoundTrip(kept, "kept service\n");
    kept.close();
    await assertRejects(() => Deno.connect({ hostname: "127.0.0.1", port: portB }));
    assert(proxy.process.running, "the proxy must still run after SIGHUP");
  },
);

e2e("SIGUSR1 reopens the output file after it was renamed", {}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-log-");
  const logFile = `${dir}/proxy.log`;
  const proxy = await startProxy(
    HEADER + `pid =\noutput = ${logFile}\n` + await serverCertLines() +
      service("logged", port, echo.port),
    { dir },
  );
  const first = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(first, "first\n");
  first.close();
  await pollUntil(
    async () => /Connection closed/.test(await Deno.readTextFile(logFile)),
    10_000,
    "the first connection in the log file",
  );

  await Deno.rename(logFile, `${logFile}.1`);
  proxy.signal("SIGUSR1");
  // stunnel's line, written once every thread has reopened the file.
  await pollUntil(
    async () =>
      (await fileExists(logFile)) && /Log file reopened/.test(await Deno.readTextFile(logFile)),
    10_000,
    "a new log file after SIGUSR1",
  );

  const second = await tlsConnect(port, pki.caPem);
  const secondPort = (second.localAddr as Deno.NetAddr).port;
  await echoRoundTrip(second, "second\n");
  second.close();
  const accepted = new RegExp(
    `Service \\[logged\\] accepted connection from 127\\.0\\.0\\.1:${secondPort}`,
  );
  await pollUntil(
    async () => accepted.test(await Deno.readTextFile(logFile)),
    10_000,
    "the second connection in the new log file",
  );
  const old = await Deno.readTextFile(`${logFile}.1`);
  assertMatch(old, /Connection closed/);
  assertNotMatch(old, accepted);
});

e2e("SIGTERM: exit status 0 and the pid file is removed", {}, async (scope) => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-pid-");
  const pidFile = `${dir}/proxy.pid`;
  const proxy = await startProxy(
    HEADER + `pid = ${pidFile}\n` + await serverCertLines() + service("svc", port, echo.port),
    { dir },
  );
  await pollUntil(() => fileExists(pidFile), 10_000, "the pid file");
  assertEquals((await Deno.readTextFile(pidFile)).trim(), String(proxy.pid));
  proxy.signal("SIGTERM");
  const status = await proxy.process.wait(10_000);
  assertEquals(status.code, 0);
  assertEquals(status.signal, null);
  assert(!(await fileExists(pidFile)), "pid file still present after SIGTERM");
  assert(!(await isListening(port)), "port still listening after SIGTERM");
});

e2e("bad configuration: non-zero exit, 'Configuration failed', nothing listens", {}, async () => {
  const echo = echoServer();
  const [good, bad] = freePorts(2);
  const proxy = await startProxy(
    HEADER + "pid =\n" + await serverCertLines() + service("good", good, echo.port) +
      service("bad", bad, echo.port) + "noSuchOption = 1\n",
    { allowFailure: true },
  );
  const status = await proxy.process.wait(10_000);
  assertNotEquals(status.code, 0);
  assertMatch(proxy.log(), /Configuration failed/);
  assert(!proxy.ready);
  assert(!(await isListening(good)), "the good service's port listens");
  assert(!(await isListening(bad)), "the bad service's port listens");
});

e2e("-version prints the version banner to stderr and exits 0", {}, async () => {
  const r = await runProxy(["-version"]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /^stunnel 5\.68 on /m);
  assertMatch(r.stderr, /Running\s+with OpenSSL 3\./);
});

e2e("-help lists the options and exits 0", {}, async () => {
  const r = await runProxy(["-help"]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /^Global options:$/m);
  assertMatch(r.stderr, /^Service-level options:$/m);
  assertMatch(r.stderr, /^accept\s+= \[host:\]port accept connections on specified host:port$/m);
});

e2e("an unknown option (-foo) exits non-zero", {}, async () => {
  const r = await runProxy(["-foo"], 10_000);
  assertNotEquals(r.code, 0);
  assertMatch(r.stderr, /-foo/);
});

e2e("-fd N reads the configuration from a descriptor (a pipe)", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const conf = `${HEADER}pid =\n${await serverCertLines()}` +
    `[fd]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n`;
  const command = [...PROXY, "-fd", "3"].map((a) => `'${a}'`).join(" ");
  const proxy = spawn(["bash", "-c", `exec ${command} 3< <(printf '%s' "$CONF")`], {
    env: { CONF: conf },
  });
  await waitForPort(port);
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "configured through a pipe\n");
  conn.close();
  await proxy.waitForOutput(/Reading configuration from descriptor 3/);
});

/** CPU time (clock ticks) of each thread of `pid` by its name; the main thread is "main". */
function threadTicks(pid: number): Map<string, number> {
  const ticks = new Map<string, number>();
  for (const { name: tid } of Deno.readDirSync(`/proc/${pid}/task`)) {
    const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
    // After "pid (comm) ": state, ... utime and stime are fields 14 and 15 of stat.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const name = tid === String(pid)
      ? "main"
      : Deno.readTextFileSync(`/proc/${pid}/task/${tid}/comm`).trim();
    ticks.set(name, (ticks.get(name) ?? 0) + Number(fields[11]) + Number(fields[12]));
  }
  return ticks;
}

/** STUNNEL_THREADS set to `value` (or unset) while `body` runs. */
async function withThreads(value: string | undefined, body: () => Promise<void>): Promise<void> {
  const saved = Deno.env.get("STUNNEL_THREADS");
  if (value === undefined) Deno.env.delete("STUNNEL_THREADS");
  else Deno.env.set("STUNNEL_THREADS", value);
  try {
    await body();
  } finally {
    if (saved === undefined) Deno.env.delete("STUNNEL_THREADS");
    else Deno.env.set("STUNNEL_THREADS", saved);
  }
}

/** One server-mode service to an echo backend, and full handshakes through it. */
async function handshakeService() {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const conf = `foreground = yes\nsyslog = no\ndebug = info\npid =\n${await serverCertLines()}` +
    `[load]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n`;
  /** Four `openssl s_time -new` clients making full handshakes for `seconds`. */
  const load = (seconds: number) =>
    Promise.all([1, 2, 3, 4].map(() =>
      runCommand([
        "openssl",
        "s_time",
        "-connect",
        `127.0.0.1:${port}`,
        "-new",
        "-CAfile",
        pki.ca,
        "-time",
        String(seconds),
      ], 15_000)
    ));
  return { conf, load };
}

e2e("with two threads, both serve new handshakes", {
  extra: "stunnel runs one thread per connection, not a pool of listening threads",
  timeoutMs: 40_000,
  attempts: 2,
}, async () => {
  const { conf, load } = await handshakeService();
  await withThreads("2", async () => {
    const proxy = await startProxy(conf);
    await proxy.waitForLog(/Serving with 2 threads/);
    const before = threadTicks(proxy.pid);
    // The kernel spreads the new connections over the two threads' listening sockets, and a
    // handshake costs its thread far more than the rest.
    await load(4);
    const after = threadTicks(proxy.pid);
    const used = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
    const [main, worker] = [used("main"), used("worker-1")];
    const share = `main thread ${main} ticks, worker thread ${worker} ticks`;
    assert(main > 0.25 * (main + worker) && worker > 0.25 * (main + worker), share);
  });
});

e2e("by default a second thread starts only when the first one is saturated", {
  extra: "stunnel runs one thread per connection, not a pool that grows",
  timeoutMs: 30_000,
  attempts: 2,
}, async () => {
  const { conf, load } = await handshakeService();
  await withThreads(undefined, async () => {
    const proxy = await startProxy(conf);
    assertNotMatch(proxy.log(), /Serving with/);
    // Full handshakes keep one thread busy until the second one starts.
    const running = load(6);
    await proxy.waitForLog(/Serving with 2 threads/, 12_000);
    await running;
  });
});
