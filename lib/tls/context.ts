/** One OpenSSL SSL_CTX per service, configured by the TLS features in stunnel's order. */
import {
  cstr,
  lib,
  PROTOCOL_VERSIONS,
  type Ptr,
  SSL_CTRL_CHAIN_CERT,
  SSL_CTRL_MODE,
  SSL_CTRL_SET_GROUPS_LIST,
  SSL_CTRL_SET_MAX_PROTO_VERSION,
  SSL_CTRL_SET_MIN_PROTO_VERSION,
  SSL_FILETYPE_PEM,
  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER,
  SSL_MODE_ENABLE_PARTIAL_WRITE,
  SSL_MODE_RELEASE_BUFFERS,
} from "../sys/ffi.ts";
import { DEFAULT_SSL_OPTIONS, SSL_OPTIONS, sslOptionName } from "../sys/names.ts";
import {
  check,
  type ContextHandle,
  type ContextOptions,
  TlsConnection,
  type TlsContextLog,
  TlsError,
} from "./core.ts";
import { ClientSessions, configureSessions, setTicketKeys } from "./session.ts";
import { configurePsk } from "./psk.ts";
import { configureAlpn } from "./alpn.ts";
import { applyConfigCommands, configureDh, watchRenegotiation } from "./policy.ts";
import { configureVerification } from "./verify.ts";
import { installServernameCallback } from "./sni.ts";
import { ocspStaples } from "./ocsp_scope.ts";
import { loadCertFromEngine, loadKeyFromEngine, serviceEngine } from "./engine.ts";

/** One SSL_CTX, shared by all connections of a service. */
export class TlsContext implements ContextHandle {
  private freed = false;
  /** Native things that live as long as the context (callbacks, stores): closed in free(). */
  private readonly owned: { close(): void }[] = [];
  readonly clientSessions = new ClientSessions();

  private constructor(readonly ctx: Ptr, readonly opts: ContextOptions) {}

  /** Keeps `thing` alive until the context is freed. */
  own(thing: { close(): void }): void {
    this.owned.push(thing);
  }

  /** `ticketKeys` (80 bytes) are shared by the contexts of all threads of a service. */
  static async create(
    opts: ContextOptions,
    log: TlsContextLog,
    ticketKeys?: Uint8Array,
  ): Promise<TlsContext> {
    const { ssl } = lib();
    const method = opts.client ? ssl.TLS_client_method() : ssl.TLS_server_method();
    const ctx = ssl.SSL_CTX_new(method);
    check(ctx !== null, "SSL_CTX_new");
    const context = new TlsContext(ctx, opts);
    try {
      await context.configure(log);
      if (ticketKeys && !opts.client && opts.sessionResume) setTicketKeys(context, ticketKeys);
    } catch (e) {
      context.free();
      throw e;
    }
    return context;
  }

  /** The optional features' modules (sessiond, OCSP) are loaded only when configured. */
  private async configure(log: TlsContextLog): Promise<void> {
    const { ssl } = lib();
    const { ctx, opts } = this;
    ssl.SSL_CTX_set_security_level(ctx, opts.securityLevel);
    log(6, `OpenSSL security level is used: ${opts.securityLevel}`);
    check(ssl.SSL_CTX_set_cipher_list(ctx, cstr(opts.ciphers)) === 1, "SSL_CTX_set_cipher_list");
    log(7, `Ciphers: ${opts.ciphers}`);
    check(
      ssl.SSL_CTX_set_ciphersuites(ctx, cstr(opts.ciphersuites)) === 1,
      "SSL_CTX_set_ciphersuites",
    );
    log(7, `TLSv1.3 ciphersuites: ${opts.ciphersuites}`);
    this.applyOptions(log);
    this.applyVersions();
    // `config =` commands come after the options and protocol versions, so they win.
    applyConfigCommands(this, log);
    ssl.SSL_CTX_ctrl(
      ctx,
      SSL_CTRL_MODE,
      BigInt(
        SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
          SSL_MODE_RELEASE_BUFFERS,
      ),
      null,
    );
    await configureSessions(this, log);
    if (!opts.client && !opts.renegotiation) watchRenegotiation(this);
    configurePsk(this, log);
    configureAlpn(this, log);
    // SNI virtual services: every server-mode context asks sni.ts, as stunnel's do.
    if (!opts.client) installServernameCallback(this);
    if (opts.cert) this.loadCertificate(opts.cert, opts.key ?? opts.cert, log);
    else log(7, "No certificate or private key specified");
    // After the certificate, as in stunnel (its CA lines follow "Private key check succeeded").
    configureVerification(this, log);
    if (ocspStaples(opts)) (await import("./ocsp.ts")).configureStapling(this, log);
    configureDh(this, log);
    check(
      Number(ssl.SSL_CTX_ctrl_str(ctx, SSL_CTRL_SET_GROUPS_LIST, 0n, cstr(opts.curves))) === 1,
      "SSL_CTX_set1_groups_list",
    );
    log(7, `ECDH initialized with curves ${opts.curves}`);
  }

  private applyOptions(log: TlsContextLog): void {
    const { ssl } = lib();
    let set = 0n;
    let clear = 0n;
    for (const raw of this.opts.options) {
      const name = raw.startsWith("-") ? raw.slice(1) : raw;
      const canonical = sslOptionName(name);
      const bit = canonical === undefined ? undefined : SSL_OPTIONS[canonical];
      if (bit === undefined) throw new TlsError("options", [], `unknown TLS option ${name}`);
      // As in stunnel, the two sets only grow: a bit that is also cleared ends up cleared.
      if (raw.startsWith("-")) clear |= bit;
      else set |= bit;
    }
    for (const name of DEFAULT_SSL_OPTIONS) ssl.SSL_CTX_set_options(this.ctx, SSL_OPTIONS[name]);
    // stunnel's defaults: no tickets for a server without resumption, and compression left to
    // the (absent) compression methods instead of the option bit.
    if (!this.opts.client && !this.opts.sessionResume) {
      ssl.SSL_CTX_set_options(this.ctx, SSL_OPTIONS.NO_TICKET);
    }
    ssl.SSL_CTX_clear_options(this.ctx, SSL_OPTIONS.NO_COMPRESSION);
    ssl.SSL_CTX_set_options(this.ctx, set);
    ssl.SSL_CTX_clear_options(this.ctx, clear);
    const now = BigInt(ssl.SSL_CTX_get_options(this.ctx));
    const hex = (n: bigint) => `0x${n.toString(16).toUpperCase()}`;
    log(7, `TLS options: ${hex(now)} (+${hex(set)}, -${hex(clear)})`);
  }

  private applyVersions(): void {
    const { ssl } = lib();
    const version = (v: string | undefined) =>
      v === undefined || v === "all" ? 0 : PROTOCOL_VERSIONS[v] ?? 0;
    check(
      Number(ssl.SSL_CTX_ctrl(
        this.ctx,
        SSL_CTRL_SET_MIN_PROTO_VERSION,
        BigInt(version(this.opts.sslVersionMin)),
        null,
      )) === 1,
      "SSL_CTX_set_min_proto_version",
    );
    check(
      Number(ssl.SSL_CTX_ctrl(
        this.ctx,
        SSL_CTRL_SET_MAX_PROTO_VERSION,
        BigInt(version(this.opts.sslVersionMax)),
        null,
      )) === 1,
      "SSL_CTX_set_max_proto_version",
    );
  }

  private loadCertificate(cert: string, key: string, log: TlsContextLog): void {
    const { ssl } = lib();
    // As stunnel: with `engineId`/`engineNum` the engine is asked first, then the files.
    let certDone = false;
    let keyDone = false;
    if (this.opts.engine) {
      const engine = serviceEngine(this.opts.engine);
      certDone = loadCertFromEngine(this.ctx, engine, cert, log);
      keyDone = loadKeyFromEngine(this.ctx, engine, key, log);
    }
    // As stunnel: a .p12 file is a PKCS#12 bundle (key included), anything else PEM.
    if (!certDone && /\.p12$/i.test(cert)) {
      log(6, `Loading certificate and private key from file: ${cert}`);
      warnIfOthersMayRead(cert, log);
      this.loadPkcs12(Deno.readFileSync(cert));
      log(6, `Certificate and private key loaded from file: ${cert}`);
      keyDone = true;
    } else if (!certDone) {
      log(6, `Loading certificate from file: ${cert}`);
      check(
        ssl.SSL_CTX_use_certificate_chain_file(this.ctx, cstr(cert)) === 1,
        "SSL_CTX_use_certificate_chain_file",
      );
      log(6, `Certificate loaded from file: ${cert}`);
    }
    if (!keyDone) {
      log(6, `Loading private key from file: ${key}`);
      warnIfOthersMayRead(key, log);
      check(
        ssl.SSL_CTX_use_PrivateKey_file(this.ctx, cstr(key), SSL_FILETYPE_PEM) === 1,
        "SSL_CTX_use_PrivateKey_file",
      );
      log(6, `Private key loaded from file: ${key}`);
    }
    check(ssl.SSL_CTX_check_private_key(this.ctx) === 1, "Private key check failed");
    log(7, "Private key check succeeded");
  }

  /** A PKCS#12 bundle without a password: key, certificate and chain. */
  private loadPkcs12(bytes: Uint8Array<ArrayBuffer>): void {
    const { ssl, crypto } = lib();
    const bio = crypto.BIO_new_mem_buf(bytes, bytes.length);
    check(bio !== null, "BIO_new_mem_buf");
    const p12 = crypto.d2i_PKCS12_bio(bio, null);
    crypto.BIO_free(bio);
    check(p12 !== null, "d2i_PKCS12_bio");
    const pkey = new BigUint64Array(1);
    const x509 = new BigUint64Array(1);
    const chain = new BigUint64Array(1);
    const parsed = crypto.PKCS12_parse(
      p12,
      cstr(""),
      new Uint8Array(pkey.buffer),
      new Uint8Array(x509.buffer),
      new Uint8Array(chain.buffer),
    );
    crypto.PKCS12_free(p12);
    check(parsed === 1, "PKCS12_parse");
    const keyPtr = Deno.UnsafePointer.create(pkey[0]);
    const certPtr = Deno.UnsafePointer.create(x509[0]);
    const chainPtr = Deno.UnsafePointer.create(chain[0]);
    try {
      check(ssl.SSL_CTX_use_certificate(this.ctx, certPtr) === 1, "SSL_CTX_use_certificate");
      check(ssl.SSL_CTX_use_PrivateKey(this.ctx, keyPtr) === 1, "SSL_CTX_use_PrivateKey");
      const count = chainPtr === null ? 0 : crypto.OPENSSL_sk_num(chainPtr);
      for (let i = 0; i < count; i++) {
        const ca = crypto.OPENSSL_sk_value(chainPtr, i);
        // add1: the context takes its own reference.
        check(
          Number(ssl.SSL_CTX_ctrl(this.ctx, SSL_CTRL_CHAIN_CERT, 1n, ca)) === 1,
          "SSL_CTX_add1_chain_cert",
        );
      }
    } finally {
      crypto.X509_free(certPtr);
      crypto.EVP_PKEY_free(keyPtr);
      // The stack's certificates are freed with it; a plain sk_free would leak them.
      for (let i = 0; chainPtr !== null && i < crypto.OPENSSL_sk_num(chainPtr); i++) {
        crypto.X509_free(crypto.OPENSSL_sk_value(chainPtr, i));
      }
    }
  }

  /**
   * A new per-connection engine; `sni` is the name a client sends ("" sends none), `log` the
   * connection's log (for what OpenSSL callbacks report during its handshake).
   */
  newConnection(sni?: string, log?: TlsContextLog): TlsConnection {
    const conn = new TlsConnection(this, this.opts.client, sni);
    if (log) conn.log = log;
    if (this.opts.client && this.opts.sessionResume) this.clientSessions.offer(conn.ssl);
    return conn;
  }

  /** After a handshake: what a later connection may reuse. */
  handshakeDone(conn: TlsConnection): void {
    if (this.opts.client && this.opts.sessionResume && !this.freed) {
      this.clientSessions.remember(conn.ssl);
    }
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.clientSessions.close();
    // SSL objects hold their own reference to the context, so live connections are safe.
    lib().ssl.SSL_CTX_free(this.ctx);
    for (const thing of this.owned) thing.close();
  }
}

/** As stunnel's file_permissions(): a private key that others may read is worth a warning. */
function warnIfOthersMayRead(file: string, log: TlsContextLog): void {
  let mode: number | null;
  try {
    mode = Deno.statSync(file).mode;
  } catch {
    return; // loading it fails with OpenSSL's reason
  }
  if (mode !== null && (mode & 0o7) !== 0) log(4, `Insecure file permissions on ${file}`);
}
