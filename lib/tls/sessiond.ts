/**
 * `sessiond = [HOST:]PORT`: stunnel's external session cache, shared by several server
 * instances over UDP. A server-mode service sends every new session to the cache, asks it for
 * a session its own cache does not hold, and tells it about removed ones.
 *
 * The protocol is stunnel's (one datagram per request, IPv4): version (1), type (0 new, 1 get,
 * 2 remove; answers 0x81 found, 0x80 not found), a 16-bit big-endian timeout in seconds (at
 * most 18 hours), the session id in 32 bytes (zero-padded), then the DER session (at most 512
 * bytes; a bigger one is not cached). Only a get waits for an answer.
 *
 * OpenSSL asks for a session synchronously, inside the handshake, and a callback cannot wait
 * for the event loop: the request and its answer go through blocking libc calls, with a 200 ms
 * receive timeout (the time stunnel's source means; its code waits 200 µs, which a cache on
 * another host can rarely meet). While it waits, this thread's other connections wait too.
 *
 * The callbacks are one per thread and never closed (an SSL_CTX freed by a reload still calls
 * them for its cached sessions); they find the service's cache by the SSL_CTX.
 */
import { lib, type Ptr } from "../sys/ffi.ts";
import { errnoText } from "../sys/oserror.ts";
import { getaddrinfoSync } from "../sys/resolve.ts";
import { AF_INET, inetSockAddr } from "../sys/sockfd.ts";
import {
  connectionOf,
  type ContextHandle,
  decodeSession,
  encodeSession,
  type TlsContextLog,
} from "./core.ts";
import type { Address } from "../config/types.ts";

const CMD_NEW = 0;
const CMD_GET = 1;
const CMD_REMOVE = 2;
const RESP_OK = 0x81;
const TYPE_NAMES = ["new", "get", "remove"];
const KEY_LENGTH = 32;
const HEADER_LENGTH = 4 + KEY_LENGTH;
const MAX_VALUE_LENGTH = 512;
const MAX_TIMEOUT = 64800;
const RECEIVE_TIMEOUT_US = 200_000;

const SOCK_DGRAM = 2;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const EAGAIN = 11;

interface Cache {
  /** sockaddr_in of the cache server. */
  address: Uint8Array<ArrayBuffer>;
  log: TlsContextLog;
}

/** The cache of each server-mode SSL_CTX of this thread, by the SSL_CTX's address. */
const caches = new Map<bigint, Cache>();

function keyOf(ctx: Ptr): bigint {
  return BigInt(Deno.UnsafePointer.value(ctx));
}

/** Installs the external cache on a server-mode context (session.ts calls it). */
export function configureSessiond(context: ContextHandle, address: Address, log: TlsContextLog) {
  if (address.kind !== "tcp") throw new Error("sessiond: a HOST:PORT address is needed");
  caches.set(keyOf(context.ctx), { address: socketAddress(address.host, address.port), log });
  const { ssl } = lib();
  const { newSession, getSession, removeSession } = callbacks();
  ssl.SSL_CTX_sess_set_new_cb(context.ctx, newSession.pointer);
  ssl.SSL_CTX_sess_set_get_cb(context.ctx, getSession.pointer);
  ssl.SSL_CTX_sess_set_remove_cb(context.ctx, removeSession.pointer);
}

/** An IPv4 sockaddr_in for `host` (an address or a name, resolved now as stunnel does). */
function socketAddress(host: string, port: number): Uint8Array<ArrayBuffer> {
  let ip: string;
  try {
    [ip] = getaddrinfoSync(host, { family: AF_INET });
  } catch {
    throw new Error(`sessiond: cannot resolve ${host}`);
  }
  return inetSockAddr(ip, port)!.bytes;
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
}

/** stunnel's cache_transfer: one request, and for a get the session found (or undefined). */
function transfer(
  cache: Cache,
  type: number,
  timeout: number,
  key: Uint8Array,
  value?: Uint8Array,
): Uint8Array | undefined {
  const { log } = cache;
  const length = value?.length ?? 0;
  log(
    6,
    `cache_transfer: request=${TYPE_NAMES[type]}, timeout=${timeout}, id=${hex(key)}, ` +
      `length=${length}`,
  );
  if (key.length > KEY_LENGTH) {
    log(3, `cache_transfer: session id too big (${key.length} bytes)`);
    return undefined;
  }
  if (length > MAX_VALUE_LENGTH) {
    log(3, `cache_transfer: encoded session too big (${length} bytes)`);
    return undefined;
  }
  const packet = new Uint8Array(HEADER_LENGTH + MAX_VALUE_LENGTH);
  packet[0] = 1;
  packet[1] = type;
  new DataView(packet.buffer).setUint16(2, Math.min(timeout, MAX_TIMEOUT), false);
  packet.set(key, 4);
  if (value) packet.set(value, HEADER_LENGTH);
  const { libc } = lib();
  const fd = libc.socket(AF_INET, SOCK_DGRAM, 0);
  if (fd < 0) {
    log(3, `cache_transfer: socket: ${errnoText()}`);
    return undefined;
  }
  try {
    const sent = Number(
      libc.sendto(
        fd,
        packet,
        BigInt(HEADER_LENGTH + length),
        0,
        cache.address,
        cache.address.length,
      ),
    );
    if (sent < 0) {
      log(3, `cache_transfer: sendto: ${errnoText()}`);
      return undefined;
    }
    if (type !== CMD_GET) return undefined;
    const tv = new BigInt64Array([0n, BigInt(RECEIVE_TIMEOUT_US)]);
    if (libc.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, new Uint8Array(tv.buffer), 16) < 0) {
      log(3, `cache_transfer: setsockopt SO_RCVTIMEO: ${errnoText()}`);
      return undefined;
    }
    const answer = new Uint8Array(HEADER_LENGTH + MAX_VALUE_LENGTH);
    const got = Number(libc.recv(fd, answer, BigInt(answer.length), 0));
    if (got < 0) {
      const reason = errnoText();
      if (reason.endsWith(`(${EAGAIN})`)) log(6, "cache_transfer: recv timeout");
      else log(3, `cache_transfer: recv: ${reason}`);
      return undefined;
    }
    const sameKey = key.every((b, i) => answer[4 + i] === b);
    if (got < HEADER_LENGTH || answer[0] !== 1 || !sameKey) {
      log(7, "cache_transfer: malformed packet received");
      return undefined;
    }
    if (answer[1] !== RESP_OK) {
      log(6, "cache_transfer: session not found");
      return undefined;
    }
    log(6, "cache_transfer: session found");
    return answer.slice(HEADER_LENGTH, got);
  } finally {
    libc.close(fd);
  }
}

function sessionId(session: Ptr): Uint8Array {
  const length = new Uint32Array(1);
  const id = lib().ssl.SSL_SESSION_get_id(session, new Uint8Array(length.buffer));
  if (id === null || length[0] === 0) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(id, length[0]).slice(0));
}

const NEW_SESSION = { parameters: ["pointer", "pointer"], result: "i32" } as const;
const GET_SESSION = {
  parameters: ["pointer", "pointer", "i32", "pointer"],
  result: "pointer",
} as const;
const REMOVE_SESSION = { parameters: ["pointer", "pointer"], result: "void" } as const;

interface Callbacks {
  newSession: Deno.UnsafeCallback<typeof NEW_SESSION>;
  getSession: Deno.UnsafeCallback<typeof GET_SESSION>;
  removeSession: Deno.UnsafeCallback<typeof REMOVE_SESSION>;
}

let threadCallbacks: Callbacks | undefined;

function callbacks(): Callbacks {
  threadCallbacks ??= {
    newSession: new Deno.UnsafeCallback(NEW_SESSION, onNewSession),
    getSession: new Deno.UnsafeCallback(GET_SESSION, onGetSession),
    removeSession: new Deno.UnsafeCallback(REMOVE_SESSION, onRemoveSession),
  };
  return threadCallbacks;
}

/** A new server session: to the cache. Returns 0: OpenSSL keeps no extra reference for us. */
function onNewSession(ssl: Ptr, session: Ptr): number {
  try {
    const conn = connectionOf(ssl);
    const cache = caches.get(keyOf(lib().ssl.SSL_get_SSL_CTX(ssl)));
    const log = conn?.log ?? cache?.log;
    log?.(7, "New session callback");
    const id = sessionId(session);
    if (cache) {
      const der = encodeSession(session);
      const timeout = Number(lib().ssl.SSL_SESSION_get_timeout(session));
      if (der) transfer({ ...cache, log: log ?? cache.log }, CMD_NEW, timeout, id, der);
    }
    log?.(6, `Session id: ${hex(id)}`);
  } catch {
    // Nothing to undo: the session stays in this thread's own cache.
  }
  return 0;
}

/** A session this thread's cache does not hold: asked of the cache (null if not found). */
function onGetSession(ssl: Ptr, data: Ptr, length: number, copy: Ptr): Ptr {
  try {
    // OpenSSL takes over the reference of the session returned (no extra one).
    if (copy !== null) lib().libc.memcpy(copy, new Uint8Array(4), 4n);
    const conn = connectionOf(ssl);
    const cache = caches.get(keyOf(lib().ssl.SSL_get_SSL_CTX(ssl)));
    const log = conn?.log ?? cache?.log;
    log?.(7, "Get session callback");
    if (!cache || data === null || length <= 0) return null;
    const key = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(data, length).slice(0));
    const der = transfer({ ...cache, log: log ?? cache.log }, CMD_GET, 0, key);
    return der ? decodeSession(der) : null;
  } catch {
    return null;
  }
}

/** A session left this thread's cache (expired, failed, or its context freed). */
function onRemoveSession(ctx: Ptr, session: Ptr): void {
  try {
    const cache = caches.get(keyOf(ctx));
    if (!cache) return;
    cache.log(7, "Remove session callback");
    transfer(cache, CMD_REMOVE, 0, sessionId(session));
  } catch {
    // A cache that misses a removal only keeps the session until its timeout.
  }
}
