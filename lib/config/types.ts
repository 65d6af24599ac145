/** Shapes shared by the configuration (producer) and the daemon (consumer). */

/** An endpoint of `accept`, `connect`, `redirect` or `local`. */
export type Address =
  | { kind: "tcp"; host: string; port: number }
  | { kind: "unix"; path: string };

/** Where a value came from, for error messages that name file and line. */
export interface Where {
  file: string;
  line: number;
}

export type Foreground = "yes" | "quiet" | "no";
export type LogId = "sequential" | "unique" | "thread" | "process";

export interface GlobalOptions {
  chroot?: string;
  compression?: "deflate" | "zlib";
  /** syslog facility name, lower case ("daemon" unless `debug = FACILITY.LEVEL`). */
  debugFacility: string;
  /** 0..7: the global section's `debug` level, used for messages that belong to no service. */
  debugLevel: number;
  EGD?: string;
  /** The `engine`, `engineCtrl` and `engineDefault` lines in file order (run in that order). */
  engineSteps: EngineStep[];
  fips: boolean;
  foreground: Foreground;
  log: "append" | "overwrite";
  /** Extension: `json` writes one JSON object per log line. */
  logFormat: "text" | "json";
  /** `metrics = [HOST:]PORT` (extension): where /metrics and /healthz are served. */
  metrics?: { host: string; port: number };
  output?: string;
  /** "" means no pid file (stunnel's default). */
  pid: string;
  RNDbytes: number;
  RNDfile?: string;
  RNDoverwrite: boolean;
  service: string;
  setgid?: string;
  setuid?: string;
  syslog: boolean;
  /** Extension: which TLS engine runs the services (`auto`: OpenSSL when it loads). */
  tlsEngine: "auto" | "openssl" | "deno";
  /** Extension: the OpenSSL 3 files to load (else STUNNEL_LIBSSL/LIBCRYPTO, else a search). */
  libssl?: string;
  libcrypto?: string;
  /** `watchFiles = yes` (extension): a changed cert, key, CAfile or CRLfile reloads its context. */
  watchFiles: boolean;
  /** The lines the options above came from, keyed by option name (for late errors). */
  where: Record<string, Where>;
}

export interface ServiceOptions {
  /** Section name; "" for inetd mode (no section). */
  name: string;
  /** Every `accept` line: the service listens on each address that can be bound. */
  accept: Address[];
  /** Extension: the ALPN protocols, in order of preference. */
  alpn?: string[];
  /** Engine-specific CA certificate identifiers (`CAengine`, one per line), in order. */
  CAengine: string[];
  CAfile?: string;
  CApath?: string;
  cert?: string;
  checkEmail: string[];
  checkHost: string[];
  checkIP: string[];
  ciphers: string;
  ciphersuites: string;
  client: boolean;
  config: string[];
  connect: Address[];
  CRLfile?: string;
  CRLpath?: string;
  curves: string;
  /** 0..7, per service as in stunnel (the facility is global). */
  debugLevel: number;
  delay: boolean;
  /** `engineId` or `engineNum` (the last one counts): the engine of `key` and `cert`. */
  engine?: EngineRef;
  exec?: string;
  execArgs?: string[];
  failover: "rr" | "prio";
  ident?: string;
  key?: string;
  libwrap: boolean;
  local?: string;
  logId: LogId;
  OCSP?: string;
  OCSPaia: boolean;
  OCSPflag: string[];
  OCSPnonce: boolean;
  /** `options =` lines in order; a leading "-" clears the option. */
  options: string[];
  protocol?: string;
  protocolAuthentication?: string;
  protocolDomain?: string;
  /** Extra header lines of a CONNECT request, in order. */
  protocolHeader: string[];
  protocolHost?: string;
  /** Extension: the PROXY protocol version `protocol = proxy` sends (undefined: 1). */
  proxyVersion?: 1 | 2;
  protocolPassword?: string;
  protocolUsername?: string;
  PSKidentity?: string;
  /** The PSKsecrets file, read with the configuration (as stunnel reads it). */
  PSKsecrets?: PskSecrets;
  pty: boolean;
  redirect?: Address;
  renegotiation: boolean;
  /** A peer certificate is asked for (set by verify, verifyChain, verifyPeer, requireCert). */
  requestCert: boolean;
  /** A peer certificate is mandatory (unless `redirect` sends peers without one elsewhere). */
  requireCert: boolean;
  reset: boolean;
  retry: boolean;
  securityLevel: number;
  sessionCacheSize: number;
  sessionCacheTimeout: number;
  sessionResume: boolean;
  sessiond?: Address;
  setgid?: string;
  setuid?: string;
  /** Server mode: "MASTER:PATTERN" entries; client mode: at most one name ("" disables SNI). */
  sni: string[];
  /** Server mode: the last `sni = MASTER:PATTERN`, checked (this section is an SNI secondary). */
  sniVirtual?: { master: string; pattern: string };
  socket: string[];
  sslVersionMin?: string;
  sslVersionMax?: string;
  stack: number;
  ticketKeySecret?: Uint8Array;
  ticketMacSecret?: Uint8Array;
  TIMEOUTbusy: number;
  TIMEOUTclose: number;
  TIMEOUTconnect: number;
  TIMEOUTidle: number;
  transparent: "none" | "source" | "destination" | "both";
  verify?: number;
  verifyChain: boolean;
  verifyPeer: boolean;
  /** The lines the options above came from, keyed by option name. */
  where: Record<string, Where>;
}

/** A configuration line as stunnel quotes it in an error: where, and its text. */
export interface ConfigLine {
  where: Where;
  text: string;
}

/** One global `engine`, `engineCtrl` or `engineDefault` line. */
export interface EngineStep {
  option: "engine" | "engineCtrl" | "engineDefault";
  value: string;
  line: ConfigLine;
}

/** A service's `engineId = ID` or `engineNum = N` (1-based). */
export interface EngineRef {
  id?: string;
  num?: number;
  line: ConfigLine;
}

/** A PSKsecrets file: its identities and keys in file order. */
export interface PskSecrets {
  path: string;
  keys: { identity: string; key: Uint8Array }[];
  /** What reading it had to say (stunnel's lines), logged when the service starts. */
  notes: { level: number; text: string }[];
}

export interface Configuration {
  /** Absolute path of the main file, or "-fd N". */
  source: string;
  global: GlobalOptions;
  /** In file order. In inetd mode a single service with name "". */
  services: ServiceOptions[];
  inetd: boolean;
  /** Every file read (the main one, then included ones), in order; for the log. */
  files?: { path: string; utf8Bom: boolean }[];
}
