/**
 * The core of the TLS engine, below the features: the error type, the connection (one SSL over
 * two memory BIOs, so that sockets stay Deno's), the registry OpenSSL callbacks find their
 * connection in, and the narrow view of a context the features configure.
 */
import {
  BIO_C_SET_BUF_MEM_EOF_RETURN,
  BIO_CTRL_PENDING,
  cstr,
  drainErrors,
  lib,
  type OpenSslError,
  type Ptr,
  readCString,
  SSL_CTRL_SET_TLSEXT_HOSTNAME,
  SSL_ERROR_SSL,
  SSL_ERROR_SYSCALL,
  SSL_ERROR_WANT_CLIENT_HELLO_CB,
  SSL_ERROR_WANT_READ,
  SSL_ERROR_WANT_WRITE,
  SSL_ERROR_ZERO_RETURN,
  TLSEXT_NAMETYPE_host_name,
} from "../sys/ffi.ts";
import type { ServiceOptions } from "../config/types.ts";

/** An OpenSSL failure: `what` is the failing call, `errors` the drained queue (oldest first). */
export class TlsError extends Error {
  constructor(readonly what: string, readonly errors: OpenSslError[], detail?: string) {
    super(
      errors.length > 0 ? `${what}: ${errors[0].text}` : `${what}: ${detail ?? "unknown error"}`,
    );
  }

  /**
   * stunnel's sslerror() lines: the later errors newest first as "error queue: ...", then the
   * message with the first (oldest) error, the one that started it.
   */
  logLines(): string[] {
    const queue = this.errors.slice(1).reverse().map((e) => `error queue: ${e.text}`);
    return [...queue, this.message];
  }
}

export function check(ok: boolean, what: string): void {
  if (!ok) throw new TlsError(what, drainErrors());
}

export interface TlsContextLog {
  (level: number, message: string): void;
}

/** Everything of a service that decides how its SSL_CTX is built. */
export type ContextOptions = Pick<
  ServiceOptions,
  | "name"
  | "client"
  | "cert"
  | "key"
  | "ciphers"
  | "ciphersuites"
  | "curves"
  | "options"
  | "securityLevel"
  | "sslVersionMin"
  | "sslVersionMax"
  | "sessionResume"
  | "sessionCacheSize"
  | "sessionCacheTimeout"
  | "sni"
  | "CAfile"
  | "CApath"
  | "verifyChain"
  | "checkHost"
  | "checkIP"
  | "checkEmail"
  | "requestCert"
  | "requireCert"
  | "verifyPeer"
  | "CRLfile"
  | "CRLpath"
  | "redirect"
  | "ticketKeySecret"
  | "ticketMacSecret"
  | "PSKsecrets"
  | "PSKidentity"
  | "config"
  | "renegotiation"
  | "OCSP"
  | "OCSPaia"
  | "OCSPflag"
  | "OCSPnonce"
  | "verify"
  | "TIMEOUTbusy"
  | "TIMEOUTconnect"
  | "engine"
  | "sessiond"
  | "CAengine"
  | "alpn"
>;

/**
 * What the TLS features (verify, session, psk, sni, ocsp, policy, engine) see of a context: its
 * SSL_CTX, its options, and a place to keep native things alive as long as it lives.
 */
export interface ContextHandle {
  readonly ctx: Ptr;
  readonly opts: ContextOptions;
  /** Keeps `thing` alive until the context is freed. */
  own(thing: { close(): void }): void;
  /** Client mode: the session offered on the next connect (session.ts ClientSessions). */
  readonly clientSessions: { share(name: string): void; keep(session: Ptr): boolean };
}

export type ReadResult = number | "want" | "closed";

/** The connections of this thread by the address of their SSL, for OpenSSL callbacks. */
const liveConnections = new Map<bigint, TlsConnection>();

function addressOf(p: Ptr): bigint {
  return BigInt(Deno.UnsafePointer.value(p));
}

/** The connection an OpenSSL callback was called for; undefined once it was freed. */
export function connectionOf(ssl: Ptr): TlsConnection | undefined {
  return ssl === null ? undefined : liveConnections.get(addressOf(ssl));
}

/**
 * One TLS connection. Ciphertext goes in with `feed` and comes out with `takeOutput`;
 * plaintext goes in with `write` and comes out with `read`.
 */
export class TlsConnection {
  readonly ssl: Ptr;
  private readonly rbio: Ptr;
  private readonly wbio: Ptr;
  private freed = false;
  private eof = false;
  /** The connection's log, for lines that OpenSSL callbacks write about it. */
  log: TlsContextLog = () => {};
  /** Set by a callback that refuses the connection: the next engine call fails with it. */
  refusal: string | undefined;
  /** A pre-shared key of PSKsecrets was used (OpenSSL then reports a "reused" session). */
  psk = false;
  /**
   * Set by a ClientHello callback that paused the handshake (sessiond.ts asks the session
   * cache): the handshake goes on once this settles, not when the peer sends more.
   */
  paused: Promise<void> | undefined;

  constructor(readonly context: ContextHandle, readonly client: boolean, sni?: string) {
    const { ssl, crypto } = lib();
    this.ssl = ssl.SSL_new(context.ctx);
    check(this.ssl !== null, "SSL_new");
    liveConnections.set(addressOf(this.ssl), this);
    this.rbio = crypto.BIO_new(crypto.BIO_s_mem());
    this.wbio = crypto.BIO_new(crypto.BIO_s_mem());
    // SSL_set_bio transfers ownership: SSL_free frees both BIOs.
    ssl.SSL_set_bio(this.ssl, this.rbio, this.wbio);
    if (client) {
      if (sni) {
        ssl.SSL_ctrl_str(
          this.ssl,
          SSL_CTRL_SET_TLSEXT_HOSTNAME,
          BigInt(TLSEXT_NAMETYPE_host_name),
          cstr(sni),
        );
      }
      ssl.SSL_set_connect_state(this.ssl);
    } else {
      ssl.SSL_set_accept_state(this.ssl);
    }
  }

  private get call(): string {
    return this.client ? "SSL_connect" : "SSL_accept";
  }

  /** Ciphertext received from the peer. */
  feed(data: Uint8Array<ArrayBuffer>): void {
    lib().crypto.BIO_write(this.rbio, data, data.length);
  }

  /** The peer's socket reached end of file: OpenSSL sees EOF instead of "retry". */
  feedEof(): void {
    this.eof = true;
    lib().crypto.BIO_ctrl(this.rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, 0n, null);
  }

  /** Runs the handshake as far as the input allows: true when finished. */
  handshake(): boolean {
    const { ssl } = lib();
    const r = ssl.SSL_do_handshake(this.ssl);
    this.failIfRefused();
    if (r === 1) return true;
    this.failUnlessRetry(r, this.call);
    return false;
  }

  /** Decrypts into `out`: a byte count, "want" (needs input) or "closed" (close_notify). */
  read(out: Uint8Array<ArrayBuffer>): ReadResult {
    const { ssl } = lib();
    const n = ssl.SSL_read(this.ssl, out, out.length);
    this.failIfRefused();
    if (n > 0) return n;
    const err = ssl.SSL_get_error(this.ssl, n);
    if (err === SSL_ERROR_ZERO_RETURN) return "closed";
    if (this.eof && (err === SSL_ERROR_SYSCALL || err === SSL_ERROR_SSL)) {
      // The socket ended without close_notify: the caller decides what that means.
      drainErrors();
      return "want";
    }
    this.failUnlessRetry(n, "SSL_read", err);
    return "want";
  }

  /**
   * Encrypts as much of `data` as it can (a memory BIO never pushes back): the byte count,
   * short only while a renegotiation waits for input from the peer.
   */
  write(data: Uint8Array<ArrayBuffer>): number {
    const { ssl } = lib();
    let offset = 0;
    while (offset < data.length) {
      const chunk = offset === 0 ? data : data.subarray(offset);
      const n = ssl.SSL_write(this.ssl, chunk, chunk.length);
      this.failIfRefused();
      if (n <= 0) {
        this.failUnlessRetry(n, "SSL_write");
        return offset;
      }
      offset += n;
    }
    return offset;
  }

  /** Queues our close_notify. */
  shutdown(): void {
    const { ssl } = lib();
    const r = ssl.SSL_shutdown(this.ssl);
    if (r < 0) this.failUnlessRetry(r, "SSL_shutdown");
  }

  /** Bytes of ciphertext from the peer not yet decrypted (the rest of a batch of records). */
  pendingInput(): number {
    return Number(lib().crypto.BIO_ctrl(this.rbio, BIO_CTRL_PENDING, 0n, null));
  }

  /** Bytes of ciphertext waiting to be sent to the peer. */
  pendingOutput(): number {
    return Number(lib().crypto.BIO_ctrl(this.wbio, BIO_CTRL_PENDING, 0n, null));
  }

  /** Moves up to `out.length` bytes of ciphertext for the peer into `out`. */
  takeOutput(out: Uint8Array<ArrayBuffer>): number {
    const n = lib().crypto.BIO_read(this.wbio, out, out.length);
    return n > 0 ? n : 0;
  }

  /** A previous session was resumed (an external PSK is no previous session, as for stunnel). */
  get sessionReused(): boolean {
    return !this.psk && lib().ssl.SSL_session_reused(this.ssl) === 1;
  }

  get version(): string {
    return readCString(lib().ssl.SSL_get_version(this.ssl));
  }

  /** The application protocol ALPN selected in the handshake, if any. */
  get alpn(): string | undefined {
    const data = new BigUint64Array(1);
    const length = new Uint32Array(1);
    lib().ssl.SSL_get0_alpn_selected(
      this.ssl,
      new Uint8Array(data.buffer),
      new Uint8Array(length.buffer),
    );
    const p = Deno.UnsafePointer.create(data[0]);
    if (p === null || length[0] === 0) return undefined;
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(p, length[0]));
    return new TextDecoder().decode(bytes.slice());
  }

  /** The server name the client asked for (SNI), if any. */
  get servername(): string | undefined {
    const name = lib().ssl.SSL_get_servername(this.ssl, TLSEXT_NAMETYPE_host_name);
    return name === null ? undefined : readCString(name);
  }

  /** e.g. `TLS_AES_256_GCM_SHA384 (256-bit encryption)` */
  get cipher(): { name: string; bits: number } {
    const { ssl } = lib();
    const c = ssl.SSL_get_current_cipher(this.ssl);
    return {
      name: readCString(ssl.SSL_CIPHER_get_name(c)),
      bits: ssl.SSL_CIPHER_get_bits(c, null),
    };
  }

  /** A callback refused the connection during the last engine call (its line is the error). */
  private failIfRefused(): void {
    if (this.refusal === undefined) return;
    drainErrors();
    throw new Error(this.refusal);
  }

  private failUnlessRetry(r: number, what: string, known?: number): void {
    const { ssl } = lib();
    const err = known ?? ssl.SSL_get_error(this.ssl, r);
    if (err === SSL_ERROR_WANT_READ || err === SSL_ERROR_WANT_WRITE) return;
    if (err === SSL_ERROR_WANT_CLIENT_HELLO_CB && this.paused) return;
    const errors = drainErrors();
    if (err === SSL_ERROR_SYSCALL && errors.length === 0) {
      throw new TlsError(what, errors, "unexpected end of file from the peer");
    }
    if (err === SSL_ERROR_SSL || errors.length > 0) throw new TlsError(what, errors);
    throw new TlsError(what, errors, `SSL_get_error ${err}`);
  }

  /** Frees the SSL object and its BIOs; call exactly once, after both directions are done. */
  free(): void {
    if (this.freed) return;
    this.freed = true;
    liveConnections.delete(addressOf(this.ssl));
    lib().ssl.SSL_free(this.ssl);
  }
}

/** `*pp` for i2d/d2i: the address of `buf`, which OpenSSL reads or writes through. */
function pointerTo(buf: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  const address = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  return new Uint8Array(new BigUint64Array([address]).buffer);
}

/** A session as DER (i2d_SSL_SESSION), for the other threads and the sessiond cache. */
export function encodeSession(session: Ptr): Uint8Array<ArrayBuffer> | undefined {
  const { ssl } = lib();
  const length = ssl.i2d_SSL_SESSION(session, null);
  if (length <= 0) {
    drainErrors();
    return undefined;
  }
  const der = new Uint8Array(length);
  if (ssl.i2d_SSL_SESSION(session, pointerTo(der)) !== length) {
    drainErrors();
    return undefined;
  }
  return der;
}

/** A session from its DER form; null (errors drained) when it does not parse. */
export function decodeSession(der: Uint8Array): Ptr {
  const copy = new Uint8Array(der);
  const session = lib().ssl.d2i_SSL_SESSION(null, pointerTo(copy), BigInt(copy.length));
  if (session === null) drainErrors();
  return session;
}
