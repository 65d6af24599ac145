/**
 * The local socket of a connection (the one accepted): its `l:` socket options, and its original
 * destination for `transparent = destination`.
 */
import { lib } from "../sys/ffi.ts";
import { errnoText } from "../sys/oserror.ts";
import type { Logger } from "../sys/log.ts";
import { decodeSockAddr, findConnFd } from "../sys/sockfd.ts";
import { platform } from "../sys/platform.ts";
import { setOptions, type SocketOption } from "./sockopt.ts";
import type { Address } from "../config/types.ts";
import type { Conn } from "./conn.ts";

const SOL_IP = 0;
const SOL_IPV6 = 41;
/** SO_ORIGINAL_DST (netfilter_ipv4.h), also IP6T_SO_ORIGINAL_DST. */
const SO_ORIGINAL_DST = 80;

/**
 * Sets the local options the listener did not already give the accepted socket (listener.ts),
 * and logs every local option as stunnel does. A failure is a warning, as in stunnel.
 */
export function applyLocalOptions(
  /** Every `l:` option of the service, and those the listener could not give the socket. */
  options: { all: readonly SocketOption[]; own: readonly SocketOption[] },
  conn: Conn,
  log: Logger,
): void {
  if (conn.localAddr.transport !== "tcp" || conn.remoteAddr.transport !== "tcp") return;
  if (!platform().descriptors) {
    // Only stunnel's default l:TCP_NODELAY gets here (config/platform.ts refuses the others).
    conn.setNoDelay?.(true);
    log(7, "Option TCP_NODELAY set on local socket");
    return;
  }
  const { all, own } = options;
  let fd: number | undefined;
  if (own.length > 0) {
    fd = findConnFd(conn);
    if (fd === undefined) {
      log(4, "Failed to set local socket options");
      return;
    }
    log(7, `Setting local socket options (FD=${fd})`);
  }
  let ok = true;
  for (const o of all) {
    if (own.includes(o)) ok = setOptions(fd!, [o], "local", log) && ok;
    else log(7, `Option ${o.name} set on local socket`);
  }
  if (!ok) log(4, "Failed to set local socket options");
}

/** getsockopt SO_ORIGINAL_DST of the accepted socket (IPv6 first, as stunnel asks). */
export function originalDestination(conn: Conn): Address {
  const { libc } = lib();
  const fd = conn.localAddr.transport === "tcp" ? findConnFd(conn) : undefined;
  if (fd === undefined) {
    throw new Error("getsockopt SO_ORIGINAL_DST: Bad file descriptor (9)");
  }
  const buf = new Uint8Array(128);
  const len = new Uint32Array(1);
  for (const level of [SOL_IPV6, SOL_IP]) {
    len[0] = buf.length;
    if (libc.getsockopt(fd, level, SO_ORIGINAL_DST, buf, new Uint8Array(len.buffer)) !== 0) {
      continue;
    }
    const addr = decodeSockAddr(buf, len[0]);
    if (addr?.transport === "tcp") {
      const a = addr as Deno.NetAddr;
      return { kind: "tcp", host: a.hostname, port: a.port };
    }
  }
  throw new Error(`getsockopt SO_ORIGINAL_DST: ${errnoText()}`);
}
