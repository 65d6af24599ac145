/**
 * Outgoing connections, as stunnel's s_connect makes them: one attempt to one resolved address,
 * bounded by TIMEOUTconnect and logged in stunnel's words ("s_connect: connecting HOST:PORT",
 * "s_connect: connected HOST:PORT", "s_connect: connect HOST:PORT: Connection refused (111)").
 * Services (in their failover order), OCSP responders, IDENT servers and the CapWIN LDAP server
 * all connect here. The socket is Deno's, unless the service binds a source address or sets
 * `r:` options: then it is ours (netconn.ts).
 */
import { formatAddress } from "../config/address.ts";
import type { Address } from "../config/types.ts";
import type { Log } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { getaddrinfo } from "../sys/resolve.ts";
import { lowestFreeFd } from "../sys/sockfd.ts";
import { platform } from "../sys/platform.ts";
import type { Conn } from "./conn.ts";
import type { OwnSocket } from "./netconn.ts";

export interface ConnectSetup {
  /** TIMEOUTconnect, in seconds. */
  timeoutSeconds: number;
  /** The socket must be ours: bound to a source address, IP_TRANSPARENT, `r:` options. */
  own?: OwnSocket;
}

/** The addresses `address` names, in the resolver's order; throws ResolveError. */
export async function resolveAddress(address: Address): Promise<Address[]> {
  if (address.kind === "unix") return [address];
  const hosts = await getaddrinfo(address.host);
  return hosts.map((host) => ({ kind: "tcp", host, port: address.port }));
}

/** One attempt to a resolved `target`: the connection, or undefined when it failed (logged). */
export async function connect(
  target: Address,
  setup: ConnectSetup,
  log: Log,
): Promise<Conn | undefined> {
  const label = formatAddress(target);
  if (setup.own) {
    // Loaded when first needed: its node:net costs every start ~50 ms and 6 MiB.
    const { connectOwn } = await import("./netconn.ts");
    return await connectOwn(target, label, setup.own, setup.timeoutSeconds, log);
  }
  log(6, `s_connect: connecting ${label}`);
  try {
    let conn: Conn;
    if (target.kind === "unix") {
      conn = await Deno.connect({ transport: "unix", path: target.path });
    } else {
      const fdHint = platform().descriptors ? lowestFreeFd() : undefined;
      const tcp = await Deno.connect({
        transport: "tcp",
        hostname: target.host,
        port: target.port,
        signal: AbortSignal.timeout(setup.timeoutSeconds * 1000),
      });
      conn = Object.assign(tcp, { fdHint });
    }
    log(target.kind === "unix" ? 6 : 5, `s_connect: connected ${label}`);
    return conn;
  } catch (e) {
    if (e instanceof DOMException && e.name === "TimeoutError") {
      log(3, `s_connect: s_poll_wait ${label}: TIMEOUTconnect exceeded`);
    } else {
      log(3, `s_connect: connect ${label}: ${osErrorText(e)}`);
    }
    return undefined;
  }
}
