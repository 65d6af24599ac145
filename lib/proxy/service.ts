/** A configured service at run time: its TLS context, its listener and its connect targets. */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { formatAddress } from "../config/address.ts";
import type { Logger } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { TlsContext } from "../tls/context.ts";
import type { Address, ServiceOptions } from "../config/types.ts";
import { type ConnectSetup, connectTcp, connectUnix } from "../net/netconn.ts";
import { type SocketOption, SocketOptions } from "../net/sockopt.ts";
import { configureListener, fdSnapshot } from "../net/listener.ts";

/** A resolved connect target. */
type Target = { kind: "tcp"; host: string; port: number; label: string } | {
  kind: "unix";
  path: string;
  label: string;
};

/** getaddrinfo's words for node's error codes, as stunnel logs them. */
const GAI_ERRORS: Record<string, string> = {
  ENOTFOUND: "Neither nodename nor servname known (EAI_NONAME)",
  EAI_AGAIN: "Temporary failure in name resolution (EAI_AGAIN)",
  EAI_FAIL: "Non-recoverable failure in name resolution (EAI_FAIL)",
};

/** A name that did not resolve; the message is stunnel's log line. */
class ResolveError extends Error {}

async function resolve(addr: Address): Promise<Target[]> {
  if (addr.kind === "unix") return [{ ...addr, label: formatAddress(addr) }];
  let found: { address: string }[];
  try {
    found = isIP(addr.host) ? [{ address: addr.host }] : await lookup(addr.host, { all: true });
  } catch (e) {
    const code = (e as { code?: string }).code ?? "";
    const why = GAI_ERRORS[code] ?? (e as Error).message;
    throw new ResolveError(`Error resolving "${addr.host}": ${why}`);
  }
  return found.map(({ address }) => ({
    kind: "tcp",
    host: address,
    port: addr.port,
    label: formatAddress({ kind: "tcp", host: address, port: addr.port }),
  }));
}

/** Resolves every connect target; each failure is logged, and no address at all is an error. */
async function resolveAll(addresses: Address[], log: Logger): Promise<Target[]> {
  const results = await Promise.allSettled(addresses.map(resolve));
  const targets: Target[] = [];
  for (const r of results) {
    if (r.status === "fulfilled") targets.push(...r.value);
    else log(3, (r.reason as Error).message);
  }
  if (targets.length === 0) throw new ResolveError("No remote host resolved");
  return targets;
}

/** One attempt through a socket of ours (netconn.ts); undefined when it failed (logged). */
async function connectOwn(
  t: Target,
  setup: ConnectSetup,
  log: Logger,
): Promise<Deno.Conn | undefined> {
  const conn = t.kind === "unix"
    ? await connectUnix(t.path, t.label, setup, log)
    : await connectTcp(t.host, t.port, t.label, setup, log);
  return conn as unknown as Deno.Conn | undefined;
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
  private targets: Target[] | null = null;
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

  static create(
    opts: ServiceOptions,
    log: Logger,
    shared: { ticketKeys: Uint8Array; roundRobin: Int32Array },
  ): Service {
    log(6, `Initializing service [${opts.name}]`);
    return new Service(opts, TlsContext.create(opts, log, shared.ticketKeys), shared.roundRobin);
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

  /** How connectOwn connects: source address, IP_TRANSPARENT, r: options, TIMEOUTconnect. */
  private remoteSetup(peer: Deno.Addr | undefined): ConnectSetup {
    const { local, transparent, TIMEOUTconnect } = this.opts;
    const source = transparent === "source" || transparent === "both";
    let bind: ConnectSetup["bind"];
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
      timeoutSeconds: TIMEOUTconnect,
    };
  }

  /** Socket options of the new listener (listener.ts); closes it if an accept option fails. */
  private configureListener(before: Set<number>, log: Logger): SocketOption[] {
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
  ): Promise<Deno.Conn> {
    const targets = chosen
      ? await resolveAll(chosen, log)
      : redirect && this.opts.redirect
      ? await resolveAll([this.opts.redirect], log)
      : this.targets ?? await resolveAll(this.opts.connect, log);
    // The delayed resolver means failover = prio (manual).
    const start = !chosen && !redirect && this.opts.failover === "rr" && !this.delay
      ? Atomics.add(this.roundRobin, slotOf(this.name), 1) % targets.length
      : 0;
    const own = this.ownRemoteSocket ? this.remoteSetup(peer) : undefined;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[(start + i) % targets.length];
      // Deno.connect refuses port 0; connect(2) tells what it does (refused, on loopback).
      const setup = own ?? (t.kind === "tcp" && t.port === 0 ? this.remoteSetup(peer) : undefined);
      if (setup) {
        // netconn.ts logs the attempt itself, in stunnel's order (bind, then connect).
        const conn = await connectOwn(t, setup, log);
        if (conn) return conn;
        continue;
      }
      log(6, `s_connect: connecting ${t.label}`);
      try {
        const signal = AbortSignal.timeout(this.opts.TIMEOUTconnect * 1000);
        const conn = t.kind === "unix"
          ? await Deno.connect({ transport: "unix", path: t.path })
          : await Deno.connect({ transport: "tcp", hostname: t.host, port: t.port, signal });
        log(t.kind === "unix" ? 6 : 5, `s_connect: connected ${t.label}`);
        return conn;
      } catch (e) {
        const reason = e instanceof DOMException && e.name === "TimeoutError"
          ? "TIMEOUTconnect exceeded"
          : osErrorText(e);
        log(3, `s_connect: connect ${t.label}: ${reason}`);
      }
    }
    throw new Error("No more addresses to connect");
  }

  free(): void {
    this.tls.free();
  }
}
