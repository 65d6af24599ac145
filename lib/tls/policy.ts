/**
 * TLS policy that stunnel applies while it builds a context: OpenSSL configuration commands
 * (`config =`), DH parameters for DHE cipher suites, and `renegotiation = no`.
 */
import {
  cstr,
  drainErrors,
  lib,
  type Ptr,
  readCString,
  SSL_CB_ACCEPT_LOOP,
  SSL_CB_HANDSHAKE_DONE,
  SSL_CONF_FLAG_CERTIFICATE,
  SSL_CONF_FLAG_CLIENT,
  SSL_CONF_FLAG_FILE,
  SSL_CONF_FLAG_SERVER,
  SSL_CTRL_SET_DH_AUTO,
  SSL_CTRL_SET_TMP_DH,
  TLS_ST_SR_CLNT_HELLO,
} from "../sys/ffi.ts";
import {
  check,
  connectionOf,
  type ContextHandle,
  type TlsConnection,
  type TlsContextLog,
  TlsError,
} from "./core.ts";

/**
 * `config = COMMAND[:PARAMETER]` lines, in order, through SSL_CONF_cmd with stunnel's flags
 * (configuration-file command names, client or server, certificate commands allowed).
 */
export function applyConfigCommands(context: ContextHandle, log: TlsContextLog): void {
  const { opts, ctx } = context;
  if (opts.config.length === 0) return;
  const { ssl } = lib();
  const cctx = ssl.SSL_CONF_CTX_new();
  check(cctx !== null, "SSL_CONF_CTX_new");
  try {
    ssl.SSL_CONF_CTX_set_ssl_ctx(cctx, ctx);
    ssl.SSL_CONF_CTX_set_flags(
      cctx,
      SSL_CONF_FLAG_FILE | (opts.client ? SSL_CONF_FLAG_CLIENT : SSL_CONF_FLAG_SERVER) |
        SSL_CONF_FLAG_CERTIFICATE,
    );
    for (const line of opts.config) {
      const colon = line.indexOf(":");
      const cmd = colon < 0 ? line : line.slice(0, colon);
      const param = colon < 0 ? undefined : line.slice(colon + 1);
      const r = ssl.SSL_CONF_cmd(cctx, cstr(cmd), param === undefined ? null : cstr(param));
      if (r === 2) {
        log(7, `OpenSSL config "${cmd}" set to "${param ?? "(null)"}"`);
      } else if (r === 1) {
        log(7, `OpenSSL config command "${cmd}" executed`);
      } else if (r === -2) {
        drainErrors();
        throw new Error(`OpenSSL config command "${cmd}" was not recognised`);
      } else if (r === -3) {
        drainErrors();
        throw new Error(`OpenSSL config command "${cmd}" requires a parameter`);
      } else {
        throw new TlsError("SSL_CONF_cmd", drainErrors());
      }
    }
    check(ssl.SSL_CONF_CTX_finish(cctx) === 1, "SSL_CONF_CTX_finish");
  } finally {
    ssl.SSL_CONF_CTX_free(cctx);
  }
}

/**
 * stunnel's dh_init: a server whose cipher list has a DHE suite uses the DH parameters found
 * in its certificate file, or else dynamic ones (OpenSSL's built-in groups, sized to match the
 * certificate's key, where stunnel generates its own in the background).
 */
export function configureDh(context: ContextHandle, log: TlsContextLog): void {
  const { opts, ctx } = context;
  if (opts.client) {
    log(6, "DH initialization skipped: client section");
    return;
  }
  const needed = dhCipher(ctx);
  if (needed === undefined) {
    log(6, "DH initialization skipped: no DH ciphersuites");
    return;
  }
  log(6, `DH initialization needed for ${needed}`);
  log(7, "DH initialization");
  const { ssl, crypto } = lib();
  const dh = opts.cert ? readDhParams(opts.cert, log) : undefined;
  if (!opts.cert) log(7, "No certificate available to load DH parameters");
  if (dh) {
    try {
      check(
        Number(ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_TMP_DH, 0n, dh)) === 1,
        "SSL_CTX_set_tmp_dh",
      );
      log(6, `${crypto.DH_bits(dh)}-bit DH parameters loaded`);
    } finally {
      crypto.DH_free(dh);
    }
    return;
  }
  check(Number(ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_DH_AUTO, 1n, null)) === 1, "SSL_CTX_set_dh_auto");
  log(6, "Using dynamic DH parameters");
}

/** The first cipher suite of the context with a DH key exchange (" Kx=DH" in its description). */
function dhCipher(ctx: Ptr): string | undefined {
  const { ssl, crypto } = lib();
  const ciphers = ssl.SSL_CTX_get_ciphers(ctx);
  if (ciphers === null) return undefined;
  const buf = new Uint8Array(128);
  for (let i = 0; i < crypto.OPENSSL_sk_num(ciphers); i++) {
    const cipher = crypto.OPENSSL_sk_value(ciphers, i);
    buf.fill(0);
    ssl.SSL_CIPHER_description(cipher, buf, buf.length);
    const description = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    if (description.includes(" Kx=DH")) return readCString(ssl.SSL_CIPHER_get_name(cipher));
  }
  return undefined;
}

/** The first DH PARAMETERS block of a PEM file (a DH*), or undefined. */
function readDhParams(path: string, log: TlsContextLog): Ptr | undefined {
  const { crypto } = lib();
  const bio = crypto.BIO_new_file(cstr(path), cstr("r"));
  if (bio === null) {
    for (const line of new TlsError("BIO_new_file", drainErrors()).logLines()) log(3, line);
    return undefined;
  }
  const dh = crypto.PEM_read_bio_DHparams(bio, null, null, null);
  crypto.BIO_free(bio);
  if (dh === null) {
    drainErrors();
    log(7, `Could not load DH parameters from ${path}`);
    return undefined;
  }
  log(7, `Using DH parameters from ${path}`);
  return dh;
}

/** Where each connection of a `renegotiation = no` service is (stunnel's reneg_state). */
const renegotiation = new WeakMap<TlsConnection, "established" | "detected">();

const INFO = { parameters: ["pointer", "i32", "i32"], result: "void" } as const;

/** One per thread, never closed: an SSL object can outlive its context across a reload. */
let infoCallback: Deno.UnsafeCallback<typeof INFO> | undefined;

/**
 * `renegotiation = no` in server mode, as stunnel does it: a ClientHello after the first
 * handshake marks the connection, which then ends with "Aborting due to renegotiation request"
 * (whether or not OpenSSL would have gone along with the renegotiation).
 */
export function watchRenegotiation(context: ContextHandle): void {
  infoCallback ??= new Deno.UnsafeCallback(INFO, onInfo);
  lib().ssl.SSL_CTX_set_info_callback(context.ctx, infoCallback.pointer);
}

function onInfo(ssl: Ptr, where: number): void {
  try {
    const conn = connectionOf(ssl);
    if (!conn || conn.context.opts.renegotiation) return;
    const state = renegotiation.get(conn);
    if ((where & SSL_CB_HANDSHAKE_DONE) !== 0 && state === undefined) {
      renegotiation.set(conn, "established");
    } else if ((where & SSL_CB_ACCEPT_LOOP) !== 0 && state === "established") {
      if (lib().ssl.SSL_get_state(ssl) === TLS_ST_SR_CLNT_HELLO) {
        renegotiation.set(conn, "detected");
        conn.refusal = "Aborting due to renegotiation request";
      }
    }
  } catch {
    // Nothing to return: the connection goes on as OpenSSL decides.
  }
}
