/** When a context's certificate expires (`metrics =`: stunnel_certificate_not_after_seconds). */
import { drainErrors, lib, type Ptr } from "../sys/ffi.ts";

/** struct tm on Linux x86-64/arm64: nine ints, then a long and a pointer. */
const TM_SIZE = 56;

/** The notAfter of the certificate `ctx` serves, as a Unix time in seconds; undefined if none. */
export function certificateNotAfter(ctx: Ptr): number | undefined {
  const { ssl, crypto } = lib();
  const cert = ssl.SSL_CTX_get0_certificate(ctx);
  if (cert === null) return undefined;
  const time = crypto.X509_get0_notAfter(cert);
  const tm = new Int32Array(TM_SIZE / 4);
  if (time === null || crypto.ASN1_TIME_to_tm(time, new Uint8Array(tm.buffer)) !== 1) {
    drainErrors();
    return undefined;
  }
  // tm_sec, tm_min, tm_hour, tm_mday, tm_mon, tm_year (since 1900), in UTC.
  const [sec, min, hour, mday, mon, year] = tm;
  return Date.UTC(year + 1900, mon, mday, hour, min, sec) / 1000;
}
