/** Peer authentication: trust anchors, chain verification and subject checks. */
import {
  cstr,
  lib,
  type Ptr,
  readCString,
  SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
  SSL_VERIFY_NONE,
  SSL_VERIFY_PEER,
} from "./ffi.ts";
import { check, type TlsConnection, type TlsContext, type TlsContextLog, TlsError } from "./tls.ts";
import type { ServiceOptions } from "./types.ts";

/** CAfile/CApath as trust anchors; verifyChain makes a verified certificate mandatory. */
export function configureVerification(context: TlsContext, log: TlsContextLog): void {
  const { ssl } = lib();
  const { ctx, opts } = context;
  if (opts.CAfile || opts.CApath) {
    check(
      ssl.SSL_CTX_load_verify_locations(
        ctx,
        opts.CAfile ? cstr(opts.CAfile) : null,
        opts.CApath ? cstr(opts.CApath) : null,
      ) === 1,
      "SSL_CTX_load_verify_locations",
    );
    if (opts.CAfile) log(7, `Trusted certificates loaded from file: ${opts.CAfile}`);
    if (!opts.client && opts.CAfile) {
      // The client is told which CAs it may choose its certificate from.
      const names = ssl.SSL_load_client_CA_file(cstr(opts.CAfile));
      if (names !== null) ssl.SSL_CTX_set_client_CA_list(ctx, names);
    }
  }
  if (!opts.verifyChain) {
    ssl.SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, null);
    if (!opts.client) log(6, "Peer certificate not required");
    else log(4, `Service [${opts.name}] needs authentication to prevent MITM attacks`);
    return;
  }
  if (!opts.CAfile && !opts.CApath) {
    throw new TlsError("verifyChain", [], "Either CApath or CAfile has to be used");
  }
  ssl.SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, null);
  log(7, "Peer certificate required and verified");
}

/**
 * checkHost/checkIP/checkEmail: any one match accepts; no checks accepts. Returns the reason
 * for a refusal, or undefined.
 */
export function checkPeerNames(
  conn: TlsConnection,
  opts: Pick<ServiceOptions, "checkHost" | "checkIP" | "checkEmail">,
): string | undefined {
  const { checkHost, checkIP, checkEmail } = opts;
  if (checkHost.length + checkIP.length + checkEmail.length === 0) return undefined;
  const { ssl, crypto } = lib();
  const cert = ssl.SSL_get1_peer_certificate(conn.ssl);
  if (cert === null) return "CERT: No peer certificate received";
  try {
    const bytes = (s: string) => cstr(s).subarray(0, -1);
    const host = checkHost.find((h) =>
      crypto.X509_check_host(cert, bytes(h), BigInt(bytes(h).length), 0, null) === 1
    );
    if (host !== undefined) return undefined;
    if (checkIP.some((ip) => crypto.X509_check_ip_asc(cert, cstr(ip), 0) === 1)) {
      return undefined;
    }
    const email = checkEmail.find((m) =>
      crypto.X509_check_email(cert, bytes(m), BigInt(bytes(m).length), 0) === 1
    );
    if (email !== undefined) return undefined;
    return `CERT: Subject checks failed for ${subjectOf(cert)}`;
  } finally {
    crypto.X509_free(cert);
  }
}

/** The certificate's subject in OpenSSL's one-line form (`/CN=localhost`). */
function subjectOf(cert: Ptr): string {
  const { crypto } = lib();
  const p = crypto.X509_NAME_oneline(crypto.X509_get_subject_name(cert), null, 0);
  const text = readCString(p);
  crypto.CRYPTO_free(p, null, 0);
  return text;
}
