/**
 * `socket = a|l|r:OPTION=VALUE[:VALUE]`: options of the accepting (listening) socket, of the
 * local socket (the accepted connection) and of the remote socket (the connection we open), set
 * with setsockopt as stunnel sets them, with stunnel's defaults (a:SO_REUSEADDR=yes,
 * l:TCP_NODELAY=yes, r:TCP_NODELAY=yes) and its log lines.
 *
 * Accepted sockets inherit most options from their listener on Linux (checked with getsockopt
 * for each option listed in INHERITED), so a local option is set once on the listener when the
 * accept options do not give it another value; only the others are set on each accepted socket.
 */
import { lib } from "../sys/ffi.ts";
import { errnoText } from "../sys/oserror.ts";
import type { Log } from "../sys/log.ts";
import { SOCKET_OPTIONS, type SocketOptionType } from "../config/options.ts";

export type SocketRole = "accept" | "local" | "remote";
const ROLES: Record<string, SocketRole> = { a: "accept", l: "local", r: "remote" };

const SOL_SOCKET = 1;
const IPPROTO_IP = 0;
const IPPROTO_TCP = 6;
const IPPROTO_IPV6 = 41;
const EOPNOTSUPP = 95;

/** Linux levels and numbers of the options stunnel knows (SOCKET_OPTIONS names them). */
const NATIVE: Record<string, [number, number]> = {
  SO_DEBUG: [SOL_SOCKET, 1],
  SO_DONTROUTE: [SOL_SOCKET, 5],
  SO_KEEPALIVE: [SOL_SOCKET, 9],
  SO_LINGER: [SOL_SOCKET, 13],
  SO_OOBINLINE: [SOL_SOCKET, 10],
  SO_RCVBUF: [SOL_SOCKET, 8],
  SO_SNDBUF: [SOL_SOCKET, 7],
  SO_RCVLOWAT: [SOL_SOCKET, 18],
  SO_SNDLOWAT: [SOL_SOCKET, 19],
  SO_RCVTIMEO: [SOL_SOCKET, 20],
  SO_SNDTIMEO: [SOL_SOCKET, 21],
  SO_REUSEADDR: [SOL_SOCKET, 2],
  SO_BINDTODEVICE: [SOL_SOCKET, 25],
  TCP_KEEPCNT: [IPPROTO_TCP, 6],
  TCP_KEEPIDLE: [IPPROTO_TCP, 4],
  TCP_KEEPINTVL: [IPPROTO_TCP, 5],
  IP_TOS: [IPPROTO_IP, 1],
  IP_TTL: [IPPROTO_IP, 2],
  TCP_NODELAY: [IPPROTO_TCP, 1],
  IP_FREEBIND: [IPPROTO_IP, 15],
  IPV6_V6ONLY: [IPPROTO_IPV6, 26],
};

/**
 * Options an accepted TCP socket takes over from its listener on Linux (each was set on a
 * listener and read back from the accepted socket with getsockopt).
 */
const INHERITED = new Set([
  "SO_DEBUG",
  "SO_DONTROUTE",
  "SO_KEEPALIVE",
  "SO_LINGER",
  "SO_OOBINLINE",
  "SO_RCVBUF",
  "SO_SNDBUF",
  "SO_RCVLOWAT",
  "SO_RCVTIMEO",
  "SO_SNDTIMEO",
  "TCP_KEEPCNT",
  "TCP_KEEPIDLE",
  "TCP_KEEPINTVL",
  "IP_TOS",
  "IP_TTL",
  "TCP_NODELAY",
  "IP_FREEBIND",
]);

/** One option value, ready for setsockopt. */
export interface SocketOption {
  name: string;
  level: number;
  option: number;
  value: Uint8Array<ArrayBuffer>;
  /** For comparisons: the value as configured, normalized. */
  key: string;
}

/** strtol() as stunnel calls it: "" is 0, out-of-range values are clamped to a C long. */
function strtol(text: string): bigint {
  const t = text.trim();
  if (t === "") return 0n;
  const v = BigInt(t);
  const max = (1n << 63n) - 1n;
  return v > max ? max : v < -max - 1n ? -max - 1n : v;
}

function encode(type: SocketOptionType, text: string): Uint8Array<ArrayBuffer> {
  switch (type) {
    case "flag":
      return new Uint8Array(new Int32Array([/^(yes|1)$/i.test(text) ? 1 : 0]).buffer);
    case "int":
      return new Uint8Array(new Int32Array([Number(BigInt.asIntN(32, strtol(text)))]).buffer);
    case "linger": {
      // stunnel stores both halves as u_short.
      const [on, secs = ""] = text.split(":");
      const pair = [on, secs].map((v) => Number(BigInt.asUintN(16, strtol(v))));
      return new Uint8Array(new Int32Array(pair).buffer);
    }
    case "timeval": {
      const [sec, usec = ""] = text.split(":");
      const pair = [sec, usec].map((v) => BigInt.asIntN(32, strtol(v)));
      return new Uint8Array(new BigInt64Array(pair).buffer);
    }
    case "string": {
      const bytes = new TextEncoder().encode(text);
      const out = new Uint8Array(bytes.length + 1);
      out.set(bytes);
      return out;
    }
  }
}

/** The options of one service's three kinds of sockets, in stunnel's order (its table's). */
export class SocketOptions {
  readonly accept: SocketOption[];
  readonly local: SocketOption[];
  readonly remote: SocketOption[];

  /** `lines`: the service's `socket` values (checked by the parser), later ones win. */
  constructor(lines: readonly string[]) {
    const chosen: Record<SocketRole, Map<string, string>> = {
      accept: new Map([["SO_REUSEADDR", "yes"]]),
      local: new Map([["TCP_NODELAY", "yes"]]),
      remote: new Map([["TCP_NODELAY", "yes"]]),
    };
    for (const line of lines) {
      const m = /^([alr]):([^=]*)=(.*)$/.exec(line);
      if (m) chosen[ROLES[m[1]]].set(m[2], m[3]);
    }
    const build = (values: Map<string, string>): SocketOption[] =>
      SOCKET_OPTIONS.filter((spec) => values.has(spec.name)).map((spec) => {
        const value = encode(spec.type, values.get(spec.name)!);
        const [level, option] = NATIVE[spec.name];
        return { name: spec.name, level, option, value, key: value.join(",") };
      });
    this.accept = build(chosen.accept);
    this.local = build(chosen.local);
    this.remote = build(chosen.remote);
  }

  /** Whether any remote option beyond stunnel's default TCP_NODELAY is configured. */
  get remoteConfigured(): boolean {
    return this.remote.some((o) => o.name !== "TCP_NODELAY" || o.key !== "1,0,0,0");
  }

  /**
   * Splits the local options into those the listener can carry for every accepted socket
   * (inherited, and not set to another value by an accept option) and those to set on each.
   */
  localSplit(): { onListener: SocketOption[]; perConnection: SocketOption[] } {
    const onListener: SocketOption[] = [];
    const perConnection: SocketOption[] = [];
    for (const o of this.local) {
      const accept = this.accept.find((a) => a.name === o.name);
      if (INHERITED.has(o.name) && (!accept || accept.key === o.key)) onListener.push(o);
      else perConnection.push(o);
    }
    return { onListener, perConnection };
  }
}

/**
 * Sets `options` on `fd` as stunnel's socket_options_set does: one debug line per option set,
 * "not supported" (debug) for EOPNOTSUPP, an error line per failure. Returns false if any
 * failed (the caller warns, as stunnel does, without ending the connection).
 */
export function setOptions(
  fd: number,
  options: readonly SocketOption[],
  role: SocketRole,
  log: Log,
): boolean {
  const { libc } = lib();
  let ok = true;
  for (const o of options) {
    if (libc.setsockopt(fd, o.level, o.option, o.value, o.value.length) === 0) {
      log(7, `Option ${o.name} set on ${role} socket`);
      continue;
    }
    const error = errnoText();
    if (error.endsWith(`(${EOPNOTSUPP})`)) {
      log(7, `Option ${o.name} not supported on ${role} socket`);
    } else {
      log(3, `${o.name}: ${error}`);
      ok = false;
    }
  }
  return ok;
}

/** Sets options without logging (the listener carrying local options); the names that failed. */
export function setQuietly(fd: number, options: readonly SocketOption[]): SocketOption[] {
  const { libc } = lib();
  return options.filter((o) => libc.setsockopt(fd, o.level, o.option, o.value, o.value.length));
}
