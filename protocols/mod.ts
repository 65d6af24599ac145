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
import { imap } from "./imap.ts";
import { pgsql } from "./pgsql.ts";
import { pop3 } from "./pop3.ts";
import { proxy } from "./proxy.ts";
import { smtp } from "./smtp.ts";
import { connect } from "./connect.ts";
import { socks } from "./socks.ts";
import { nntp } from "./nntp.ts";
import { ldap } from "./ldap.ts";
import { cifs } from "./cifs.ts";
import { capwin, capwinctrl } from "./capwin.ts";

export { Channel, ProtocolError } from "./channel.ts";
export type { Negotiation, NegotiationContext, Phase } from "./channel.ts";

/** The negotiations of every protocol the configuration knows (lib/config/protocols.ts). */
const REGISTRY: Readonly<Record<ProtocolName, Protocol>> = {
  capwin,
  capwinctrl,
  cifs,
  connect,
  imap,
  ldap,
  nntp,
  pgsql,
  pop3,
  proxy,
  smtp,
  socks,
};

/** The negotiation of `opts` (undefined without `protocol`); config checks passed. */
export function negotiationFor(opts: ServiceOptions): Negotiation | undefined {
  if (!opts.protocol) return undefined;
  const p = REGISTRY[opts.protocol.toLowerCase() as ProtocolName];
  return opts.client ? p?.client : p?.server;
}
