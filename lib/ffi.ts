/**
 * The only place that opens native libraries: OpenSSL 3 (libssl, libcrypto) and libc.
 * Everything else uses the typed wrappers exported here.
 */

const LIBSSL = "libssl.so.3";
const LIBCRYPTO = "libcrypto.so.3";
const LIBC = "libc.so.6";

const sslSymbols = {
  TLS_server_method: { parameters: [], result: "pointer" },
  TLS_client_method: { parameters: [], result: "pointer" },
  SSL_CTX_new: { parameters: ["pointer"], result: "pointer" },
  SSL_CTX_free: { parameters: ["pointer"], result: "void" },
  SSL_CTX_use_certificate_chain_file: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_CTX_use_PrivateKey_file: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  SSL_CTX_use_certificate: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_CTX_use_PrivateKey: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_CTX_check_private_key: { parameters: ["pointer"], result: "i32" },
  SSL_CTX_set_cipher_list: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_CTX_set_ciphersuites: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_CTX_set_options: { parameters: ["pointer", "u64"], result: "u64" },
  SSL_CTX_clear_options: { parameters: ["pointer", "u64"], result: "u64" },
  SSL_CTX_get_options: { parameters: ["pointer"], result: "u64" },
  SSL_CTX_set_security_level: { parameters: ["pointer", "i32"], result: "void" },
  SSL_CTX_set_session_id_context: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  SSL_CTX_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  SSL_CTX_ctrl_str: {
    name: "SSL_CTX_ctrl",
    parameters: ["pointer", "i32", "i64", "buffer"],
    result: "i64",
  },
  SSL_new: { parameters: ["pointer"], result: "pointer" },
  SSL_free: { parameters: ["pointer"], result: "void" },
  SSL_set_bio: { parameters: ["pointer", "pointer", "pointer"], result: "void" },
  SSL_set_accept_state: { parameters: ["pointer"], result: "void" },
  SSL_set_connect_state: { parameters: ["pointer"], result: "void" },
  SSL_do_handshake: { parameters: ["pointer"], result: "i32" },
  SSL_read: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  SSL_write: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  SSL_get_error: { parameters: ["pointer", "i32"], result: "i32" },
  SSL_shutdown: { parameters: ["pointer"], result: "i32" },
  SSL_get_shutdown: { parameters: ["pointer"], result: "i32" },
  SSL_ctrl_str: {
    name: "SSL_ctrl",
    parameters: ["pointer", "i32", "i64", "buffer"],
    result: "i64",
  },
  SSL_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  SSL_get_version: { parameters: ["pointer"], result: "pointer" },
  SSL_get_current_cipher: { parameters: ["pointer"], result: "pointer" },
  SSL_CIPHER_get_name: { parameters: ["pointer"], result: "pointer" },
  SSL_CIPHER_get_bits: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_session_reused: { parameters: ["pointer"], result: "i32" },
  SSL_get1_session: { parameters: ["pointer"], result: "pointer" },
  SSL_set_session: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_SESSION_free: { parameters: ["pointer"], result: "void" },
  SSL_SESSION_is_resumable: { parameters: ["pointer"], result: "i32" },
  SSL_get_state: { parameters: ["pointer"], result: "i32" },
  SSL_is_init_finished: { parameters: ["pointer"], result: "i32" },
  SSL_CTX_load_verify_locations: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  SSL_CTX_set_verify: { parameters: ["pointer", "i32", "pointer"], result: "void" },
  SSL_load_client_CA_file: { parameters: ["buffer"], result: "pointer" },
  SSL_CTX_set_client_CA_list: { parameters: ["pointer", "pointer"], result: "void" },
  SSL_get1_peer_certificate: { parameters: ["pointer"], result: "pointer" },
  SSL_get_verify_result: { parameters: ["pointer"], result: "i64" },
} as const satisfies Deno.ForeignLibraryInterface;

const cryptoSymbols = {
  OpenSSL_version: { parameters: ["i32"], result: "pointer" },
  BIO_s_mem: { parameters: [], result: "pointer" },
  BIO_new: { parameters: ["pointer"], result: "pointer" },
  BIO_new_mem_buf: { parameters: ["buffer", "i32"], result: "pointer" },
  BIO_free: { parameters: ["pointer"], result: "i32" },
  BIO_read: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  BIO_write: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  BIO_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  ERR_get_error_all: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "u64",
  },
  ERR_error_string_n: { parameters: ["u64", "buffer", "usize"], result: "void" },
  ERR_clear_error: { parameters: [], result: "void" },
  d2i_PKCS12_bio: { parameters: ["pointer", "pointer"], result: "pointer" },
  PKCS12_parse: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  PKCS12_free: { parameters: ["pointer"], result: "void" },
  X509_free: { parameters: ["pointer"], result: "void" },
  EVP_PKEY_free: { parameters: ["pointer"], result: "void" },
  OPENSSL_sk_num: { parameters: ["pointer"], result: "i32" },
  OPENSSL_sk_value: { parameters: ["pointer", "i32"], result: "pointer" },
  X509_check_host: {
    parameters: ["pointer", "buffer", "usize", "u32", "pointer"],
    result: "i32",
  },
  X509_check_email: { parameters: ["pointer", "buffer", "usize", "u32"], result: "i32" },
  X509_check_ip_asc: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  X509_get_subject_name: { parameters: ["pointer"], result: "pointer" },
  X509_NAME_oneline: { parameters: ["pointer", "pointer", "i32"], result: "pointer" },
  CRYPTO_free: { parameters: ["pointer", "pointer", "i32"], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

const libcSymbols = {
  openlog: { parameters: ["buffer", "i32", "i32"], result: "void" },
  // syslog is variadic; always called with the fixed format "%s" and one string.
  syslog: { parameters: ["i32", "buffer", "buffer"], result: "void" },
  closelog: { parameters: [], result: "void" },
  getpid: { parameters: [], result: "i32" },
  setsid: { parameters: [], result: "i32" },
  setuid: { parameters: ["u32"], result: "i32" },
  setgid: { parameters: ["u32"], result: "i32" },
  setgroups: { parameters: ["usize", "buffer"], result: "i32" },
  chroot: { parameters: ["buffer"], result: "i32" },
  chdir: { parameters: ["buffer"], result: "i32" },
  getpwnam: { parameters: ["buffer"], result: "pointer" },
  getgrnam: { parameters: ["buffer"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type SslLib = Deno.DynamicLibrary<typeof sslSymbols>["symbols"];
type CryptoLib = Deno.DynamicLibrary<typeof cryptoSymbols>["symbols"];
type LibC = Deno.DynamicLibrary<typeof libcSymbols>["symbols"];

export interface Native {
  ssl: SslLib;
  crypto: CryptoLib;
  libc: LibC;
}

let native: Native | undefined;

/** Opens the libraries once per process (the handles are immutable after that). */
export function lib(): Native {
  if (!native) {
    // libcrypto first: libssl depends on it and the loader then reuses it.
    const crypto = Deno.dlopen(LIBCRYPTO, cryptoSymbols).symbols;
    const ssl = Deno.dlopen(LIBSSL, sslSymbols).symbols;
    const libc = Deno.dlopen(LIBC, libcSymbols).symbols;
    native = { ssl, crypto, libc };
  }
  return native;
}

export type Ptr = Deno.PointerValue;

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s` for `char *` parameters. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Reads a C string (or "" for NULL). */
export function readCString(p: Ptr): string {
  return p === null ? "" : new Deno.UnsafePointerView(p).getCString();
}

// OpenSSL constants that are macros in the headers.
export const SSL_FILETYPE_PEM = 1;
export const SSL_ERROR_NONE = 0;
export const SSL_ERROR_SSL = 1;
export const SSL_ERROR_WANT_READ = 2;
export const SSL_ERROR_WANT_WRITE = 3;
export const SSL_ERROR_SYSCALL = 5;
export const SSL_ERROR_ZERO_RETURN = 6;
export const SSL_SENT_SHUTDOWN = 1;
export const SSL_RECEIVED_SHUTDOWN = 2;
export const SSL_CTRL_SET_TLSEXT_HOSTNAME = 55;
export const SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59;
export const SSL_CTRL_SET_SESS_CACHE_SIZE = 42;
export const SSL_CTRL_SET_SESS_CACHE_MODE = 44;
export const SSL_CTRL_MODE = 33;
export const SSL_CTRL_CHAIN_CERT = 89;
export const SSL_CTRL_SET_GROUPS_LIST = 92;
export const SSL_CTRL_SET_MIN_PROTO_VERSION = 123;
export const SSL_CTRL_SET_MAX_PROTO_VERSION = 124;
export const SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1;
export const SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2;
export const SSL_MODE_RELEASE_BUFFERS = 0x10;
export const SSL_SESS_CACHE_OFF = 0;
export const SSL_SESS_CACHE_CLIENT = 1;
export const SSL_SESS_CACHE_SERVER = 2;
export const BIO_CTRL_PENDING = 10;
export const BIO_C_SET_BUF_MEM_EOF_RETURN = 130;
export const TLSEXT_NAMETYPE_host_name = 0;
export const O_RDWR = 2;
export const SSL_VERIFY_NONE = 0;
export const SSL_VERIFY_PEER = 1;
export const SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2;

export const PROTOCOL_VERSIONS: Record<string, number> = {
  SSLv3: 0x300,
  TLSv1: 0x301,
  "TLSv1.1": 0x302,
  "TLSv1.2": 0x303,
  "TLSv1.3": 0x304,
};

/** One entry of the OpenSSL error queue, formatted as stunnel logs it. */
export interface OpenSslError {
  code: bigint;
  /** e.g. `../ssl/record/ssl3_record.c:350: error:0A00010B:SSL routines::wrong version number` */
  text: string;
}

/** Empties the (per-thread) OpenSSL error queue, oldest first. */
export function drainErrors(): OpenSslError[] {
  const { crypto } = lib();
  const errors: OpenSslError[] = [];
  const file = new BigUint64Array(1);
  const line = new Int32Array(1);
  const buf = new Uint8Array(256);
  for (;;) {
    const code = crypto.ERR_get_error_all(
      new Uint8Array(file.buffer),
      new Uint8Array(line.buffer),
      null,
      null,
      null,
    );
    if (code === 0n) return errors;
    crypto.ERR_error_string_n(code, buf, BigInt(buf.length));
    const reason = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    const filePtr = Deno.UnsafePointer.create(file[0]);
    errors.push({ code, text: `${readCString(filePtr)}:${line[0]}: ${reason}` });
  }
}

/** The last errno of this thread as `strerror (N)`, as stunnel prints it. */
export function errnoText(): string {
  const { libc } = lib();
  const p = libc.__errno_location();
  const errno = p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
  return `${readCString(libc.strerror(errno))} (${errno})`;
}

export function opensslVersion(): string {
  return readCString(lib().crypto.OpenSSL_version(0));
}
