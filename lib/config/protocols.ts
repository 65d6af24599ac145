/**
 * `protocol =` as the configuration sees it: which protocols and modes exist, which protocol*
 * options each mode uses, and the end-of-section checks. The negotiations themselves live in
 * protocols/ (one module per protocol), keyed by the same names.
 */
import type { ServiceOptions, Where } from "./types.ts";

export const PROTOCOL_OPTIONS = [
  "protocolAuthentication",
  "protocolDomain",
  "protocolHeader",
  "protocolHost",
  "protocolPassword",
  "protocolUsername",
] as const;
export type ProtocolOption = typeof PROTOCOL_OPTIONS[number];

/** One mode (client or server) of a protocol. */
export interface ModeRule {
  /** The protocol* options this mode uses; any other one set is a configuration error. */
  options?: readonly ProtocolOption[];
  /** The negotiation chooses the remote (socks): it replaces `connect` as an endpoint. */
  endpoint?: boolean;
  /** Checks at the end of the section; a returned string is the error. */
  check?(opts: ServiceOptions): string | undefined;
  /** stunnel 5.68 refuses this mode with this message. */
  refused?: string;
}

export type ProtocolRules = { client?: ModeRule; server?: ModeRule };

/** Every protocol name stunnel 5.68 knows, and its modes. */
export const PROTOCOLS = {
  cifs: { client: {}, server: {} },
  capwin: {
    client: {},
    server: {
      options: ["protocolHost"],
      // stunnel 5.68 crashes on the first client without it.
      check: (opts) =>
        opts.protocolHost === undefined ? "protocol 'capwin' needs 'protocolHost'" : undefined,
    },
  },
  capwinctrl: {
    // The control connection is a service's whole purpose: it needs no `connect`.
    client: { endpoint: true },
    server: { refused: "The 'capwinctrl' protocol is not supported in the server mode" },
  },
  connect: {
    client: {
      options: [
        "protocolHost",
        "protocolUsername",
        "protocolPassword",
        "protocolAuthentication",
        "protocolDomain",
        "protocolHeader",
      ],
      check(opts) {
        if (opts.protocolHost === undefined) return "protocol 'connect' needs 'protocolHost'";
        const auth = (opts.protocolAuthentication ?? "basic").toLowerCase();
        if (auth === "ntlm") {
          // stunnel 5.68 dereferences a missing domain (it crashes): refused here instead.
          if (opts.protocolDomain === undefined) {
            return "protocolAuthentication 'NTLM' needs 'protocolDomain'";
          }
        } else if (opts.protocolDomain !== undefined) {
          return "option 'protocolDomain' is only used by protocolAuthentication 'NTLM'";
        }
        return undefined;
      },
    },
  },
  imap: { client: {}, server: {} },
  ldap: {
    client: {},
    server: { refused: "The 'ldap' protocol is not supported in the server mode" },
  },
  nntp: {
    client: {},
    server: { refused: "The 'nntp' protocol is not supported in the server mode" },
  },
  pgsql: { client: {}, server: {} },
  pop3: { client: {}, server: {} },
  proxy: {
    client: { refused: "The 'proxy' protocol is not supported in the client mode" },
    server: {},
  },
  smtp: {
    client: {
      options: ["protocolHost", "protocolUsername", "protocolPassword", "protocolAuthentication"],
    },
    server: {},
  },
  socks: { client: {}, server: { endpoint: true } },
} satisfies Record<string, ProtocolRules>;

export type ProtocolName = keyof typeof PROTOCOLS;
export const PROTOCOL_NAMES = Object.keys(PROTOCOLS) as ProtocolName[];

function rules(name: string): ProtocolRules | undefined {
  return (PROTOCOLS as Record<string, ProtocolRules>)[name.toLowerCase()];
}

/** The rule of `opts`'s protocol in its mode (undefined without `protocol`). */
export function modeRule(opts: ServiceOptions): ModeRule | undefined {
  if (!opts.protocol) return undefined;
  return opts.client ? rules(opts.protocol)?.client : rules(opts.protocol)?.server;
}

/** True when the negotiation of `opts` chooses the remote, as an endpoint instead of `connect`. */
export function protocolIsEndpoint(opts: ServiceOptions): boolean {
  return modeRule(opts)?.endpoint === true;
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
  if (opts.proxyVersion !== undefined && opts.protocol?.toLowerCase() !== "proxy") {
    const where = opts.where.proxyVersion;
    return { message: `${at(where)}option 'proxyVersion' needs 'protocol = proxy'`, where };
  }
  if (!opts.protocol) {
    if (set.length === 0) return undefined;
    const where = opts.where[set[0]];
    return { message: `${at(where)}option '${set[0]}' needs a 'protocol'`, where };
  }
  const name = opts.protocol.toLowerCase();
  const mode = opts.client ? "client" : "server";
  const where = opts.where.protocol;
  const rule = modeRule(opts);
  if (rule?.refused) return { message: rule.refused };
  if (!rule) {
    return {
      message: `${at(where)}protocol '${name}' is not supported yet in the ${mode} mode`,
      where,
    };
  }
  for (const o of set) {
    if (!rule.options?.includes(o)) {
      const w = opts.where[o];
      return {
        message: `${at(w)}option '${o}' is not used by protocol '${name}' in the ${mode} mode`,
        where: w,
      };
    }
  }
  const problem = rule.check?.(opts);
  return problem ? { message: `${at(where)}${problem}`, where } : undefined;
}
