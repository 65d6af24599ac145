/**
 * `protocol =` negotiations: the interface every protocol module implements, the channel they
 * talk through, and the registry the connection consults (which protocols and modes exist, and
 * their options, is lib/config/protocols.ts).
 *
 * stunnel runs a protocol at three moments of a connection (its PROTOCOL_EARLY, _MIDDLE and
 * _LATE phases):
 * - `early`: before anything else, on the plain local socket (server mode: before the TLS
 *   handshake on it);
 * - `middle`: between connecting the remote and the TLS handshake. In client mode the remote is
 *   connected first (so `middle` talks plain to both sides); in server mode the handshake comes
 *   first, unless the negotiation sets `connectBeforeTls` (STARTTLS protocols need the backend's
 *   greeting before the handshake on the local socket);
 * - `late`: after both the handshake and the connect, right before the data transfer.
 */
import type { ServiceOptions } from "../lib/config/types.ts";
import type { ProtocolName } from "../lib/config/protocols.ts";
import type { Negotiation, Protocol } from "./channel.ts";

export { Channel, ProtocolError } from "./channel.ts";
export type { Negotiation, NegotiationContext, Phase } from "./channel.ts";

/**
 * Each protocol of the configuration (lib/config/protocols.ts), loaded when a connection first
 * needs it: a configuration uses one or none, and socks.ts brings node:net (~50 ms, 6 MiB).
 */
const REGISTRY: Readonly<Record<ProtocolName, () => Promise<Protocol>>> = {
  capwin: async () => (await import("./capwin.ts")).capwin,
  capwinctrl: async () => (await import("./capwin.ts")).capwinctrl,
  cifs: async () => (await import("./cifs.ts")).cifs,
  connect: async () => (await import("./connect.ts")).connect,
  imap: async () => (await import("./imap.ts")).imap,
  ldap: async () => (await import("./ldap.ts")).ldap,
  nntp: async () => (await import("./nntp.ts")).nntp,
  pgsql: async () => (await import("./pgsql.ts")).pgsql,
  pop3: async () => (await import("./pop3.ts")).pop3,
  proxy: async () => (await import("./proxy.ts")).proxy,
  smtp: async () => (await import("./smtp.ts")).smtp,
  socks: async () => (await import("./socks.ts")).socks,
};

/** The negotiation of `opts` (undefined without `protocol`); config checks passed. */
export async function negotiationFor(opts: ServiceOptions): Promise<Negotiation | undefined> {
  if (!opts.protocol) return undefined;
  const p = await REGISTRY[opts.protocol.toLowerCase() as ProtocolName]?.();
  return opts.client ? p?.client : p?.server;
}
