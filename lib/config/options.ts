/**
 * THE option table: every stunnel.conf option, its scope, value shape, default, help text,
 * parser and implementation status. The parser (parser.ts), `-help`/`-version` output and
 * docs/options.md are all derived from it.
 */

import { type AddressRole, parseAddress, type ServiceLookup } from "./address.ts";
import { OCSP_FLAGS, sslOptionName, SYSLOG_FACILITIES, SYSLOG_LEVELS } from "../sys/names.ts";
import { platform } from "../sys/platform.ts";
import { PROTOCOL_NAMES } from "./protocols.ts";
import type { ConfigLine, EngineStep, GlobalOptions, PskSecrets, ServiceOptions } from "./types.ts";

export type Scope = "global" | "service";

/**
 * "supported": implemented by the daemon.
 * "later": parsed and validated, then refused as "not supported yet".
 * refused: can never work here; stunnel on Unix does not know the name either.
 */
export type Status = "supported" | "later" | { refused: string };

/** What parsing may consult outside the text (injectable so tests need no real files). */
export interface System {
  /** undefined when `path` can be opened for reading, else a strerror-like reason. */
  unreadable(path: string): string | undefined;
  userExists(name: string): boolean;
  groupExists(name: string): boolean;
  tcpService: ServiceLookup;
  /** `local = HOST`: the first numeric address of HOST; throws the resolver's reason. */
  resolveHost(name: string): string;
  /** undefined when libwrap.so.0 can be loaded, else the reason. */
  libwrapMissing(): string | undefined;
  /** Reads a `PSKsecrets` file; throws an OptionError with stunnel's lines. */
  readPskSecrets(path: string): PskSecrets;
}

export interface ParseContext {
  system: System;
  /** True before the first [section]: service-level options there are defaults. */
  inGlobalSection: boolean;
}

/** Where a parsed value goes: the global options and the service being built. */
export interface Target {
  global: GlobalOptions;
  /** The section's options, or the defaults template while in the global section. */
  service: ServiceOptions;
  inGlobalSection: boolean;
  /** The line being stored (options that act in file order keep it for their errors). */
  line?: ConfigLine;
}

export interface OptionSpec<V = unknown> {
  /** stunnel's spelling; matched case-insensitively. */
  name: string;
  /** Other names stunnel accepts for the same option (not documented). */
  aliases?: readonly string[];
  scope: Scope;
  /** Value shape for the docs, e.g. "yes | no" or "[HOST:]PORT". */
  syntax: string;
  /** One line, as stunnel's `-help` prints it after "NAME = ". */
  help: string;
  /** Continuation lines `-help` prints under the first one. */
  helpMore?: readonly string[];
  /** False for options stunnel 5.68 on Linux leaves out of `-help`. */
  inHelp: boolean;
  /** stunnel 5.68's default, for the docs. */
  default?: string;
  /** Lines `-version` prints after "NAME = " in its defaults block. */
  versionDefault?: readonly string[];
  /** Each occurrence adds a value instead of replacing the previous one. */
  repeat: boolean;
  status: Status;
  /** How this implementation differs, for the docs. */
  note?: string;
  /** Turns the raw value into the typed one; throws a reason string (stunnel's wording). */
  parse(raw: string, context: ParseContext): V;
  store(target: Target, value: V): void;
}

// ---------------------------------------------------------------- value kinds

interface Kind<V> {
  syntax: string;
  parse(raw: string, context: ParseContext): V;
}

const YES_NO = "The argument needs to be either 'yes' or 'no'";

const text: Kind<string> = { syntax: "STRING", parse: (raw) => raw };

/** stunnel treats an empty path as "unset" for these. */
const optionalPath: Kind<string | undefined> = {
  syntax: "PATH",
  parse: (raw) => raw === "" ? undefined : raw,
};

const yesNo: Kind<boolean> = {
  syntax: "yes | no",
  parse(raw) {
    const value = raw.toLowerCase();
    if (value === "yes") return true;
    if (value === "no") return false;
    throw YES_NO;
  },
};

/** Case-insensitive choice; `values` maps accepted spellings to the stored value. */
function enumOf<T extends string>(values: Record<string, T>, message: string): Kind<T> {
  const choices = new Map(Object.entries(values).map(([k, v]) => [k.toLowerCase(), v]));
  return {
    syntax: [...new Set(Object.values(values))].join(" | "),
    parse(raw) {
      const value = choices.get(raw.toLowerCase());
      if (value === undefined) throw message;
      return value;
    },
  };
}

/** A choice of `words` (stored as spelled here); stunnel's message names every one. */
function either<T extends string>(...words: T[]): Kind<T> {
  const quoted = words.map((word) => `'${word}'`);
  return enumOf(
    Object.fromEntries(words.map((word) => [word, word])) as Record<string, T>,
    `The argument needs to be either ${quoted.slice(0, -1).join(", ")} or ${quoted.at(-1)}`,
  );
}

/** strtol-style decimal integer within [min, max]. */
function integer(message: string, min = 0, max = Number.MAX_SAFE_INTEGER): Kind<number> {
  return {
    syntax: "NUMBER",
    parse(raw) {
      if (!/^[+-]?[0-9]+$/.test(raw)) throw message;
      const value = Number(raw);
      if (value < min || value > max) throw message;
      return value;
    },
  };
}

function seconds(what: string): Kind<number> {
  return { ...integer(`Illegal ${what} timeout`), syntax: "SECONDS" };
}

function address(role: AddressRole): Kind<ReturnType<typeof parseAddress>> {
  return {
    syntax: "[HOST:]PORT",
    parse: (raw, context) => parseAddress(raw, role, context.system.tcpService),
  };
}

const readableFile: Kind<string> = {
  syntax: "FILE",
  parse(raw, context) {
    const reason = context.system.unreadable(raw);
    if (reason !== undefined) throw `cannot read ${raw}: ${reason}`;
    return raw;
  },
};

/**
 * `cert`/`key`: a readable file, or an engine's object id (`engineId`/`engineNum`), which is no
 * file: a value that starts like `pkcs11:...` or `SLOT:ID` is then taken as it is (without an
 * engine, loading it fails with OpenSSL's reason when the service starts).
 */
const fileOrEngineObject: Kind<string> = {
  syntax: "FILE | ENGINE_OBJECT_ID",
  parse(raw, context) {
    const engineObject = /^[A-Za-z0-9_-]+:/.test(raw) &&
      context.system.unreadable(raw) !== undefined;
    return engineObject ? raw : readableFile.parse(raw, context);
  },
};

interface Debug {
  facility?: string;
  level: number;
}

/** `[FACILITY.]LEVEL`; a facility is only meaningful (and accepted) in the global section. */
const debug: Kind<Debug> = {
  syntax: "[FACILITY.]LEVEL",
  parse(raw, context) {
    let levelText = raw;
    let facility: string | undefined;
    if (context.inGlobalSection && raw.includes(".")) {
      const dot = raw.indexOf(".");
      facility = raw.slice(0, dot).toLowerCase();
      if (!(facility in SYSLOG_FACILITIES)) throw "Illegal syslog facility";
      levelText = raw.slice(dot + 1);
    }
    if (/^[0-7]$/.test(levelText)) return { facility, level: Number(levelText) };
    const level = (SYSLOG_LEVELS as readonly string[]).indexOf(levelText.toLowerCase());
    if (level < 0) throw "Illegal debug level";
    return { facility, level };
  },
};

const TLS_VERSIONS = ["all", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"];
const tlsVersion: Kind<string> = {
  ...enumOf(Object.fromEntries(TLS_VERSIONS.map((v) => [v, v])), "Invalid protocol version"),
  syntax: TLS_VERSIONS.join(" | "),
};

/** `NAME` or `-NAME`, stored canonically spelled. */
const sslOption: Kind<string> = {
  syntax: "SSL_OPTION | -SSL_OPTION",
  parse(raw) {
    const clear = raw.startsWith("-");
    const name = sslOptionName(clear ? raw.slice(1) : raw);
    if (name === undefined) throw "Illegal TLS option";
    return clear ? `-${name}` : name;
  },
};

export type SocketOptionType = "flag" | "int" | "linger" | "timeval" | "string";

export interface SocketOptionSpec {
  name: string;
  type: SocketOptionType;
  /** stunnel's own defaults for accept, local and remote sockets ("" = OS default). */
  stunnel: readonly [string, string, string];
  /** The OS default `stunnel -sockets` printed on Linux. */
  os: string;
}

/** The socket options stunnel 5.68 knows on Linux, in `-sockets` order. */
export const SOCKET_OPTIONS: readonly SocketOptionSpec[] = [
  { name: "SO_DEBUG", type: "flag", stunnel: ["", "", ""], os: "no" },
  { name: "SO_DONTROUTE", type: "flag", stunnel: ["", "", ""], os: "no" },
  { name: "SO_KEEPALIVE", type: "flag", stunnel: ["", "", ""], os: "no" },
  { name: "SO_LINGER", type: "linger", stunnel: ["", "", ""], os: "0:0" },
  { name: "SO_OOBINLINE", type: "flag", stunnel: ["", "", ""], os: "no" },
  { name: "SO_RCVBUF", type: "int", stunnel: ["", "", ""], os: "131072" },
  { name: "SO_SNDBUF", type: "int", stunnel: ["", "", ""], os: "16384" },
  { name: "SO_RCVLOWAT", type: "int", stunnel: ["", "", ""], os: "1" },
  { name: "SO_SNDLOWAT", type: "int", stunnel: ["", "", ""], os: "1" },
  { name: "SO_RCVTIMEO", type: "timeval", stunnel: ["", "", ""], os: "0:0" },
  { name: "SO_SNDTIMEO", type: "timeval", stunnel: ["", "", ""], os: "0:0" },
  { name: "SO_REUSEADDR", type: "flag", stunnel: ["yes", "", ""], os: "no" },
  { name: "SO_BINDTODEVICE", type: "string", stunnel: ["", "", ""], os: "" },
  { name: "TCP_KEEPCNT", type: "int", stunnel: ["", "", ""], os: "9" },
  { name: "TCP_KEEPIDLE", type: "int", stunnel: ["", "", ""], os: "7200" },
  { name: "TCP_KEEPINTVL", type: "int", stunnel: ["", "", ""], os: "75" },
  { name: "IP_TOS", type: "int", stunnel: ["", "", ""], os: "0" },
  { name: "IP_TTL", type: "int", stunnel: ["", "", ""], os: "64" },
  { name: "TCP_NODELAY", type: "flag", stunnel: ["", "yes", "yes"], os: "no" },
  { name: "IP_FREEBIND", type: "flag", stunnel: ["", "", ""], os: "no" },
  { name: "IPV6_V6ONLY", type: "flag", stunnel: ["", "", ""], os: "no" },
];

const SOCKET_VALUE: Record<SocketOptionType, RegExp> = {
  flag: /^(yes|no|1|0)$/i,
  // strtol() as stunnel checks it: an empty number is 0 (stunnel 5.68 accepts it).
  int: /^(\s*[+-]?[0-9]+)?$/,
  linger: /^(\s*[+-]?[0-9]+)?(:(\s*[+-]?[0-9]+)?)?$/,
  timeval: /^(\s*[+-]?[0-9]+)?(:(\s*[+-]?[0-9]+)?)?$/,
  // The value has to fit stunnel's option union (16 bytes with the NUL).
  string: /^.{0,15}$/,
};

/** `a|l|r:OPTION=VALUE[:VALUE]`; option names are case-sensitive in stunnel. */
const socketOption: Kind<string> = {
  syntax: "a|l|r:OPTION=VALUE[:VALUE]",
  parse(raw) {
    const m = /^([alr]):([^=]*)=(.*)$/.exec(raw);
    const spec = m && SOCKET_OPTIONS.find((s) => s.name === m[2]);
    if (!m || !spec || !SOCKET_VALUE[spec.type].test(m[3])) throw "Illegal socket option";
    return raw;
  },
};

const ocspFlag: Kind<string> = {
  ...enumOf(Object.fromEntries(Object.keys(OCSP_FLAGS).map((f) => [f, f])), "Illegal OCSP flag"),
  syntax: "OCSP_FLAG",
};

const protocol: Kind<string> = {
  ...enumOf(Object.fromEntries(PROTOCOL_NAMES.map((p) => [p, p])), "Protocol not supported"),
  syntax: "PROTOCOL",
};

/**
 * A refused value that stunnel explains in lines of their own (`before`, logged first), then
 * refuses with `reason` on the configuration line.
 */
export class OptionError {
  constructor(readonly reason: string, readonly before: readonly string[]) {}
}

/**
 * OPENSSL_hexstr2buf: pairs of hexadecimal digits, a colon allowed wherever a pair could start;
 * null when the text is not of that form (or empty).
 */
export function opensslHex(text: string): Uint8Array<ArrayBuffer> | null {
  if (text.length < 2) return null;
  const out: number[] = [];
  for (let i = 0; i < text.length;) {
    if (text[i] === ":") {
      i++;
      continue;
    }
    const pair = text.slice(i, i + 2);
    if (!/^[0-9a-f]{2}$/i.test(pair)) return null;
    out.push(parseInt(pair, 16));
    i += 2;
  }
  return new Uint8Array(out);
}

function ticketSecret(option: string): Kind<Uint8Array> {
  return {
    syntax: "HEX",
    parse(raw) {
      const key = opensslHex(raw);
      const failed = `Failed to read ${option}`;
      if (key === null) {
        throw new OptionError(failed, [`Required ${option} is 16 or 32 byte hexadecimal key`]);
      }
      if (key.length !== 16 && key.length !== 32) {
        throw new OptionError(failed, [
          `${option} value has ${key.length} bytes instead of required 16 or 32 bytes`,
        ]);
      }
      return key;
    },
  };
}

const pskSecrets: Kind<PskSecrets> = {
  syntax: "FILE",
  parse: (raw, context) => context.system.readPskSecrets(raw),
};

function account(kind: "UID" | "GID"): Kind<string> {
  return {
    syntax: kind === "UID" ? "USER" : "GROUP",
    parse(raw, context) {
      const exists = kind === "UID" ? context.system.userExists : context.system.groupExists;
      if (!exists(raw) && !/^[+-]?[0-9]+$/.test(raw)) throw `Illegal ${kind}`;
      return raw;
    },
  };
}

/** `local = HOST`: resolved when read, as stunnel does; stored as its first numeric address. */
const localHost: Kind<string> = {
  syntax: "HOST",
  parse(raw, context) {
    try {
      return context.system.resolveHost(raw);
    } catch (why) {
      const line = why instanceof Error ? why.message : String(why);
      throw new OptionError("Failed to resolve local address", [line]);
    }
  },
};

const transparent = enumOf(
  {
    none: "none",
    no: "none",
    source: "source",
    yes: "source",
    destination: "destination",
    both: "both",
  },
  "Selected transparent proxy mode is not available",
);

const compression: Kind<"deflate" | "zlib"> = {
  syntax: "deflate | zlib",
  parse(raw) {
    if (!["deflate", "zlib"].includes(raw.toLowerCase())) {
      throw "Specified compression type is not available";
    }
    throw "Configured compression is unsupported: this libssl has no zlib support";
  },
};

// ---------------------------------------------------------------- where values go

type GlobalField = Exclude<keyof GlobalOptions, "where">;
type ServiceField = Exclude<keyof ServiceOptions, "where" | "name">;
type ListField = {
  [K in ServiceField]-?: ServiceOptions[K] extends unknown[] ? K : never;
}[ServiceField];

function toGlobal<K extends GlobalField>(field: K) {
  return (t: Target, value: GlobalOptions[K]) => {
    t.global[field] = value;
  };
}

function toService<K extends ServiceField>(field: K) {
  return (t: Target, value: ServiceOptions[K]) => {
    t.service[field] = value;
  };
}

function appendTo<K extends ListField>(field: K) {
  return (t: Target, value: ServiceOptions[K][number]) => {
    (t.service[field] as ServiceOptions[K][number][]).push(value);
  };
}

/** For options that are both a service default and a process-wide setting in the global section. */
function toServiceAndGlobal<K extends ServiceField & GlobalField>(field: K) {
  return (t: Target, value: ServiceOptions[K] & GlobalOptions[K]) => {
    t.service[field] = value;
    if (t.inGlobalSection) t.global[field] = value;
  };
}

const nowhere = () => {};

/**
 * As in stunnel, `verifyChain = yes`, `verifyPeer = yes` and `requireCert = yes` also ask for
 * and require a peer certificate (a later `requireCert = no` makes it optional again); `no` only
 * turns its own switch off. Options apply in file order.
 */
function peerSwitch(field: "verifyChain" | "verifyPeer" | "requireCert") {
  return (t: Target, on: boolean) => {
    if (on) {
      t.service.requestCert = true;
      t.service.requireCert = true;
    }
    t.service[field] = on;
  };
}

// ---------------------------------------------------------------- the table

type Entry<V> =
  & Omit<OptionSpec<V>, "inHelp" | "repeat" | "syntax">
  & Partial<Pick<OptionSpec<V>, "inHelp" | "repeat" | "syntax">>;

function define<V>(entry: Entry<V>): OptionSpec {
  return { syntax: "STRING", inHelp: true, repeat: false, ...entry } as OptionSpec;
}

const NEVER_ON_UNIX = "GUI option of stunnel on Windows; stunnel on Unix does not know it";
function lineOf(target: Target): ConfigLine {
  return target.line ?? { where: { file: "", line: 0 }, text: "" };
}

/** engine.ts runs these in file order, as stunnel does while it reads the file. */
function engineStep(option: EngineStep["option"]) {
  return (target: Target, value: string) =>
    target.global.engineSteps.push({ option, value, line: lineOf(target) });
}

const NO_EFFECT = "Accepted for compatibility; has no effect: Deno (V8 and its Rust runtime) " +
  "creates and sizes the stacks of its own threads, and a configuration cannot change them";

/** All options, global ones first, each group in stunnel's `-help` order. */
export const OPTIONS: readonly OptionSpec[] = [
  // ------------------------------------------------------------ global options
  define({
    name: "chroot",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "DIRECTORY",
    store: toGlobal("chroot"),
    help: "directory to chroot stunnel process",
  }),
  define({
    name: "compression",
    scope: "global",
    status: "supported",
    ...compression,
    store: toGlobal("compression"),
    default: "no compression",
    help: "compression type",
    note: "Always refused: the linked libssl has no zlib support.",
  }),
  define({
    name: "EGD",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "EGDPATH",
    store: toGlobal("EGD"),
    help: "path to Entropy Gathering Daemon socket",
    note: "Only asked when OpenSSL's PRNG is not seeded, which OpenSSL 3 always is (it seeds " +
      "itself from the kernel); this libcrypto has no RAND_egd, so, as for stunnel 5.68 on it, " +
      "the socket is never used (a warning names it if seeding were ever needed).",
  }),
  define({
    name: "engine",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "auto | ENGINE_ID",
    store: engineStep("engine"),
    help: "auto|engine_id",
    note: "Each `engine` line opens one more engine (numbered from 1 for `engineNum`); " +
      "`engineCtrl` and `engineDefault` act on the last one, in file order. The PIN prompt " +
      "of an engine is OpenSSL's (on the terminal); the engine gets no logging callback.",
  }),
  define({
    name: "engineCtrl",
    scope: "global",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "COMMAND[:PARAMETER]",
    store: engineStep("engineCtrl"),
    help: "cmd[:arg]",
  }),
  define({
    name: "engineDefault",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "TASK_LIST",
    store: engineStep("engineDefault"),
    help: "TASK_LIST",
  }),
  define({
    name: "fips",
    scope: "global",
    status: "supported",
    inHelp: false,
    ...yesNo,
    store: toGlobal("fips"),
    default: "no",
    help: "yes|no FIPS 140-2 mode",
    note: "`yes` loads OpenSSL 3's FIPS provider and makes it the default at start-up; where " +
      "none is installed, start-up fails with OpenSSL's reason (`FIPS PROVIDER: ...`, " +
      "`Global options: Failed to initialize TLS`), as in stunnel 5.68.",
  }),
  define({
    name: "foreground",
    scope: "global",
    status: "supported",
    ...either("yes", "quiet", "no"),
    store: toGlobal("foreground"),
    default: "no",
    help: "yes|quiet|no foreground mode (don't fork, log to stderr)",
  }),
  define({
    name: "iconActive",
    scope: "global",
    status: { refused: NEVER_ON_UNIX },
    inHelp: false,
    ...text,
    syntax: "ICONFILE",
    store: nowhere,
    help: "icon when connections are established",
  }),
  define({
    name: "iconError",
    scope: "global",
    status: { refused: NEVER_ON_UNIX },
    inHelp: false,
    ...text,
    syntax: "ICONFILE",
    store: nowhere,
    help: "icon for invalid configuration file",
  }),
  define({
    name: "iconIdle",
    scope: "global",
    status: { refused: NEVER_ON_UNIX },
    inHelp: false,
    ...text,
    syntax: "ICONFILE",
    store: nowhere,
    help: "icon when no connections were established",
  }),
  define({
    name: "log",
    scope: "global",
    status: "supported",
    ...either("append", "overwrite"),
    store: toGlobal("log"),
    default: "append",
    help: "append|overwrite log file",
  }),
  define({
    name: "logFormat",
    scope: "global",
    status: "supported",
    ...either("text", "json"),
    store: toGlobal("logFormat"),
    default: "text",
    help: "text|json log line format (extension)",
    note: "Extension beyond stunnel 5.68. `json` writes each log line (file, stderr and " +
      "syslog) as one JSON object: `time` (ISO 8601), `level`, `levelName`, `id` (stunnel's " +
      "`[N]`), and for a connection `service`, `connection`, `peer`, and on its close " +
      "`bytesToTls`, `bytesToSocket` and `durationMs`; then `message`. Lines before the " +
      "configuration is read stay text.",
  }),
  define({
    name: "metrics",
    scope: "global",
    status: "supported",
    syntax: "[HOST:]PORT",
    parse(raw, context) {
      const parsed = parseAddress(raw, "accept", context.system.tcpService);
      if (parsed.kind !== "tcp") throw "A TCP address is required";
      return { host: parsed.host, port: parsed.port };
    },
    store: toGlobal("metrics"),
    help: "[host:]port serve /metrics and /healthz (extension)",
    note: "Extension. Prometheus text format, all threads' figures; `/healthz`: 200 while " +
      "accepting, else 503; other paths 404. Without a host: all IPv4 addresses (as " +
      "`accept`). Kept by a reload, as `pid`. See README (Metrics).",
  }),
  define({
    name: "output",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "FILE",
    store: toGlobal("output"),
    help: "file to append log messages",
  }),
  define({
    name: "pid",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "FILE",
    store: toGlobal("pid"),
    default: "(none)",
    help: "pid file",
  }),
  define({
    name: "RNDbytes",
    scope: "global",
    status: "supported",
    ...integer("Illegal number of bytes to read from random seed files"),
    syntax: "BYTES",
    store: toGlobal("RNDbytes"),
    default: "1024",
    versionDefault: ["1024"],
    help: "bytes to read from random seed files",
  }),
  define({
    name: "RNDfile",
    scope: "global",
    status: "supported",
    ...text,
    syntax: "FILE",
    store: toGlobal("RNDfile"),
    default: "/dev/urandom",
    versionDefault: ["/dev/urandom"],
    help: "path to file with random seed data",
    note: "Read (and with `RNDoverwrite` rewritten) only when OpenSSL's PRNG needs seeding, " +
      "as in stunnel 5.68; OpenSSL 3 seeds itself, so the file is normally not touched.",
  }),
  define({
    name: "RNDoverwrite",
    scope: "global",
    status: "supported",
    ...yesNo,
    store: toGlobal("RNDoverwrite"),
    default: "yes",
    versionDefault: ["yes"],
    help: "yes|no overwrite seed datafiles with new random data",
  }),
  define({
    name: "syslog",
    scope: "global",
    status: "supported",
    ...yesNo,
    store: toGlobal("syslog"),
    default: "yes",
    help: "yes|no send logging messages to syslog",
  }),
  define({
    name: "watchFiles",
    scope: "global",
    status: "supported",
    ...yesNo,
    store: toGlobal("watchFiles"),
    default: "no",
    help: "yes|no reload TLS files when they change (extension)",
    note: "Extension. A changed `cert`, `key`, `CAfile` or `CRLfile` (polled each second, " +
      "through symlinks) rebuilds the service's TLS context for new handshakes; one that " +
      "does not load keeps the old. See README (Watched TLS files).",
  }),
  define({
    name: "taskbar",
    scope: "global",
    status: { refused: "Windows-only option; stunnel on Unix does not know it" },
    inHelp: false,
    ...yesNo,
    store: nowhere,
    default: "yes",
    help: "yes|no enable the taskbar icon",
  }),
  define({
    name: "tlsEngine",
    scope: "global",
    status: "supported",
    inHelp: false,
    ...either("auto", "openssl", "deno"),
    store: toGlobal("tlsEngine"),
    default: "auto",
    help: "auto|openssl|deno TLS engine (an extension)",
    note: "Extension (not in stunnel). `openssl`: OpenSSL 3 through FFI (start-up fails when " +
      "it cannot be loaded); `deno`: Deno's own TLS, which refuses at start-up, with the line " +
      "and the reason, every option it cannot honour (see README, TLS engines); `auto`: " +
      "OpenSSL when it loads, else Deno's TLS. Takes effect at start only (a reload keeps it).",
  }),
  define({
    name: "libssl",
    scope: "global",
    status: "supported",
    inHelp: false,
    ...text,
    syntax: "FILE",
    store: toGlobal("libssl"),
    help: "OpenSSL 3 libssl file to load (an extension)",
    note: "Extension (not in stunnel): the libssl of OpenSSL 3 to load instead of searching " +
      "for it (also STUNNEL_LIBSSL); read before OpenSSL is first used, at start only.",
  }),
  define({
    name: "libcrypto",
    scope: "global",
    status: "supported",
    inHelp: false,
    ...text,
    syntax: "FILE",
    store: toGlobal("libcrypto"),
    help: "OpenSSL 3 libcrypto file to load (an extension)",
    note: "Extension (not in stunnel): the libcrypto of OpenSSL 3 to load instead of " +
      "searching for it (also STUNNEL_LIBCRYPTO); at start only.",
  }),

  // ------------------------------------------------------------ service-level options
  define({
    name: "accept",
    scope: "service",
    status: "supported",
    repeat: true,
    ...address("accept"),
    store: appendTo("accept"),
    help: "[host:]port accept connections on specified host:port",
    note: "Each line adds an address, as in stunnel: one that cannot be bound is logged and left " +
      "out; a service without any bound address fails to start.",
  }),
  define({
    name: "alpn",
    scope: "service",
    status: "supported",
    syntax: "PROTOCOL[,PROTOCOL...]",
    parse(raw: string): string[] {
      const list = raw.split(",").map((p) => p.trim());
      const bad = list.some((p) => p === "" || new TextEncoder().encode(p).length > 255);
      if (bad) throw "Illegal ALPN protocol list (names of 1 to 255 bytes, comma-separated)";
      return list;
    },
    store: toService("alpn"),
    default: "(none)",
    help: "comma-separated ALPN protocols, e.g. h2,http/1.1 (extension)",
    note: "Extension beyond stunnel 5.68. Server mode: the first protocol of this list that " +
      "the client offers is selected; with none in common the handshake goes on without ALPN " +
      "(as HAProxy does). Client mode: the list is offered to the server. The selected " +
      "protocol is logged at LOG6 (`ALPN: selected protocol: NAME`).",
  }),
  define({
    name: "CAengine",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "IDENTIFIER",
    store: appendTo("CAengine"),
    help: "engine-specific CA certificate identifier for 'verify' option",
    note: "Each line adds one CA certificate, read through the service's engine " +
      "(`engineId`/`engineNum`) with its LOAD_CERT_CTRL command, as in stunnel 5.68.",
  }),
  define({
    name: "CApath",
    scope: "service",
    status: "supported",
    ...optionalPath,
    syntax: "DIRECTORY",
    store: toService("CApath"),
    help: "CA certificate directory for 'verify' option",
  }),
  define({
    name: "CAfile",
    scope: "service",
    status: "supported",
    ...optionalPath,
    syntax: "FILE",
    store: toService("CAfile"),
    help: "CA certificate file for 'verify' option",
  }),
  define({
    name: "cert",
    scope: "service",
    status: "supported",
    ...fileOrEngineObject,
    store: toService("cert"),
    help: "certificate chain",
  }),
  define({
    name: "checkEmail",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "EMAIL",
    store: appendTo("checkEmail"),
    help: "peer certificate email address",
  }),
  define({
    name: "checkHost",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "HOST",
    store: appendTo("checkHost"),
    help: "peer certificate host name pattern",
  }),
  define({
    name: "checkIP",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "IP",
    store: appendTo("checkIP"),
    help: "peer certificate IP address",
  }),
  define({
    name: "ciphers",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "CIPHER_LIST",
    store: toService("ciphers"),
    default: "HIGH:!aNULL:!SSLv2:!DH:!kDHEPSK",
    versionDefault: ["HIGH:!aNULL:!SSLv2:!DH:!kDHEPSK"],
    help: "permitted ciphers for TLS 1.2 or older",
  }),
  define({
    name: "ciphersuites",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "CIPHERSUITE_LIST",
    store: toService("ciphersuites"),
    default: "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
    versionDefault: [
      "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256 (with TLSv1.3)",
    ],
    help: "permitted ciphersuites for TLS 1.3",
  }),
  define({
    name: "client",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("client"),
    default: "no",
    help: "yes|no client mode (remote service uses TLS)",
  }),
  define({
    name: "config",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "COMMAND[:PARAMETER]",
    store: appendTo("config"),
    help: "command[:parameter] to execute",
  }),
  define({
    name: "connect",
    scope: "service",
    status: "supported",
    repeat: true,
    ...address("connect"),
    store: appendTo("connect"),
    help: "[host:]port to connect",
  }),
  define({
    name: "CRLpath",
    scope: "service",
    status: "supported",
    ...optionalPath,
    syntax: "DIRECTORY",
    store: toService("CRLpath"),
    help: "CRL directory",
  }),
  define({
    name: "CRLfile",
    scope: "service",
    status: "supported",
    ...optionalPath,
    syntax: "FILE",
    store: toService("CRLfile"),
    help: "CRL file",
  }),
  define({
    name: "curves",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "CURVE_LIST",
    store: toService("curves"),
    default: "X25519:P-256:X448:P-521:P-384",
    versionDefault: ["X25519:P-256:X448:P-521:P-384"],
    help: "ECDH curve names",
  }),
  define({
    name: "debug",
    scope: "service",
    status: "supported",
    ...debug,
    store(t, v: Debug) {
      t.service.debugLevel = v.level;
      if (t.inGlobalSection) t.global.debugLevel = v.level;
      if (v.facility !== undefined) t.global.debugFacility = v.facility;
    },
    default: "daemon.notice",
    versionDefault: ["daemon.notice"],
    help: "[facility].level (e.g. daemon.info)",
  }),
  define({
    name: "delay",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("delay"),
    default: "no",
    help: "yes|no delay DNS lookup for 'connect' option",
  }),
  define({
    name: "engineId",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "ENGINE_ID",
    store: (t, id: string) => t.service.engine = { id, line: lineOf(t) },
    help: "ID of engine to read the key from",
  }),
  define({
    name: "engineNum",
    scope: "service",
    status: "supported",
    ...integer("Illegal engine number", 1),
    store: (t, num: number) => t.service.engine = { num, line: lineOf(t) },
    help: "number of engine to read the key from",
  }),
  define({
    name: "exec",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "EXECUTABLE_PATH",
    store: toService("exec"),
    help: "file execute local inetd-type program",
    note: "The program's stdin/stdout are pipes (stunnel: a socket pair), its stderr is ours; " +
      "in a connect+exec section they are one end of a loopback socket pair, as in stunnel. " +
      "A program that cannot be started is logged (`Cannot execute PATH: ...`) and then ends " +
      "the connection as one that exits at once.",
  }),
  define({
    name: "execArgs",
    scope: "service",
    status: "supported",
    syntax: "$0 $1 $2 ...",
    parse: (raw) => raw.split(/\s+/).filter((arg) => arg !== ""),
    store: toService("execArgs"),
    help: "arguments for 'exec' (including $0)",
    note: "A `$0` other than the `exec` path is set through `bash -c 'exec -a ...'` (Deno " +
      "cannot set argv[0]); the shell replaces itself with the program.",
  }),
  define({
    name: "failover",
    scope: "service",
    status: "supported",
    ...either("rr", "prio"),
    store: toService("failover"),
    default: "prio",
    help: "rr|prio failover strategy",
  }),
  define({
    name: "ident",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "USERNAME",
    store: toService("ident"),
    help: "username for IDENT (RFC 1413) checking",
  }),
  define({
    name: "include",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "DIRECTORY",
    // The parser reads the directory itself, at the point of the line.
    store: nowhere,
    help: "directory with configuration file snippets",
  }),
  define({
    name: "key",
    scope: "service",
    status: "supported",
    ...fileOrEngineObject,
    store: toService("key"),
    default: "the value of cert",
    help: "certificate private key",
  }),
  define({
    name: "libwrap",
    scope: "service",
    status: "supported",
    ...yesNo,
    parse(raw, ctx) {
      const on = yesNo.parse(raw, ctx);
      // libwrap.so.0 is opened only when some service uses it: missing, it fails this line.
      const missing = on ? ctx.system.libwrapMissing() : undefined;
      if (missing) throw `libwrap is not available: ${missing}`;
      return on;
    },
    store: toService("libwrap"),
    default: "no",
    help: "yes|no use /etc/hosts.allow and /etc/hosts.deny",
  }),
  define({
    name: "local",
    scope: "service",
    status: "supported",
    ...localHost,
    store: toService("local"),
    help: "IP address to be used as source for remote connections",
  }),
  define({
    name: "logId",
    scope: "service",
    status: "supported",
    ...enumOf<ServiceOptions["logId"]>(
      { sequential: "sequential", unique: "unique", thread: "thread", process: "process" },
      "Invalid connection identifier type",
    ),
    store: toService("logId"),
    default: "sequential",
    versionDefault: ["sequential"],
    help: "connection identifier type",
  }),
  define({
    name: "OCSP",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "URL",
    store: toService("OCSP"),
    help: "OCSP responder URL",
    note: "OCSP and OCSPaia are asked right after the handshake instead of inside it, before " +
      "any data moves: a refused peer sees the connection closed rather than a TLS alert. A " +
      "resumed session is checked again, and a server-mode service staples the status of its " +
      "own certificate for clients that ask (stunnel 5.68 does not staple).",
  }),
  define({
    name: "OCSPaia",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("OCSPaia"),
    default: "no",
    help: "yes|no check the AIA responders from certificates",
  }),
  define({
    name: "OCSPflag",
    scope: "service",
    status: "supported",
    repeat: true,
    ...ocspFlag,
    store: appendTo("OCSPflag"),
    help: "OCSP responder flags",
  }),
  define({
    name: "OCSPnonce",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("OCSPnonce"),
    default: "no",
    help: "yes|no send and verify the OCSP nonce extension",
  }),
  define({
    name: "options",
    scope: "service",
    status: "supported",
    repeat: true,
    ...sslOption,
    store: appendTo("options"),
    default: "NO_SSLv2, NO_SSLv3",
    versionDefault: ["NO_SSLv2", "NO_SSLv3"],
    help: "TLS option to set/reset",
  }),
  define({
    name: "protocol",
    scope: "service",
    status: "supported",
    ...protocol,
    store: toService("protocol"),
    note: "Implemented: smtp, pop3, imap, pgsql, socks, cifs (both modes), connect (client " +
      "mode, Basic and NTLM authentication; NTLM needs OpenSSL's legacy provider at run " +
      "time), proxy (server mode), nntp and ldap (client mode), capwin (both modes; the server " +
      "mode binds to the LDAP server at protocolHost) and capwinctrl (client mode; its " +
      "credentials are shared by all threads). capwinctrl in the server mode is refused as by " +
      "stunnel; a protocol* option the protocol does not use is an error.",
    help: "protocol to negotiate before TLS initialization",
    helpMore: [
      "currently supported: cifs, connect, imap,",
      "    nntp, pgsql, pop3, proxy, smtp, socks",
    ],
  }),
  define({
    name: "protocolAuthentication",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "AUTHENTICATION",
    store: toService("protocolAuthentication"),
    help: "authentication type for protocol negotiations",
  }),
  define({
    name: "protocolDomain",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "DOMAIN",
    store: toService("protocolDomain"),
    help: "domain for protocol negotiations",
  }),
  define({
    name: "protocolHeader",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "HEADER",
    store: appendTo("protocolHeader"),
    help: "custom header for protocol negotiations",
  }),
  define({
    name: "protocolHost",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "HOST:PORT",
    store: toService("protocolHost"),
    help: "host:port for protocol negotiations",
  }),
  define({
    name: "protocolPassword",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "PASSWORD",
    store: toService("protocolPassword"),
    help: "password for protocol negotiations",
  }),
  define({
    name: "protocolUsername",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "USERNAME",
    store: toService("protocolUsername"),
    help: "username for protocol negotiations",
  }),
  define({
    name: "proxyVersion",
    scope: "service",
    status: "supported",
    parse: (raw: string) => {
      if (raw !== "1" && raw !== "2") throw "The argument needs to be either '1' or '2'";
      return Number(raw) as 1 | 2;
    },
    syntax: "1 | 2",
    store: toService("proxyVersion"),
    default: "1",
    help: "1|2 PROXY protocol version of protocol = proxy (extension)",
    note: "Extension beyond stunnel 5.68; needs `protocol = proxy`. `2` sends the binary " +
      "header of HAProxy's PROXY protocol v2 (TCP4/TCP6, UNSPEC for a Unix socket) with the " +
      "TLVs PP2_TYPE_AUTHORITY (the SNI name), PP2_TYPE_ALPN (the negotiated protocol) and " +
      "PP2_TYPE_SSL (client flags SSL, CERT_CONN, CERT_SESS, the verify result, and the " +
      "sub-TLVs SSL_VERSION, SSL_CIPHER and, with a client certificate, SSL_CN).",
  }),
  define({
    name: "PSKidentity",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "IDENTITY",
    store: toService("PSKidentity"),
    default: "the first identity of PSKsecrets",
    help: "identity for PSK authentication",
  }),
  define({
    name: "PSKsecrets",
    scope: "service",
    status: "supported",
    ...pskSecrets,
    store: toService("PSKsecrets"),
    help: "secrets for PSK authentication",
    note: "The file is read with the configuration (on start and on SIGHUP), as by stunnel.",
  }),
  define({
    name: "pty",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("pty"),
    default: "no",
    help: "yes|no allocate pseudo terminal for 'exec' option",
  }),
  define({
    name: "redirect",
    scope: "service",
    status: "supported",
    ...address("connect"),
    store: toService("redirect"),
    help: "[host:]port to redirect on authentication failures",
    note: "The addresses of a redirect host name are tried in order, whatever `failover` says.",
  }),
  define({
    name: "renegotiation",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("renegotiation"),
    default: "yes",
    help: "yes|no support renegotiation",
  }),
  define({
    name: "requireCert",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: peerSwitch("requireCert"),
    default: "no",
    help: "yes|no require client certificate",
  }),
  define({
    name: "reset",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("reset"),
    default: "yes",
    help: "yes|no send TCP RST on error",
  }),
  define({
    name: "retry",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("retry"),
    default: "no",
    help: "yes|no retry connect+exec section",
  }),
  define({
    name: "securityLevel",
    scope: "service",
    status: "supported",
    ...integer("Illegal security level", 0, 5),
    syntax: "0..5",
    store: toService("securityLevel"),
    default: "2",
    versionDefault: ["2"],
    help: "set the security level",
  }),
  define({
    name: "service",
    scope: "service",
    status: "supported",
    ...text,
    syntax: "SERVICE",
    // Only meaningful in the global section, as the manual says.
    store(t, v: string) {
      if (t.inGlobalSection) t.global.service = v;
    },
    default: "stunnel",
    help: "service name",
  }),
  define({
    name: "setgid",
    scope: "service",
    status: "supported",
    ...account("GID"),
    store: toServiceAndGlobal("setgid"),
    help: "groupname for setgid()",
  }),
  define({
    name: "setuid",
    scope: "service",
    status: "supported",
    ...account("UID"),
    store: toServiceAndGlobal("setuid"),
    help: "username for setuid()",
  }),
  define({
    name: "sessionCacheSize",
    scope: "service",
    status: "supported",
    // strtol() in stunnel: any integer, handed to OpenSSL as it is (0 = no limit).
    ...integer("Illegal session cache size", Number.MIN_SAFE_INTEGER),
    store: toService("sessionCacheSize"),
    default: "1000",
    versionDefault: ["1000"],
    help: "session cache size",
    note: "0 means no limit. Each thread's cache holds the sessions that TLS 1.2 clients " +
      "resume by session ID (stunnel keeps none without sessiond); tickets need no cache.",
  }),
  define({
    name: "sessionCacheTimeout",
    aliases: ["session"],
    scope: "service",
    status: "supported",
    ...integer("Illegal session cache timeout", Number.MIN_SAFE_INTEGER),
    syntax: "SECONDS",
    store: toService("sessionCacheTimeout"),
    default: "300",
    versionDefault: ["300 seconds"],
    help: "session cache timeout (in seconds)",
  }),
  define({
    name: "sessionResume",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: toService("sessionResume"),
    default: "yes",
    help: "yes|no enable session resumption",
  }),
  define({
    name: "sessiond",
    scope: "service",
    status: "supported",
    ...address("connect"),
    syntax: "HOST:PORT",
    // As stunnel: no tickets, so that every session goes through the cache.
    store: (t, v) => {
      t.service.sessiond = v;
      t.service.options.push("NO_TICKET");
    },
    help: "[host:]port use sessiond at host:port",
    note: "stunnel's UDP protocol (IPv4). Server mode: new sessions go to the cache, a session " +
      "the thread's own cache lacks is asked of it (the handshake that offered it waits for the " +
      "answer, at most 200 ms; the thread does not), and session tickets are off. A session " +
      "bigger than 512 bytes in DER (e.g. with a client certificate) is not cached, as in stunnel.",
  }),
  define({
    name: "sni",
    scope: "service",
    status: "supported",
    repeat: true,
    ...text,
    syntax: "SERVER_NAME (client) | SERVICE:PATTERN (server)",
    store: appendTo("sni"),
    help: "primary_service:host_name for an SNI virtual service",
    note: "As in stunnel 5.68 only the last `sni` of a section counts, in both modes.",
  }),
  define({
    name: "socket",
    scope: "service",
    status: "supported",
    repeat: true,
    ...socketOption,
    store: appendTo("socket"),
    help: "a|l|r:option=value[:value]",
    helpMore: ["set an option on accept/local/remote socket"],
    note: "A local (`l:`) option that accepted sockets inherit on Linux is set once on the " +
      "listening socket (which then carries it too), unless an `a:` line gives it another " +
      "value. `l:` options on a Unix socket `accept` or in inetd mode are refused.",
  }),
  define({
    name: "sslVersion",
    scope: "service",
    status: "supported",
    ...tlsVersion,
    store(t, v: string) {
      t.service.sslVersionMin = v;
      t.service.sslVersionMax = v;
    },
    help: "all|SSLv3|TLSv1|TLSv1.1|TLSv1.2|TLSv1.3 TLS version",
  }),
  define({
    name: "sslVersionMax",
    scope: "service",
    status: "supported",
    ...tlsVersion,
    store: toService("sslVersionMax"),
    default: "all",
    help: "all|SSLv3|TLSv1|TLSv1.1|TLSv1.2|TLSv1.3 TLS version",
  }),
  define({
    name: "sslVersionMin",
    scope: "service",
    status: "supported",
    ...tlsVersion,
    store: toService("sslVersionMin"),
    default: "TLSv1",
    help: "all|SSLv3|TLSv1|TLSv1.1|TLSv1.2|TLSv1.3 TLS version",
  }),
  define({
    name: "stack",
    scope: "service",
    status: "supported",
    ...integer("Illegal thread stack size"),
    syntax: "BYTES",
    store: toService("stack"),
    default: "65536",
    versionDefault: ["65536 bytes"],
    help: "thread stack size (in bytes)",
    note: NO_EFFECT,
  }),
  define({
    name: "ticketKeySecret",
    scope: "service",
    status: "supported",
    ...ticketSecret("ticketKeySecret"),
    store: toService("ticketKeySecret"),
    help: "secret key for encryption/decryption TLSv1.3 tickets",
  }),
  define({
    name: "ticketMacSecret",
    scope: "service",
    status: "supported",
    ...ticketSecret("ticketMacSecret"),
    store: toService("ticketMacSecret"),
    help: "key for HMAC operations on TLSv1.3 tickets",
  }),
  define({
    name: "TIMEOUTbusy",
    scope: "service",
    status: "supported",
    ...seconds("busy"),
    store: toService("TIMEOUTbusy"),
    default: "300",
    versionDefault: ["300 seconds"],
    help: "seconds to wait for expected data",
  }),
  define({
    name: "TIMEOUTclose",
    scope: "service",
    status: "supported",
    ...seconds("close"),
    store: toService("TIMEOUTclose"),
    default: "60",
    versionDefault: ["60 seconds"],
    help: "seconds to wait for close_notify",
  }),
  define({
    name: "TIMEOUTconnect",
    scope: "service",
    status: "supported",
    ...seconds("connect"),
    store: toService("TIMEOUTconnect"),
    default: "10",
    versionDefault: ["10 seconds"],
    help: "seconds to connect remote host",
  }),
  define({
    name: "TIMEOUTidle",
    scope: "service",
    status: "supported",
    ...seconds("idle"),
    store: toService("TIMEOUTidle"),
    default: "43200",
    versionDefault: ["43200 seconds"],
    help: "seconds to keep an idle connection",
  }),
  define({
    name: "transparent",
    scope: "service",
    status: "supported",
    ...transparent,
    store: toService("transparent"),
    default: "none",
    help: "none|source|destination|both transparent proxy mode",
    note: "Linux, remote mode (`connect`). `source` in local mode (`exec`, stunnel's " +
      "libstunnel.so preload library) is refused.",
  }),
  define({
    name: "verify",
    scope: "service",
    status: "supported",
    ...integer("Bad verify level", 0, 4),
    syntax: "0..4",
    // stunnel's levels: 0 asks and ignores, 1 verifies a certificate if there is one, 2 requires
    // a verified one, 3 also requires it installed locally, 4 only requires it installed.
    store: (t, level: number) => {
      Object.assign(t.service, {
        verify: level,
        requestCert: true,
        requireCert: level >= 2,
        verifyChain: level >= 1 && level <= 3,
        verifyPeer: level >= 3,
      });
    },
    default: "none",
    versionDefault: ["none"],
    help: "level of peer certificate verification",
  }),
  define({
    name: "verifyChain",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: peerSwitch("verifyChain"),
    default: "no",
    help: "yes|no verify certificate chain",
  }),
  define({
    name: "verifyPeer",
    scope: "service",
    status: "supported",
    ...yesNo,
    store: peerSwitch("verifyPeer"),
    default: "no",
    help: "yes|no verify peer certificate",
  }),
];

const BY_NAME: ReadonlyMap<string, OptionSpec> = new Map(
  OPTIONS.flatMap((spec) =>
    [spec.name, ...spec.aliases ?? []].map((name) => [name.toLowerCase(), spec] as const)
  ),
);

/** Looks an option up the way stunnel does (strcasecmp), including undocumented aliases. */
export function findOption(name: string): OptionSpec | undefined {
  return BY_NAME.get(name.toLowerCase());
}

export function defaultGlobalOptions(): GlobalOptions {
  // Without the C library (Windows) there is no detaching and no syslog: stunnel's Windows
  // build has neither either.
  const libc = "file" in platform().libc;
  return {
    debugFacility: "daemon",
    debugLevel: 5,
    engineSteps: [],
    fips: false,
    foreground: libc ? "no" : "yes",
    log: "append",
    logFormat: "text",
    pid: "",
    RNDbytes: 1024,
    RNDoverwrite: true,
    service: "stunnel",
    syslog: libc,
    tlsEngine: "auto",
    watchFiles: false,
    where: {},
  };
}

export function defaultServiceOptions(name = ""): ServiceOptions {
  return {
    name,
    accept: [],
    CAengine: [],
    checkEmail: [],
    protocolHeader: [],
    checkHost: [],
    checkIP: [],
    ciphers: "HIGH:!aNULL:!SSLv2:!DH:!kDHEPSK",
    ciphersuites: "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
    client: false,
    config: [],
    connect: [],
    curves: "X25519:P-256:X448:P-521:P-384",
    debugLevel: 5,
    delay: false,
    failover: "prio",
    libwrap: false,
    logId: "sequential",
    OCSPaia: false,
    OCSPflag: [],
    OCSPnonce: false,
    options: [],
    pty: false,
    renegotiation: true,
    requestCert: false,
    requireCert: false,
    reset: true,
    retry: false,
    securityLevel: 2,
    sessionCacheSize: 1000,
    sessionCacheTimeout: 300,
    sessionResume: true,
    sni: [],
    socket: [],
    sslVersionMin: "TLSv1",
    stack: 65536,
    TIMEOUTbusy: 300,
    TIMEOUTclose: 60,
    TIMEOUTconnect: 10,
    TIMEOUTidle: 43200,
    transparent: "none",
    verifyChain: false,
    verifyPeer: false,
    where: {},
  };
}
