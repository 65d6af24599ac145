/** stunnel.conf parser: text → Configuration, with stunnel's grammar and error messages. */

import { libwrap } from "../sys/ffi.ts";
import { getaddrinfoSync } from "../sys/resolve.ts";
import { readPskSecrets } from "./psk_secrets.ts";
import { osError } from "../sys/oserror.ts";
import { lookupTcpService } from "./address.ts";
import {
  defaultGlobalOptions,
  defaultServiceOptions,
  findOption,
  OptionError,
  type OptionSpec,
  type System,
} from "./options.ts";
import type { Configuration, GlobalOptions, ServiceOptions, Where } from "./types.ts";
import { checkProtocol, protocolIsEndpoint } from "./protocols.ts";

/** A configuration error whose message is already formatted the way stunnel logs it. */
export class ConfigError extends Error {
  /** Every line stunnel would log for this error, in order (`message` is one of them). */
  readonly lines: readonly string[];
  /** The line at fault, when there is one. */
  readonly where?: Where;

  constructor(message: string, options: { lines?: readonly string[]; where?: Where } = {}) {
    super(message);
    this.name = "ConfigError";
    this.lines = options.lines ?? [message];
    this.where = options.where;
  }
}

/** Everything the parser needs from the machine; tests substitute an in-memory one. */
export interface ConfigEnv extends System {
  /** Decoded as UTF-8 with any byte order mark kept (stunnel reports it). */
  readFile(path: string): string;
  /** Entry names of a directory; throws the OS error. */
  readDir(path: string): string[];
  /** True for regular files (following symlinks, as stat() does). */
  isFile(path: string): boolean;
}

export function systemEnv(): ConfigEnv {
  return {
    readFile: (path) =>
      new TextDecoder("utf-8", { ignoreBOM: true }).decode(Deno.readFileSync(path)),
    readDir: (path) => [...Deno.readDirSync(path)].map((entry) => entry.name),
    isFile(path) {
      try {
        return Deno.statSync(path).isFile;
      } catch {
        return false;
      }
    },
    unreadable(path) {
      try {
        Deno.openSync(path, { read: true }).close();
        return Deno.statSync(path).isDirectory ? "Is a directory" : undefined;
      } catch (e) {
        return osError(e).text;
      }
    },
    userExists: (name) => databaseHas("/etc/passwd", name),
    groupExists: (name) => databaseHas("/etc/group", name),
    tcpService: (name) => lookupTcpService(name),
    resolveHost: (name) => getaddrinfoSync(name, { passive: true })[0],
    libwrapMissing() {
      try {
        libwrap();
        return undefined;
      } catch (e) {
        const reason = e instanceof Error ? e.message : String(e);
        return reason.replace(/^(Could not open library: )+/, "");
      }
    },
    readPskSecrets,
  };
}

/** stunnel's words for where a configuration came from: `file /x.conf` or `descriptor 3`. */
export function describeSource(source: string): string {
  return source.startsWith("descriptor ") ? source : `file ${source}`;
}

/** Reads `path` (made absolute as stunnel's realpath() does) and parses it. */
export async function loadConfig(
  path: string,
  env: ConfigEnv = systemEnv(),
): Promise<Configuration> {
  let source: string;
  try {
    source = await Deno.realPath(path);
  } catch (e) {
    const { text, errno } = osError(e);
    const message = `Invalid configuration file name "${path}"`;
    throw new ConfigError(message, { lines: [message, `realpath: ${text} (${errno})`] });
  }
  let text: string;
  try {
    text = env.readFile(source);
  } catch {
    throw new ConfigError("Cannot open configuration file");
  }
  return parseConfigText(text, source, env);
}

/** Parses configuration text; `file` is used in messages and as the base of nothing else. */
export function parseConfigText(
  text: string,
  file: string,
  env: ConfigEnv = systemEnv(),
): Configuration {
  const state: State = {
    env,
    global: defaultGlobalOptions(),
    defaults: defaultServiceOptions(),
    services: [],
    sectionLines: new Map(),
    files: [],
    depth: 0,
  };
  parseFile(text, file, state);
  const inetd = state.services.length === 0;
  const services = inetd ? [{ ...structuredClone(state.defaults), name: "" }] : state.services;
  // Each section is finished knowing only the sections up to itself (an SNI master must come
  // first, as in stunnel).
  services.forEach((service, i) => finishService(service, inetd, services.slice(0, i + 1)));
  return { source: file, global: state.global, services, inetd, files: state.files };
}

interface State {
  env: ConfigEnv;
  global: GlobalOptions;
  /** Service-level options of the global section: the starting point of every section. */
  defaults: ServiceOptions;
  services: ServiceOptions[];
  /** The section being read; undefined while in the global section. */
  current?: ServiceOptions;
  sectionLines: Map<string, Where>;
  files: { path: string; utf8Bom: boolean }[];
  depth: number;
}

/** Enough for any sane layout; stops `include` of its own directory from recursing forever. */
const MAX_INCLUDE_DEPTH = 16;

const NOT_VALID_HERE = "Specified option name is not valid here";

function parseFile(text: string, file: string, state: State): void {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  state.files.push({ path: file, utf8Bom: text.startsWith("\uFEFF") });
  lines.forEach((line, index) => {
    const raw = line.endsWith("\r") ? line.slice(0, -1) : line;
    parseLine(raw, { file, line: index + 1 }, state);
  });
}

function parseLine(raw: string, where: Where, state: State): void {
  const body = cTrim(where.line === 1 && raw.startsWith("\uFEFF") ? raw.slice(1) : raw);
  if (body === "" || body.startsWith("#") || body.startsWith(";")) return;
  const fail = (reason: string, before: readonly string[] = []): never => {
    const message = `${where.file}:${where.line}: "${raw}": ${reason}`;
    throw new ConfigError(message, { where, lines: [...before, message] });
  };

  if (body.startsWith("[") && body.endsWith("]")) {
    startSection(body.slice(1, -1), where, state);
    return;
  }

  const eq = body.indexOf("=");
  if (eq < 0) fail("No '=' found");
  const name = cTrim(body.slice(0, eq));
  const value = cTrim(body.slice(eq + 1));

  if (name.toLowerCase() === "include") {
    includeDirectory(value, raw, where, state);
    return;
  }

  const spec = findOption(name);
  const inGlobalSection = state.current === undefined;
  if (
    !spec || typeof spec.status === "object" || (spec.scope === "global" && !inGlobalSection)
  ) {
    fail(NOT_VALID_HERE);
  }
  const option = spec as OptionSpec;
  let parsed: unknown;
  try {
    parsed = option.parse(value, { system: state.env, inGlobalSection });
  } catch (reason) {
    if (reason instanceof OptionError) fail(reason.reason, reason.before);
    if (typeof reason !== "string") throw reason;
    fail(reason);
  }
  if (option.status === "later") {
    throw new ConfigError(
      `${where.file}:${where.line}: option '${option.name}' is not supported yet`,
      { where },
    );
  }
  const service = state.current ?? state.defaults;
  option.store(
    { global: state.global, service, inGlobalSection, line: { where, text: raw } },
    parsed,
  );
  service.where[option.name] = where;
  if (inGlobalSection) state.global.where[option.name] = where;
}

function startSection(name: string, where: Where, state: State): void {
  // stunnel allows duplicate names silently; our spec requires refusing them.
  if (state.sectionLines.has(name)) {
    throw new ConfigError(`${where.file}:${where.line}: duplicate service name [${name}]`, {
      where,
    });
  }
  state.sectionLines.set(name, where);
  state.current = { ...structuredClone(state.defaults), name };
  state.services.push(state.current);
}

function includeDirectory(dir: string, raw: string, where: Where, state: State): void {
  const at = `${where.file}:${where.line}: "${raw}"`;
  let names: string[];
  try {
    names = state.env.readDir(dir);
  } catch (e) {
    const { text, errno } = osError(e);
    const message = `${at}: Failed to include directory`;
    throw new ConfigError(message, { where, lines: [`scandir: ${text} (${errno})`, message] });
  }
  if (state.depth >= MAX_INCLUDE_DEPTH) {
    throw new ConfigError(`${at}: Too many nested includes`, { where });
  }
  // alphasort() in the C locale: plain code unit order.
  for (const name of names.sort((a, b) => a < b ? -1 : a > b ? 1 : 0)) {
    const path = `${dir}/${name}`;
    if (!state.env.isFile(path)) continue;
    const failedFile = `${at}: Failed to include a file`;
    let text: string;
    try {
      text = state.env.readFile(path);
    } catch {
      throw new ConfigError(failedFile, {
        where,
        lines: ["Cannot open configuration file", failedFile],
      });
    }
    state.depth++;
    try {
      parseFile(text, path, state);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      // The message keeps naming the included file; stunnel adds the include line after it.
      throw new ConfigError(e.message, { where: e.where, lines: [...e.lines, failedFile] });
    } finally {
      state.depth--;
    }
  }
}

type Fail = (reason: string) => never;

/** End-of-section checks and derived defaults, in stunnel's order where it has them. */
function finishService(service: ServiceOptions, inetd: boolean, known: ServiceOptions[]): void {
  const prefix = inetd ? "Inetd mode" : `Service [${service.name}]`;
  const fail: Fail = (reason) => {
    throw new ConfigError(`${prefix}: ${reason}`);
  };
  // A later `sni` replaces an earlier one, in both modes, as in stunnel.
  service.sni = service.sni.slice(-1);
  const sniFail = sniFailure(service, prefix);
  if (service.client && service.sni[0]?.includes(":")) {
    sniFail(
      'SERVICE:PATTERN is the server-mode form of "sni" (SNI secondary services are TLS servers)',
    );
  }
  checkCredentials(service, fail);
  if (!service.client && service.sni[0] !== undefined) {
    attachToSniPrimary(service, inetd ? [] : known, sniFail);
  }
  checkProtocolOptions(service, prefix);
  deriveDefaults(service);
  checkPeerAuthentication(service, fail);
  checkEndpoints(service, inetd, fail);
  checkSocketSupport(service, inetd, fail);
}

/** The failure of the section's (last) `sni` line. */
function sniFailure(service: ServiceOptions, prefix: string): Fail {
  const sni = service.sni[0];
  const where = service.where.sni;
  return (reason) => {
    throw new ConfigError(`${prefix}: ${where.file}:${where.line}: "sni = ${sni}": ${reason}`, {
      where,
    });
  };
}

/**
 * A server's certificate (or PSK keys), then PSK and ticket secrets as stunnel checks them (each
 * is ignored in the other mode).
 */
function checkCredentials(service: ServiceOptions, fail: Fail): void {
  if (!service.client && !service.cert && !service.PSKsecrets) {
    fail("TLS server needs a certificate");
  }
  const psk = service.PSKsecrets;
  if (service.client && psk && service.PSKidentity !== undefined) {
    if (!psk.keys.some((k) => k.identity === service.PSKidentity)) {
      fail("No key found for the specified PSK identity");
    }
  }
  if (!service.client && !service.ticketKeySecret !== !service.ticketMacSecret) {
    fail('"ticketKeySecret" and "ticketMacSecret" must be set together');
  }
}

/**
 * An SNI secondary service (server mode, `sni = SERVICE:PATTERN`); its primary service must be
 * a server-mode section among `candidates`, defined before it (or this one), as in stunnel.
 */
function attachToSniPrimary(
  service: ServiceOptions,
  candidates: ServiceOptions[],
  sniFail: Fail,
): void {
  const sni = service.sni[0];
  const colon = sni.indexOf(":");
  if (colon < 0) sniFail("Invalid SNI parameter format");
  const virtual = { master: sni.slice(0, colon), pattern: sni.slice(colon + 1) };
  const master = candidates.find((s) => s.name === virtual.master);
  if (!master) sniFail("SNI section name not found");
  else if (master.client) sniFail("SNI primary service is a TLS client");
  service.sniVirtual = virtual;
  // stunnel: a renegotiation always negotiates a new session, as the secondary service's
  // settings (including access control) differ from the primary's.
  service.options.push("NO_SESSION_RESUMPTION_ON_RENEGOTIATION");
}

/** `protocol` and the protocol* options (config/protocols.ts). */
function checkProtocolOptions(service: ServiceOptions, prefix: string): void {
  const problem = checkProtocol(service);
  if (problem) {
    throw new ConfigError(`${prefix}: ${problem.message}`, { where: problem.where });
  }
}

function deriveDefaults(service: ServiceOptions): void {
  // The manual: "Delayed resolver inflicts failover = prio".
  if (service.delay) service.failover = "prio";
  if (service.cert && !service.key) {
    service.key = service.cert;
    service.where.key = service.where.cert;
  }
}

/** Peer authentication, in stunnel's order (checkEmail/Host/IP, redirect, verifyChain/Peer). */
function checkPeerAuthentication(service: ServiceOptions, fail: Fail): void {
  const verifies = service.verifyChain || service.verifyPeer;
  const subjectChecks = service.checkEmail.length + service.checkHost.length +
    service.checkIP.length;
  if (subjectChecks > 0 && !verifies) {
    fail('Either "verifyChain" or "verifyPeer" has to be enabled');
  }
  if (service.redirect && service.client) fail('"redirect" is unsupported in client sections');
  if (service.redirect && !verifies) {
    fail('Either "verifyChain" or "verifyPeer" has to be enabled for "redirect" to work');
  }
  if (verifies && !service.CAfile && !service.CApath && service.CAengine.length === 0) {
    fail('Either "CAengine", "CAfile" or "CApath" has to be configured');
  }
}

/** Two endpoints in a section (accept and connect, or their stand-ins), one in inetd mode. */
function checkEndpoints(service: ServiceOptions, inetd: boolean, fail: Fail): void {
  const endpoints = [
    service.accept.length > 0,
    service.connect.length > 0,
    service.exec !== undefined,
    service.transparent === "destination" || service.transparent === "both",
    // A secondary service is reached through its primary service's `accept`.
    service.sniVirtual !== undefined,
    // A protocol that chooses the remote itself (socks in server mode).
    protocolIsEndpoint(service),
  ].filter(Boolean).length;
  if (inetd) {
    if (service.accept.length > 0) fail("'accept' option is only allowed in a [section]");
    if (endpoints !== 1) fail("Inetd mode must define one endpoint");
  } else if (endpoints !== 2) {
    const accept = service.where.accept;
    if (service.sniVirtual && accept) {
      fail(
        `Each service must define two endpoints: ${accept.file}:${accept.line}: "accept" in an ` +
          `SNI secondary service (its connections come from [${service.sniVirtual.master}])`,
      );
    }
    fail("Each service must define two endpoints");
  }
}

/** What lib/sockopt.ts, lib/localsock.ts and lib/netconn.ts cannot do on this runtime. */
function checkSocketSupport(s: ServiceOptions, inetd: boolean, fail: Fail): void {
  const at = (option: string) => {
    const w = s.where[option];
    return w ? `${w.file}:${w.line}: ` : "";
  };
  // Deno's Unix and stdio sockets have no descriptor to find (TCP ones are found by address).
  if (
    s.socket.some((line) => line.startsWith("l:")) &&
    (inetd || s.accept.some((a) => a.kind === "unix"))
  ) {
    fail(
      `${at("socket")}local socket options (socket = l:...) are not supported on ` +
        `${inetd ? "the inetd mode socket" : "a Unix socket accept"}`,
    );
  }
  const source = s.transparent === "source" || s.transparent === "both";
  if (source && s.exec !== undefined && s.connect.length === 0) {
    fail(
      `${at("transparent")}transparent source in local mode (exec) is not supported: it needs ` +
        "stunnel's libstunnel.so preload library",
    );
  }
}

/** C isspace(): JavaScript's trim() would also eat the BOM and other Unicode spaces. */
function cTrim(text: string): string {
  return text.replace(/^[ \t\n\v\f\r]+|[ \t\n\v\f\r]+$/g, "");
}

/** strerror() text and errno of a Deno error ("No such file or directory (os error 2): ..."). */
function databaseHas(path: string, name: string): boolean {
  try {
    return Deno.readTextFileSync(path).split("\n").some((line) => line.split(":")[0] === name);
  } catch {
    return false;
  }
}
