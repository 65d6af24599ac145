/**
 * Socket options of a listening socket: the accept options (`a:`), and those local options
 * (`l:`) that accepted sockets inherit from their listener on Linux. The listener's descriptor
 * is found once, right after Deno made it.
 */
import type { Logger } from "../sys/log.ts";
import { findListenerFds, openFds, socketIdentity, socketName } from "../sys/sockfd.ts";
import { setOptions, setQuietly, type SocketOption, type SocketOptions } from "./sockopt.ts";

/** An accept option that could not be set: the service is not bound (stunnel's words). */
export class ListenerOptionsError extends Error {}

/**
 * The sockets open before a listener is made (see findListenerFds). Only sockets: the number of
 * the directory read to list them is free again for the listener.
 */
export function fdSnapshot(): Set<string> {
  return new Set(openFds().filter((fd) => socketName(fd) !== undefined).map(socketIdentity));
}

/**
 * Sets the accept options and the inheritable local options on `listener`; returns the local
 * options left to set on each accepted socket. Throws ListenerOptionsError if an accept
 * option failed (already logged). `before`: the descriptors open before the listener was made;
 * undefined for a listener taken over at a reload, when every thread's listener on that
 * address gets the options (all threads run the same configuration).
 */
export function configureListener(
  listener: Deno.Listener,
  before: Set<string> | undefined,
  sockets: SocketOptions,
  log: Logger,
): SocketOption[] {
  const fds = findListenerFds(listener.addr, before);
  if (fds.length === 0) {
    throw new ListenerOptionsError("the listening socket was not found among our descriptors");
  }
  const tcp = listener.addr.transport === "tcp";
  const { onListener, perConnection } = sockets.localSplit();
  const failed = new Set<SocketOption>();
  for (const fd of fds) {
    log(7, `Setting accept socket options (FD=${fd})`);
    if (!setOptions(fd, sockets.accept, "accept", log)) {
      throw new ListenerOptionsError("an accept socket option failed");
    }
    // An option the listener refuses is set (and its failure logged) on each accepted socket.
    if (tcp) { for (const o of setQuietly(fd, onListener)) failed.add(o); }
  }
  if (!tcp) return [...sockets.local];
  return sockets.local.filter((o) => perConnection.includes(o) || failed.has(o));
}
