/**
 * `sessiond = [HOST:]PORT`: stunnel's external session cache, shared by several server
 * instances over UDP. A server-mode service sends every new session to the cache, asks it for
 * a session its own cache does not hold, and tells it about removed ones.
 *
 * The protocol is stunnel's (one datagram per request, IPv4): version (1), type (0 new, 1 get,
 * 2 remove; answers 0x81 found, 0x80 not found), a 16-bit big-endian timeout in seconds (at
 * most 18 hours), the session id in 32 bytes (zero-padded), then the DER session (at most 512
 * bytes; a bigger one is not cached). Only a get waits for an answer, at most 200 ms (the time
 * stunnel's source means; its code waits 200 µs, which a cache on another host can rarely meet).
 *
 * OpenSSL asks for a session synchronously, inside the handshake, where nothing can wait for
 * the event loop. So the ClientHello callback looks first: when the client offers a session
 * this thread's cache does not hold (its session id in TLS 1.2, a stateful ticket in TLS 1.3),
 * it pauses the handshake (SSL_CLIENT_HELLO_RETRY) while the cache is asked, and the get
 * callback then answers from what came back. The thread never waits: a cache that does not
 * answer costs the clients that offer a session their resumption, and nobody else anything.
 *
 * The callbacks are one per thread and never closed (an SSL_CTX freed by a reload still calls
 * them for its cached sessions); they find the service's cache by the SSL_CTX.
 */
import dgram from "node:dgram";
import {
  copyTo,
  lib,
  type Ptr,
  SSL_CLIENT_HELLO_RETRY,
  SSL_CLIENT_HELLO_SUCCESS,
  SSL_CTRL_GET_MAX_PROTO_VERSION,
  TLS1_3_VERSION,
} from "../sys/ffi.ts";
import { SSL_OPTIONS } from "../sys/names.ts";
import { getaddrinfoSync } from "../sys/resolve.ts";
import { AF_INET } from "../sys/sockfd.ts";
import {
  connectionOf,
  type ContextHandle,
  decodeSession,
  encodeSession,
  type TlsConnection,
  type TlsContextLog,
} from "./core.ts";
import type { Address } from "../config/types.ts";
import { addHelloStep, bytesAt, helloExtension, type HelloVerdict } from "./hello.ts";

const CMD_NEW = 0;
const CMD_GET = 1;
const CMD_REMOVE = 2;
const RESP_OK = 0x81;
const TYPE_NAMES = ["new", "get", "remove"];
const KEY_LENGTH = 32;
const HEADER_LENGTH = 4 + KEY_LENGTH;
const MAX_VALUE_LENGTH = 512;
const MAX_TIMEOUT = 64800;
const RECEIVE_TIMEOUT_MS = 200;

const TLSEXT_TYPE_PSK = 41;
const TLSEXT_TYPE_SUPPORTED_VERSIONS = 43;

interface Cache {
  /** The cache server's IPv4 address and UDP port. */
  host: string;
  port: number;
  log: TlsContextLog;
  /** The ids (hex) of the sessions in this context's own cache, which OpenSSL finds itself. */
  held: Set<string>;
}

/** The cache of each server-mode SSL_CTX of this thread, by the SSL_CTX's address. */
const caches = new Map<bigint, Cache>();

function keyOf(ctx: Ptr): bigint {
  return BigInt(Deno.UnsafePointer.value(ctx));
}

/** Installs the external cache on a server-mode context (session.ts calls it). */
export function configureSessiond(context: ContextHandle, address: Address, log: TlsContextLog) {
  if (address.kind !== "tcp") throw new Error("sessiond: a HOST:PORT address is needed");
  const host = resolveIPv4(address.host);
  caches.set(keyOf(context.ctx), { host, port: address.port, log, held: new Set() });
  const { ssl } = lib();
  const { newSession, getSession, removeSession } = callbacks();
  addHelloStep(context, onClientHello);
  ssl.SSL_CTX_sess_set_new_cb(context.ctx, newSession.pointer);
  ssl.SSL_CTX_sess_set_get_cb(context.ctx, getSession.pointer);
  ssl.SSL_CTX_sess_set_remove_cb(context.ctx, removeSession.pointer);
}

/** The IPv4 address of `host` (an address or a name, resolved now as stunnel does). */
function resolveIPv4(host: string): string {
  try {
    return getaddrinfoSync(host, { family: AF_INET })[0];
  } catch {
    throw new Error(`sessiond: cannot resolve ${host}`);
  }
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
}

/** What a get came back with: the session, "not found", or nothing in time. */
type Answer = Uint8Array | "not found" | "timeout";

/** This thread's UDP socket for every cache, and the gets waiting for their answer. */
let udp: dgram.Socket | undefined;
const waiting = new Map<string, ((answer: Answer) => void)[]>();

/** A get's place in `waiting`: the cache, and the 32-byte id field its answer repeats. */
function waitKey(host: string, port: number, idField: Uint8Array): string {
  return `${host}:${port}/${hex(idField)}`;
}

function socket(): dgram.Socket {
  if (udp) return udp;
  udp = dgram.createSocket("udp4");
  udp.on("message", (msg: Uint8Array, from: { address: string; port: number }) => {
    // Only an answer to a get in progress counts (its cache, its session id): anything else,
    // malformed or not, is dropped, and the get ends with its timeout.
    if (msg.length < HEADER_LENGTH || msg[0] !== 1) return;
    const key = waitKey(from.address, from.port, msg.subarray(4, HEADER_LENGTH));
    const gets = waiting.get(key);
    if (!gets) return;
    waiting.delete(key);
    const answer = msg[1] === RESP_OK ? msg.slice(HEADER_LENGTH) : "not found";
    for (const done of gets) done(answer);
  });
  // A request that could not be sent is a get that times out, or a cache that misses an update.
  udp.on("error", () => {});
  udp.unref();
  return udp;
}

/**
 * stunnel's cache_transfer, up to the sending: one request to the cache; the packet sent, or
 * undefined if the session does not fit (logged).
 */
function send(
  cache: Cache,
  log: TlsContextLog,
  type: number,
  timeout: number,
  key: Uint8Array,
  value?: Uint8Array,
): Uint8Array | undefined {
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
  const packet = new Uint8Array(HEADER_LENGTH + length);
  packet[0] = 1;
  packet[1] = type;
  new DataView(packet.buffer).setUint16(2, Math.min(timeout, MAX_TIMEOUT), false);
  packet.set(key, 4);
  if (value) packet.set(value, HEADER_LENGTH);
  socket().send(packet, cache.port, cache.host);
  return packet;
}

/** A get: the session the cache holds under `key`, or undefined (logged as stunnel does). */
function ask(cache: Cache, log: TlsContextLog, key: Uint8Array): Promise<Uint8Array | undefined> {
  const packet = send(cache, log, CMD_GET, 0, key);
  if (!packet) return Promise.resolve(undefined);
  const wait = waitKey(cache.host, cache.port, packet.subarray(4, HEADER_LENGTH));
  return new Promise((resolve) => {
    const done = (answer: Answer) => {
      clearTimeout(timer);
      if (answer === "timeout") log(6, "cache_transfer: recv timeout");
      else log(6, `cache_transfer: session ${answer === "not found" ? "not found" : "found"}`);
      resolve(answer instanceof Uint8Array ? answer : undefined);
    };
    waiting.set(wait, [...waiting.get(wait) ?? [], done]);
    const timer = setTimeout(() => {
      const others = (waiting.get(wait) ?? []).filter((get) => get !== done);
      if (others.length > 0) waiting.set(wait, others);
      else waiting.delete(wait);
      done("timeout");
    }, RECEIVE_TIMEOUT_MS);
  });
}

function sessionId(session: Ptr): Uint8Array {
  const length = new Uint32Array(1);
  const id = lib().ssl.SSL_SESSION_get_id(session, new Uint8Array(length.buffer));
  return bytesAt(id, length[0]);
}

/** TLS 1.3 will be negotiated: the client offers it and this service allows it. */
function negotiatesTls13(ssl: Ptr): boolean {
  const versions = helloExtension(ssl, TLSEXT_TYPE_SUPPORTED_VERSIONS) ?? new Uint8Array(0);
  let offered = false;
  for (let i = 1; i + 1 < versions.length; i += 2) {
    if (((versions[i] << 8) | versions[i + 1]) === TLS1_3_VERSION) offered = true;
  }
  const native = lib().ssl;
  const max = Number(native.SSL_ctrl(ssl, SSL_CTRL_GET_MAX_PROTO_VERSION, 0n, null));
  const allowed = (max === 0 || max >= TLS1_3_VERSION) &&
    (native.SSL_get_options(ssl) & SSL_OPTIONS.NO_TLSv1_3) === 0n;
  return offered && allowed;
}

/**
 * The ids OpenSSL will look the client's session up by: in TLS 1.3 the identities of the
 * pre_shared_key extension that can be stateful tickets (at most 32 bytes), else the session
 * id (in TLS 1.3 the session id is only there for middleboxes).
 */
function offeredIds(ssl: Ptr): Uint8Array[] {
  if (!negotiatesTls13(ssl)) {
    const id = new BigUint64Array(1);
    const length = lib().ssl.SSL_client_hello_get0_session_id(ssl, new Uint8Array(id.buffer));
    const sessionId = bytesAt(Deno.UnsafePointer.create(id[0]), Number(length));
    return sessionId.length > 0 ? [sessionId] : [];
  }
  // identities<7..2^16-1>: each a 16-bit length, the identity, a 32-bit obfuscated age.
  const psk = helloExtension(ssl, TLSEXT_TYPE_PSK) ?? new Uint8Array(0);
  const end = Math.min(psk.length, 2 + ((psk[0] << 8) | psk[1]));
  const ids: Uint8Array[] = [];
  for (let i = 2; i + 2 <= end;) {
    const length = (psk[i] << 8) | psk[i + 1];
    if (i + 2 + length + 4 > end) break;
    if (length > 0 && length <= KEY_LENGTH) ids.push(psk.subarray(i + 2, i + 2 + length));
    i += 2 + length + 4;
  }
  return ids;
}

/**
 * A connection's ClientHello: the cache of the context it came to (OpenSSL keeps the sessions
 * there even when SNI switches the SSL_CTX), and what that cache answered for the sessions it
 * offered, by id (hex).
 */
interface Hello {
  cache: Cache;
  answers: Map<string, Uint8Array | undefined>;
}

const hellos = new WeakMap<TlsConnection, Hello>();

/** The cache a connection's sessions belong to. */
function cacheOf(ssl: Ptr, conn: TlsConnection | undefined): Cache | undefined {
  return (conn && hellos.get(conn)?.cache) ?? caches.get(keyOf(lib().ssl.SSL_get_SSL_CTX(ssl)));
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

/**
 * A ClientHello: the sessions it offers that this thread's cache lacks are asked of the cache
 * while the handshake pauses; called again once they are in, it lets the handshake go on.
 */
function onClientHello(ssl: Ptr): HelloVerdict {
  try {
    const conn = connectionOf(ssl);
    const cache = caches.get(keyOf(lib().ssl.SSL_get_SSL_CTX(ssl)));
    if (!conn || !cache || hellos.has(conn)) return SSL_CLIENT_HELLO_SUCCESS;
    const answers = new Map<string, Uint8Array | undefined>();
    hellos.set(conn, { cache, answers });
    const missing = offeredIds(ssl).filter((id) => !cache.held.has(hex(id)));
    if (missing.length === 0) return SSL_CLIENT_HELLO_SUCCESS;
    const asked = missing.map(async (id) => answers.set(hex(id), await ask(cache, conn.log, id)));
    conn.paused = Promise.all(asked).then(() => conn.paused = undefined);
    return SSL_CLIENT_HELLO_RETRY;
  } catch {
    return SSL_CLIENT_HELLO_SUCCESS;
  }
}

/** A new server session: to the cache. Returns 0: OpenSSL keeps no extra reference for us. */
function onNewSession(ssl: Ptr, session: Ptr): number {
  try {
    const conn = connectionOf(ssl);
    const cache = cacheOf(ssl, conn);
    const log = conn?.log ?? cache?.log;
    log?.(7, "New session callback");
    const id = sessionId(session);
    if (cache) {
      cache.held.add(hex(id));
      const der = encodeSession(session);
      const timeout = Number(lib().ssl.SSL_SESSION_get_timeout(session));
      if (der) send(cache, log ?? cache.log, CMD_NEW, timeout, id, der);
    }
    log?.(6, `Session id: ${hex(id)}`);
  } catch {
    // Nothing to undo: the session stays in this thread's own cache.
  }
  return 0;
}

/**
 * A session this thread's cache does not hold: what the cache answered before the handshake
 * went on (null if not found, or not asked).
 */
function onGetSession(ssl: Ptr, data: Ptr, length: number, copy: Ptr): Ptr {
  try {
    // OpenSSL takes over the reference of the session returned (no extra one).
    if (copy !== null) copyTo(copy, new Uint8Array(4));
    const conn = connectionOf(ssl);
    conn?.log(7, "Get session callback");
    const hello = conn && hellos.get(conn);
    const id = hex(bytesAt(data, length));
    const der = hello?.answers.get(id);
    if (!hello || !der) return null;
    const session = decodeSession(der);
    // OpenSSL keeps it in this thread's cache now.
    if (session !== null) hello.cache.held.add(id);
    return session;
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
    const id = sessionId(session);
    cache.held.delete(hex(id));
    send(cache, cache.log, CMD_REMOVE, 0, id);
  } catch {
    // A cache that misses a removal only keeps the session until its timeout.
  }
}
