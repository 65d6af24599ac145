/** A configured service at run time: its TLS context, its listener and its connect targets. */
import { formatAddress } from "../config/address.ts";
import type { Logger } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { TlsContext } from "../tls/context.ts";
import { DenoTlsContext } from "../tls/deno.ts";
import type { TlsEngineName } from "../tls/choice.ts";
import type { Address, ServiceOptions } from "../config/types.ts";
import type { Conn } from "../net/conn.ts";
import { connect, type ConnectSetup, resolveAddress } from "../net/connect.ts";
import type { OwnSocket } from "../net/netconn.ts";
import { type SocketOption, SocketOptions } from "../net/sockopt.ts";
import { configureListener, fdSnapshot, ListenerOptionsError } from "../net/listener.ts";
import { findListenerFds } from "../sys/sockfd.ts";
import { platform } from "../sys/platform.ts";
import { ServiceCounters } from "./metrics.ts";

/** Resolves every connect target; each failure is logged, and no address at all is an error. */
async function resolveAll(addresses: Address[], log: Logger): Promise<Address[]> {
  const results = await Promise.allSettled(addresses.map(resolveAddress));
  const targets: Address[] = [];
  for (const r of results) {
    if (r.status === "fulfilled") targets.push(...r.value);
    else log(3, (r.reason as Error).message);
  }
  if (targets.length === 0) throw new Error("No remote host resolved");
  return targets;
}

/** A listening socket of a service: the `accept` address it was made for, and its descriptor. */
export interface Bound {
  accept: Address;
  listener: Deno.Listener;
  /** Its descriptor, where descriptors are reached (sys/platform.ts). */
  fd: number | undefined;
}

/** No `accept` address of the service could be bound (logged). */
export class BindError extends Error {}

/** The round-robin position of each service, shared by all threads (slots by name). */
const RR_SLOTS = 256;

export function newRoundRobin(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4 * RR_SLOTS));
}

function slotOf(name: string): number {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) | 0;
  return (h >>> 0) % RR_SLOTS;
}

export class Service {
  readonly name: string;
  /** null until resolved; stays null in delayed-resolver mode (resolved per connection). */
  private targets: Address[] | null = null;
  private delay: boolean;
  /** The listening sockets, in the order of the `accept` lines they were made for. */
  bound: Bound[] = [];
  /** `socket = a|l|r:...` with stunnel's defaults (sockopt.ts). */
  readonly sockets: SocketOptions;
  /** Local options to set on each accepted socket (the listeners carry the others). */
  localPerConnection: SocketOption[] = [];
  /** Its figures in this thread; the daemon gives it the ones kept under its name. */
  counters = new ServiceCounters();

  constructor(
    readonly opts: ServiceOptions,
    /**
     * OpenSSL's context, or Deno's TLS (`tlsEngine = deno`); renewTls() replaces it
     * (`watchFiles`): open connections keep the one they started on.
     */
    private engine: TlsContext | DenoTlsContext,
    private readonly roundRobin: Int32Array,
  ) {
    this.name = opts.name;
    this.delay = opts.delay;
    this.sockets = new SocketOptions(opts.socket);
  }

  /** The remote socket is ours (netconn.ts): bound to a source address, or with r: options. */
  private get ownRemoteSocket(): boolean {
    const t = this.opts.transparent;
    return this.opts.local !== undefined || t === "source" || t === "both" ||
      this.sockets.remoteConfigured;
  }

  /** The OpenSSL context; only the OpenSSL engine's code paths ask for it. */
  get tls(): TlsContext {
    if (!(this.engine instanceof TlsContext)) throw new Error("not an OpenSSL service");
    return this.engine;
  }

  /** Deno's TLS, when it is the engine (`tlsEngine = deno`). */
  get denoTls(): DenoTlsContext | undefined {
    return this.engine instanceof DenoTlsContext ? this.engine : undefined;
  }

  static async create(
    opts: ServiceOptions,
    log: Logger,
    shared: { ticketKeys: Uint8Array; roundRobin: Int32Array; tlsEngine: TlsEngineName },
  ): Promise<Service> {
    log(6, `Initializing service [${opts.name}]`);
    const engine = shared.tlsEngine === "deno"
      ? DenoTlsContext.create(opts)
      : await TlsContext.create(opts, log, shared.ticketKeys);
    return new Service(opts, engine, shared.roundRobin);
  }

  /** Resolves connect targets now, unless delayed; a failure switches to the delayed resolver. */
  async prepare(log: Logger): Promise<void> {
    // No `connect`: a protocol (socks) chooses the targets of each connection.
    if (this.delay || this.targets || this.opts.connect.length === 0) return;
    try {
      this.targets = await resolveAll(this.opts.connect, log);
    } catch {
      log(6, "Cannot resolve connect target - delaying DNS lookup");
      this.delay = true;
    }
  }

  /** The name a client-mode service sends in SNI: `sni`, else the connect host name. */
  sniName(): string | undefined {
    if (this.opts.sni.length > 0) return this.opts.sni[0] || undefined;
    // Like stunnel, even an IP address is sent as the name.
    const first = this.opts.connect[0];
    return first?.kind === "tcp" ? first.host : undefined;
  }

  /**
   * Binds each `accept` address that has no listening socket yet (a reload may have handed
   * some over) and logs every one as bound, in the order of the lines. As in stunnel, an
   * address that cannot be bound is left out, and a service with none fails (BindError,
   * logged); a left-out address is a warning (stunnel: a notice), not to go unnoticed.
   */
  bind(log: Logger, reusePort: boolean): void {
    log(7, `Binding service [${this.name}]`);
    for (const accept of this.opts.accept) {
      let bound = this.bound.find((b) => b.accept === accept);
      if (!bound) {
        try {
          bound = this.listen(accept, log, reusePort);
        } catch (e) {
          // An accept socket option that failed was logged by itself (listener.ts).
          if (!(e instanceof ListenerOptionsError)) {
            log(4, `Binding service [${this.name}] to ${formatAddress(accept)}: ${osErrorText(e)}`);
          }
          continue;
        }
        this.bound.push(bound);
      }
      const fd = bound.fd === undefined ? "" : ` (FD=${bound.fd})`;
      log(6, `Service [${this.name}]${fd} bound to ${boundAddress(bound.listener)}`);
    }
    if (this.bound.length === 0) {
      log(3, `Binding service [${this.name}] failed`);
      throw new BindError();
    }
  }

  /** One listening socket with this service's accept and local socket options. */
  private listen(accept: Address, log: Logger, reusePort: boolean): Bound {
    if (accept.kind === "unix") {
      try {
        Deno.removeSync(accept.path);
      } catch {
        // no stale socket
      }
    }
    // Without descriptors, only stunnel's default options apply: Deno's listeners reuse the
    // address (a:SO_REUSEADDR), and TCP_NODELAY is set on each connection (localsock.ts).
    const before = platform().descriptors ? fdSnapshot() : undefined;
    const deno = this.denoTls;
    const listener: Deno.Listener = accept.kind === "unix"
      ? Deno.listen({ transport: "unix", path: accept.path })
      : deno && !this.opts.client
      ? deno.listen(accept.host, accept.port, reusePort)
      : Deno.listen({ transport: "tcp", hostname: accept.host, port: accept.port, reusePort });
    if (!before) return { accept, listener, fd: undefined };
    const [fd] = findListenerFds(listener.addr, before);
    log(7, `Listening file descriptor created (FD=${fd})`);
    try {
      this.addPerConnection(configureListener(listener, before, this.sockets, log));
    } catch (e) {
      closeListener(listener, accept);
      throw e;
    }
    return { accept, listener, fd };
  }

  /**
   * Takes over a listening socket of the service this one replaces (a reload with the same
   * accept address): this configuration's socket options are set on it again.
   */
  adopt(from: Bound, accept: Address, log: Logger): void {
    const bound = { ...from, accept };
    this.bound.push(bound);
    if (!platform().descriptors) return;
    try {
      this.addPerConnection(configureListener(bound.listener, undefined, this.sockets, log));
    } catch {
      // Logged; the listener keeps the options it had, and accepted sockets get them all.
      this.addPerConnection(this.sockets.local);
    }
  }

  /** Options a listener does not carry are set on each accepted socket (twice is harmless). */
  private addPerConnection(options: readonly SocketOption[]): void {
    for (const o of options) {
      if (!this.localPerConnection.includes(o)) this.localPerConnection.push(o);
    }
  }

  /** The socket of ours the remote side needs: source address, IP_TRANSPARENT, r: options. */
  private ownSocket(peer: Deno.Addr | undefined): OwnSocket {
    const { local, transparent } = this.opts;
    const source = transparent === "source" || transparent === "both";
    let bind: OwnSocket["bind"];
    if (local !== undefined) bind = { host: local, port: 0 };
    else if (source) {
      if (peer?.transport !== "tcp") throw new Error("Transparent source needs a socket");
      bind = { host: peer.hostname, port: peer.port };
    }
    return {
      bind,
      // IP_TRANSPARENT only binds the client's address (`local` wins, as in stunnel).
      transparent: source,
      remoteOptions: this.sockets.remote,
    };
  }

  /** Closes every listening socket of the service, as stunnel's unbind_ports() logs it. */
  unbind(log: Logger): void {
    log(7, `Unbinding service [${this.name}]`);
    for (const { accept, listener, fd } of this.bound) {
      closeListener(listener, accept);
      log(7, `Service [${this.name}] closed (FD=${fd})`);
    }
    this.bound = [];
    log(7, `Service [${this.name}] closed`);
  }

  /**
   * Connects to the targets in failover order; logs each attempt as stunnel does. `redirect`:
   * to the `redirect` address instead (a peer that failed authentication), in its order.
   * `chosen`: to these addresses instead (picked by a protocol negotiation), in their order.
   */
  async connect(
    log: Logger,
    redirect = false,
    chosen?: Address[],
    peer?: Deno.Addr,
  ): Promise<Conn> {
    const targets = chosen
      ? await resolveAll(chosen, log)
      : redirect && this.opts.redirect
      ? await resolveAll([this.opts.redirect], log)
      : this.targets ?? await resolveAll(this.opts.connect, log);
    // The delayed resolver means failover = prio (manual).
    const rr = !chosen && !redirect && this.opts.failover === "rr" && !this.delay;
    const start = rr ? Atomics.add(this.roundRobin, slotOf(this.name), 1) % targets.length : 0;
    if (targets.length > 1) {
      log(6, `failover: ${rr ? "round-robin" : "priority"}, starting at entry #${start}`);
    }
    const own = this.ownRemoteSocket ? this.ownSocket(peer) : undefined;
    for (let i = 0; i < targets.length; i++) {
      const target = targets[(start + i) % targets.length];
      // Deno.connect refuses port 0; connect(2) tells what it does (refused, on loopback).
      const portZero = target.kind === "tcp" && target.port === 0;
      const setup: ConnectSetup = {
        timeoutSeconds: this.opts.TIMEOUTconnect,
        own: own ?? (portZero ? this.ownSocket(peer) : undefined),
      };
      const conn = await connect(target, setup, log);
      if (conn) return conn;
      this.counters.connectFailed(formatAddress(target));
    }
    throw new Error("No more addresses to connect");
  }

  /**
   * A new TLS context built from the same options (`watchFiles`: its files changed); throws,
   * keeping the current one, when it does not build. Handshakes under way and open connections
   * keep the old context (their SSL objects hold a reference to it).
   */
  async renewTls(log: Logger, ticketKeys: Uint8Array): Promise<void> {
    const tls = await TlsContext.create(this.opts, log, ticketKeys);
    const old = this.tls;
    this.engine = tls;
    old.free();
  }

  free(): void {
    if (this.engine instanceof TlsContext) this.engine.free();
  }
}

/** The address a listening socket is bound to, as stunnel logs it (the port 0 chose included). */
function boundAddress(listener: Deno.Listener): string {
  const addr = listener.addr;
  return formatAddress(
    addr.transport === "unix"
      ? { kind: "unix", path: (addr as Deno.UnixAddr).path }
      : { kind: "tcp", host: (addr as Deno.NetAddr).hostname, port: (addr as Deno.NetAddr).port },
  );
}

/** Closes a listening socket; a Unix socket's file goes with it. */
function closeListener(listener: Deno.Listener, accept: Address): void {
  try {
    listener.close();
  } catch {
    // already closed
  }
  if (accept.kind !== "unix") return;
  try {
    Deno.removeSync(accept.path);
  } catch {
    // gone already
  }
}
