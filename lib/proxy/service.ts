/** A configured service at run time: its TLS context, its listener and its connect targets. */
import { formatAddress } from "../config/address.ts";
import type { Logger } from "../sys/log.ts";
import { TlsContext } from "../tls/context.ts";
import type { Address, ServiceOptions } from "../config/types.ts";
import type { Conn } from "../net/conn.ts";
import { connect, type ConnectSetup, resolveAddress } from "../net/connect.ts";
import type { OwnSocket } from "../net/netconn.ts";
import { type SocketOption, SocketOptions } from "../net/sockopt.ts";
import { configureListener, fdSnapshot } from "../net/listener.ts";

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
  listener: Deno.Listener | undefined;
  /** `socket = a|l|r:...` with stunnel's defaults (sockopt.ts). */
  readonly sockets: SocketOptions;
  /** Local options to set on each accepted socket (the listener carries the others). */
  localPerConnection: SocketOption[] = [];

  constructor(
    readonly opts: ServiceOptions,
    readonly tls: TlsContext,
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

  static async create(
    opts: ServiceOptions,
    log: Logger,
    shared: { ticketKeys: Uint8Array; roundRobin: Int32Array },
  ): Promise<Service> {
    log(6, `Initializing service [${opts.name}]`);
    const tls = await TlsContext.create(opts, log, shared.ticketKeys);
    return new Service(opts, tls, shared.roundRobin);
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

  bind(log: Logger, reusePort: boolean): Deno.Listener {
    const a = this.opts.accept!;
    if (a.kind === "unix") {
      try {
        Deno.removeSync(a.path);
      } catch {
        // no stale socket
      }
      const before = fdSnapshot();
      this.listener = Deno.listen({ transport: "unix", path: a.path });
      this.localPerConnection = this.configureListener(before, log);
    } else {
      const before = fdSnapshot();
      this.listener = Deno.listen({ transport: "tcp", hostname: a.host, port: a.port, reusePort });
      this.localPerConnection = this.configureListener(before, log);
    }
    const bound = this.listener.addr;
    const where = formatAddress(
      bound.transport === "unix" ? { kind: "unix", path: (bound as Deno.UnixAddr).path } : {
        kind: "tcp",
        host: (bound as Deno.NetAddr).hostname,
        port: (bound as Deno.NetAddr).port,
      },
    );
    log(6, `Service [${this.name}] bound to ${where}`);
    return this.listener;
  }

  /**
   * Takes over the listener of the service this one replaces (a reload with the same accept
   * address): this configuration's socket options are set on it again.
   */
  adoptListener(listener: Deno.Listener, log: Logger): void {
    this.listener = listener;
    try {
      this.localPerConnection = configureListener(listener, undefined, this.sockets, log);
    } catch {
      // Logged; the listener keeps the options it had, and accepted sockets get them all.
      this.localPerConnection = [...this.sockets.local];
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

  /** Socket options of the new listener (listener.ts); closes it if an accept option fails. */
  private configureListener(before: Set<string>, log: Logger): SocketOption[] {
    try {
      return configureListener(this.listener!, before, this.sockets, log);
    } catch (e) {
      this.listener!.close();
      this.listener = undefined;
      throw e;
    }
  }

  unbind(log: Logger): void {
    if (!this.listener) return;
    try {
      this.listener.close();
    } catch {
      // already closed
    }
    this.listener = undefined;
    const a = this.opts.accept;
    if (a?.kind === "unix") {
      try {
        Deno.removeSync(a.path);
      } catch {
        // gone already
      }
    }
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
    const start = !chosen && !redirect && this.opts.failover === "rr" && !this.delay
      ? Atomics.add(this.roundRobin, slotOf(this.name), 1) % targets.length
      : 0;
    const setup: ConnectSetup = {
      timeoutSeconds: this.opts.TIMEOUTconnect,
      own: this.ownRemoteSocket ? this.ownSocket(peer) : undefined,
    };
    for (let i = 0; i < targets.length; i++) {
      const conn = await connect(targets[(start + i) % targets.length], setup, log);
      if (conn) return conn;
    }
    throw new Error("No more addresses to connect");
  }

  free(): void {
    this.tls.free();
  }
}
