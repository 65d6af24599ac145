/**
 * Which services OCSP concerns: ocsp.ts itself is loaded only for them (a configuration without
 * OCSP does not pay for its code).
 */
import type { ServiceOptions } from "../config/types.ts";

/** The options that decide how a service checks and staples. */
export type OcspOptions = Pick<
  ServiceOptions,
  | "client"
  | "OCSP"
  | "OCSPaia"
  | "OCSPflag"
  | "OCSPnonce"
  | "verifyChain"
  | "verifyPeer"
  | "verify"
  | "TIMEOUTbusy"
  | "TIMEOUTconnect"
>;

/** stunnel runs its OCSP checks from the verify callback: only with verification configured. */
export function ocspChecksPeer(opts: OcspOptions): boolean {
  const verifying = opts.verifyChain || opts.verifyPeer || (opts.verify ?? 0) >= 1;
  return verifying && (opts.OCSP !== undefined || opts.OCSPaia);
}

/** A server-mode service with a responder staples the status of its own certificate. */
export function ocspStaples(opts: OcspOptions): boolean {
  return !opts.client && (opts.OCSP !== undefined || opts.OCSPaia);
}
