/**
 * `reset = yes`: a connection that fails on our side is closed with a TCP RST (SO_LINGER 0)
 * instead of a FIN, so that the peer cannot take the failure for an orderly end of data.
 *
 * Deno does not expose socket file descriptors: sockfd.ts finds the descriptor (at once for an
 * accepted socket, among this process's open sockets for one Deno connected). This runs only on
 * the error path.
 */
import { cstr, lib, O_RDWR } from "../sys/ffi.ts";
import { findConnFd, SOL_SOCKET } from "../sys/sockfd.ts";
import type { Conn } from "./conn.ts";

const SO_LINGER = 13;

/**
 * Closes the socket of `conn` with RST at once; false if it could not be found. Deno's own
 * close sends FIN first (shutdown before close), so the socket is closed here instead: its
 * descriptor is replaced by /dev/null (dup2), which keeps the number taken until Deno closes it.
 */
export function resetNow(conn: Conn): boolean {
  // A socket of ours (netconn.ts) closes itself with RST.
  if (conn.resetNow) return conn.resetNow();
  if (conn.localAddr.transport !== "tcp") return false;
  const { libc } = lib();
  try {
    const fd = findConnFd(conn);
    if (fd === undefined) return false;
    if (!lingerZero(fd)) return false;
    const devNull = libc.open(cstr("/dev/null"), O_RDWR);
    if (devNull < 0) return false;
    const replaced = libc.dup2(devNull, fd) === fd;
    libc.close(devNull);
    return replaced;
  } catch {
    return false;
  }
}

/** SO_LINGER {1, 0}: the next close of `fd` sends RST. */
export function lingerZero(fd: number): boolean {
  const linger = new Int32Array([1, 0]);
  const bytes = new Uint8Array(linger.buffer);
  return lib().libc.setsockopt(fd, SOL_SOCKET, SO_LINGER, bytes, linger.byteLength) === 0;
}
