/**
 * What Deno's own TLS (`tlsEngine = deno`: Deno.listenTls, Deno.startTls) can honour: every
 * option of the table is classified here, and a configuration that sets one it cannot honour
 * is refused at start-up with the line and the reason (never ignored).
 */
import type { Configuration, ServiceOptions } from "./types.ts";
import { HONOURED, type Refusal, refusals, type Rule } from "./refusals.ts";

const ENGINES = "OpenSSL engines: Deno's TLS has none";
const PRNG = "OpenSSL's random generator: Deno's TLS has its own";
const NO_CLIENT_CERTS = "a TLS server of Deno's (Deno.listenTls) cannot verify client certificates";
const SESSIONS = "Deno's TLS gives no control of sessions and their cache";
const CIPHERS = "Deno's TLS (rustls) has its own fixed choice of ciphers and groups";
const OCSP = "Deno's TLS makes no OCSP checks";
const CRL = "Deno's TLS checks no certificate revocation lists";
const PSK = "Deno's TLS has no pre-shared keys";
const OWN_SOCKET = "the remote socket is then made by us, not by Deno, and Deno.startTls " +
  "upgrades only Deno's own TCP connections";
const OPENSSL_FILES = "it names OpenSSL's files, which Deno's TLS does not load";

/** Protocols whose server mode reads plaintext before the TLS handshake (STARTTLS and kin). */
const PLAINTEXT_FIRST_SERVERS = ["capwin", "cifs", "imap", "pgsql", "pop3", "smtp"];

const TLS_1_2 = ["TLSv1.2"];
const TLS_1_3 = ["TLSv1.3", "all"];

/** Every option of the table (options.ts): a test checks that none is missing. */
export const DENO_TLS_RULES: Record<string, Rule> = {
  // global options
  chroot: HONOURED,
  compression: { refused: "Deno's TLS has no compression" },
  EGD: { refused: PRNG },
  engine: { refused: ENGINES },
  engineCtrl: { refused: ENGINES },
  engineDefault: { refused: ENGINES },
  fips: { global: (g) => g.fips ? "Deno's TLS has no FIPS mode" : undefined },
  foreground: HONOURED,
  iconActive: HONOURED,
  iconError: HONOURED,
  iconIdle: HONOURED,
  libcrypto: { refused: OPENSSL_FILES },
  libssl: { refused: OPENSSL_FILES },
  log: HONOURED,
  logFormat: HONOURED,
  metrics: HONOURED,
  output: HONOURED,
  pid: HONOURED,
  RNDbytes: { refused: PRNG },
  RNDfile: { refused: PRNG },
  RNDoverwrite: { refused: PRNG },
  syslog: HONOURED,
  taskbar: HONOURED,
  tlsEngine: HONOURED,
  watchFiles: {
    global: (g) =>
      g.watchFiles
        ? "Deno's TLS takes a server's certificate when it starts listening, and a client's " +
          "CA certificates when it connects: it renews no context"
        : undefined,
  },
  // service-level options
  accept: {
    service: (o) =>
      !o.client && o.accept.some((a) => a.kind === "unix")
        ? "Deno.listenTls listens on TCP only, not on a Unix socket"
        : undefined,
  },
  alpn: HONOURED,
  CAengine: { refused: ENGINES },
  CAfile: { service: (o) => o.client ? undefined : NO_CLIENT_CERTS },
  CApath: { refused: "Deno's TLS takes CA certificates as PEM text (CAfile), not a directory" },
  cert: {
    service: (o) => o.client ? "Deno.startTls sends no client certificate" : pemOnly(o.cert),
  },
  checkEmail: { refused: "Deno's TLS checks a host name only" },
  checkHost: {
    service(o) {
      if (!o.client) return NO_CLIENT_CERTS;
      if (o.checkHost.length > 1) return "Deno's TLS checks one host name, not a list";
      const sni = o.sni[0];
      if (sni !== undefined && sni !== o.checkHost[0]) {
        return "Deno's TLS sends the name it checks as SNI: `sni` must be the same name";
      }
      return undefined;
    },
  },
  checkIP: { refused: "Deno's TLS checks a host name only" },
  ciphers: { refused: CIPHERS },
  ciphersuites: { refused: CIPHERS },
  client: {
    service: (o) =>
      o.client && !o.verifyChain
        ? "Deno's TLS always verifies the server's certificate chain: set `verifyChain = yes` " +
          "and `CAfile`"
        : undefined,
  },
  config: { refused: "OpenSSL's configuration commands: Deno's TLS has none" },
  connect: {
    service: (o) =>
      o.client && o.connect.some((a) => a.kind === "unix")
        ? "Deno.startTls upgrades TCP connections only, not Unix sockets"
        : undefined,
  },
  CRLfile: { refused: CRL },
  CRLpath: { refused: CRL },
  curves: { refused: CIPHERS },
  debug: HONOURED,
  delay: HONOURED,
  engineId: { refused: ENGINES },
  engineNum: { refused: ENGINES },
  exec: {
    service: (o) =>
      !o.client && o.accept.length === 0
        ? "a connect+exec section in server mode runs TLS on a socket Deno did not accept"
        : undefined,
  },
  execArgs: HONOURED,
  failover: HONOURED,
  ident: HONOURED,
  include: HONOURED,
  key: { service: (o) => o.client ? "Deno.startTls sends no client certificate" : undefined },
  libwrap: HONOURED,
  local: { service: (o) => o.client ? OWN_SOCKET : undefined },
  logId: HONOURED,
  OCSP: { refused: OCSP },
  OCSPaia: { refused: OCSP },
  OCSPflag: { refused: OCSP },
  OCSPnonce: { refused: OCSP },
  options: { refused: "OpenSSL's SSL_OP_* options: Deno's TLS has none" },
  proxyVersion: {
    service: (o) =>
      o.proxyVersion === 2
        ? "the PROXY v2 header's TLS fields (version, cipher, client certificate) come from " +
          "OpenSSL; Deno's TLS does not tell them"
        : undefined,
  },
  protocol: {
    service: (o) =>
      !o.client && PLAINTEXT_FIRST_SERVERS.includes(o.protocol ?? "")
        ? `protocol '${o.protocol}' in server mode reads plaintext before the handshake, and ` +
          "Deno's TLS cannot start a server handshake on an accepted connection"
        : undefined,
  },
  protocolAuthentication: HONOURED,
  protocolDomain: HONOURED,
  protocolHeader: HONOURED,
  protocolHost: HONOURED,
  protocolPassword: HONOURED,
  protocolUsername: HONOURED,
  PSKidentity: { refused: PSK },
  PSKsecrets: { refused: PSK },
  pty: HONOURED,
  redirect: { refused: NO_CLIENT_CERTS },
  renegotiation: {
    service: (o) =>
      o.renegotiation ? "Deno's TLS never renegotiates (only `renegotiation = no`)" : undefined,
  },
  requireCert: { service: (o) => o.requireCert && !o.client ? NO_CLIENT_CERTS : undefined },
  reset: HONOURED,
  retry: HONOURED,
  securityLevel: { refused: "OpenSSL's security levels: Deno's TLS has none" },
  service: HONOURED,
  sessionCacheSize: { refused: SESSIONS },
  sessionCacheTimeout: { refused: SESSIONS },
  sessionResume: { refused: SESSIONS },
  sessiond: { refused: SESSIONS },
  setgid: HONOURED,
  setuid: HONOURED,
  sni: {
    service(o) {
      if (!o.client) return "Deno.listenTls serves one certificate: no SNI selection";
      if (o.sni[0] === "") return "Deno's TLS always sends the server name";
      return undefined;
    },
  },
  socket: {
    service: (o) =>
      o.client && o.socket.some((line) => line.startsWith("r:")) ? OWN_SOCKET : undefined,
  },
  sslVersion: { service: versionRange },
  sslVersionMax: { service: versionRange },
  sslVersionMin: { service: versionRange },
  stack: HONOURED,
  ticketKeySecret: { refused: SESSIONS },
  ticketMacSecret: { refused: SESSIONS },
  TIMEOUTbusy: HONOURED,
  TIMEOUTclose: HONOURED,
  TIMEOUTconnect: HONOURED,
  TIMEOUTidle: HONOURED,
  transparent: {
    service: (o) =>
      o.client && (o.transparent === "source" || o.transparent === "both") ? OWN_SOCKET : undefined,
  },
  verify: { refused: "use `verifyChain` (Deno's TLS has no verification levels)" },
  verifyChain: { service: (o) => o.client ? undefined : NO_CLIENT_CERTS },
  verifyPeer: {
    refused: "Deno's TLS verifies a chain to a CA, it cannot pin a peer certificate",
  },
};

/** Deno's TLS does TLS 1.2 and 1.3 and cannot be narrowed: the range must be exactly that. */
function versionRange(o: ServiceOptions): string | undefined {
  const min = o.sslVersionMin ?? "TLSv1.2";
  const max = o.sslVersionMax ?? "all";
  if (!TLS_1_2.includes(min)) {
    return min === "TLSv1.3"
      ? "Deno's TLS cannot be limited to TLS 1.3"
      : `Deno's TLS has no protocol below TLS 1.2 (the minimum must be TLSv1.2, not ${min})`;
  }
  if (!TLS_1_3.includes(max)) return "Deno's TLS cannot be limited below TLS 1.3";
  return undefined;
}

/** A PKCS#12 file needs OpenSSL; Deno takes PEM only. */
function pemOnly(path: string | undefined): string | undefined {
  if (path === undefined) return undefined;
  try {
    const head = new TextDecoder().decode(Deno.readFileSync(path).subarray(0, 65536));
    return head.includes("-----BEGIN ") ? undefined : "Deno's TLS reads PEM certificates only";
  } catch {
    return undefined; // unreadable: reported when the service starts
  }
}

/** Every option `config` sets that Deno's TLS cannot honour, in file order. */
export function denoTlsRefusals(config: Configuration): Refusal[] {
  return refusals(
    config,
    DENO_TLS_RULES,
    "Deno's TLS runs only on sockets Deno made, not on stdin/stdout",
  );
}
