/**
 * What each option needs of the platform beyond Deno's own API (sys/platform.ts): nothing, the
 * C library, or socket descriptors. Every option of the table is classified here (a test checks
 * that none is missing), and a configuration that sets one this platform cannot honour is
 * refused at start-up with the line and the reason.
 */
import type { Configuration, GlobalOptions, ServiceOptions } from "./types.ts";
import { HONOURED, type Refusal, refusalLines, refusals, type Rule } from "./refusals.ts";
import { denoTlsRefusals } from "./deno_tls.ts";
import { type Platform, withoutDescriptors, withoutLibc } from "../sys/platform.ts";

type Need = "portable" | "libc" | "descriptors";

/** The need of an option, or of its value (a value that needs nothing: "portable"). */
type Needs =
  | Need
  | { service(opts: ServiceOptions): Need }
  | { global(global: GlobalOptions): Need };

const P = "portable";

/** Every option of the table (options.ts). */
export const PLATFORM_NEEDS: Record<string, Needs> = {
  // global options
  chroot: "libc",
  compression: P,
  EGD: P,
  engine: P,
  engineCtrl: P,
  engineDefault: P,
  fips: P,
  // detaching: setsid, and stdout/stderr onto /dev/null
  foreground: { global: (g) => g.foreground === "no" ? "libc" : P },
  iconActive: P,
  iconError: P,
  iconIdle: P,
  libcrypto: P,
  libssl: P,
  log: P,
  logFormat: P,
  metrics: P,
  output: P,
  pid: P,
  RNDbytes: P,
  RNDfile: P,
  RNDoverwrite: P,
  syslog: { global: (g) => g.syslog ? "libc" : P },
  taskbar: P,
  tlsEngine: P,
  watchFiles: P,
  // service-level options
  accept: P,
  alpn: P,
  CAengine: P,
  CAfile: P,
  CApath: P,
  cert: P,
  checkEmail: P,
  checkHost: P,
  checkIP: P,
  ciphers: P,
  ciphersuites: P,
  client: P,
  config: P,
  connect: P,
  CRLfile: P,
  CRLpath: P,
  curves: P,
  debug: P,
  delay: P,
  engineId: P,
  engineNum: P,
  // a program on a socket of ours (posix_spawn, socketpair) or on a pseudo-terminal
  exec: "descriptors",
  execArgs: P,
  failover: P,
  ident: P,
  include: P,
  key: P,
  libwrap: { service: (o) => o.libwrap ? "descriptors" : P },
  local: "descriptors",
  logId: P,
  OCSP: P,
  OCSPaia: P,
  OCSPflag: P,
  OCSPnonce: P,
  options: P,
  proxyVersion: P,
  // the socks client asks the accepted socket for its original destination
  protocol: { service: (o) => o.client && o.protocol === "socks" ? "descriptors" : P },
  protocolAuthentication: P,
  protocolDomain: P,
  protocolHeader: P,
  protocolHost: P,
  protocolPassword: P,
  protocolUsername: P,
  PSKidentity: P,
  PSKsecrets: P,
  pty: { service: (o) => o.pty ? "descriptors" : P },
  redirect: P,
  renegotiation: P,
  requireCert: P,
  // SO_LINGER 0 on the socket; without descriptors the default (yes) falls back to a close
  reset: { service: (o) => o.reset ? "descriptors" : P },
  retry: P,
  securityLevel: P,
  service: P,
  sessionCacheSize: P,
  sessionCacheTimeout: P,
  sessionResume: P,
  sessiond: P,
  setgid: "libc",
  setuid: "libc",
  sni: P,
  socket: "descriptors",
  sslVersion: P,
  sslVersionMax: P,
  sslVersionMin: P,
  stack: P,
  ticketKeySecret: P,
  ticketMacSecret: P,
  TIMEOUTbusy: P,
  TIMEOUTclose: P,
  TIMEOUTconnect: P,
  TIMEOUTidle: P,
  transparent: { service: (o) => o.transparent !== "none" ? "descriptors" : P },
  verify: P,
  verifyChain: P,
  verifyPeer: P,
};

/** The rules of `platform`: each need it cannot meet becomes the reason of a refusal. */
function rulesFor(platform: Platform): Record<string, Rule> {
  const why = (need: Need) =>
    need === "libc"
      ? withoutLibc(platform)
      : need === "descriptors"
      ? withoutDescriptors(platform)
      : undefined;
  const rules: Record<string, Rule> = {};
  for (const [option, needs] of Object.entries(PLATFORM_NEEDS)) {
    rules[option] = typeof needs === "string"
      ? (why(needs) === undefined ? HONOURED : { refused: why(needs)! })
      : "global" in needs
      ? { global: (g) => why(needs.global(g)) }
      : { service: (o) => why(needs.service(o)) };
  }
  return rules;
}

/** Every option `config` sets that `platform` cannot honour, in file order. */
export function platformRefusals(config: Configuration, platform: Platform): Refusal[] {
  return refusals(config, rulesFor(platform), withoutDescriptors(platform));
}

/**
 * Every refusal of `config` in this run, as log lines: the platform's, and Deno's TLS's when
 * that is the engine (`denoTls`: how it came to be chosen).
 */
export function refusalsOfRun(
  config: Configuration,
  platform: Platform,
  denoTls: string | undefined,
): string[] {
  return [
    ...(denoTls === undefined ? [] : refusalLines(denoTlsRefusals(config), `with ${denoTls}`)),
    ...refusalLines(platformRefusals(config, platform), "on this platform"),
  ];
}
