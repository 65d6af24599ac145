/**
 * The mixed load: bulk transfers, keep-alive connections and new handshakes through one
 * server-mode service for a fixed time, every byte checked both ways, while faults are
 * injected: the backend is killed (SIGKILL) and started again, clients reset mid-stream,
 * garbage and half-sent ClientHellos hit the TLS port, and SIGHUP arrives every few seconds
 * (alone or in bursts) with the configuration alternating between two versions.
 *
 * Then: no crash, no corrupted transfer, no failure that a backend kill does not explain,
 * every connection logged as closed, the listeners as configured after every reload, and the
 * proxy's RSS, descriptors and threads back within 10% of their value before the load.
 */
import { freePorts } from "../harness/net.ts";
import type { Pki } from "../harness/pki.ts";
import { pollUntil, sleep } from "../harness/timing.ts";
import {
  bounded,
  captureClientHello,
  type Closer,
  Corrupt,
  type Counters,
  newCounters,
  newRequest,
  sendGarbage,
  sendHalfHello,
  Session,
  type Target,
} from "./clients.ts";
import { countLog, describeIds, endedIn, type LogCounts, topErrors } from "./logcount.ts";
import { collectGarbage } from "./gc.ts";
import {
  descriptorDiff,
  descriptorKinds,
  FD_SLACK,
  formatStats,
  listeningSockets,
  type ProcStats,
  procStats,
} from "./proc.ts";
import {
  type Backend,
  LISTENERS,
  pause,
  soakGlobals,
  startBackend,
  startSoakProxy,
  THREADS,
} from "./proxy.ts";
import { MiB, mib, progress, type Report } from "./report.ts";
import { Rng } from "./rng.ts";

const PART = "mixed";
/** How long after a backend is back a failure may still be blamed on its kill. */
const KILL_GRACE_MS = 3000;
/**
 * Time for freed pages to go back to the system after a collection: longer than the 5 s
 * between an idle thread's malloc_trim calls (daemon.ts).
 */
const SETTLE_MS = 5500;

export interface MixedOptions {
  /** Length of the load, and of the warm-up before the baseline is measured. */
  seconds: number;
  warmupSeconds: number;
  /** Seconds between backend kills (a random value up to twice this). */
  killEverySeconds: number;
  pki: Pki;
  seed: number;
  report: Report;
  dir: string;
}

type Kind = "bulk" | "keep-alive" | "handshake" | "reset mid-stream";

interface Failure {
  kind: Kind;
  start: number;
  end: number;
  error: string;
}

interface Window {
  killAt: number;
  readyAt: number;
}

/** Everything the load counts; failures are judged at the end, against the kill windows. */
class Tally {
  readonly counters: Counters = newCounters();
  readonly completed = new Map<Kind, number>();
  readonly failures: Failure[] = [];
  readonly corrupt: string[] = [];
  readonly faults = new Map<string, number>();
  readonly windows: Window[] = [];
  readonly listenerMismatches: string[] = [];
  signals = 0;

  fault(kind: string, n = 1): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + n);
  }

  /**
   * Runs one client's work and files its outcome under `kind`. After a failure the client
   * waits a moment, so that a backend that is down is not hammered.
   */
  async transfer(kind: Kind, ms: number, work: (closer: Closer) => Promise<void>) {
    const start = Date.now();
    try {
      await bounded(ms, work);
      this.completed.set(kind, (this.completed.get(kind) ?? 0) + 1);
    } catch (e) {
      if (e instanceof Corrupt) this.corrupt.push(`${kind}: ${e.message}`);
      else this.failures.push({ kind, start, end: Date.now(), error: String(e) });
      await sleep(200);
    }
  }

  /** Whether a backend kill explains a failure: it ended while the backend was down. */
  explained(f: Failure): boolean {
    return this.windows.some((w) => f.end >= w.killAt && f.end <= w.readyAt + KILL_GRACE_MS);
  }
}

/** The two configurations that SIGHUP alternates between (B adds a service). */
function configs(o: MixedOptions, port: number, sparePort: number, backendPort: number) {
  const service = (name: string, accept: number, idle: number) =>
    `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backendPort}\n` +
    `cert = ${o.pki.serverEc.cert}\nkey = ${o.pki.serverEc.key}\nTIMEOUTidle = ${idle}\n`;
  const globals = soakGlobals(o.dir);
  return {
    a: globals + service("soak", port, 3600),
    b: globals + service("soak", port, 3601) + service("spare", sparePort, 3600),
  };
}

export async function mixedPart(o: MixedOptions): Promise<void> {
  const { report } = o;
  const [port, sparePort, backendPort] = freePorts(3);
  const conf = configs(o, port, sparePort, backendPort);
  let backend: Backend | undefined = await startBackend(backendPort, `${o.dir}/backend.out`);
  const proxy = await startSoakProxy(o.dir, conf.a, [port], true);
  const samples: ProcStats[] = [];
  const target: Target = { port, caPem: o.pki.caPem };
  const tally = new Tally();
  const rng = new Rng(o.seed);
  const hello = await captureClientHello(o.pki.caPem);
  let current: "a" | "b" = "a";
  let mismatched = false;

  /** Writes configuration `which` (atomically: a reload never reads half a file). */
  const setConfig = async (which: "a" | "b") => {
    await Deno.writeTextFile(`${proxy.confPath}.new`, conf[which]);
    await Deno.rename(`${proxy.confPath}.new`, proxy.confPath);
    current = which;
  };
  /**
   * After a reload, the listeners must become what the configuration says. Once they did not,
   * later reloads are only looked at (waiting each time would slow the SIGHUPs down).
   */
  const listenersMatch = async (what: string) => {
    const want = String([LISTENERS, current === "b" ? LISTENERS : 0]);
    const have = () => String([listeningSockets(port), listeningSockets(sparePort)]);
    const ok = await pollUntil(() => have() === want, mismatched ? 0 : 5000, what, 100)
      .then(() => true, () => false);
    if (!ok) {
      mismatched = true;
      tally.listenerMismatches.push(
        `${what}: listening on [soak, spare] ${have()}, configured ${want}`,
      );
    }
  };

  const runLoad = async (seconds: number, kills: boolean) => {
    const deadline = Date.now() + seconds * 1000;
    const over = () => Date.now() >= deadline || proxy.status() !== undefined;
    const loop = async (fn: (r: Rng) => Promise<void>) => {
      const r = rng.fork();
      while (!over()) await fn(r);
    };
    const workers: Promise<void>[] = [];
    const times = (n: number, fn: (r: Rng) => Promise<void>) => {
      for (let i = 0; i < n; i++) workers.push(loop(fn));
    };
    let conns = 0;
    times(2, (r) =>
      tally.transfer("bulk", 180_000, async (closer) => {
        const s = await Session.open(target, tally.counters, closer);
        const id = `bulk${++conns}`;
        for (let i = r.int(1, 2); i > 0; i--) {
          await s.request(newRequest(r, id, r.int(0, 8 * MiB), r.int(0, 8 * MiB)));
        }
        await s.finish();
      }));
    times(6, (r) =>
      tally.transfer("keep-alive", 120_000, async (closer) => {
        const s = await Session.open(target, tally.counters, closer);
        const id = `ka${++conns}`;
        for (let i = r.int(5, 40); i > 0; i--) {
          await s.request(newRequest(r, id, r.int(0, 65536), r.int(0, 65536)));
          await sleep(r.int(0, 300));
        }
        await s.finish();
      }));
    times(4, (r) =>
      tally.transfer("handshake", 30_000, async (closer) => {
        const s = await Session.open(target, tally.counters, closer);
        if (r.chance(0.8)) {
          await s.request(newRequest(r, `hs${++conns}`, r.int(1, 1024), r.int(1, 1024)));
        }
        await s.finish();
      }));
    // A client that goes away while data flows: close with unread data, which sends RST.
    times(1, async (r) => {
      await pause(r.int(300, 2000), over);
      if (over()) return;
      tally.fault("client reset mid-stream");
      await tally.transfer("reset mid-stream", 60_000, async (closer) => {
        const s = await Session.open(target, tally.counters, closer);
        const q = newRequest(r, `rst${++conns}`, r.chance(0.5) ? 32 * MiB : 0, 32 * MiB);
        await s.send(q);
        void s.upload(q).catch(() => {});
        await s.partial(q.downStart, r.int(1, 4 * MiB));
        closer.closeAll();
      });
    });
    times(1, async (r) => {
      await pause(r.int(100, 800), over);
      if (over()) return;
      const closedByProxy = await sendGarbage(target, r, tally.counters).catch(() => false);
      tally.fault(
        `garbage on the TLS port (${closedByProxy ? "closed by the proxy" : "we closed"})`,
      );
    });
    times(2, async (r) => {
      await pause(r.int(200, 1500), over);
      if (over()) return;
      const closedByProxy = await sendHalfHello(target, r, hello, tally.counters)
        .catch(() => false);
      tally.fault(
        `half-sent ClientHello (${closedByProxy ? "closed by the proxy" : "we closed"})`,
      );
    });
    // SIGHUP every few seconds; every fourth time a burst of several at once.
    workers.push(loop(async (r) => {
      await pause(r.int(2000, 6000), over);
      if (over()) return;
      await setConfig(current === "a" ? "b" : "a");
      const burst = r.chance(0.25) ? r.int(3, 6) : 1;
      for (let i = 0; i < burst; i++) {
        proxy.signal("SIGHUP");
        if (i + 1 < burst) await sleep(r.int(0, 20));
      }
      tally.signals += burst;
      tally.fault(burst > 1 ? "SIGHUP bursts" : "single SIGHUPs");
      await listenersMatch(`after ${burst > 1 ? `a burst of ${burst} SIGHUPs` : "a SIGHUP"}`);
    }));
    if (kills) {
      workers.push(loop(async () => {
        await pause(10_000, over);
        samples.push(procStats(proxy.pid));
      }));
      workers.push(loop(async (r) => {
        await pause(r.int(o.killEverySeconds * 500, o.killEverySeconds * 1500), over);
        if (over() || !backend) return;
        const killAt = Date.now();
        backend.signal("SIGKILL");
        await backend.exited;
        backend = undefined;
        await sleep(r.int(300, 2000));
        backend = await startBackend(backendPort, `${o.dir}/backend.out`);
        tally.windows.push({ killAt, readyAt: Date.now() });
        tally.fault("backend killed (SIGKILL) and restarted");
      }));
    }
    await Promise.all(workers);
  };

  /**
   * The proxy's figures once idle: the least RSS of three readings, each after a full GC in
   * every isolate (gc.ts) and a moment for the freed pages to go back to the system (V8 and
   * malloc release them in the background, a little at a time).
   */
  let isolates = 0;
  const measure = async () => {
    let least: ProcStats | undefined;
    for (let i = 0; i < 3; i++) {
      if (proxy.inspector) isolates = await collectGarbage(proxy.inspector, THREADS - 1);
      await sleep(SETTLE_MS);
      const s = procStats(proxy.pid);
      if (!least || s.rssKiB < least.rssKiB) least = s;
    }
    return least!;
  };

  /** Back to configuration A and every connection ended: then measure. */
  const quiesce = async (): Promise<{ stats: ProcStats; log: LogCounts }> => {
    if (current !== "a") {
      await setConfig("a");
      proxy.signal("SIGHUP");
      tally.signals++;
      await listenersMatch("after the closing SIGHUP");
    }
    // Until every connection is logged as ended, or nothing changed for 5 s (a line missing).
    let last = "";
    let since = Date.now();
    const log = await pollUntil(
      async () => {
        const c = await countLog(proxy.logPath);
        const now = `${c.accepted} ${c.unended.size}`;
        if (now !== last) [last, since] = [now, Date.now()];
        const done = c.unended.size === 0 && c.accepted >= tally.counters.connections;
        return done || Date.now() - since > 5000 ? c : undefined;
      },
      60_000,
      "every connection to be logged as closed",
      1000,
    ).catch(() => countLog(proxy.logPath));
    return { stats: await measure(), log };
  };

  try {
    progress(`mixed: warm-up for ${o.warmupSeconds} s`);
    await runLoad(o.warmupSeconds, false);
    const before = (await quiesce()).stats;
    const kindsBefore = descriptorKinds(proxy.pid);
    report.figure(
      PART,
      `proxy before the load (after a ${o.warmupSeconds} s warm-up): ${formatStats(before)}`,
    );
    progress(`mixed: load for ${o.seconds} s; baseline ${formatStats(before)}`);
    const t0 = Date.now();
    await runLoad(o.seconds, true);
    report.figure(PART, `load ran ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    if (!backend) backend = await startBackend(backendPort, `${o.dir}/backend.out`);
    const { log, stats } = await quiesce();
    // Within 10% (plus a few descriptors); measured again for a while if not, as thread pools
    // (Deno's blocking pool keeps an idle thread 10 s) shrink lazily.
    const within = (s: ProcStats) =>
      s.rssKiB <= before.rssKiB * 1.1 && s.fds <= before.fds * 1.1 + FD_SLACK &&
      s.threads <= before.threads * 1.1;
    let after = stats;
    for (const end = Date.now() + 30_000; !within(after) && Date.now() < end;) {
      after = await measure();
    }
    report.figure(PART, `proxy after the load: ${formatStats(after)}`);
    if (isolates) {
      report.figure(PART, `(measured after a full GC in each of the ${isolates} V8 isolates)`);
    }
    const rss = samples.map((x) => (x.rssKiB / 1024).toFixed(0));
    report.figure(PART, `proxy RSS every 10 s during the load (MiB): ${rss.join(" ")}`);

    summarize(tally, report, log);
    const unstderr = await endedIn(proxy.consolePath, log.unended);
    report.check(
      PART,
      "every connection logged as accepted and as closed (output file)",
      log.accepted === tally.counters.connections && log.unended.size === 0,
      `${tally.counters.connections} client connections, ${log.accepted} accepted, ` +
        `${log.closed} closed, ${log.reset} reset, ${log.unended.size} never ended` +
        describeIds(log.unended) +
        (unstderr.size ? `; ${unstderr.size} of them logged their end on stderr only` : ""),
    );
    report.check(
      PART,
      "reloads succeeded and the listeners matched the configuration after each",
      log.reloadFailures === 0 && tally.listenerMismatches.length === 0,
      `${tally.signals} SIGHUPs, ${log.reloads} "Configuration successful", ` +
        `${log.reloadFailures} failed` +
        tally.listenerMismatches.slice(0, 3).map((m) => `; ${m}`).join(""),
    );
    const pct = (a: number, b: number) => `${b ? (((a - b) / b) * 100).toFixed(1) : "?"}%`;
    report.check(
      PART,
      "RSS back within 10% of before the load",
      after.rssKiB <= before.rssKiB * 1.1,
      `${before.rssKiB} KiB before, ${after.rssKiB} KiB after (${
        pct(after.rssKiB, before.rssKiB)
      })`,
    );
    report.check(
      PART,
      `descriptors back within 10% (+${FD_SLACK})`,
      after.fds <= before.fds * 1.1 + FD_SLACK,
      `${before.fds} before, ${after.fds} after` +
        descriptorDiff(kindsBefore, descriptorKinds(proxy.pid)).map((d) => `; ${d}`).join(""),
    );
    report.check(
      PART,
      "threads back within 10%",
      after.threads <= before.threads * 1.1,
      `${before.threads} before, ${after.threads} after`,
    );
  } finally {
    const status = proxy.status();
    const consoleText = await Deno.readTextFile(proxy.consolePath).catch(() => "");
    const crash = consoleText.match(/.*(panicked at|error: Uncaught|Segmentation fault).*/)?.[0];
    report.check(
      PART,
      "the proxy ran to the end (no crash)",
      status === undefined && !crash,
      status ? `exited with code ${status.code}, signal ${status.signal}` : crash ?? "",
    );
    const stopped = await proxy.stop();
    report.check(
      PART,
      "SIGTERM stops it cleanly",
      status !== undefined || (stopped.code === 0 && stopped.signal === null),
      `code ${stopped.code}, signal ${stopped.signal}`,
    );
    await backend?.stop();
  }
}

function summarize(tally: Tally, report: Report, log: LogCounts): void {
  const { counters } = tally;
  report.figure(
    PART,
    `bytes checked: ${mib(counters.upChecked)} client → backend (sha256 confirmed), ` +
      `${mib(counters.downChecked)} backend → client (each byte compared, sha256 per request)`,
  );
  report.figure(PART, `connections made: ${counters.connections}`);
  const explained = tally.failures.filter((f) => tally.explained(f));
  const unexplained = tally.failures.filter((f) => !tally.explained(f));
  for (const kind of ["bulk", "keep-alive", "handshake", "reset mid-stream"] as const) {
    const of = (list: Failure[]) => list.filter((f) => f.kind === kind).length;
    report.figure(
      PART,
      `${kind}: ${tally.completed.get(kind) ?? 0} completed, ${of(explained)} cut by a backend ` +
        `kill, ${of(unexplained)} failed otherwise`,
    );
  }
  for (const [fault, n] of [...tally.faults].sort()) report.figure(PART, `fault: ${n} x ${fault}`);
  report.figure(PART, `SIGHUP signals sent: ${tally.signals}`);
  for (const line of topErrors(log.errors)) report.figure(PART, `proxy error line: ${line}`);
  report.check(
    PART,
    "no corrupted data (every byte and sha256 matched, in completed and cut transfers)",
    tally.corrupt.length === 0,
    tally.corrupt.length ? tally.corrupt.slice(0, 5).join("; ") : "",
  );
  const reasons = new Map<string, number>();
  for (const f of unexplained) {
    const key = `${f.kind}: ${f.error.replace(/\d+/g, "N")}`;
    reasons.set(key, (reasons.get(key) ?? 0) + 1);
  }
  report.check(
    PART,
    "no transfer truncated or failed, except those cut by a backend kill",
    unexplained.length === 0,
    [...reasons].map(([r, n]) => `${n} x ${r}`).join("; "),
  );
}
