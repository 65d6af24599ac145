/**
 * The process: the main thread's Daemon plus one Daemon per worker thread (each with its own
 * listening sockets on the same addresses), signals, the pid file, chroot and privileges.
 */
import { describeSource } from "../config/parser.ts";
import { Daemon, type Runtime, StartError } from "../proxy/daemon.ts";
import { cstr, lib } from "../sys/ffi.ts";
import { type Logger, LogSink } from "../sys/log.ts";
import { errnoText, osErrorText } from "../sys/oserror.ts";
import { every } from "../sys/timer.ts";
import { monotonicUsec, type Notifier } from "../sys/notify.ts";
import type { Configuration, GlobalOptions } from "../config/types.ts";
import type { ToWorker, WorkerReply } from "./messages.ts";
import { sumFigures, type ThreadFigures } from "../proxy/metrics.ts";
import { CONTENT_TYPE, exposition, type ProcessFigures } from "./exposition.ts";
import { MetricsServer, type Response } from "./metrics_server.ts";
import { type FileChange, FileWatch } from "./watch.ts";
import { formatAddress } from "../config/address.ts";

/** How often the load is looked at, and the share of that time which is saturation. */
const SCALE_INTERVAL_MS = 500;
const SATURATED = 0.9;
/**
 * New connections per interval below which another thread does not pay: it only receives new
 * connections, so under a load of long-lived ones it would just compete for the cores (in the
 * keep-alive benchmark a second thread made p99 latency 3x worse). 100 per 500 ms is about a
 * third of what one thread handshakes per second with an ECDSA key, half with RSA.
 */
const NEW_CONNECTIONS = 100;

/**
 * How long the main thread has been running or waiting to run (ns, from the scheduler's
 * statistics): a thread that wants a core all the time is saturated even while another
 * process holds the core, which CPU time alone would not show.
 */
function mainThreadDemand(): { busyNs: number; atNs: number } {
  const atNs = performance.now() * 1e6;
  try {
    const [run, wait] = Deno.readTextFileSync(`/proc/self/task/${Deno.pid}/schedstat`)
      .split(" ").map(Number);
    return { busyNs: run + wait, atNs };
  } catch {
    return { busyNs: 0, atNs };
  }
}

/** How long a scrape waits for a worker thread's figures before it uses the last ones. */
const FIGURES_WAIT_MS = 1000;
/** `watchFiles`: how often the files are looked at. */
const WATCH_INTERVAL_MS = 1000;

/** Loads the configuration again on SIGHUP (from the same source). */
export type ConfigLoader = () => Promise<Configuration>;

export class Supervisor {
  private readonly daemon: Daemon;
  private readonly workers: Worker[] = [];
  /** Answers awaited from the workers, by request id. */
  private readonly pending = new Map<number, (reply: WorkerReply) => void>();
  private nextRequest = 0;
  private log: Logger;
  private stopping = false;
  private readonly stopped: Promise<void>;
  private resolveStopped!: () => void;
  private readonly signalHandlers: [Deno.Signal, () => void][] = [];
  private stopScaler: (() => void) | undefined;
  private scaling = false;
  private demand = mainThreadDemand();
  private accepted = 0;
  private markStarted!: () => void;
  private readonly started = new Promise<void>((resolve) => this.markStarted = resolve);
  /** The end of the signal work and thread starts under way: each waits for the one before. */
  private turn: Promise<void> = Promise.resolve();
  /** The reload waiting for its turn, which serves every SIGHUP until it starts. */
  private queuedReload: Promise<void> | undefined;
  /** `metrics =`: the HTTP server of /metrics and /healthz. */
  private metricsServer: MetricsServer | undefined;
  /** Accepting connections: started, and not stopping (/healthz). */
  private accepting = false;
  private readonly reloads = { success: 0, failure: 0 };
  private lastReloadSuccess = 0;
  private readonly certificateReloads: ProcessFigures["certificateReloads"] = {};
  /** Each worker's last figures, for a scrape it does not answer in time. */
  private readonly lastFigures = new Map<Worker, ThreadFigures>();
  /** `watchFiles = yes`: the files of the services' TLS contexts, and the timer that looks. */
  private watch: FileWatch | undefined;
  private stopWatch: (() => void) | undefined;

  constructor(
    private config: Configuration,
    private readonly reloadConfig: ConfigLoader,
    private readonly sink: LogSink,
    private readonly runtime: Runtime,
    /** The most threads to serve with; all at start when `eager`, else added under load. */
    private readonly threads: number,
    private readonly eager = false,
    /** systemd's NOTIFY_SOCKET (Type=notify): told of readiness, reloads and the stop. */
    private readonly notifier?: Notifier,
  ) {
    this.log = sink.bind("ui", config.global.debugLevel);
    this.daemon = new Daemon(config, sink, runtime);
    this.stopped = new Promise((resolve) => this.resolveStopped = resolve);
  }

  /** Binds everything, then chroot, pid file and privileges; throws StartError when logged. */
  async start(): Promise<void> {
    // Signals are ours from the first moment the ports listen; they wait for start-up to end.
    this.installSignals();
    // Names are looked up before chroot: the jail need not have /etc/passwd and /etc/group.
    const ids = this.lookupIds(this.config.global);
    // First, so that /healthz answers (503) while the services start.
    this.serveMetrics();
    const files = Supervisor.fileStates(this.config);
    await this.daemon.start();
    const { chroot, setuid, setgid } = this.config.global;
    if (this.eager || chroot || setuid || setgid) {
      // A worker started later could neither load its code outside the jail nor bind a
      // privileged port again: then all of them start now.
      for (let i = 1; i < this.threads; i++) await this.startWorker();
      if (this.threads > 1) this.log(6, `Serving with ${this.threads} threads`);
    } else if (this.threads > 1) {
      this.stopScaler = every(SCALE_INTERVAL_MS, () => void this.scaleUp());
    }
    // The pid file path is inside the chroot jail, and written before privileges are dropped.
    this.enterChroot(this.config.global);
    this.writePidFile();
    this.dropPrivileges(ids);
    // As stunnel: the programs of connect+exec sections start once privileges are dropped.
    this.daemon.startPrograms();
    this.log(6, "Accepting new connections");
    this.lastReloadSuccess = Date.now() / 1000;
    this.syncWatch(files);
    this.accepting = true;
    this.markStarted();
    this.notifier?.send("READY=1", `MAINPID=${Deno.pid}`, `STATUS=${this.status()}`);
  }

  /** The STATUS= line of sd_notify: what is being served. */
  private status(): string {
    const n = this.config.services.length;
    return `Accepting connections (${n} service${n === 1 ? "" : "s"})`;
  }

  /** `metrics = [HOST:]PORT`: binds the server; a port that cannot be bound stops the start. */
  private serveMetrics(): void {
    const address = this.config.global.metrics;
    if (!address) return;
    const where = formatAddress({ kind: "tcp", ...address });
    try {
      this.metricsServer = MetricsServer.listen(address, {
        "/metrics": async (): Promise<Response> => ({
          status: 200,
          type: CONTENT_TYPE,
          body: await this.exposition(),
        }),
        "/healthz": (): Response =>
          this.accepting && !this.stopping
            ? { status: 200, body: "OK\n" }
            : { status: 503, body: "Not accepting\n" },
      });
    } catch (e) {
      this.log(3, `Binding metrics to ${where}: ${osErrorText(e)}`);
      throw new StartError("metrics");
    }
    this.log(6, `Metrics served on ${this.metricsServer.address}`);
  }

  /** Every thread's figures, summed, with the process's own. */
  private async exposition(): Promise<string> {
    const threads = await Promise.all(this.workers.map(async (w) => {
      const reply = await this.ask(w, { type: "figures" }, FIGURES_WAIT_MS);
      if (reply.figures) this.lastFigures.set(w, reply.figures);
      return this.lastFigures.get(w) ?? {};
    }));
    return exposition(sumFigures([this.daemon.figures(), ...threads]), {
      accepting: this.accepting && !this.stopping,
      threads: this.workers.length + 1,
      reloads: this.reloads,
      lastReloadSuccess: this.lastReloadSuccess,
      certificateReloads: this.certificateReloads,
      certificates: this.daemon.certificates(),
    });
  }

  /** `watchFiles`: the state of the TLS files, read before the contexts are built from them. */
  private static fileStates(config: Configuration): FileWatch | undefined {
    return config.global.watchFiles ? new FileWatch(config) : undefined;
  }

  /** Looks at the TLS files from the states the contexts in force were built from, or stops. */
  private syncWatch(states: FileWatch | undefined): void {
    this.watch = states;
    if (!states) {
      this.stopWatch?.();
      this.stopWatch = undefined;
      return;
    }
    this.stopWatch ??= every(WATCH_INTERVAL_MS, () => {
      const due = this.watch?.poll() ?? [];
      if (due.length > 0 && !this.stopping) void this.inTurn(() => this.renewTls(due));
    });
  }

  /**
   * `watchFiles`: the services whose files changed get a new TLS context, in every thread;
   * one that does not build keeps the old one (in every thread: the workers are not asked).
   */
  private async renewTls(changes: FileChange[]): Promise<void> {
    if (this.stopping) return;
    for (const { service, files } of changes) {
      this.log(5, `Service [${service}]: ${files.join(", ")} changed; reloading the TLS context`);
    }
    const names = changes.map((c) => c.service);
    const failed = await this.daemon.renewTls(names);
    const renewed = names.filter((n) => !failed.includes(n));
    for (const name of names) {
      const count = this.certificateReloads[name] ??= { success: 0, failure: 0 };
      if (failed.includes(name)) count.failure++;
      else count.success++;
    }
    if (renewed.length === 0) return;
    if (!await this.broadcast({ type: "renewTls", names: renewed })) {
      this.log(3, "A worker thread kept its old TLS context; see its messages above");
    }
  }

  /**
   * Adds a worker thread when the main one is saturated by new connections. Only new
   * connections can go to it (the kernel spreads them over the SO_REUSEPORT sockets), so a load
   * of long-lived connections stays where it is, and the threads do not compete for cores
   * without need.
   */
  private async scaleUp(): Promise<void> {
    const now = mainThreadDemand();
    const demand = now.busyNs - this.demand.busyNs;
    const wall = now.atNs - this.demand.atNs;
    this.demand = now;
    const busy = demand / wall;
    const arrived = this.daemon.accepted - this.accepted;
    this.accepted = this.daemon.accepted;
    if (this.scaling || this.stopping || !(busy >= SATURATED) || arrived < NEW_CONNECTIONS) {
      return;
    }
    this.scaling = true;
    try {
      // Not during a reload: the new thread starts on the configuration the reload leaves.
      await this.inTurn(() => this.startWorker());
      this.log(6, `Serving with ${this.workers.length + 1} threads`);
    } catch {
      this.log(3, "Could not start another thread");
    } finally {
      this.scaling = false;
    }
    if (this.workers.length + 1 >= this.threads) this.stopScaler?.();
  }

  /** Resolves when a signal has stopped the process. */
  wait(): Promise<void> {
    return this.stopped;
  }

  private async startWorker(): Promise<void> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });
    worker.onmessage = (e: MessageEvent<WorkerReply>) => this.pending.get(e.data.id)?.(e.data);
    worker.onerror = (e) => {
      e.preventDefault();
      this.log(3, `Worker thread failed: ${e.message}`);
    };
    const reply = await this.ask(worker, {
      type: "start",
      config: this.config,
      runtime: { ...this.runtime, worker: true },
      stderrLevel: this.config.global.foreground === "yes" ? 7 : -1,
    });
    if (!reply.ok) {
      await this.ask(worker, { type: "stop" }, 2000);
      worker.terminate();
      throw new StartError("worker thread");
    }
    // Only a started worker takes part in reloads and the stop.
    this.workers.push(worker);
  }

  private ask(worker: Worker, message: ToWorker, timeoutMs = 30_000): Promise<WorkerReply> {
    const id = this.nextRequest++;
    return new Promise((resolve) => {
      const done = (reply: WorkerReply) => {
        clearTimeout(timer);
        this.pending.delete(id);
        resolve(reply);
      };
      const timer = setTimeout(() => done({ id, ok: false }), timeoutMs);
      this.pending.set(id, done);
      worker.postMessage({ ...message, id });
    });
  }

  /**
   * Runs `task` once the tasks before it have ended, as stunnel handles one signal at a time: a
   * reload never overlaps another, nor the start of a thread that must take part in it.
   */
  private inTurn(task: () => Promise<void>): Promise<void> {
    const run = this.turn.then(task);
    this.turn = run.catch(() => {});
    return run;
  }

  private async broadcast(message: ToWorker): Promise<boolean> {
    const replies = await Promise.all(this.workers.map((w) => this.ask(w, message)));
    return replies.every((r) => r.ok);
  }

  private installSignals(): void {
    const on = (signal: Deno.Signal, handler: () => void) => {
      const deferred = () => void this.started.then(handler);
      Deno.addSignalListener(signal, deferred);
      this.signalHandlers.push([signal, deferred]);
    };
    if (Deno.build.os === "windows") {
      // Windows has no SIGHUP/SIGUSR*/SIGTERM: Ctrl-C and Ctrl-Break stop the proxy.
      for (const signal of ["SIGINT", "SIGBREAK"] as const) {
        on(signal, () => void this.stop("Terminated"));
      }
      return;
    }
    on("SIGHUP", () => void this.reload());
    on("SIGUSR1", () => void this.inTurn(() => this.reopenLogs()));
    on("SIGUSR2", () => void this.inTurn(() => this.listConnections()));
    for (const signal of ["SIGTERM", "SIGINT", "SIGQUIT"] as const) {
      on(signal, () => void this.stop("Terminated"));
    }
  }

  /**
   * SIGUSR1: the workers first, so that once the main thread says "Log file reopened", every
   * thread writes to the new file.
   */
  private async reopenLogs(): Promise<void> {
    await this.broadcast({ type: "reopen" });
    this.daemon.reopenLog();
  }

  /** SIGUSR2: every thread's connections, in stunnel's words (at level 0: always shown). */
  private async listConnections(): Promise<void> {
    const lines = this.daemon.connectionSummaries();
    const replies = await Promise.all(this.workers.map((w) => this.ask(w, { type: "list" })));
    for (const reply of replies) lines.push(...reply.lines ?? []);
    this.log(0, "Active connections:");
    lines.forEach((line, i) => this.log(0, `Active connection ${i + 1}: ${line}`));
    this.log(0, `Listed ${lines.length} active connection(s)`);
  }

  /**
   * SIGHUP: a reload once the one under way (if any) has ended. Requests until it starts are
   * served by it (it reads the file then); resolves when it has ended.
   */
  reload(): Promise<void> {
    return this.queuedReload ??= this.inTurn(() => {
      this.queuedReload = undefined;
      return this.stopping ? Promise.resolve() : this.reloadNow();
    });
  }

  /** A reload as systemd (>= 253, Type=notify-reload too) wants to hear of it. */
  private async reloadNow(): Promise<void> {
    const notifier = this.notifier;
    notifier?.send("RELOADING=1", `MONOTONIC_USEC=${monotonicUsec()}`, "STATUS=Reloading");
    const applied = await this.reloadConfiguration();
    const outcome = applied ? "" : "; reload failed, the previous configuration is kept";
    notifier?.send("READY=1", `STATUS=${this.status()}${outcome}`);
  }

  /**
   * The new configuration replaces the old one, in every thread, only if all of it works;
   * returns whether it did.
   */
  private async reloadConfiguration(): Promise<boolean> {
    this.log(5, `Reading configuration from ${describeSource(this.config.source)}`);
    const keep = () => {
      this.reloads.failure++;
      this.log(3, "Configuration failed");
      this.log(3, "Failed to reload the configuration file");
    };
    let next: Configuration;
    try {
      next = await this.reloadConfig();
    } catch (e) {
      const lines = (e as { lines?: readonly string[] }).lines ?? [(e as Error).message];
      for (const line of lines) this.log(3, line);
      keep();
      return false;
    }
    // Options that are not reloaded, as in stunnel.
    const global = { ...next.global };
    for (const name of ["chroot", "foreground", "metrics", "pid", "setgid", "setuid"] as const) {
      (global as Record<string, unknown>)[name] = this.config.global[name];
    }
    next = { ...next, global };
    const sink = new LogSink(global, this.sink.stderrLevel);
    try {
      sink.open();
    } catch (e) {
      this.log(3, `Cannot open log file ${global.output}: ${osErrorText(e)}`);
      keep();
      return false;
    }
    const files = Supervisor.fileStates(next);
    if (!await this.daemon.apply(next, sink)) {
      sink.close();
      keep();
      return false;
    }
    this.log = this.sink.bind("ui", global.debugLevel);
    this.config = next;
    this.reloads.success++;
    this.lastReloadSuccess = Date.now() / 1000;
    this.syncWatch(files);
    if (!await this.broadcast({ type: "reload", config: next })) {
      this.log(3, "A worker thread kept its old configuration; see its messages above");
    }
    return true;
  }

  async stop(reason: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.notifier?.send("STOPPING=1", "STATUS=Stopping");
    for (const [signal, handler] of this.signalHandlers) Deno.removeSignalListener(signal, handler);
    this.stopScaler?.();
    this.stopWatch?.();
    // What is under way ends first; a reload still waiting then sees `stopping` and does nothing.
    await this.turn;
    await this.broadcast({ type: "stop" });
    for (const w of this.workers) w.terminate();
    this.removePidFile();
    this.daemon.stop(reason);
    this.metricsServer?.close();
    this.resolveStopped();
  }

  private writePidFile(): void {
    const { pid } = this.config.global;
    if (!pid) {
      this.log(7, "No pid file being created");
      return;
    }
    this.log(7, `Creating pid file ${pid}`);
    try {
      Deno.writeTextFileSync(pid, `${Deno.pid}\n`);
    } catch (e) {
      this.log(3, `Cannot create pid file ${pid}: ${osErrorText(e)}`);
      throw new StartError("pid file");
    }
  }

  private removePidFile(): void {
    const { pid } = this.config.global;
    if (!pid) return;
    try {
      Deno.removeSync(pid);
    } catch (e) {
      this.log(3, `Cannot remove pid file ${pid}: ${osErrorText(e)}`);
    }
  }

  private enterChroot(global: GlobalOptions): void {
    if (!global.chroot) return;
    const { libc } = lib();
    if (libc.chroot(cstr(global.chroot)) !== 0 || libc.chdir(cstr("/")) !== 0) {
      this.log(3, `chroot ${global.chroot}: ${errnoText()}`);
      throw new StartError("chroot");
    }
    this.log(6, `Switched to chroot directory: ${global.chroot}`);
  }

  private lookupIds(global: GlobalOptions): { uid?: number; gid?: number } {
    const ids: { uid?: number; gid?: number } = {};
    if (global.setgid) {
      ids.gid = lookupId(global.setgid, "group");
      if (ids.gid === undefined) {
        this.log(3, `Invalid group name: ${global.setgid}`);
        throw new StartError("setgid");
      }
    }
    if (global.setuid) {
      ids.uid = lookupId(global.setuid, "user");
      if (ids.uid === undefined) {
        this.log(3, `Invalid user name: ${global.setuid}`);
        throw new StartError("setuid");
      }
    }
    return ids;
  }

  /** setgid (clearing supplementary groups), then setuid, as stunnel does; for all threads. */
  private dropPrivileges({ uid, gid }: { uid?: number; gid?: number }): void {
    const { libc } = lib();
    if (gid !== undefined) {
      if (libc.setgroups(0n, new Uint8Array(0)) !== 0 || libc.setgid(gid) !== 0) {
        this.log(3, `setgid ${gid}: ${errnoText()}`);
        throw new StartError("setgid");
      }
    }
    if (uid !== undefined && libc.setuid(uid) !== 0) {
      this.log(3, `setuid ${uid}: ${errnoText()}`);
      throw new StartError("setuid");
    }
  }
}

/** A numeric id, or the id of a user/group name (getpwnam/getgrnam). */
export function lookupId(name: string, kind: "user" | "group"): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  const { libc } = lib();
  const entry = kind === "user" ? libc.getpwnam(cstr(name)) : libc.getgrnam(cstr(name));
  if (entry === null) return undefined;
  // struct passwd { char *pw_name; char *pw_passwd; uid_t pw_uid; ... } and
  // struct group { char *gr_name; char *gr_passwd; gid_t gr_gid; ... }: the id is at offset 16.
  return new Deno.UnsafePointerView(entry).getUint32(16);
}
