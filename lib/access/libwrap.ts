/**
 * `libwrap = yes`: TCP Wrappers access control (/etc/hosts.allow, /etc/hosts.deny) through the
 * system libwrap, asked once per accepted connection before the TLS handshake, with the service
 * name as the daemon name, as stunnel's libwrap_auth() does.
 *
 * hosts_ctl() runs on Deno's blocking thread pool (its files and any name lookups must not stop
 * the event loop), and never twice at once in the process: libwrap keeps global state, and all
 * threads share it. A lock word in a SharedArrayBuffer (Runtime.libwrapLock) serializes them.
 */
import { cstr, libwrap } from "../sys/ffi.ts";
import type { Logger } from "../sys/log.ts";
import { getaddrinfo } from "../sys/resolve.ts";
import { AccessDenied } from "./denied.ts";

/** tcpd.h STRING_UNKNOWN and STRING_PARANOID. */
const UNKNOWN = "unknown";
const PARANOID = "paranoid";

let lock: Int32Array | undefined;

/** A lock word shared by every thread of the process (one per process, in the Runtime). */
export function newLibwrapLock(): Int32Array {
  return new Int32Array(new SharedArrayBuffer(4));
}

/** This thread uses the process's lock word (set by the thread's Daemon). */
export function useLibwrapLock(shared: Int32Array): void {
  lock = shared;
}

/**
 * A thread that ended inside hosts_ctl() (a worker stopped by a reload) would hold the lock for
 * ever: after this long the waiter takes it over. No single check takes that long.
 */
const STALE_LOCK_MS = 60_000;

async function acquire(word: Int32Array): Promise<void> {
  const deadline = Date.now() + STALE_LOCK_MS;
  while (Atomics.compareExchange(word, 0, 0, 1) !== 0) {
    if (Date.now() > deadline) return;
    const waited = Atomics.waitAsync(word, 0, 1, 1000);
    if (waited.async) await waited.value;
  }
}

function release(word: Int32Array): void {
  Atomics.store(word, 0, 0);
  Atomics.notify(word, 0, 1);
}

/**
 * The client's host name as libwrap's fromhost() finds it: the reverse lookup of the address,
 * confirmed by a forward lookup of that name ("paranoid" when they disagree, "unknown" when
 * the address has no name).
 */
async function clientName(address: string): Promise<string> {
  // Loaded when first needed: node:dns costs every start ~50 ms and 6 MiB.
  const { default: dns } = await import("node:dns");
  const name = await new Promise<string | undefined>((resolve) => {
    try {
      dns.lookupService(address, 0, (err, host) => resolve(err ? undefined : host));
    } catch {
      resolve(undefined);
    }
  });
  if (!name || name === address) return UNKNOWN;
  const addresses = await getaddrinfo(name).catch((): string[] => []);
  return addresses.includes(address) ? name : PARANOID;
}

/**
 * Asks libwrap whether `peer` may use service `name`; logs the verdict as stunnel does and
 * throws (the connection is reset) when it is refused.
 */
export async function libwrapAuth(
  name: string,
  peer: Deno.Addr,
  unixSocket: boolean,
  log: Logger,
): Promise<void> {
  if (peer.transport !== "tcp" && peer.transport !== "udp") {
    // A pipe (inetd mode, a connect+exec program) is no socket: nothing to check.
    if (unixSocket) log(6, "Libwrap is not supported on Unix sockets");
    return;
  }
  const address = peer.hostname.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
  const accepted = `${peer.hostname}:${peer.port}`;
  const host = await clientName(address);
  const word = lock ?? (lock = newLibwrapLock());
  let allowed: number;
  await acquire(word);
  try {
    allowed = await libwrap().hosts_ctl(cstr(name), cstr(host), cstr(address), cstr(UNKNOWN));
  } finally {
    release(word);
  }
  if (allowed === 0) {
    log(4, `Service [${name}] REFUSED by libwrap from ${accepted}`);
    log(7, "See hosts_access(5) manual for details");
    throw new AccessDenied("libwrap");
  }
  log(7, `Service [${name}] permitted by libwrap from ${accepted}`);
}
