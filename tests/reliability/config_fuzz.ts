/**
 * Config-parser fuzz: random and mutated stunnel.conf files, with `include` directories and
 * binary data, parsed in-process (lib/config/parser.ts parseConfigText) on an in-memory
 * machine. Every case must either give a Configuration or throw a ConfigError that names
 * where the fault is: the file and line (whose text it quotes, when it quotes one), or, for a
 * section-level error (stunnel's wording), the section. Any other exception fails the case.
 *
 *   deno run -A tests/reliability/config_fuzz.ts [--seed N] [--cases N]
 */
import {
  type ConfigEnv,
  ConfigError,
  parseConfigText,
  systemEnv,
} from "../../lib/config/parser.ts";
import { OPTIONS } from "../../lib/config/options.ts";
import { excerpt, type FuzzSummary, FuzzTally, printSummary } from "./fuzz.ts";
import { fuzzArgs, mutate, Rng } from "./rng.ts";

const CONF = "/etc/stunnel/stunnel.conf";
const INCLUDE_DIR = "/etc/stunnel/conf.d";

type Files = Record<string, string>;

/** The machine: `files` by absolute path (directories implied); PSK files go to a temp dir. */
export function memoryEnv(files: Files, tmp: string): ConfigEnv {
  const parent = (path: string) => path.slice(0, path.lastIndexOf("/"));
  const notFound = () => new Deno.errors.NotFound("No such file or directory (os error 2)");
  const real = systemEnv();
  return {
    readFile(path) {
      if (!(path in files)) throw notFound();
      return files[path];
    },
    readDir(path) {
      const names = Object.keys(files).filter((f) => parent(f) === path);
      if (names.length === 0) throw notFound();
      return names.map((f) => f.slice(path.length + 1));
    },
    isFile: (path) => path in files,
    unreadable: (path) => path in files ? undefined : "No such file or directory",
    userExists: (name) => name === "nobody" || name === "root",
    groupExists: (name) => name === "nogroup" || name === "root",
    tcpService: (name) => ({ https: 443, imaps: 993, smtp: 25 } as Record<string, number>)[name],
    // No name service: everything stays on this machine.
    resolveHost(name) {
      if (/^[\d.]+$|:/.test(name)) return name;
      if (name === "localhost") return "127.0.0.1";
      throw "Name or service not known";
    },
    libwrapMissing: real.libwrapMissing,
    readPskSecrets(path) {
      // The real reader, on a real copy of the in-memory file (it checks the file's mode).
      if (!(path in files)) return real.readPskSecrets(`${tmp}/missing`);
      Deno.writeTextFileSync(`${tmp}/psk`, files[path], { mode: 0o600 });
      return real.readPskSecrets(`${tmp}/psk`);
    },
  };
}

/** Values that fit an option's syntax now and then, and often do not. */
function value(rng: Rng, syntax: string): string {
  const choices = syntax.split("|").map((c) => c.trim()).filter((c) => /^[a-z0-9.-]+$/i.test(c));
  const generic = [
    "yes",
    "no",
    "0",
    "1",
    "-1",
    "65536",
    "99999999999999999999",
    "",
    " ",
    "127.0.0.1:8443",
    "localhost:443",
    ":::8443",
    "8443",
    "/certs/server.pem",
    "/certs/ca.pem",
    "/nonexistent/file",
    "/psk/secrets.txt",
    "a:SO_KEEPALIVE=yes",
    "l:TCP_NODELAY=no",
    "r:SO_LINGER=1:2",
    "SO_BOGUS=1",
    "NO_SSLv3",
    "-NO_TICKET",
    "TLSv1.2",
    "all",
    "imap",
    "socks",
    "connect",
    "ntlm",
    "basic",
    "HIGH:!aNULL",
    "X25519:P-256",
    "=",
    "[x]",
    "\u00e9\u00e8\u2603",
    "%s%n%x",
    "x".repeat(rng.int(100, 5000)),
  ];
  if (choices.length > 0 && rng.chance(0.4)) return rng.pick(choices);
  if (rng.chance(0.1)) return String.fromCharCode(...rng.bytes(rng.int(1, 40)));
  return rng.pick(generic);
}

/** Lines that are right on their own (the generator's way to get past the first line). */
const GOOD_GLOBAL = [
  "debug = info",
  "debug = 7",
  "syslog = no",
  "foreground = yes",
  "pid =",
  "output = /var/log/stunnel.log",
  "setuid = nobody",
  "setgid = nogroup",
  "socket = l:TCP_NODELAY=1",
];
const GOOD_SERVICE = [
  "key = /certs/server.pem",
  "CAfile = /certs/ca.pem",
  "verifyChain = yes",
  "verifyPeer = no",
  "checkHost = localhost",
  "sslVersionMin = TLSv1.2",
  "sslVersionMax = TLSv1.3",
  "ciphers = HIGH:!aNULL",
  "ciphersuites = TLS_AES_256_GCM_SHA384",
  "curves = X25519:P-256",
  "options = NO_TICKET",
  "options = -NO_SSLv3",
  "TIMEOUTidle = 30",
  "TIMEOUTbusy = 5",
  "delay = yes",
  "failover = rr",
  "renegotiation = no",
  "sessionCacheSize = 100",
  "sessionCacheTimeout = 60",
  "logId = sequential",
  "socket = a:SO_KEEPALIVE=yes",
  "socket = r:SO_LINGER=1:2",
  "protocol = smtp",
  "protocol = proxy",
  "protocolHost = example.org:443",
  "PSKsecrets = /psk/secrets.txt",
  "retry = yes",
  "reset = no",
  "OCSPaia = yes",
  "OCSPflag = NOCERTS",
  "requireCert = yes",
  "securityLevel = 2",
  "sni = s:*.example.org",
  "ticketKeySecret = 0123456789abcdef0123456789abcdef",
  "ticketMacSecret = 0123456789abcdef0123456789abcdef",
];

/** A line that is right on its own, or (with probability `wild`) any option and value. */
function optionLine(rng: Rng, scope: "global" | "service", wild: number): string {
  if (!rng.chance(wild)) return rng.pick(scope === "global" ? GOOD_GLOBAL : GOOD_SERVICE);
  const candidates = OPTIONS.filter((o) => scope === "service" ? o.scope !== "global" : true);
  const o = rng.pick(candidates);
  const name = rng.chance(0.1) ? o.name.toUpperCase() : o.name;
  const sep = rng.pick(["=", " = ", "  =\t", "=  "]);
  return `${name}${sep}${value(rng, o.syntax)}`;
}

function section(rng: Rng, name: string, wild: number): string[] {
  const lines = [`[${name}]`];
  if (rng.chance(0.8)) lines.push(`accept = 127.0.0.1:${rng.int(1024, 65535)}`);
  if (rng.chance(0.7)) lines.push(`connect = 127.0.0.1:${rng.int(1, 65535)}`);
  if (rng.chance(0.6)) lines.push("cert = /certs/server.pem");
  if (rng.chance(0.3)) lines.push("client = yes");
  for (let i = rng.int(0, 8); i > 0; i--) lines.push(optionLine(rng, "service", wild));
  return lines;
}

/** A configuration in sections, with comments and oddities; `wild`: see optionLine. */
function generate(rng: Rng, nested: boolean, wild = rng.pick([0.02, 0.1, 0.5])): string {
  const lines: string[] = [];
  if (rng.chance(0.1)) lines.push("\uFEFF; with a byte order mark");
  for (let i = rng.int(0, 5); i > 0; i--) lines.push(optionLine(rng, "global", wild));
  if (nested && rng.chance(0.3)) lines.push(`include = ${INCLUDE_DIR}`);
  for (let i = rng.chance(0.1) ? 0 : rng.int(1, 3); i > 0; i--) {
    lines.push(...section(rng, rng.pick(["s", "imap", "x y", "", "a]b", `svc${i}`, "s"]), wild));
    if (rng.chance(0.1)) lines.push(rng.pick(["# comment", "; comment", "", "   ", "no equals"]));
  }
  const eol = rng.pick(["\n", "\r\n", "\n", "\r"]);
  return lines.join(eol) + (rng.chance(0.8) ? eol : "");
}

/** Random bytes, decoded as a configuration file would be (UTF-8, lossy). */
function binary(rng: Rng): string {
  return new TextDecoder().decode(rng.bytes(rng.int(0, 4096)));
}

function mutated(rng: Rng, text: string): string {
  let bytes: Uint8Array = new TextEncoder().encode(text);
  for (let i = rng.int(1, 4); i > 0; i--) bytes = mutate(rng, bytes);
  return new TextDecoder().decode(bytes);
}

/** One case: the files of the machine, the main file included. */
function makeCase(rng: Rng): Files {
  const files: Files = {
    "/certs/server.pem": "-----BEGIN CERTIFICATE-----",
    "/certs/ca.pem": "-----BEGIN CERTIFICATE-----",
  };
  const kind = rng.int(0, 9);
  let main: string;
  if (kind === 0) main = binary(rng);
  else if (kind <= 4) main = generate(rng, true);
  else main = mutated(rng, generate(rng, true));
  files[CONF] = main;
  if (main.includes("include")) {
    for (let i = rng.int(rng.chance(0.1) ? 0 : 1, 3); i > 0; i--) {
      const body = rng.chance(0.2)
        ? binary(rng)
        : rng.chance(0.5)
        ? mutated(rng, generate(rng, false))
        : generate(rng, false);
      files[`${INCLUDE_DIR}/${rng.pick(["a", "b", "c", "z"])}${i}.conf`] = rng.chance(0.1)
        ? `include = ${INCLUDE_DIR}\n` // an include of its own directory: must stop
        : body;
    }
  }
  if (rng.chance(0.3)) {
    files["/psk/secrets.txt"] = rng.chance(0.5)
      ? mutated(rng, "client1:0123456789abcdef0123456789abcdef\nclient2:averyveryverylongsecret\n")
      : binary(rng);
  }
  return files;
}

/** The line `n` (1-based) of `text` as the parser splits it, without a trailing CR. */
function lineOf(text: string, n: number): string | undefined {
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  const line = lines[n - 1];
  return line?.endsWith("\r") ? line.slice(0, -1) : line;
}

/** The rule a ConfigError must follow; undefined when it does. */
function badError(e: ConfigError, files: Files): string | undefined {
  if (!e.where) {
    // Section-level errors are stunnel's "Service [NAME]: ..." (or inetd mode's), no line.
    return /^(Service \[.*\]|Inetd mode): \S/s.test(e.message)
      ? undefined
      : "a ConfigError without a line that names no section";
  }
  const { file, line } = e.where;
  if (!(file in files)) return `names ${file}, which is not a file of the case`;
  const text = lineOf(files[file], line);
  if (text === undefined) return `names line ${line} of ${file}, which has fewer lines`;
  if (!e.message.includes(`${file}:${line}: `)) return "the message does not name file:line";
  const quoted = e.message.startsWith(`${file}:${line}: "`);
  if (quoted && !e.message.startsWith(`${file}:${line}: "${text}": `)) {
    return `quotes another text than line ${line} (${excerpt(text, 80)})`;
  }
  return undefined;
}

export function configFuzz(seed: number, cases: number): FuzzSummary {
  const tally = new FuzzTally("config fuzz", seed);
  const tmp = Deno.makeTempDirSync({ prefix: "config-fuzz-" });
  const root = new Rng(seed);
  try {
    for (let i = 0; i < cases; i++) {
      const rng = root.fork();
      const files = makeCase(rng);
      const where = `case ${i} of --seed ${seed}: ${excerpt(files[CONF])}`;
      try {
        parseConfigText(files[CONF], CONF, memoryEnv(files, tmp));
        tally.outcome("accepted");
      } catch (e) {
        if (!(e instanceof ConfigError)) {
          tally.fail(`${(e as Error)?.name ?? typeof e} escaped`, `${String(e)}; ${where}`);
          continue;
        }
        const bad = badError(e, files);
        if (bad) {
          tally.fail("unclear ConfigError", `${bad}: ${JSON.stringify(e.message)}; ${where}`);
        } else {tally.outcome(
            e.where ? "ConfigError naming file:line" : "ConfigError naming the section",
          );}
      }
    }
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
  return tally.summary;
}

if (import.meta.main) {
  const { seed, cases } = fuzzArgs(Deno.args, 5000);
  printSummary(configFuzz(seed, cases));
}
