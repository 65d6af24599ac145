/**
 * The services of one thread: their listeners, connections and reloads. The process-wide part
 * (signals, pid file, privileges, worker threads) is the Supervisor's.
 */
import { formatAddress } from "../config/address.ts";
import { Connection, formatPeer } from "./connection.ts";
import { isExecConnect } from "../local/exec.ts";
import { runExecConnect } from "./execconnect.ts";
import { newLibwrapLock, useLibwrapLock } from "../access/libwrap.ts";
import { newCapwinCredentials, useCapwinCredentials } from "../../protocols/capwin.ts";
import { type LogContext, type Logger, LogSink } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { every } from "../sys/timer.ts";
import { BindError, type Bound, newRoundRobin, Service } from "./service.ts";
import { type ThreadFigures, ThreadMetrics } from "./metrics.ts";
import { certificateNotAfter } from "../tls/expiry.ts";
import { isSecondaryOnly, linkVirtualServices } from "../tls/sni.ts";
import type { Conn } from "../net/conn.ts";
import { TlsError } from "../tls/core.ts";
import { attachEngines, setUpGlobalCrypto } from "../tls/engine.ts";
import type { Configuration, LogId } from "../config/types.ts";
import { chooseOpenSsl } from "../sys/ffi.ts";
import type { TlsEngineChoice } from "../tls/choice.ts";
import { refusalsOfRun } from "../config/platform.ts";
import { platform } from "../sys/platform.ts";
import { MemoryReducer } from "../sys/memory.ts";

/** A failure that has already been logged; the daemon cannot start with this configuration. */
export class StartError extends Error {}

/** What the threads of one process share. */
export interface Runtime {
  /** Every thread binds its own socket to each accept address (the kernel spreads the load). */
  reusePort: boolean;
  /** The next sequential connection id, shared by all threads (a SharedArrayBuffer). */
  ids: Int32Array;
  /**
   * The secret each server-mode service derives its ticket keys from, with its settings
   * (session.ts): the same in every thread, so that any thread resumes a session.
   */
  ticketKeys: Uint8Array;
  /** Round-robin positions of the services (`failover = rr` across threads). */
  roundRobin: Int32Array;
  /** Worker threads log only warnings and errors of their own start-up. */
  worker: boolean;
  /** Serializes libwrap's hosts_ctl() across all threads (libwrap.ts). */
  libwrapLock: Int32Array;
  /** `protocol = capwinctrl`'s credentials, one buffer per process (protocols/capwin.ts). */
  capwinCredentials: Uint8Array;
  /** The TLS engine of the process (`tlsEngine`, decided at start: tls/choice.ts). */
  tlsEngine: TlsEngineChoice["engine"];
  /** How it was chosen, for the messages refusing what Deno's TLS cannot do. */
  tlsEngineHow: string;
}

export function newRuntime(reusePort: boolean, tls: TlsEngineChoice): Runtime {
  return {
    tlsEngine: tls.engine,
    tlsEngineHow: tls.how,
    reusePort,
    ids: new Int32Array(new SharedArrayBuffer(4)),
    ticketKeys: crypto.getRandomValues(new Uint8Array(80)),
    roundRobin: newRoundRobin(),
    worker: false,
    libwrapLock: newLibwrapLock(),
    capwinCredentials: newCapwinCredentials(),
  };
}

/** Builds every service of a configuration, or logs why not and frees what was built. */
async function createServices(
  config: Configuration,
  log: Logger,
  runtime: Runtime,
  metrics: ThreadMetrics,
): Promise<Service[]> {
  // Every option in use must be one this platform and the TLS engine can honour.
  const deno = runtime.tlsEngine === "deno" ? runtime.tlsEngineHow : undefined;
  const refused = refusalsOfRun(config, platform(), deno);
  for (const line of refused) log(3, line);
  if (refused.length > 0) throw new StartError("Configuration failed");
  if (deno === undefined) {
    // Engines, FIPS and the PRNG are the process's: set up by the main thread before any
    // service.
    if (runtime.worker) attachEngines(config.global);
    else if (!setUpGlobalCrypto(config.global, log)) throw new StartError("Configuration failed");
  }
  const services: Service[] = [];
  for (const opts of config.services) {
    try {
      const service = await Service.create(opts, log, runtime);
      service.counters = metrics.of(service.name);
      services.push(service);
    } catch (e) {
      if (e instanceof TlsError) { for (const line of e.logLines()) log(3, line); }
      else log(3, (e as Error).message);
      log(3, `Service [${opts.name}]: Failed to initialize TLS context`);
      for (const s of services) s.free();
      throw new StartError("Configuration failed");
    }
  }
  // SNI secondary services belong to their primary service's contexts of this thread.
  if (runtime.tlsEngine === "openssl") linkVirtualServices(services);
  return services;
}

/**
 * `-check`: builds every service as a start would (engines, TLS contexts with their
 * certificates, keys, CAs and CRLs, connect targets resolved), then frees them; binds nothing.
 * False once the reason is logged.
 */
export async function checkServices(
  config: Configuration,
  log: Logger,
  runtime: Runtime,
): Promise<boolean> {
  let services: Service[];
  try {
    services = await createServices(config, log, runtime, new ThreadMetrics());
  } catch (e) {
    if (!(e instanceof StartError)) log(3, (e as Error).message);
    return false;
  }
  for (const s of services) await s.prepare(log);
  for (const s of services) s.free();
  return true;
}

const ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/** 22 random letters and digits (about 131 bits), the length of stunnel's unique ids. */
function uniqueId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(22));
  return Array.from(bytes, (b) => ID_CHARS[b % ID_CHARS.length]).join("");
}

export class Daemon {
  private log: Logger;
  private services: Service[] = [];
  private readonly connections = new Set<Connection>();
  /** Gives freed memory back after bursts, and while the thread has no connection. */
  private readonly memory = new MemoryReducer();
  /** Connections accepted so far by this thread (the supervisor's measure of new load). */
  accepted = 0;
  /** Every service's figures in this thread (`metrics =`), kept across reloads. */
  private readonly metrics = new ThreadMetrics();
  /** Which service each listening socket accepts for. */
  private readonly owners = new Map<Deno.Listener, Service>();
  /** connect+exec sections whose program runs (or is restarted: `retry`). */
  private readonly programs = new Set<Service>();
  private readonly stopTimer: () => void;
  private stopping = false;

  constructor(
    private config: Configuration,
    private readonly sink: LogSink,
    private readonly runtime: Runtime,
  ) {
    this.log = this.uiLogger(sink, config);
    this.stopTimer = every(1000, () => this.checkTimeouts());
    useLibwrapLock(runtime.libwrapLock);
    useCapwinCredentials(runtime.capwinCredentials);
    // A worker thread loads the OpenSSL files the main thread chose (the same search).
    chooseOpenSsl({ libssl: config.global.libssl, libcrypto: config.global.libcrypto });
  }

  private uiLogger(sink: LogSink, config: Configuration): Logger {
    const level = config.global.debugLevel;
    return sink.bind("ui", this.runtime.worker ? Math.min(level, 4) : level);
  }

  /**
   * Builds the services and binds them; throws StartError (already logged) on failure. The
   * programs of connect+exec sections start later (startPrograms).
   */
  async start(): Promise<void> {
    this.services = await createServices(this.config, this.log, this.runtime, this.metrics);
    // Worker threads resolve quietly: the main thread has said it all once.
    const quiet = Object.assign(() => {}, { level: -1 });
    for (const s of this.services) await s.prepare(this.runtime.worker ? quiet : this.log);
    this.log(5, "Configuration successful");
    try {
      await this.bindAll(this.services);
    } catch (e) {
      for (const s of this.services) s.unbind(this.log);
      throw e;
    }
    this.listen(this.services);
  }

  /**
   * Binds the accept addresses of every service that have no listening socket yet; throws
   * StartError (logged) when a service has none. Accepting starts with listen().
   */
  private async bindAll(services: Service[]): Promise<void> {
    for (const service of services) {
      await service.prepare(this.log);
      if (isExecConnect(service.opts)) {
        this.log(7, `Skipped exec+connect service [${service.name}]`);
      } else if (isSecondaryOnly(service)) {
        this.log(7, `Skipped SNI secondary service [${service.name}]`);
      } else {
        try {
          service.bind(this.log, this.runtime.reusePort);
        } catch (e) {
          throw e instanceof BindError ? new StartError("Binding failed") : e;
        }
      }
    }
  }

  /** Accepts on every listening socket of `services` (a loop per socket not yet accepted on). */
  private listen(services: Service[]): void {
    for (const service of services) {
      for (const { listener } of service.bound) {
        const known = this.owners.has(listener);
        this.owners.set(listener, service);
        if (!known) void this.acceptLoop(listener);
      }
    }
  }

  /**
   * Starts the program of every connect+exec section not running yet, as stunnel does once it
   * is ready to accept (and at each reload). Worker threads leave them to the main thread.
   */
  startPrograms(): void {
    if (this.runtime.worker || this.stopping) return;
    for (const service of this.services) {
      if (!isExecConnect(service.opts) || this.programs.has(service)) continue;
      this.log(7, `Starting exec+connect service [${service.name}]`);
      this.programs.add(service);
      const id = this.connectionId(service.opts.logId);
      runExecConnect(service, id, this.sink, {
        running: (s) => this.programs.has(s) && !this.stopping,
        handle: (s, local, log) => this.handle(s, local, log),
      }).catch((e) => {
        // No socket pair for the program (descriptors exhausted): as stunnel's failed start.
        this.log(3, osErrorText(e));
        this.log(3, `Failed to start exec+connect service [${service.name}]`);
      }).finally(() => this.programs.delete(service));
    }
  }

  /** Accepts for whichever service owns the listener now (a reload may hand it over). */
  private async acceptLoop(listener: Deno.Listener): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        const owner = this.owners.get(listener);
        if (!owner || this.stopping) return;
        this.log(3, `Service [${owner.name}]: accept: ${osErrorText(e)}`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const owner = this.owners.get(listener);
      if (!owner) {
        conn.close();
        return;
      }
      const id = this.connectionId(owner.opts.logId);
      const log = this.sink.bind(id, owner.opts.debugLevel, this.logContext(owner, id, conn));
      log(7, `Service [${owner.name}] started`);
      void this.handle(owner, conn, log);
    }
  }

  private unbind(service: Service): void {
    this.programs.delete(service);
    for (const { listener } of service.bound) this.owners.delete(listener);
    service.unbind(this.log);
  }

  private connectionId(kind: LogId): string {
    switch (kind) {
      case "sequential":
        return String(Atomics.add(this.runtime.ids, 0, 1));
      case "unique":
        return uniqueId();
      case "thread":
      case "process":
        return String(Deno.pid);
    }
  }

  /**
   * What JSON log lines say of a connection: its service and number (the sequential id, or
   * one drawn for it where the id is no number), filled in as the connection goes.
   */
  private logContext(service: Service, id: string, conn: Conn): LogContext | undefined {
    if (this.config.global.logFormat !== "json") return undefined;
    const connection = service.opts.logId === "sequential"
      ? Number(id)
      : Atomics.add(this.runtime.ids, 0, 1);
    return { service: service.name, connection, peer: formatPeer(conn.remoteAddr) };
  }

  private handle(service: Service, conn: Conn, log: Logger): Promise<void> {
    const connection = new Connection(service, conn, log);
    this.accepted++;
    this.memory.accept();
    const { counters } = connection;
    counters.accepted++;
    counters.active++;
    this.connections.add(connection);
    return connection.run().finally(() => {
      counters.active--;
      counters.closed++;
      this.connections.delete(connection);
      if (this.connections.size === 0) this.memory.settle();
      // The connection's service now: SNI may have handed it to a secondary service.
      log(7, `Service [${connection.service.name}] finished (${this.connections.size} left)`);
    });
  }

  private checkTimeouts(): void {
    const now = Date.now();
    for (const c of this.connections) c.checkTimeout(now);
    this.memory.tick(now, this.connections.size);
  }

  reopenLog(): void {
    try {
      this.sink.reopen();
      this.log(5, "Log file reopened");
    } catch (e) {
      this.log(3, `Failed to reopen the log file: ${osErrorText(e)}`);
    }
  }

  /** One line per open connection, as stunnel lists them on SIGUSR2. */
  connectionSummaries(): string[] {
    return [...this.connections].map((c) =>
      `Service [${c.service.name}], ${c.bytesToTls} byte(s) sent to TLS, ` +
      `${c.bytesToSocket} byte(s) sent to socket`
    );
  }

  /** This thread's figures of every service it has run. */
  figures(): ThreadFigures {
    return this.metrics.snapshot();
  }

  /** The notAfter (Unix seconds) of each service's certificate, as loaded now. */
  certificates(): { service: string; file: string; notAfter: number }[] {
    return this.services.flatMap((s) => {
      const notAfter = certificateNotAfter(s.tls.ctx);
      return notAfter === undefined || !s.opts.cert
        ? []
        : [{ service: s.name, file: s.opts.cert, notAfter }];
    });
  }

  /**
   * `watchFiles`: builds the TLS context of the services named again, from their files as
   * they are now. Returns the names of those whose context did not build (logged; each keeps
   * its old context).
   */
  async renewTls(names: readonly string[]): Promise<string[]> {
    const failed: string[] = [];
    for (const service of this.services.filter((s) => names.includes(s.name))) {
      try {
        await service.renewTls(this.log, this.runtime.ticketKeys);
        this.log(5, `Service [${service.name}]: TLS context reloaded`);
      } catch (e) {
        if (e instanceof TlsError) { for (const line of e.logLines()) this.log(3, line); }
        else this.log(3, (e as Error).message);
        const files = (["cert", "key", "CAfile", "CRLfile"] as const)
          .filter((o) => service.opts[o] !== undefined)
          .map((o) => `${o} = ${service.opts[o]}`).join(", ");
        this.log(
          3,
          `Service [${service.name}]: TLS context not reloaded (${files}); the previous one stays`,
        );
        failed.push(service.name);
      }
    }
    return failed;
  }

  /**
   * A reloaded configuration replaces the running one only if all of it works: every TLS
   * context builds and every new address binds. Returns whether it was applied; if so, the
   * daemon's sink (and every logger bound to it) now writes where `sink` did.
   */
  async apply(next: Configuration, sink: LogSink): Promise<boolean> {
    const log = this.log;
    let services: Service[];
    const [was, now] = [this.config.global, next.global];
    if (
      was.tlsEngine !== now.tlsEngine || was.libssl !== now.libssl ||
      was.libcrypto !== now.libcrypto
    ) {
      log(3, "tlsEngine, libssl and libcrypto take effect at start only: restart to change them");
      return false;
    }
    try {
      services = await createServices(next, log, this.runtime, this.metrics);
    } catch {
      return false;
    }
    // An accept address that is unchanged keeps its listening socket: no gap in accepting,
    // and no race with the kernel releasing the old socket.
    const old = this.services;
    const moved = handOver(old, services, log);
    try {
      await this.bindAll(services);
    } catch {
      // The old services get their sockets back, with their own options.
      for (const { from, to, bound } of moved) {
        to.bound = to.bound.filter((b) => b.listener !== bound.listener);
        from.adopt(bound, bound.accept, log);
      }
      for (const s of services) s.unbind(log);
      for (const s of services) s.free();
      return false;
    }
    for (const o of old) this.unbind(o);
    this.memory.settle();
    this.listen(services);
    this.sink.switchTo(sink);
    this.log = this.uiLogger(this.sink, next);
    this.config = next;
    this.services = services;
    // Open connections keep their SSL objects, which hold their own reference to the context.
    for (const o of old) o.free();
    this.log(5, "Configuration successful");
    this.startPrograms();
    return true;
  }

  stop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.log(5, reason);
    for (const s of this.services) this.unbind(s);
    for (const c of this.connections) c.abort();
    this.stopTimer();
    this.memory.stop();
    for (const s of this.services) s.free();
    this.sink.close();
  }
}

/** A listening socket (as `from` had it) taken over by a service of the new configuration. */
interface Move {
  from: Service;
  to: Service;
  bound: Bound;
}

/** Hands each listening socket of `old` over to a service of `next` with the same address. */
function handOver(old: Service[], next: Service[], log: Logger): Move[] {
  const moved: Move[] = [];
  for (const to of next) {
    for (const accept of to.opts.accept) {
      const where = formatAddress(accept);
      for (const from of old) {
        const bound = from.bound.find((b) => formatAddress(b.accept) === where);
        if (!bound) continue;
        from.bound = from.bound.filter((b) => b !== bound);
        to.adopt(bound, accept, log);
        moved.push({ from, to, bound });
        break;
      }
    }
  }
  return moved;
}
