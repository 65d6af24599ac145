/**
 * OCSP (`OCSP`, `OCSPaia`, `OCSPflag`, `OCSPnonce`): the revocation status of the peer's
 * certificates, asked from an OCSP responder over HTTP, as stunnel 5.68 does it.
 *
 * stunnel asks inside its verify callback, blocking the handshake. Our event loop cannot block
 * there, so the same checks run right after the handshake (the chain has been verified by then)
 * and before any byte is forwarded: `checkPeerOcsp`. The policy is stunnel 5.68's: every
 * certificate of the verified chain but a self-signed root is checked, from the top down; with
 * `OCSP = URL` that responder must answer "good", and with `OCSPaia = yes` the first conclusive
 * answer of the responders named in the certificate's AIA extension must be "good" (a
 * certificate without AIA responders passes). Anything else (revoked, unknown, no answer, a bad
 * signature, a missing nonce) refuses the connection.
 *
 * The HTTP exchange is OpenSSL's own client (OSSL_HTTP_REQ_CTX, what OCSP_sendreq_nbio uses)
 * over two memory BIOs, with a Deno socket doing the I/O: TIMEOUTconnect bounds the connect and
 * TIMEOUTbusy every wait for the responder.
 *
 * A resumed session was not verified by its handshake (no verify callback, in stunnel either),
 * but its ticket or cache entry may come from a handshake that OCSP refused after the fact: the
 * certificate of a resumed session is checked again.
 *
 * Server-side stapling of the service's own certificate (`openssl s_client -status`) is an
 * addition: stunnel 5.68 does not staple. A server-mode service with `OCSP` or `OCSPaia`
 * staples when clients ask for it: the first request starts a background fetch (the `OCSP`
 * URL, then the certificate's AIA responders) and the answer is refreshed before it expires.
 */
import {
  BIO_C_SET_BUF_MEM_EOF_RETURN,
  BIO_CTRL_PENDING,
  bioText,
  cstr,
  drainErrors,
  lib,
  type OpenSslError,
  type Ptr,
  readCString,
  SSL_TLSEXT_ERR_NOACK,
  SSL_TLSEXT_ERR_OK,
} from "../sys/ffi.ts";
import type { Log } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { withTimeout } from "../sys/timeout.ts";
import type { Conn } from "../net/conn.ts";
import { connect, resolveAddress } from "../net/connect.ts";
import { OCSP_FLAGS } from "../sys/names.ts";
import { nameText } from "./verify.ts";
import { type ContextHandle, type TlsConnection, type TlsContextLog, TlsError } from "./core.ts";
import type { Address, ServiceOptions } from "../config/types.ts";
import type { OcspOptions } from "./ocsp_scope.ts";

const X509_V_ERR_CERT_REVOKED = 23;
const X509_V_ERR_APPLICATION_VERIFICATION = 50;
const V_OCSP_CERTSTATUS_GOOD = 0;
const V_OCSP_CERTSTATUS_REVOKED = 1;
const V_OCSP_CERTSTATUS_UNKNOWN = 2;
const OCSP_RESPONSE_STATUS_SUCCESSFUL = 0;
const SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB = 63;
const SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP = 71;
const SSL_CTRL_GET_CHAIN_CERTS = 115;
/** The answer must be valid for the next minute (stunnel's leeway); 30 s for a staple. */
const LEEWAY_SECONDS = 60n;
const STAPLE_LEEWAY_SECONDS = 30;

/** What decides the fate of a refused peer, besides the checks. */
export type PeerOcspOptions = OcspOptions & Pick<ServiceOptions, "redirect" | "protocol">;

export function ocspFlags(names: readonly string[]): bigint {
  let flags = 0;
  for (const name of names) flags |= OCSP_FLAGS[name.toUpperCase()] ?? 0;
  return BigInt(flags);
}

// ---------------------------------------------------------------------------------------------
// Small native helpers

function ptrOut(): { bytes: Uint8Array<ArrayBuffer>; get(): Ptr } {
  const cell = new BigUint64Array(1);
  return {
    bytes: new Uint8Array(cell.buffer),
    get: () => Deno.UnsafePointer.create(cell[0]),
  };
}

function intOut(): { bytes: Uint8Array<ArrayBuffer>; get(): number } {
  const cell = new Int32Array(1);
  return { bytes: new Uint8Array(cell.buffer), get: () => cell[0] };
}

/** Reads and frees a string OpenSSL allocated. */
function takeString(p: Ptr): string {
  if (p === null) return "";
  const text = readCString(p);
  lib().crypto.CRYPTO_free(p, null, 0);
  return text;
}

/** ASN1_TIME_print's form: `Nov 22 02:01:47 2026 GMT`. */
function timeText(t: Ptr): string {
  return bioText((bio) => lib().crypto.ASN1_TIME_print(bio, t));
}

/** Milliseconds from now until `t` (negative when it is past), or undefined. */
function msUntil(t: Ptr): number | undefined {
  if (t === null) return undefined;
  const days = intOut();
  const secs = intOut();
  if (lib().crypto.ASN1_TIME_diff(days.bytes, secs.bytes, null, t) !== 1) {
    drainErrors();
    return undefined;
  }
  return (days.get() * 86_400 + secs.get()) * 1000;
}

/**
 * stunnel's sslerror(): the queue is logged newest first as "error queue: ...", and the oldest
 * error goes with `what`; an empty queue reads "Peer suddenly disconnected".
 */
function sslError(log: Log, what: string, errors: OpenSslError[] = drainErrors()): void {
  if (errors.length === 0) {
    log(3, `${what}: Peer suddenly disconnected`);
    return;
  }
  for (const e of errors.slice(1).reverse()) log(3, `error queue: ${e.text}`);
  log(3, `${what}: ${errors[0].text}`);
}

/**
 * A certificate chain (leaf first) that holds its own reference to every certificate, and an
 * OpenSSL stack of the same certificates for OCSP_basic_verify.
 */
class Chain {
  readonly stack: Ptr;
  private freed = false;

  /** Takes over one reference to each of `certs`. */
  constructor(readonly certs: Ptr[]) {
    const { crypto } = lib();
    this.stack = crypto.OPENSSL_sk_new_null();
    for (const c of certs) crypto.OPENSSL_sk_push(this.stack, c);
  }

  /** A copy of an OpenSSL stack of certificates (the stack stays its owner's). */
  static copyOf(stack: Ptr): Chain {
    const { crypto } = lib();
    const certs: Ptr[] = [];
    const n = stack === null ? 0 : crypto.OPENSSL_sk_num(stack);
    for (let i = 0; i < n; i++) {
      const c = crypto.OPENSSL_sk_value(stack, i);
      crypto.X509_up_ref(c);
      certs.push(c);
    }
    return new Chain(certs);
  }

  /**
   * The chain OpenSSL builds for `leaf` from the trust store (and `untrusted`): as complete as
   * the store allows, whether or not it verifies.
   */
  static build(store: Ptr, leaf: Ptr, untrusted: Ptr): Chain {
    const { crypto } = lib();
    const ctx = crypto.X509_STORE_CTX_new();
    try {
      if (ctx !== null && crypto.X509_STORE_CTX_init(ctx, store, leaf, untrusted) === 1) {
        crypto.X509_verify_cert(ctx);
        const built = crypto.X509_STORE_CTX_get1_chain(ctx);
        if (built !== null && crypto.OPENSSL_sk_num(built) > 0) {
          // get1: the references are ours; only the stack itself is freed here.
          const n = crypto.OPENSSL_sk_num(built);
          const certs = Array.from({ length: n }, (_, i) => crypto.OPENSSL_sk_value(built, i));
          crypto.OPENSSL_sk_free(built);
          return new Chain(certs);
        }
        if (built !== null) crypto.OPENSSL_sk_free(built);
      }
    } finally {
      if (ctx !== null) crypto.X509_STORE_CTX_free(ctx);
      drainErrors();
    }
    crypto.X509_up_ref(leaf);
    return new Chain([leaf]);
  }

  get length(): number {
    return this.certs.length;
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    const { crypto } = lib();
    crypto.OPENSSL_sk_free(this.stack);
    for (const c of this.certs) crypto.X509_free(c);
  }
}

// ---------------------------------------------------------------------------------------------
// One question to one responder

interface Query {
  log: Log;
  /** The responder (a `http://` URL). */
  url: string;
  /** The certificate asked about, and the chain that vouches for the answer's signer. */
  certId: Ptr;
  chain: Chain;
  store: Ptr;
  flags: bigint;
  nonce: boolean;
  leewaySeconds: bigint;
  timeoutBusy: number;
  timeoutConnect: number;
}

interface Answer {
  status: number;
  /** The DER of the whole OCSP response (for stapling). */
  der?: Uint8Array;
  /** ms from now until nextUpdate, if the answer has one. */
  nextUpdateMs?: number;
}

class Timeout extends Error {}

/** `work`, or a Timeout after `seconds`. */
function within<T>(work: Promise<T>, seconds: number): Promise<T> {
  return withTimeout(work, seconds * 1000, () => {
    throw new Timeout();
  });
}

interface ParsedUrl {
  ssl: boolean;
  host: string;
  port: string;
  path: string;
}

/** OCSP_parse_url(): OpenSSL's reading of an http(s) URL (default port and path "/"). */
function parseUrl(url: string): ParsedUrl | undefined {
  const { crypto } = lib();
  const ssl = intOut();
  const host = ptrOut();
  const port = ptrOut();
  const path = ptrOut();
  const ok = crypto.OSSL_HTTP_parse_url(
    cstr(url),
    ssl.bytes,
    null,
    host.bytes,
    port.bytes,
    null,
    path.bytes,
    null,
    null,
  ) === 1;
  const parsed = { ssl: ssl.get() !== 0, host: "", port: "", path: "" };
  parsed.host = takeString(host.get());
  parsed.port = takeString(port.get());
  parsed.path = takeString(path.get());
  return ok ? parsed : undefined;
}

/**
 * POSTs `request` to the responder and returns the OCSP_RESPONSE (the caller frees it), or null
 * after logging why not, with stunnel's lines.
 */
async function exchange(q: Query, request: Ptr): Promise<Ptr> {
  const { log } = q;
  const url = parseUrl(q.url);
  if (!url) {
    drainErrors();
    log(3, "OCSP: Failed to parse the OCSP URL");
    return null;
  }
  if (url.ssl) {
    log(
      3,
      "OCSP: TLS not supported for OCSP - an additional stunnel service needs to be defined",
    );
    return null;
  }
  let target: Address;
  try {
    [target] = await resolveAddress({ kind: "tcp", host: url.host, port: Number(url.port) });
  } catch {
    log(3, "OCSP: Failed to resolve the OCSP responder address");
    return null;
  }
  const conn = await connect(target, { timeoutSeconds: q.timeoutConnect }, log);
  if (!conn) return null;
  log(7, `OCSP: Connected ${url.host}:${url.port}`);
  try {
    return await converse(q, conn, url, request);
  } finally {
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

/** OpenSSL's HTTP client over memory BIOs; the socket moves the bytes. */
async function converse(q: Query, conn: Conn, url: ParsedUrl, request: Ptr): Promise<Ptr> {
  const { crypto } = lib();
  const { log } = q;
  const wbio = crypto.BIO_new(crypto.BIO_s_mem());
  const rbio = crypto.BIO_new(crypto.BIO_s_mem());
  const rctx = wbio && rbio ? crypto.OSSL_HTTP_REQ_CTX_new(wbio, rbio, 0) : null;
  const response = ptrOut();
  try {
    if (rctx === null) {
      sslError(log, "OCSP: OCSP_sendreq_new");
      return null;
    }
    // OCSP_sendreq_new(), then stunnel's headers and the request body.
    if (
      crypto.OSSL_HTTP_REQ_CTX_set_request_line(rctx, 1, null, null, cstr(url.path)) !== 1 ||
      crypto.OSSL_HTTP_REQ_CTX_set_expected(rctx, null, 1, 0, 0) !== 1
    ) {
      sslError(log, "OCSP: OCSP_sendreq_new");
      return null;
    }
    if (
      crypto.OSSL_HTTP_REQ_CTX_add1_header(rctx, cstr("Host"), cstr(url.host)) !== 1 ||
      crypto.OSSL_HTTP_REQ_CTX_add1_header(rctx, cstr("User-Agent"), cstr("stunnel")) !== 1
    ) {
      sslError(log, "OCSP: OCSP_REQ_CTX_add1_header");
      return null;
    }
    const it = crypto.OCSP_REQUEST_it();
    if (
      crypto.OSSL_HTTP_REQ_CTX_set1_req(rctx, cstr("application/ocsp-request"), it, request) !== 1
    ) {
      sslError(log, "OCSP: OCSP_REQ_CTX_set1_req");
      return null;
    }
    const responseIt = crypto.OCSP_RESPONSE_it();
    const buf = new Uint8Array(16 * 1024);
    for (;;) {
      const r = crypto.OSSL_HTTP_REQ_CTX_nbio_d2i(rctx, response.bytes, responseIt);
      const sent = await flush(wbio, conn, q.timeoutBusy);
      if (r !== -1) break;
      if (sent > 0) continue;
      const n = await within(conn.read(buf), q.timeoutBusy);
      if (n === null) {
        // The responder closed: OpenSSL sees the end of the data instead of "retry".
        crypto.BIO_ctrl(rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, 0n, null);
      } else {
        crypto.BIO_write(rbio, buf, n);
      }
    }
    const resp = response.get();
    if (resp !== null) {
      log(7, "OCSP: Response received");
      return resp;
    }
    const errors = drainErrors();
    if (errors.length > 0) sslError(log, "OCSP: OCSP_sendreq_nbio", errors);
    else log(3, "OCSP: OCSP_sendreq_nbio: OpenSSL internal error");
    return null;
  } catch (e) {
    drainErrors();
    if (e instanceof Timeout) log(6, "OCSP: s_poll_wait: TIMEOUTbusy exceeded");
    else log(3, `OCSP: s_poll_wait: ${osErrorText(e)}`);
    const resp = response.get();
    if (resp !== null) crypto.OCSP_RESPONSE_free(resp);
    return null;
  } finally {
    if (rctx !== null) crypto.OSSL_HTTP_REQ_CTX_free(rctx);
    if (wbio !== null) crypto.BIO_free(wbio);
    if (rbio !== null) crypto.BIO_free(rbio);
  }
}

/** Sends what OpenSSL queued for the responder; returns the byte count. */
async function flush(wbio: Ptr, conn: Conn, timeoutBusy: number): Promise<number> {
  const { crypto } = lib();
  const pending = Number(crypto.BIO_ctrl(wbio, BIO_CTRL_PENDING, 0n, null));
  if (pending <= 0) return 0;
  const data = new Uint8Array(pending);
  const n = crypto.BIO_read(wbio, data, pending);
  let off = 0;
  while (off < n) off += await within(conn.write(data.subarray(off, n)), timeoutBusy);
  return n;
}

const UNKNOWN: Readonly<Answer> = { status: V_OCSP_CERTSTATUS_UNKNOWN };

/** stunnel's ocsp_request(): asks one responder about one certificate. */
async function ask(q: Query): Promise<Answer> {
  const request = newRequest(q);
  if (request === null) return UNKNOWN;
  const { crypto } = lib();
  let response: Ptr = null;
  let basic: Ptr = null;
  try {
    response = await exchange(q, request);
    if (response === null) return UNKNOWN;
    basic = verifiedBasic(q, request, response);
    if (basic === null) return UNKNOWN;
    const found = certStatus(q, basic);
    if (found === undefined) return UNKNOWN;
    return { ...found, der: encode(response) };
  } finally {
    if (basic !== null) crypto.OCSP_BASICRESP_free(basic);
    if (response !== null) crypto.OCSP_RESPONSE_free(response);
    crypto.OCSP_REQUEST_free(request);
    drainErrors();
  }
}

/** The request about `q.certId`, with a nonce if configured; null after logging why not. */
function newRequest(q: Query): Ptr {
  const { crypto } = lib();
  const request = crypto.OCSP_REQUEST_new();
  if (request === null) {
    sslError(q.log, "OCSP: OCSP_REQUEST_new");
    return null;
  }
  const id = crypto.OCSP_CERTID_dup(q.certId);
  if (crypto.OCSP_request_add0_id(request, id) === null) {
    if (id !== null) crypto.OCSP_CERTID_free(id);
    sslError(q.log, "OCSP: OCSP_request_add0_id");
    crypto.OCSP_REQUEST_free(request);
    return null;
  }
  if (q.nonce) crypto.OCSP_request_add1_nonce(request, null, -1);
  return request;
}

/**
 * The basic response of a successful answer to `request`, signed by a responder the chain and
 * the trust store vouch for (the caller frees it); null after logging why not.
 */
function verifiedBasic(q: Query, request: Ptr, response: Ptr): Ptr {
  const { crypto } = lib();
  const { log } = q;
  const responseStatus = crypto.OCSP_response_status(response);
  if (responseStatus !== OCSP_RESPONSE_STATUS_SUCCESSFUL) {
    const text = readCString(crypto.OCSP_response_status_str(BigInt(responseStatus)));
    log(3, `OCSP: Responder error: ${responseStatus}: ${text}`);
    return null;
  }
  const basic = crypto.OCSP_response_get1_basic(response);
  if (basic === null) {
    sslError(log, "OCSP: OCSP_response_get1_basic");
    return null;
  }
  if (q.nonce && crypto.OCSP_check_nonce(request, basic) <= 0) {
    drainErrors();
    log(3, "OCSP: Invalid or unsupported nonce");
  } else if (crypto.OCSP_basic_verify(basic, q.chain.stack, q.store, q.flags) <= 0) {
    sslError(log, "OCSP: OCSP_basic_verify");
  } else {
    return basic;
  }
  crypto.OCSP_BASICRESP_free(basic);
  return null;
}

/**
 * The status of `q.certId` in a verified basic response, logged as stunnel logs it; undefined
 * (logged) when the response does not name the certificate or is not valid now.
 */
function certStatus(q: Query, basic: Ptr): { status: number; nextUpdateMs?: number } | undefined {
  const { crypto } = lib();
  const { log } = q;
  const status = intOut();
  const reason = intOut();
  const revokedAt = ptrOut();
  const thisUpdate = ptrOut();
  const nextUpdate = ptrOut();
  if (
    crypto.OCSP_resp_find_status(
      basic,
      q.certId,
      status.bytes,
      reason.bytes,
      revokedAt.bytes,
      thisUpdate.bytes,
      nextUpdate.bytes,
    ) !== 1
  ) {
    sslError(log, "OCSP: OCSP_resp_find_status");
    return undefined;
  }
  log(6, `OCSP: Status: ${readCString(crypto.OCSP_cert_status_str(BigInt(status.get())))}`);
  if (thisUpdate.get() !== null) log(6, `OCSP: This update: ${timeText(thisUpdate.get())}`);
  if (nextUpdate.get() !== null) log(6, `OCSP: Next update: ${timeText(nextUpdate.get())}`);
  if (crypto.OCSP_check_validity(thisUpdate.get(), nextUpdate.get(), q.leewaySeconds, -1n) !== 1) {
    sslError(log, "OCSP: OCSP_check_validity");
    return undefined;
  }
  logVerdict(log, status.get(), reason.get(), revokedAt.get());
  return { status: status.get(), nextUpdateMs: msUntil(nextUpdate.get()) };
}

/** stunnel's lines for a certificate's status: accepted, revoked (why, when) or unknown. */
function logVerdict(log: Log, status: number, reason: number, revokedAt: Ptr): void {
  switch (status) {
    case V_OCSP_CERTSTATUS_GOOD:
      log(5, "OCSP: Certificate accepted");
      break;
    case V_OCSP_CERTSTATUS_REVOKED: {
      if (reason === -1) log(3, "OCSP: Certificate revoked");
      else {
        const text = readCString(lib().crypto.OCSP_crl_reason_str(BigInt(reason)));
        log(3, `OCSP: Certificate revoked: ${reason}: ${text}`);
      }
      if (revokedAt !== null) log(5, `OCSP: Revoked at: ${timeText(revokedAt)}`);
      break;
    }
    default:
      log(4, "OCSP: Unknown verification status");
  }
}

/** i2d_OCSP_RESPONSE */
function encode(response: Ptr): Uint8Array | undefined {
  const { crypto } = lib();
  const n = crypto.i2d_OCSP_RESPONSE(response, null);
  if (n <= 0) return undefined;
  const der = new Uint8Array(n);
  const cursor = new BigUint64Array([BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(der)))]);
  return crypto.i2d_OCSP_RESPONSE(response, new Uint8Array(cursor.buffer)) === n ? der : undefined;
}

/** The responders named in a certificate's AIA extension. */
function aiaUrls(cert: Ptr): string[] | undefined {
  const { crypto } = lib();
  const list = crypto.X509_get1_ocsp(cert);
  if (list === null) return undefined;
  const urls: string[] = [];
  for (let i = 0; i < crypto.OPENSSL_sk_num(list); i++) {
    urls.push(readCString(crypto.OPENSSL_sk_value(list, i)));
  }
  crypto.X509_email_free(list);
  return urls;
}

function isSelfIssued(cert: Ptr): boolean {
  const { crypto } = lib();
  return crypto.X509_NAME_cmp(
    crypto.X509_get_subject_name(cert),
    crypto.X509_get_issuer_name(cert),
  ) === 0;
}

// ---------------------------------------------------------------------------------------------
// The peer's certificates

/**
 * After the handshake, before any byte is forwarded, for a service that ocspChecksPeer: the
 * OCSP status of the peer's chain. Resolves when the connection may go on; throws a TlsError (after stunnel's log lines) when
 * OCSP refuses it. As stunnel's verify callback does, a server-mode service with `redirect`
 * (and no `protocol`) lets a refused client through unauthenticated instead: the connection's
 * verify result then says why, and the client goes to the redirect target.
 */
export async function checkPeerOcsp(
  conn: TlsConnection,
  opts: PeerOcspOptions,
  log: Log,
): Promise<void> {
  const { ssl, crypto } = lib();
  let chain: Chain;
  if (!conn.sessionReused) {
    chain = Chain.copyOf(ssl.SSL_get0_verified_chain(conn.ssl));
  } else {
    // No certificate was verified in this handshake (nor would stunnel's verify callback be
    // called), but the session may come from a handshake that OCSP refused after the fact: its
    // ticket or cache entry already existed. Its certificate is checked again.
    const leaf = ssl.SSL_get1_peer_certificate(conn.ssl);
    if (leaf === null) return;
    log(7, "OCSP: Checking the certificate of the resumed session");
    const store = ssl.SSL_CTX_get_cert_store(ssl.SSL_get_SSL_CTX(conn.ssl));
    chain = Chain.build(store, leaf, ssl.SSL_get_peer_cert_chain(conn.ssl));
    crypto.X509_free(leaf);
  }
  try {
    const refused = await checkChain(chain, conn, opts, log);
    if (refused === undefined) return;
    if (!opts.client && !opts.protocol && opts.redirect) {
      ssl.SSL_set_verify_result(conn.ssl, BigInt(refused));
      return;
    }
    const call = opts.client ? "SSL_connect" : "SSL_accept";
    throw new TlsError(call, [], "certificate verify failed (rejected by OCSP)");
  } finally {
    chain.free();
  }
}

/**
 * undefined when every certificate passes; else, after the log line naming the first one OCSP
 * refuses, the verification error stunnel sets (revoked, or "application verification failure").
 */
async function checkChain(
  chain: Chain,
  conn: TlsConnection,
  opts: OcspOptions,
  log: Log,
): Promise<number | undefined> {
  const { ssl, crypto } = lib();
  // The connection's context holds the trust store (SNI may have switched it) and lives as
  // long as the SSL object.
  const store = ssl.SSL_CTX_get_cert_store(ssl.SSL_get_SSL_CTX(conn.ssl));
  // OpenSSL verifies (and stunnel checks) from the top of the chain down to the peer.
  for (let depth = chain.length - 1; depth >= 0; depth--) {
    const cert = chain.certs[depth];
    if (isSelfIssued(cert)) {
      log(7, "OCSP: Ignoring root certificate");
      continue;
    }
    const issuer = depth < chain.length - 1 ? chain.certs[depth + 1] : cert;
    const certId = crypto.OCSP_cert_to_id(null, cert, issuer);
    let status: number;
    if (certId === null) {
      sslError(log, "OCSP: OCSP_cert_to_id");
      status = V_OCSP_CERTSTATUS_UNKNOWN;
    } else {
      try {
        status = await checkCertificate(cert, certId, chain, store, opts, log);
      } finally {
        crypto.OCSP_CERTID_free(certId);
      }
    }
    if (status !== V_OCSP_CERTSTATUS_GOOD) {
      log(
        4,
        `Rejected by OCSP at depth=${depth}: ${nameText(lib().crypto.X509_get_subject_name(cert))}`,
      );
      return status === V_OCSP_CERTSTATUS_REVOKED
        ? X509_V_ERR_CERT_REVOKED
        : X509_V_ERR_APPLICATION_VERIFICATION;
    }
  }
  return undefined;
}

/**
 * stunnel 5.68's ocsp_check() for one certificate: the configured responder, then AIA. GOOD
 * when the certificate passes, else the status that refused it.
 */
async function checkCertificate(
  cert: Ptr,
  certId: Ptr,
  chain: Chain,
  store: Ptr,
  opts: OcspOptions,
  log: Log,
): Promise<number> {
  const query = (url: string): Query => ({
    log,
    url,
    certId,
    chain,
    store,
    flags: ocspFlags(opts.OCSPflag),
    nonce: opts.OCSPnonce,
    leewaySeconds: LEEWAY_SECONDS,
    timeoutBusy: opts.TIMEOUTbusy,
    timeoutConnect: opts.TIMEOUTconnect,
  });
  if (opts.OCSP !== undefined) {
    log(5, `OCSP: Connecting the configured responder "${opts.OCSP}"`);
    const { status } = await ask(query(opts.OCSP));
    if (status !== V_OCSP_CERTSTATUS_GOOD) return status;
  }
  const urls = opts.OCSPaia ? aiaUrls(cert) : undefined;
  if (urls !== undefined) {
    let status = V_OCSP_CERTSTATUS_UNKNOWN;
    for (const url of urls) {
      log(5, `OCSP: Connecting the AIA responder "${url}"`);
      status = (await ask(query(url))).status;
      if (status !== V_OCSP_CERTSTATUS_UNKNOWN) break;
    }
    if (status !== V_OCSP_CERTSTATUS_GOOD) return status;
  }
  return V_OCSP_CERTSTATUS_GOOD;
}

// ---------------------------------------------------------------------------------------------
// Stapling our own certificate (server mode)

const FIRST_RETRY_MS = 60_000;
const MAX_RETRY_MS = 3_600_000;
const REFRESH_WITHOUT_NEXT_UPDATE_MS = 3_600_000;

/** What the stapler asks about: our certificate's id, its chain and the trust store. */
interface OwnCertificate {
  certId: Ptr;
  chain: Chain;
  /** One reference of our own: a fetch may outlive the context. */
  store: Ptr;
}

/**
 * The status of a server's own certificate. Nothing is fetched until a client asks for it:
 * that handshake goes without a staple and starts the fetch in the background; later ones get
 * it. Past the middle of its validity, the next request for it starts a refresh while the old
 * answer is still served. A failed fetch is retried on demand after 1, 2, 4, ... 60 minutes.
 */
class Stapler {
  private der: Uint8Array | undefined;
  /** Date.now() after which the staple is stale (nextUpdate + leeway). */
  private staleAt = 0;
  /** Date.now() from which a request for the staple starts a new fetch. */
  private refreshAt = 0;
  private retryMs = FIRST_RETRY_MS;
  private fetching = false;
  private closed = false;
  private released = false;

  constructor(
    private readonly key: bigint,
    private readonly own: OwnCertificate,
    private readonly opts: OcspOptions,
    private readonly log: TlsContextLog,
    private readonly urls: string[],
  ) {}

  /** For the status callback (inside SSL_do_handshake): the answer, if it is fresh. */
  staple(ssl: Ptr): number {
    const now = Date.now();
    if (!this.fetching && !this.closed && now >= this.refreshAt) {
      this.fetching = true;
      // After SSL_do_handshake has returned: OpenSSL is not re-entered from its callback.
      queueMicrotask(() => this.fetch().catch(() => {}));
    }
    const { der } = this;
    if (der === undefined || now > this.staleAt) {
      this.log(7, "OCSP stapling: No OCSP stapling response to send");
      return SSL_TLSEXT_ERR_NOACK;
    }
    const { crypto, ssl: lssl } = lib();
    // OpenSSL frees the buffer with the SSL object.
    const copy = crypto.CRYPTO_memdup(der as Uint8Array<ArrayBuffer>, BigInt(der.length), null, 0);
    if (copy === null) return SSL_TLSEXT_ERR_NOACK;
    lssl.SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP, BigInt(der.length), copy);
    this.log(7, "OCSP stapling: OCSP response sent back");
    return SSL_TLSEXT_ERR_OK;
  }

  private async fetch(): Promise<void> {
    let answer: Answer | undefined;
    try {
      answer = await this.ask();
    } finally {
      this.fetching = false;
      if (this.closed) this.release();
    }
    if (this.closed) return;
    const now = Date.now();
    if (answer?.der !== undefined && answer.status !== V_OCSP_CERTSTATUS_UNKNOWN) {
      const next = answer.nextUpdateMs;
      this.der = answer.der;
      this.staleAt = next === undefined ? Infinity : now + next + STAPLE_LEEWAY_SECONDS * 1000;
      this.refreshAt = now +
        (next === undefined
          ? REFRESH_WITHOUT_NEXT_UPDATE_MS
          : Math.min(Math.max(next / 2, 30_000), 86_400_000));
      this.retryMs = FIRST_RETRY_MS;
      this.log(7, "OCSP stapling: Response cached");
    } else {
      this.log(6, "OCSP stapling: No OCSP response to staple");
      this.refreshAt = now + this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    }
  }

  /** Asks the responders in turn about our certificate; the first conclusive answer counts. */
  private async ask(): Promise<Answer | undefined> {
    for (const url of this.urls) {
      if (this.closed) return undefined;
      this.log(5, `OCSP stapling: Connecting the responder "${url}"`);
      const answer = await ask({
        log: this.log,
        url,
        certId: this.own.certId,
        chain: this.own.chain,
        store: this.own.store,
        // As newer stunnel versions: a signer among the chain's certificates is trusted.
        flags: BigInt(OCSP_FLAGS.TRUSTOTHER),
        nonce: false,
        leewaySeconds: BigInt(STAPLE_LEEWAY_SECONDS),
        timeoutBusy: this.opts.TIMEOUTbusy,
        timeoutConnect: this.opts.TIMEOUTconnect,
      });
      if (answer.status !== V_OCSP_CERTSTATUS_UNKNOWN) return answer;
    }
    return undefined;
  }

  /** With the context: no more staples; the native things go once no fetch uses them. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    staplers.delete(this.key);
    if (!this.fetching) this.release();
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    const { crypto } = lib();
    crypto.OCSP_CERTID_free(this.own.certId);
    this.own.chain.free();
    crypto.X509_STORE_free(this.own.store);
  }
}

/** The staplers of this thread by SSL_CTX address; a context's entry goes when it is freed. */
const staplers = new Map<bigint, Stapler>();

let statusCallback:
  | Deno.UnsafeCallback<{ parameters: ["pointer", "pointer"]; result: "i32" }>
  | undefined;

/**
 * The status callback of every stapling context of this thread. It is never closed: an SSL
 * object may outlive its context's stapler (after a reload) and still call it; it then finds
 * no stapler and sends no staple.
 */
function statusRequestCallback(): Deno.PointerValue {
  statusCallback ??= new Deno.UnsafeCallback(
    { parameters: ["pointer", "pointer"], result: "i32" } as const,
    (ssl) => {
      try {
        const ctx = lib().ssl.SSL_get_SSL_CTX(ssl);
        const stapler = staplers.get(BigInt(Deno.UnsafePointer.value(ctx)));
        return stapler ? stapler.staple(ssl) : SSL_TLSEXT_ERR_NOACK;
      } catch {
        return SSL_TLSEXT_ERR_NOACK;
      }
    },
  );
  return statusCallback.pointer;
}

/**
 * For a service that ocspStaples: staples the status of the service's own certificate, from
 * the `OCSP` responder and then the certificate's AIA responders. A no-op when the issuer of the certificate is unknown (neither in its file nor among the trusted CAs).
 */
export function configureStapling(context: ContextHandle, log: TlsContextLog): void {
  const opts: OcspOptions = context.opts;
  const { ssl, crypto } = lib();
  const { ctx } = context;
  const leaf = ssl.SSL_CTX_get0_certificate(ctx);
  if (leaf === null) return;
  const urls = [...(opts.OCSP !== undefined ? [opts.OCSP] : []), ...(aiaUrls(leaf) ?? [])];
  if (urls.length === 0) return;
  const extra = ptrOut();
  ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_GET_CHAIN_CERTS, 0n, Deno.UnsafePointer.of(extra.bytes));
  const store = ssl.SSL_CTX_get_cert_store(ctx);
  const chain = Chain.build(store, leaf, extra.get());
  if (chain.length < 2 && !isSelfIssued(leaf)) {
    chain.free();
    log(6, "OCSP: Server OCSP stapling disabled: issuer certificate not found");
    return;
  }
  const certId = crypto.OCSP_cert_to_id(null, leaf, chain.length > 1 ? chain.certs[1] : leaf);
  if (certId === null) {
    chain.free();
    sslError(log, "OCSP: OCSP_cert_to_id");
    return;
  }
  crypto.X509_STORE_up_ref(store);
  const key = BigInt(Deno.UnsafePointer.value(ctx));
  const stapler = new Stapler(key, { certId, chain, store }, opts, log, [...new Set(urls)]);
  staplers.set(key, stapler);
  context.own(stapler);
  ssl.SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB, statusRequestCallback());
  log(7, "OCSP: Server OCSP stapling enabled");
}
