/**
 * `protocol =` negotiations: the interface every protocol module implements, the channel they
 * talk through, and the registry the configuration and the connection consult.
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
import type { ServiceOptions, Where } from "../lib/config/types.ts";
import { type Negotiation, type Protocol, PROTOCOL_OPTIONS } from "./channel.ts";
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

/** The protocols implemented here, by name. */
const REGISTRY: ReadonlyMap<string, Protocol> = new Map(
  [smtp, proxy, pgsql, imap, pop3, connect, socks, nntp, ldap, cifs, capwin, capwinctrl]
    .map((p) => [p.name, p]),
);

/** Modes stunnel 5.68 itself does not support, with its error message. */
const STUNNEL_REFUSES: Record<string, { client?: string; server?: string }> = {
  proxy: { client: "The 'proxy' protocol is not supported in the client mode" },
  nntp: { server: "The 'nntp' protocol is not supported in the server mode" },
  ldap: { server: "The 'ldap' protocol is not supported in the server mode" },
  capwinctrl: { server: "The 'capwinctrl' protocol is not supported in the server mode" },
};

/** The negotiation of `opts` (undefined without `protocol`); config checks passed. */
export function negotiationFor(opts: ServiceOptions): Negotiation | undefined {
  if (!opts.protocol) return undefined;
  const p = REGISTRY.get(opts.protocol.toLowerCase());
  return opts.client ? p?.client : p?.server;
}

/** True when the negotiation of `opts` chooses the remote, as an endpoint instead of `connect`. */
export function protocolIsEndpoint(opts: ServiceOptions): boolean {
  return negotiationFor(opts)?.endpoint === true;
}

/**
 * True when `name` has an implementation in at least one mode, or a mode stunnel refuses (that
 * refusal is its error then); checked at its line.
 */
export function protocolImplemented(name: string): boolean {
  return REGISTRY.has(name.toLowerCase()) || name.toLowerCase() in STUNNEL_REFUSES;
}

/** A configuration error of a finished section, as the message and the line it names. */
export interface ProtocolConfigError {
  message: string;
  where?: Where;
}

/** The end-of-section checks of `protocol` and the protocol* options. */
export function checkProtocol(opts: ServiceOptions): ProtocolConfigError | undefined {
  const at = (w: Where | undefined) => w ? `${w.file}:${w.line}: ` : "";
  const set = PROTOCOL_OPTIONS.filter((o) =>
    o === "protocolHeader" ? opts.protocolHeader.length > 0 : opts[o] !== undefined
  );
  if (!opts.protocol) {
    if (set.length === 0) return undefined;
    const where = opts.where[set[0]];
    return { message: `${at(where)}option '${set[0]}' needs a 'protocol'`, where };
  }
  const name = opts.protocol.toLowerCase();
  const mode = opts.client ? "client" : "server";
  const refused = STUNNEL_REFUSES[name]?.[mode];
  if (refused) return { message: refused };
  const where = opts.where.protocol;
  const negotiation = negotiationFor(opts);
  if (!negotiation) {
    return {
      message: `${at(where)}protocol '${name}' is not supported yet in the ${mode} mode`,
      where,
    };
  }
  for (const o of set) {
    if (!negotiation.options?.includes(o)) {
      const w = opts.where[o];
      return {
        message: `${at(w)}option '${o}' is not used by protocol '${name}' in the ${mode} mode`,
        where: w,
      };
    }
  }
  const problem = negotiation.check?.(opts);
  return problem ? { message: `${at(where)}${problem}`, where } : undefined;
}
