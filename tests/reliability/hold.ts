/**
 * Many concurrent connections: opens `count` TLS connections through a server-mode service to
 * the backend, holds them all at once, then sends and checks data on every one, closes them,
 * and checks that every one was logged as closed and the proxy's descriptors came back.
 */
import { freePorts } from "../harness/net.ts";
import type { Pki } from "../harness/pki.ts";
import { pollUntil, sleep } from "../harness/timing.ts";
import { bounded, Closer, newCounters, newRequest, pool, Session } from "./clients.ts";
import { countLog, describeIds } from "./logcount.ts";
import { FD_SLACK, formatStats, procStats } from "./proc.ts";
import { soakGlobals, startBackend, startSoakProxy } from "./proxy.ts";
import { progress, type Report } from "./report.ts";
import { Rng } from "./rng.ts";

const PART = "hold";

export interface HoldOptions {
  count: number;
  pki: Pki;
  seed: number;
  report: Report;
  /** Where the proxy's files go (kept for a failure's post-mortem). */
  dir: string;
}

export async function holdPart({ count, pki, seed, report, dir }: HoldOptions): Promise<void> {
  const backend = await startBackend(0, `${dir}/backend.out`);
  const [port] = freePorts(1);
  const config = soakGlobals(dir) +
    `[hold]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const proxy = await startSoakProxy(dir, config, [port]);
  const target = { port, caPem: pki.caPem };
  const counters = newCounters();
  const rng = new Rng(seed);
  const closer = new Closer();
  try {
    // A few connections first, so that what the first ones initialize is in the baseline.
    const warmup = 16;
    await pool(warmup, 4, () =>
      bounded(30_000, async (c) => {
        const s = await Session.open(target, counters, c);
        await s.request(newRequest(rng, "warmup", 100, 100));
        await s.finish();
      }));
    await sleep(2000);
    const before = procStats(proxy.pid);
    report.figure(PART, `proxy before: ${formatStats(before)}`);

    // Open them all, 64 handshakes at a time, and keep them.
    const sessions: Session[] = [];
    const openErrors = new Map<string, number>();
    let t0 = Date.now();
    await pool(count, 64, async () => {
      try {
        const s = await bounded(
          30_000,
          (own) => Session.open(target, counters, own),
          new Closer(),
        );
        sessions.push(closer.add(s));
      } catch (e) {
        const key = String(e).replace(/\d+/g, "N");
        openErrors.set(key, (openErrors.get(key) ?? 0) + 1);
      }
      if (sessions.length % 1000 === 0 && sessions.length) {
        progress(`hold: ${sessions.length} connections open`);
      }
    });
    const openSeconds = (Date.now() - t0) / 1000;
    report.figure(
      PART,
      `opened ${sessions.length} of ${count} TLS connections in ${openSeconds.toFixed(1)} s ` +
        `(${(sessions.length / openSeconds).toFixed(0)} handshakes/s)`,
    );
    // Each held connection is two descriptors in the proxy: the client's and the backend's.
    const held = await pollUntil(
      () => {
        const s = procStats(proxy.pid);
        return s.fds >= before.fds + 2 * sessions.length ? s : undefined;
      },
      120_000,
      "the proxy to connect every held connection to the backend",
      500,
    ).catch(() => undefined);
    const holding = held ?? procStats(proxy.pid);
    report.figure(PART, `proxy holding: ${formatStats(holding)}`);
    report.check(
      PART,
      `${count} connections held at once`,
      sessions.length === count && held !== undefined,
      `${sessions.length} open, proxy holds ${Math.floor((holding.fds - before.fds) / 2)}` +
        [...openErrors].map(([e, n]) => `; ${n} x ${e}`).join(""),
    );

    // Then every one of them is used: 1 KiB each way, checked.
    let used = 0;
    const useErrors = new Map<string, number>();
    t0 = Date.now();
    // Each bounded in time by closing its connection (which must stay open for the next step).
    const own = sessions.map((s) => {
      const closer = new Closer();
      closer.add(s.conn);
      return closer;
    });
    await pool(sessions.length, 2000, async (i) => {
      try {
        await bounded(
          120_000,
          () => sessions[i].request(newRequest(rng, `hold${i}`, 1024, 1024)),
          own[i],
        );
        used++;
      } catch (e) {
        const key = String(e).replace(/\d+/g, "N");
        useErrors.set(key, (useErrors.get(key) ?? 0) + 1);
      }
    });
    report.figure(
      PART,
      `used ${used} held connections (1 KiB each way, checked) in ` +
        `${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
    report.check(
      PART,
      "every held connection then carried data both ways",
      used === count,
      `${used} of ${count}` + [...useErrors].map(([e, n]) => `; ${n} x ${e}`).join(""),
    );

    // A clean close of each (close_notify, then the backend's EOF through the proxy).
    let finished = 0;
    await pool(sessions.length, 1000, async (i) => {
      await bounded(60_000, () => sessions[i].finish(), own[i]).then(() => finished++, () => {});
    });
    closer.closeAll();
    report.figure(PART, `${finished} closed cleanly (close_notify both ways)`);

    const total = warmup + count;
    const logged = await pollUntil(
      async () => {
        const c = await countLog(proxy.logPath);
        return c.closed + c.reset >= c.accepted && c.accepted >= total ? c : undefined;
      },
      120_000,
      "every connection to be logged as closed",
      1000,
    ).catch(() => countLog(proxy.logPath));
    report.check(
      PART,
      "every connection logged as accepted and as closed",
      logged.accepted === total && logged.unended.size === 0,
      `${logged.accepted} accepted (expected ${total}), ${logged.closed} closed, ` +
        `${logged.reset} reset, ${logged.unended.size} never ended${describeIds(logged.unended)}`,
    );

    const after = await pollUntil(
      () => {
        const s = procStats(proxy.pid);
        return s.fds <= before.fds + FD_SLACK ? s : undefined;
      },
      60_000,
      "the proxy's descriptors to come back",
      500,
    ).catch(() => procStats(proxy.pid));
    report.figure(PART, `proxy after: ${formatStats(after)}`);
    report.check(
      PART,
      "proxy descriptors back to the baseline",
      after.fds <= before.fds + FD_SLACK,
      `${before.fds} before, ${holding.fds} holding, ${after.fds} after`,
    );
  } finally {
    closer.closeAll();
    const status = proxy.status();
    report.check(
      PART,
      "the proxy ran to the end (no crash)",
      status === undefined,
      status
        ? `exited with code ${status.code}, signal ${status.signal}; see ${proxy.consolePath}`
        : "",
    );
    const stopped = await proxy.stop();
    report.check(
      PART,
      "SIGTERM stops it cleanly",
      status !== undefined || (stopped.code === 0 && stopped.signal === null),
      `code ${stopped.code}, signal ${stopped.signal}`,
    );
    await backend.stop();
  }
}
