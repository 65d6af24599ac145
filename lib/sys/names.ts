/**
 * The names stunnel.conf, syslog and OpenSSL give to numbers: one table per name set, read by the
 * option table (validation, `-options`) and by the code that uses the numbers.
 */

/** syslog levels by number (0 = emerg). */
export const SYSLOG_LEVELS = [
  "emerg",
  "alert",
  "crit",
  "err",
  "warning",
  "notice",
  "info",
  "debug",
] as const;

/** syslog facilities stunnel accepts in `debug = FACILITY.LEVEL`, with their codes. */
export const SYSLOG_FACILITIES: Readonly<Record<string, number>> = {
  auth: 4 << 3,
  authpriv: 10 << 3,
  cron: 9 << 3,
  daemon: 3 << 3,
  ftp: 11 << 3,
  kern: 0,
  lpr: 6 << 3,
  mail: 2 << 3,
  news: 7 << 3,
  syslog: 5 << 3,
  user: 1 << 3,
  uucp: 8 << 3,
  local0: 16 << 3,
  local1: 17 << 3,
  local2: 18 << 3,
  local3: 19 << 3,
  local4: 20 << 3,
  local5: 21 << 3,
  local6: 22 << 3,
  local7: 23 << 3,
};

/**
 * OpenSSL 3.0 SSL_OP_* values (include/openssl/ssl.h) for every name `stunnel -options` lists,
 * in its order. Names that are 0 are obsolete no-ops kept by OpenSSL for compatibility.
 */
export const SSL_OPTIONS: Readonly<Record<string, bigint>> = (() => {
  const bit = (n: number) => 1n << BigInt(n);
  return {
    ALL: bit(31) | bit(11) | bit(4) | bit(6),
    ALLOW_CLIENT_RENEGOTIATION: bit(8),
    ALLOW_NO_DHE_KEX: bit(10),
    ALLOW_UNSAFE_LEGACY_RENEGOTIATION: bit(18),
    CIPHER_SERVER_PREFERENCE: bit(22),
    CISCO_ANYCONNECT: bit(15),
    CLEANSE_PLAINTEXT: bit(1),
    COOKIE_EXCHANGE: bit(13),
    CRYPTOPRO_TLSEXT_BUG: bit(31),
    DISABLE_TLSEXT_CA_NAMES: bit(9),
    DONT_INSERT_EMPTY_FRAGMENTS: bit(11),
    ENABLE_KTLS: bit(3),
    ENABLE_MIDDLEBOX_COMPAT: bit(20),
    EPHEMERAL_RSA: 0n,
    IGNORE_UNEXPECTED_EOF: bit(7),
    LEGACY_SERVER_CONNECT: bit(2),
    MICROSOFT_BIG_SSLV3_BUFFER: 0n,
    MICROSOFT_SESS_ID_BUG: 0n,
    MSIE_SSLV2_RSA_PADDING: 0n,
    NETSCAPE_CA_DN_BUG: 0n,
    NETSCAPE_CHALLENGE_BUG: 0n,
    NETSCAPE_DEMO_CIPHER_CHANGE_BUG: 0n,
    NETSCAPE_REUSE_CIPHER_CHANGE_BUG: 0n,
    NO_ANTI_REPLAY: bit(24),
    NO_COMPRESSION: bit(17),
    NO_DTLS_MASK: bit(26) | bit(27),
    NO_DTLSv1: bit(26),
    NO_DTLSv1_2: bit(27),
    NO_ENCRYPT_THEN_MAC: bit(19),
    NO_EXTENDED_MASTER_SECRET: bit(0),
    NO_QUERY_MTU: bit(12),
    NO_RENEGOTIATION: bit(30),
    NO_SESSION_RESUMPTION_ON_RENEGOTIATION: bit(16),
    NO_SSL_MASK: bit(25) | bit(26) | bit(28) | bit(27) | bit(29),
    NO_SSLv2: 0n,
    NO_SSLv3: bit(25),
    NO_TICKET: bit(14),
    NO_TLSv1: bit(26),
    NO_TLSv1_1: bit(28),
    NO_TLSv1_2: bit(27),
    NO_TLSv1_3: bit(29),
    PKCS1_CHECK_1: 0n,
    PKCS1_CHECK_2: 0n,
    PRIORITIZE_CHACHA: bit(21),
    SAFARI_ECDHE_ECDSA_BUG: bit(6),
    SINGLE_DH_USE: 0n,
    SINGLE_ECDH_USE: 0n,
    SSLEAY_080_CLIENT_DH_BUG: 0n,
    SSLREF2_REUSE_CERT_TYPE_BUG: 0n,
    TLS_BLOCK_PADDING_BUG: 0n,
    TLS_D5_BUG: 0n,
    TLSEXT_PADDING: bit(4),
    TLS_ROLLBACK_BUG: bit(23),
  };
})();

/** stunnel sets these before any `options =` line is applied. */
export const DEFAULT_SSL_OPTIONS: readonly string[] = ["NO_SSLv2", "NO_SSLv3"];

/** Finds the canonical SSL_OPTIONS name, case-insensitively. */
export function sslOptionName(name: string): string | undefined {
  const lower = name.toLowerCase();
  return Object.keys(SSL_OPTIONS).find((k) => k.toLowerCase() === lower);
}

/** OCSPflag names (stunnel's spelling) and their values from OpenSSL's ocsp.h. */
export const OCSP_FLAGS: Readonly<Record<string, number>> = {
  NOCERTS: 0x1,
  NOINTERN: 0x2,
  NOSIGS: 0x4,
  NOCHAIN: 0x8,
  NOVERIFY: 0x10,
  NOEXPLICIT: 0x20,
  NOCASIGN: 0x40,
  NODELEGATED: 0x80,
  NOCHECKS: 0x100,
  TRUSTOTHER: 0x200,
  RESPID_KEY: 0x400,
  NOTIME: 0x800,
};

/** Linux signal names by number, as stunnel's signal_name() prints them ("signal N" otherwise). */
export const SIGNAL_NAMES: readonly string[] = [
  "",
  "SIGHUP",
  "SIGINT",
  "SIGQUIT",
  "SIGILL",
  "SIGTRAP",
  "SIGABRT",
  "SIGBUS",
  "SIGFPE",
  "SIGKILL",
  "SIGUSR1",
  "SIGSEGV",
  "SIGUSR2",
  "SIGPIPE",
  "SIGALRM",
  "SIGTERM",
  "SIGSTKFLT",
  "SIGCHLD",
  "SIGCONT",
  "SIGSTOP",
  "SIGTSTP",
  "SIGTTIN",
  "SIGTTOU",
  "SIGURG",
  "SIGXCPU",
  "SIGXFSZ",
  "SIGVTALRM",
  "SIGPROF",
  "SIGWINCH",
  "SIGIO",
  "SIGPWR",
  "SIGSYS",
];
