/**
 * PRNG seeding, as stunnel's prng_init: only when OpenSSL says its generator is not seeded yet
 * (RAND_status), from `RNDfile` (RNDbytes of it, rewritten with new random data after use when
 * `RNDoverwrite = yes`), then $RANDFILE or ~/.rnd, then /dev/urandom. OpenSSL 3 seeds itself
 * from the operating system, so in practice this logs "No PRNG seeding was required" and reads
 * no file, exactly like stunnel 5.68 on the same library.
 *
 * `EGD`: this libcrypto is built without RAND_egd (OpenSSL 3 dropped the Entropy Gathering
 * Daemon), as stunnel 5.68 is on it; the socket would only be asked if seeding were needed, and
 * then it is skipped with a warning.
 */
import { cstr, drainErrors, lib, readCString } from "../sys/ffi.ts";
import type { GlobalOptions } from "../config/types.ts";

type Log = (level: number, message: string) => void;

/** False (after logging) when the generator stays unseeded. */
export function seedPrng(global: GlobalOptions, log: Log): boolean {
  const { crypto } = lib();
  const seeded = () => crypto.RAND_status() === 1;
  if (seeded()) {
    log(7, "No PRNG seeding was required");
    return true;
  }
  let total = 0;
  // A file named in the configuration is what the user really wants: it is tried first.
  if (global.RNDfile) {
    total += addRandFile(global, global.RNDfile, log);
    if (seeded()) return true;
  }
  const buf = new Uint8Array(4096);
  const defaultFile = readCString(crypto.RAND_file_name(buf, BigInt(buf.length)));
  if (defaultFile) {
    total += addRandFile(global, defaultFile, log);
    if (seeded()) return true;
  }
  if (global.EGD) {
    log(4, `EGD socket ${global.EGD} not used: this OpenSSL has no EGD support`);
  }
  total += addRandFile(global, "/dev/urandom", log);
  if (seeded()) return true;
  drainErrors();
  log(3, `PRNG seeded with ${total} bytes total`);
  log(3, "PRNG was not seeded with enough random bytes");
  return false;
}

/** stunnel's add_rand_file: the bytes read from `path` (0 when it does not exist). */
function addRandFile(global: GlobalOptions, path: string, log: Log): number {
  const { crypto } = lib();
  let regular: boolean;
  try {
    regular = Deno.statSync(path).isFile;
  } catch {
    return 0;
  }
  const read = crypto.RAND_load_file(cstr(path), BigInt(global.RNDbytes));
  if (read > 0) log(7, `Snagged ${read} random bytes from ${path}`);
  else log(6, `Cannot retrieve any random data from ${path}`);
  drainErrors();
  // New random data for the next start, into a regular file only.
  if (global.RNDoverwrite && regular) {
    const written = crypto.RAND_write_file(cstr(path));
    drainErrors();
    if (written === -1) {
      log(
        4,
        `Failed to write strong random data to ${path} - may be a permissions or seeding problem`,
      );
    } else {
      log(7, `Wrote ${written} new random bytes to ${path}`);
    }
  }
  return Math.max(read, 0);
}
