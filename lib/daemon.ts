/** The running daemon: services, their listeners and connections, signals and reloads. */
import { formatAddress } from "./address.ts";
import { Connection, formatPeer } from "./connection.ts";
import { cstr, errnoText, lib } from "./ffi.ts";
import { type Logger, LogSink } from "./log.ts";
import { osErrorText } from "./oserror.ts";
import { Service } from "./service.ts";
import { TlsError } from "./tls.ts";
import type { Configuration, GlobalOptions, LogId } from "./types.ts";

/** A failure that has already been logged; the daemon cannot start with this configuration. */
export class StartError extends Error {}

/** Loads the configuration again on SIGHUP (from the same file). */
export type ConfigLoader = () => Promise<Configuration>;

/** Builds every service of a configuration, or logs why not and frees what was built. */
function createServices(config: Configuration, log: Logger): Service[] {
  const services: Service[] = [];
  for (const opts of config.services) {
    try {
      services.push(Service.create(opts, log));
    } catch (e) {
      if (e instanceof TlsError) { for (const line of e.logLines()) log(3, line); }
      else log(3, (e as Error).message);
      log(3, `Service [${opts.name}]: Failed to initialize TLS context`);
      for (const s of services) s.free();
      throw new StartError("Configuration failed");
    }
  }
  return services;
}

export class Daemon {
  private sink: LogSink;
  private log: Logger;
  private services: Service[] = [];
  private readonly connections = new Set<Connection>();
  /** Which service each listening socket accepts for. */
  private readonly owners = new Map<Deno.Listener, Service>();
  private nextId = 0;
  private timer: ReturnType<typeof setInterval> | undefined;
  private stopping = false;
  private readonly stopped: Promise<void>;
  private resolveStopped!: () => void;
  private readonly signalHandlers: [Deno.Signal, () => void][] = [];

  constructor(
    private config: Configuration,
    private readonly reloadConfig: ConfigLoader,
    sink: LogSink,
  ) {
    this.sink = sink;
    this.log = sink.bind("ui", config.global.debugLevel);
    this.stopped = new Promise((resolve) => this.resolveStopped = resolve);
  }

  /** Builds the services and binds them; throws StartError (already logged) on failure. */
  async start(): Promise<void> {
    const log = this.log;
    this.services = createServices(this.config, log);
    log(5, "Configuration successful");
    await this.bindAll(this.services);
    // The pid file path is inside the chroot jail, and written before privileges are dropped.
    this.enterChroot(this.config.global);
    this.writePidFile();
    this.dropPrivileges(this.config.global);
    this.installSignals();
    this.timer = setInterval(() => this.checkTimeouts(), 1000);
    log(6, "Accepting new connections");
  }

  /** Resolves when the daemon has been stopped by a signal. */
  wait(): Promise<void> {
    return this.stopped;
  }

  /**
   * Binds every service that has no listener yet; on failure closes what it bound and throws
   * (after logging). Accept loops start only when all of them are bound.
   */
  private async bindAll(services: Service[]): Promise<void> {
    const bound: Service[] = [];
    for (const service of services) {
      await service.prepare(this.log);
      if (service.listener) continue;
      try {
        service.bind(this.log);
        bound.push(service);
      } catch (e) {
        const a = service.opts.accept;
        const where = a ? formatAddress(a) : "";
        this.log(3, `Error binding service [${service.name}] to ${where}: ${osErrorText(e)}`);
        for (const s of bound) s.unbind(this.log);
        throw new StartError("Binding failed");
      }
    }
    for (const service of services) this.owners.set(service.listener!, service);
    for (const service of bound) void this.acceptLoop(service.listener!);
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
        this.log(3, `Service [${owner.name}]: accept: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const owner = this.owners.get(listener);
      if (!owner) {
        conn.close();
        return;
      }
      this.handle(owner, conn);
    }
  }

  private unbind(service: Service): void {
    if (service.listener) this.owners.delete(service.listener);
    service.unbind(this.log);
  }

  private connectionId(kind: LogId): string {
    switch (kind) {
      case "sequential":
        return String(this.nextId++);
      case "unique":
        return crypto.randomUUID().replaceAll("-", "").slice(0, 20);
      case "thread":
      case "process":
        return String(Deno.pid);
    }
  }

  private handle(service: Service, conn: Deno.Conn): void {
    const id = this.connectionId(service.opts.logId);
    const log = this.sink.bind(id, service.opts.debugLevel);
    const connection = new Connection(service, conn, log);
    this.connections.add(connection);
    connection.run().finally(() => {
      this.connections.delete(connection);
      log(7, `Service [${service.name}] finished (${this.connections.size} left)`);
    });
  }

  private checkTimeouts(): void {
    const now = Date.now();
    for (const c of this.connections) c.checkTimeout(now);
  }

  private installSignals(): void {
    const on = (signal: Deno.Signal, handler: () => void) => {
      Deno.addSignalListener(signal, handler);
      this.signalHandlers.push([signal, handler]);
    };
    on("SIGHUP", () => void this.reload());
    on("SIGUSR1", () => this.reopenLog());
    on("SIGUSR2", () => this.listConnections());
    for (const signal of ["SIGTERM", "SIGINT", "SIGQUIT"] as const) {
      on(signal, () => this.stop("Terminated"));
    }
  }

  private reopenLog(): void {
    try {
      this.sink.reopen();
      this.log(5, "Log file reopened");
    } catch (e) {
      this.log(3, `Failed to reopen the log file: ${(e as Error).message}`);
    }
  }

  private listConnections(): void {
    this.log(5, `Active connections: ${this.connections.size}`);
    for (const c of this.connections) {
      this.log(5, `Service [${c.service.name}]: ${formatPeer(c.local.remoteAddr)}`);
    }
  }

  /** SIGHUP: the new configuration replaces the old one only if all of it works. */
  async reload(): Promise<void> {
    const log = this.log;
    log(5, "Reloading configuration");
    let next: Configuration;
    try {
      next = await this.reloadConfig();
    } catch (e) {
      log(3, (e as Error).message);
      log(3, "Failed to reload the configuration file; the old configuration stays in use");
      return;
    }
    let services: Service[];
    try {
      services = createServices(next, log);
    } catch {
      log(3, "Failed to reload the configuration file; the old configuration stays in use");
      return;
    }
    // Log options take effect with the new configuration (except foreground, as in stunnel).
    const sink = new LogSink(
      { ...next.global, foreground: this.config.global.foreground },
      this.config.global.foreground === "yes",
    );
    try {
      sink.open();
    } catch (e) {
      log(3, `Cannot open log file: ${(e as Error).message}`);
      for (const s of services) s.free();
      return;
    }
    // A service whose accept address is unchanged keeps its listening socket: no gap in
    // accepting, and no race with the kernel releasing the old socket.
    const old = this.services;
    const adopted = new Map<Service, Service>();
    for (const s of services) {
      const same = old.find((o) =>
        o.listener && o.opts.accept && s.opts.accept &&
        formatAddress(o.opts.accept) === formatAddress(s.opts.accept) &&
        ![...adopted.values()].includes(o)
      );
      if (same) adopted.set(s, same);
    }
    try {
      await this.bindAll(services.filter((s) => !adopted.has(s)));
    } catch {
      log(3, "Failed to reload the configuration file; the old configuration stays in use");
      for (const s of services) s.free();
      sink.close();
      return;
    }
    for (const [s, o] of adopted) {
      s.listener = o.listener;
      o.listener = undefined;
      this.owners.set(s.listener!, s);
      await s.prepare(log);
    }
    for (const o of old) this.unbind(o);
    this.sink.close();
    this.sink = sink;
    this.log = sink.bind("ui", next.global.debugLevel);
    this.config = next;
    this.services = services;
    // Open connections keep their SSL objects, which hold their own reference to the context.
    for (const o of old) o.free();
    this.log(5, "Configuration successful");
  }

  stop(reason: string): void {
    if (this.stopping) return;
    this.stopping = true;
    this.log(5, reason);
    for (const s of this.services) this.unbind(s);
    for (const c of this.connections) c.abort();
    for (const [signal, handler] of this.signalHandlers) Deno.removeSignalListener(signal, handler);
    clearInterval(this.timer);
    this.removePidFile();
    for (const s of this.services) s.free();
    this.sink.close();
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
      this.log(3, `Cannot create pid file ${pid}: ${(e as Error).message}`);
      throw new StartError("pid file");
    }
  }

  private removePidFile(): void {
    const { pid } = this.config.global;
    if (!pid) return;
    try {
      Deno.removeSync(pid);
    } catch (e) {
      this.log(3, `Cannot remove pid file ${pid}: ${(e as Error).message}`);
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

  /** setgid (clearing supplementary groups), then setuid, as stunnel does. */
  private dropPrivileges(global: GlobalOptions): void {
    const { libc } = lib();
    if (global.setgid) {
      const gid = lookupId(global.setgid, "group");
      if (
        gid === undefined || libc.setgroups(0n, new Uint8Array(0)) !== 0 ||
        libc.setgid(gid) !== 0
      ) {
        this.log(
          3,
          `setgid ${global.setgid}: ${gid === undefined ? "unknown group" : errnoText()}`,
        );
        throw new StartError("setgid");
      }
    }
    if (global.setuid) {
      const uid = lookupId(global.setuid, "user");
      if (uid === undefined || libc.setuid(uid) !== 0) {
        this.log(3, `setuid ${global.setuid}: ${uid === undefined ? "unknown user" : errnoText()}`);
        throw new StartError("setuid");
      }
    }
  }
}

/** A numeric id, or the id of a user/group name (getpwnam/getgrnam). */
function lookupId(name: string, kind: "user" | "group"): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  const { libc } = lib();
  const entry = kind === "user" ? libc.getpwnam(cstr(name)) : libc.getgrnam(cstr(name));
  if (entry === null) return undefined;
  const view = new Deno.UnsafePointerView(entry);
  // struct passwd { char *pw_name; char *pw_passwd; uid_t pw_uid; ... }
  // struct group  { char *gr_name; char *gr_passwd; gid_t gr_gid; ... }
  return view.getUint32(16);
}
