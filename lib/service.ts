/** A configured service at run time: its TLS context, its listener and its connect targets. */
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { formatAddress } from "./address.ts";
import type { Logger } from "./log.ts";
import { osErrorText } from "./oserror.ts";
import { TlsContext } from "./tls.ts";
import type { Address, ServiceOptions } from "./types.ts";

/** A resolved connect target. */
type Target = { kind: "tcp"; host: string; port: number; label: string } | {
  kind: "unix";
  path: string;
  label: string;
};

async function resolve(addr: Address): Promise<Target[]> {
  if (addr.kind === "unix") return [{ ...addr, label: addr.path }];
  const found = isIP(addr.host) ? [{ address: addr.host }] : await lookup(addr.host, { all: true });
  return found.map(({ address }) => ({
    kind: "tcp",
    host: address,
    port: addr.port,
    label: formatAddress({ kind: "tcp", host: address, port: addr.port }),
  }));
}

export class Service {
  readonly name: string;
  /** null until resolved; stays null in delayed-resolver mode (resolved per connection). */
  private targets: Target[] | null = null;
  private delay: boolean;
  private nextTarget = 0;
  listener: Deno.Listener | undefined;

  constructor(readonly opts: ServiceOptions, readonly tls: TlsContext) {
    this.name = opts.name;
    this.delay = opts.delay;
  }

  static create(opts: ServiceOptions, log: Logger, ticketKeys?: Uint8Array): Service {
    log(6, `Initializing service [${opts.name}]`);
    return new Service(opts, TlsContext.create(opts, log, ticketKeys));
  }

  /** Resolves connect targets now, unless delayed; a failure switches to the delayed resolver. */
  async prepare(log: Logger): Promise<void> {
    if (this.delay) return;
    try {
      this.targets = (await Promise.all(this.opts.connect.map(resolve))).flat();
    } catch (e) {
      log(4, `Cannot resolve connect target: ${(e as Error).message}; delayed resolver enabled`);
      this.delay = true;
    }
  }

  /** The name a client-mode service sends in SNI: `sni`, else the connect host name. */
  sniName(): string | undefined {
    if (this.opts.sni.length > 0) return this.opts.sni[0] || undefined;
    const first = this.opts.connect[0];
    if (first?.kind !== "tcp" || isIP(first.host)) return undefined;
    return first.host;
  }

  bind(log: Logger, reusePort: boolean): Deno.Listener {
    const a = this.opts.accept!;
    if (a.kind === "unix") {
      try {
        Deno.removeSync(a.path);
      } catch {
        // no stale socket
      }
      this.listener = Deno.listen({ transport: "unix", path: a.path });
    } else {
      this.listener = Deno.listen({ transport: "tcp", hostname: a.host, port: a.port, reusePort });
    }
    const bound = this.listener.addr;
    const where = bound.transport === "unix" ? (bound as Deno.UnixAddr).path : formatAddress({
      kind: "tcp",
      host: (bound as Deno.NetAddr).hostname,
      port: (bound as Deno.NetAddr).port,
    });
    log(6, `Service [${this.name}] bound to ${where}`);
    return this.listener;
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

  /** Connects to the targets in failover order; logs each attempt as stunnel does. */
  async connect(log: Logger): Promise<Deno.Conn> {
    const targets = this.targets ?? (await Promise.all(this.opts.connect.map(resolve))).flat();
    if (targets.length === 0) throw new Error("No host resolved");
    const start = this.opts.failover === "rr" && !this.delay
      ? this.nextTarget++ % targets.length
      : 0;
    for (let i = 0; i < targets.length; i++) {
      const t = targets[(start + i) % targets.length];
      log(6, `s_connect: connecting ${t.label}`);
      try {
        const signal = AbortSignal.timeout(this.opts.TIMEOUTconnect * 1000);
        const conn = t.kind === "unix"
          ? await Deno.connect({ transport: "unix", path: t.path })
          : await Deno.connect({ transport: "tcp", hostname: t.host, port: t.port, signal });
        log(5, `s_connect: connected ${t.label}`);
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
