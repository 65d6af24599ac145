/**
 * Peer authentication, as stunnel 5.68 does it: trust anchors (CAfile/CApath), revocation lists
 * (CRLfile/CRLpath), the verify mode (verify, verifyChain, verifyPeer, requireCert) and the
 * verify callback with its checks (chain, subject, locally installed certificate), its log lines
 * and the `redirect` verdict.
 *
 * OpenSSL calls the verify callback synchronously inside SSL_do_handshake. One callback per
 * thread serves every context of that thread and is never closed: an SSL object can outlive its
 * ContextHandle (a reload frees contexts while connections still use them) and a renegotiation
 * verifies again. The callback finds the options by the SSL object's SSL_CTX (after an SNI
 * switch, the secondary service's), and the connection (for its log) by the SSL object.
 *
 * The verdict survives session resumption: a peer is authenticated when it presented a
 * certificate and the verification result stored in its session is X509_V_OK. The callback
 * keeps that result in step with its decisions: errors it ignores are cleared, and a
 * certificate it lets through only for `redirect` always leaves an error behind.
 */
import {
  bioText,
  cstr,
  drainErrors,
  lib,
  type Ptr,
  readCString,
  SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
  SSL_VERIFY_PEER,
} from "../sys/ffi.ts";
import {
  connectionOf,
  type ContextHandle,
  type TlsConnection,
  type TlsContextLog,
  TlsError,
} from "./core.ts";
import { loadEngineCAs } from "./engine.ts";
import type { ServiceOptions } from "../config/types.ts";

/** What peer verification needs to know about a service. */
export type VerifyOptions = Pick<
  ServiceOptions,
  | "name"
  | "client"
  | "CAfile"
  | "CApath"
  | "CAengine"
  | "engine"
  | "CRLfile"
  | "CRLpath"
  | "requestCert"
  | "requireCert"
  | "verifyChain"
  | "verifyPeer"
  | "checkHost"
  | "checkIP"
  | "checkEmail"
  | "redirect"
  | "PSKsecrets"
>;

// x509_vfy.h, x509.h, asn1.h, crypto.h (OpenSSL 3.0)
const X509_V_OK = 0;
const X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20;
const X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE = 21;
const X509_V_ERR_CERT_UNTRUSTED = 27;
const X509_V_ERR_CERT_REJECTED = 28;
const X509_V_ERR_APPLICATION_VERIFICATION = 50;
const X509_V_FLAG_CRL_CHECK = 0x4n;
const X509_FILETYPE_PEM = 1;
const X509_L_ADD_DIR = 2;
const CRYPTO_EX_INDEX_X509_STORE_CTX = 5;
/** XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB & ~XN_FLAG_SPC_EQ: `CN=a, O=b`, as stunnel prints. */
const NAME_FLAGS = 0x2031bn;

/** Errors a verifyPeer-only service ignores on the peer certificate (no chain to a CA needed). */
const IGNORABLE_WITHOUT_CHAIN = new Set([
  X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
  X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE,
  X509_V_ERR_CERT_UNTRUSTED,
]);

function addressOf(p: Ptr): bigint {
  return BigInt(Deno.UnsafePointer.value(p));
}

/** The contexts of this thread, by the address of their SSL_CTX, until they are freed. */
const contexts = new Map<bigint, { opts: VerifyOptions; log: TlsContextLog }>();

// ------------------------------------------------------------------------- initialization

/** stunnel's verify_init: trust anchors, CRLs, verify mode and callback, warnings. */
export function configureVerification(context: ContextHandle, log: TlsContextLog): void {
  const opts: VerifyOptions = context.opts;
  initTrustAnchors(context, opts, log);
  initCrls(context, opts, log);
  const { ssl } = lib();
  let mode = 0;
  if (opts.requestCert) {
    mode |= SSL_VERIFY_PEER;
    // With `redirect` a client without a certificate is let in, and sent elsewhere.
    if (opts.requireCert && !opts.redirect) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  }
  const key = addressOf(context.ctx);
  contexts.set(key, { opts, log });
  context.own({ close: () => contexts.delete(key) });
  ssl.SSL_CTX_set_verify(context.ctx, mode, verifyCallback().pointer);
  authWarnings(opts, log);
}

/** CAfile/CApath: the trust store, and the names of the CAs (sent to clients by a server). */
function initTrustAnchors(context: ContextHandle, opts: VerifyOptions, log: TlsContextLog): void {
  const { ssl, crypto } = lib();
  if (opts.CAfile || opts.CApath) {
    // As stunnel: a file or directory that does not load shows as "No trusted certificates".
    ssl.SSL_CTX_load_verify_locations(
      context.ctx,
      opts.CAfile ? cstr(opts.CAfile) : null,
      opts.CApath ? cstr(opts.CApath) : null,
    );
  }
  const names = crypto.OPENSSL_sk_new_null();
  if (names === null) throw new TlsError("sk_X509_NAME_new_null", drainErrors());
  if (opts.CAfile) ssl.SSL_add_file_cert_subjects_to_stack(names, cstr(opts.CAfile));
  if (opts.CApath) ssl.SSL_add_dir_cert_subjects_to_stack(names, cstr(opts.CApath));
  drainErrors();
  if (opts.CAengine.length > 0) {
    loadEngineCAs(context.ctx, opts.engine, opts.CAengine, names, log);
  }
  const count = crypto.OPENSSL_sk_num(names);
  if (count <= 0) {
    freeNames(names);
    if (opts.verifyChain || opts.verifyPeer) throw new Error("No trusted certificates found");
    log(3, "No trusted certificates found");
    return;
  }
  const kind = opts.client ? "server" : "client";
  for (let i = 0; i < count; i++) {
    log(6, `Configured trusted ${kind} CA: ${nameText(crypto.OPENSSL_sk_value(names, i))}`);
  }
  // Only a server sends the list; SSL_CTX_set_client_CA_list takes it over.
  if (opts.client) freeNames(names);
  else ssl.SSL_CTX_set_client_CA_list(context.ctx, names);
}

function freeNames(names: Ptr): void {
  const { crypto } = lib();
  for (let i = 0; i < crypto.OPENSSL_sk_num(names); i++) {
    crypto.X509_NAME_free(crypto.OPENSSL_sk_value(names, i));
  }
  crypto.OPENSSL_sk_free(names);
}

/** CRLfile/CRLpath: lookups in the trust store; the peer certificate is then checked. */
function initCrls(context: ContextHandle, opts: VerifyOptions, log: TlsContextLog): void {
  if (!opts.CRLfile && !opts.CRLpath) return;
  const { ssl, crypto } = lib();
  const store = ssl.SSL_CTX_get_cert_store(context.ctx);
  if (opts.CRLfile) {
    const lookup = crypto.X509_STORE_add_lookup(store, crypto.X509_LOOKUP_file());
    if (lookup === null) {
      throw new TlsError("X509_STORE_add_lookup(X509_LOOKUP_file)", drainErrors());
    }
    if (crypto.X509_load_crl_file(lookup, cstr(opts.CRLfile), X509_FILETYPE_PEM) <= 0) {
      log(3, `Failed to load ${opts.CRLfile} revocation lookup file`);
      throw new TlsError("X509_load_crl_file", drainErrors());
    }
    log(7, `Loaded ${opts.CRLfile} revocation lookup file`);
  }
  if (opts.CRLpath) {
    const lookup = crypto.X509_STORE_add_lookup(store, crypto.X509_LOOKUP_hash_dir());
    if (lookup === null) {
      throw new TlsError("X509_STORE_add_lookup(X509_LOOKUP_hash_dir)", drainErrors());
    }
    const added = crypto.X509_LOOKUP_ctrl(
      lookup,
      X509_L_ADD_DIR,
      cstr(opts.CRLpath),
      BigInt(X509_FILETYPE_PEM),
      null,
    );
    if (added <= 0) {
      log(3, `Failed to add ${opts.CRLpath} revocation lookup directory`);
      throw new TlsError("X509_LOOKUP_add_dir", drainErrors());
    }
    log(7, `Added ${opts.CRLpath} revocation lookup directory`);
  }
  // stunnel checks the peer certificate only (no X509_V_FLAG_CRL_CHECK_ALL): a CA certificate
  // of the chain needs no CRL of its issuer.
  crypto.X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
}

/** stunnel's warnings about client-mode services that do not authenticate the server. */
function authWarnings(opts: VerifyOptions, log: TlsContextLog): void {
  if (opts.PSKsecrets || !opts.client || opts.verifyPeer) return;
  if (opts.verifyChain) {
    if (opts.checkHost.length + opts.checkIP.length + opts.checkEmail.length > 0) return;
    log(4, `Service [${opts.name}] uses "verifyChain" without subject checks`);
    log(4, 'Use "checkHost" or "checkIP" to restrict trusted certificates');
    return;
  }
  log(4, `Service [${opts.name}] needs authentication to prevent MITM attacks`);
}

// ------------------------------------------------------------------------- the callback

const CALLBACK = { parameters: ["i32", "pointer"], result: "i32" } as const;
let callback: Deno.UnsafeCallback<typeof CALLBACK> | undefined;
/** X509_STORE_CTX ex_data slot: set once a certificate got through only for `redirect`. */
let redirectMark: number | undefined;
const MARKED = Deno.UnsafePointer.create(1n);

function verifyCallback(): Deno.UnsafeCallback<typeof CALLBACK> {
  if (!callback) {
    const index = lib().crypto.CRYPTO_get_ex_new_index(
      CRYPTO_EX_INDEX_X509_STORE_CTX,
      0n,
      null,
      null,
      null,
      null,
    );
    drainErrors();
    // Without a slot, `redirect` still works for every certificate that fails on its own.
    if (index >= 0) redirectMark = index;
    callback = new Deno.UnsafeCallback(CALLBACK, (ok, storeCtx) => onVerify(ok, storeCtx));
  }
  return callback;
}

/** stunnel's verify_callback: 1 lets the handshake go on, 0 ends it with an alert. */
function onVerify(preverifyOk: number, storeCtx: Ptr): number {
  const { ssl: s, crypto } = lib();
  let log: TlsContextLog = () => {};
  try {
    const ssl = crypto.X509_STORE_CTX_get_ex_data(storeCtx, s.SSL_get_ex_data_X509_STORE_CTX_idx());
    if (ssl === null) return 0;
    const ctx = addressOf(s.SSL_get_SSL_CTX(ssl));
    const conn = connectionOf(ssl);
    const context = contexts.get(ctx);
    log = conn?.log ?? context?.log ?? log;
    // A context freed by a reload still serves its connections' handshakes.
    const opts = context?.opts ??
      (conn && addressOf(conn.context.ctx) === ctx ? conn.context.opts : undefined);
    if (!opts) {
      log(4, "CERT: The service of this connection is gone; certificate rejected");
      return 0;
    }
    if (!opts.verifyChain && !opts.verifyPeer) {
      log(6, "Certificate verification disabled");
      return 1;
    }
    const marked = redirectMark !== undefined &&
      crypto.X509_STORE_CTX_get_ex_data(storeCtx, redirectMark) !== null;
    const result = verifyChecks(opts, log, preverifyOk === 1, storeCtx);
    if (result !== "rejected") {
      const error = crypto.X509_STORE_CTX_get_error(storeCtx);
      if (marked && error === X509_V_OK) {
        crypto.X509_STORE_CTX_set_error(storeCtx, X509_V_ERR_APPLICATION_VERIFICATION);
      } else if (!marked && result === "accepted despite error") {
        crypto.X509_STORE_CTX_set_error(storeCtx, X509_V_OK);
      }
      return 1;
    }
    // A client-mode service has connected already: there is no other way to go.
    if (opts.client || !opts.redirect || redirectMark === undefined) return 0;
    crypto.X509_STORE_CTX_set_ex_data(storeCtx, redirectMark, MARKED);
    if (crypto.X509_STORE_CTX_get_error(storeCtx) === X509_V_OK) {
      crypto.X509_STORE_CTX_set_error(storeCtx, X509_V_ERR_APPLICATION_VERIFICATION);
    }
    return 1;
  } catch (e) {
    try {
      log(3, `CERT: Verification failed: ${e instanceof Error ? e.message : String(e)}`);
    } catch {
      // nothing left to report with
    }
    drainErrors();
    return 0;
  }
}

type CheckResult = "accepted" | "accepted despite error" | "rejected";

/** stunnel's verify_checks: one certificate of the chain, at the depth OpenSSL reports. */
function verifyChecks(
  opts: VerifyOptions,
  log: TlsContextLog,
  preverifyOk: boolean,
  storeCtx: Ptr,
): CheckResult {
  const { crypto } = lib();
  const cert = crypto.X509_STORE_CTX_get_current_cert(storeCtx);
  const depth = crypto.X509_STORE_CTX_get_error_depth(storeCtx);
  const subject = cert === null ? "" : nameText(crypto.X509_get_subject_name(cert));
  log(7, `Verification started at depth=${depth}: ${subject}`);
  const result = certCheck(opts, log, preverifyOk, storeCtx, cert, depth);
  if (result === "rejected") {
    log(4, `Rejected by CERT at depth=${depth}: ${subject}`);
    return result;
  }
  log(depth > 0 ? 6 : 5, `Certificate accepted at depth=${depth}: ${subject}`);
  return result;
}

function certCheck(
  opts: VerifyOptions,
  log: TlsContextLog,
  preverifyOk: boolean,
  storeCtx: Ptr,
  cert: Ptr,
  depth: number,
): CheckResult {
  const { crypto } = lib();
  let result: CheckResult = "accepted";
  if (preverifyOk) {
    log(7, "CERT: Pre-verification succeeded");
  } else {
    const error = crypto.X509_STORE_CTX_get_error(storeCtx);
    const reason = readCString(crypto.X509_verify_cert_error_string(BigInt(error)));
    // Without verifyChain only the peer certificate itself matters, and it needs no CA.
    if (opts.verifyChain || (depth === 0 && !IGNORABLE_WITHOUT_CHAIN.has(error))) {
      log(4, `CERT: Pre-verification error: ${reason}`);
      return "rejected";
    }
    log(6, `CERT: Pre-verification error ignored: ${reason}`);
    result = "accepted despite error";
  }
  if (depth === 0 && cert !== null) {
    if (!subjectMatches(opts, log, cert)) return "rejected";
    if (opts.verifyPeer && !locallyInstalled(log, storeCtx, cert)) return "rejected";
  }
  return result;
}

/** checkHost, checkEmail, checkIP: any one match accepts; none configured accepts. */
function subjectMatches(opts: VerifyOptions, log: TlsContextLog, cert: Ptr): boolean {
  const { crypto } = lib();
  const { checkHost, checkEmail, checkIP } = opts;
  if (checkHost.length + checkEmail.length + checkIP.length === 0) {
    log(6, "CERT: No subject checks configured");
    return true;
  }
  for (const host of checkHost) {
    const peername = new BigUint64Array(1);
    const matched = crypto.X509_check_host(
      cert,
      cstr(host),
      0n,
      0,
      Deno.UnsafePointer.of(peername),
    );
    if (matched > 0) {
      const p = Deno.UnsafePointer.create(peername[0]);
      log(6, `CERT: Host name "${host}" matched with "${readCString(p)}"`);
      if (p !== null) crypto.CRYPTO_free(p, null, 0);
      return true;
    }
  }
  for (const email of checkEmail) {
    if (crypto.X509_check_email(cert, cstr(email), 0n, 0) > 0) {
      log(6, `CERT: Email address "${email}" matched`);
      return true;
    }
  }
  for (const ip of checkIP) {
    if (crypto.X509_check_ip_asc(cert, cstr(ip), 0) > 0) {
      log(6, `CERT: IP address "${ip}" matched`);
      return true;
    }
  }
  drainErrors();
  log(4, "CERT: Subject checks failed");
  return false;
}

/** verifyPeer: a certificate of the trust store with the same subject and public key. */
function locallyInstalled(log: TlsContextLog, storeCtx: Ptr, cert: Ptr): boolean {
  const { crypto } = lib();
  const found = crypto.X509_STORE_CTX_get1_certs(storeCtx, crypto.X509_get_subject_name(cert));
  drainErrors();
  if (found !== null) {
    let matched = false;
    const mine = publicKeyBits(cert);
    for (let i = 0; i < crypto.OPENSSL_sk_num(found); i++) {
      const candidate = crypto.OPENSSL_sk_value(found, i);
      if (!matched && mine !== undefined && sameBytes(mine, publicKeyBits(candidate))) {
        matched = true;
      }
      crypto.X509_free(candidate);
    }
    crypto.OPENSSL_sk_free(found);
    if (matched) {
      log(6, "CERT: Locally installed certificate matched");
      return true;
    }
  }
  log(4, "CERT: Certificate not found in local repository");
  crypto.X509_STORE_CTX_set_error(storeCtx, X509_V_ERR_CERT_REJECTED);
  return false;
}

function publicKeyBits(cert: Ptr): Uint8Array | undefined {
  const { crypto } = lib();
  const bits = crypto.X509_get0_pubkey_bitstr(cert);
  if (bits === null) return undefined;
  const length = crypto.ASN1_STRING_length(bits);
  const data = crypto.ASN1_STRING_get0_data(bits);
  if (length < 0 || data === null) return undefined;
  const bytes = new Uint8Array(length);
  Deno.UnsafePointerView.copyInto(data, bytes);
  return bytes;
}

function sameBytes(a: Uint8Array, b: Uint8Array | undefined): boolean {
  return b !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);
}

// ------------------------------------------------------------------------- after the handshake

/**
 * Whether the peer was authenticated: it presented a certificate and the verification stored in
 * the (possibly resumed) session passed. Only meaningful for a service with verification on.
 */
export function peerAuthenticated(conn: TlsConnection): boolean {
  const { ssl, crypto } = lib();
  const cert = ssl.SSL_get1_peer_certificate(conn.ssl);
  if (cert === null) return false;
  crypto.X509_free(cert);
  return ssl.SSL_get_verify_result(conn.ssl) === BigInt(X509_V_OK);
}

/** A distinguished name as stunnel logs it: `CN=client`, `C=PL, O=Example, CN=host`. */
export function nameText(name: Ptr): string {
  return bioText((bio) => lib().crypto.X509_NAME_print_ex(bio, name, 0, NAME_FLAGS));
}

/** The peer certificate's subject and issuer (`exec`: SSL_CLIENT_DN, SSL_CLIENT_I_DN), if any. */
export function peerNames(conn: TlsConnection): { subject: string; issuer: string } | undefined {
  const { ssl, crypto } = lib();
  const cert = ssl.SSL_get1_peer_certificate(conn.ssl);
  if (cert === null) return undefined;
  try {
    return {
      subject: nameText(crypto.X509_get_subject_name(cert)!),
      issuer: nameText(crypto.X509_get_issuer_name(cert)!),
    };
  } finally {
    crypto.X509_free(cert);
  }
}

/** NID_commonName */
const NID_COMMON_NAME = 13;

/**
 * The peer certificate as PROXY v2 reports it: its subject's CN and OpenSSL's verification
 * result (0: verified); undefined when the peer sent none (in this session).
 */
export function peerCertificate(conn: TlsConnection): { cn?: string; verify: number } | undefined {
  const { ssl, crypto } = lib();
  const cert = ssl.SSL_get1_peer_certificate(conn.ssl);
  if (cert === null) return undefined;
  try {
    const buf = new Uint8Array(256);
    const n = crypto.X509_NAME_get_text_by_NID(
      crypto.X509_get_subject_name(cert),
      NID_COMMON_NAME,
      buf,
      buf.length,
    );
    const cn = n >= 0 ? new TextDecoder().decode(buf.subarray(0, n)) : undefined;
    return { cn, verify: Number(ssl.SSL_get_verify_result(conn.ssl)) };
  } finally {
    crypto.X509_free(cert);
  }
}
