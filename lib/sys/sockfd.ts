/**
 * Socket addresses in their C form, and the file descriptors behind Deno's sockets.
 *
 * Deno does not expose descriptors. It keeps the one of a socket it accepted under an internal
 * symbol (for its node:net layer), which is checked against the socket's address pair
 * (getsockname/getpeername) before use; any other socket of Deno's is found among this process's
 * open descriptors by its address pair: two system calls per open socket. A socket Deno
 * connected carries a hint (`fdHint`: the lowest free descriptor just before the connect, which
 * the kernel hands out next), checked first, so that finding it does not cost more with more
 * sockets open. A listener is found once, when it is bound; a connection only when something has
 * to be done to that very socket (`reset = yes`, a socket option that accepted sockets do not
 * inherit from their listener, `transparent = destination`, the socks client).
 */
import { cstr, lib, O_RDWR } from "./ffi.ts";

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOL_SOCKET = 1;
export const SO_ERROR = 4;
export const SO_ACCEPTCONN = 30;

/** A socket address as the kernel takes it (`struct sockaddr_*`), with its length. */
export interface SockAddr {
  bytes: Uint8Array<ArrayBuffer>;
  family: number;
}

/** The 16 bytes of an IPv6 address in text form (also `::ffff:a.b.c.d`), or null. */
function ipv6Bytes(host: string): number[] | null {
  let text = host;
  const v4 = /^(.*:)(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const b = ipv4Bytes(v4[2]);
    if (!b) return null;
    text = `${v4[1]}${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const words = (s: string) => s === "" ? [] : s.split(":");
  const left = words(halves[0]);
  const right = halves.length === 2 ? words(halves[1]) : [];
  const fill = halves.length === 2 ? 8 - left.length - right.length : 0;
  if (fill < 0 || (halves.length === 1 && left.length !== 8)) return null;
  const all = [...left, ...Array(fill).fill("0"), ...right];
  if (all.some((w) => !/^[0-9a-f]{1,4}$/i.test(w))) return null;
  return all.flatMap((w) => [parseInt(w, 16) >> 8, parseInt(w, 16) & 255]);
}

function ipv4Bytes(host: string): number[] | null {
  const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(host);
  if (!m) return null;
  const b = m.slice(1).map(Number);
  return b.every((x) => x <= 255) ? b : null;
}

/** `struct sockaddr_in`/`sockaddr_in6` for a numeric host and a port; null if not numeric. */
export function inetSockAddr(host: string, port: number): SockAddr | null {
  const v4 = ipv4Bytes(host);
  if (v4) {
    const bytes = new Uint8Array(16);
    const view = new DataView(bytes.buffer);
    view.setUint16(0, AF_INET, true);
    view.setUint16(2, port, false);
    bytes.set(v4, 4);
    return { bytes, family: AF_INET };
  }
  const v6 = ipv6Bytes(host.replace(/^\[|\]$/g, "").replace(/%.*$/, ""));
  if (!v6) return null;
  const bytes = new Uint8Array(28);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, AF_INET6, true);
  view.setUint16(2, port, false);
  bytes.set(v6, 8);
  return { bytes, family: AF_INET6 };
}

/** `struct sockaddr_un` for a path. */
export function unixSockAddr(path: string): SockAddr {
  const name = new TextEncoder().encode(path);
  const bytes = new Uint8Array(2 + Math.min(name.length, 107) + 1);
  new DataView(bytes.buffer).setUint16(0, AF_UNIX, true);
  bytes.set(name.subarray(0, 107), 2);
  return { bytes, family: AF_UNIX };
}

/** A sockaddr as Deno describes addresses (IPv4-mapped IPv6 shown as IPv4, like Deno). */
export function decodeSockAddr(buf: Uint8Array, len = buf.length): Deno.Addr | undefined {
  if (len < 2) return undefined;
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const family = view.getUint16(0, true);
  if (family === AF_UNIX) {
    const raw = buf.subarray(2, len);
    const end = raw.indexOf(0);
    const path = new TextDecoder().decode(end < 0 ? raw : raw.subarray(0, end));
    return { transport: "unix", path } as Deno.UnixAddr;
  }
  const port = view.getUint16(2, false);
  if (family === AF_INET) {
    return { transport: "tcp", hostname: buf.subarray(4, 8).join("."), port };
  }
  if (family === AF_INET6) {
    const words = Array.from({ length: 8 }, (_, i) => view.getUint16(8 + 2 * i, false));
    const mapped = words.slice(0, 5).every((w) => w === 0) && words[5] === 0xffff;
    if (mapped) return { transport: "tcp", hostname: buf.subarray(20, 24).join("."), port };
    return { transport: "tcp", hostname: compressIpv6(words), port };
  }
  return undefined;
}

/** RFC 5952 text: the longest run of two or more zero words becomes "::". */
function compressIpv6(words: number[]): string {
  let best = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = words.map((w) => w.toString(16));
  if (best < 0) return hex.join(":");
  return `${hex.slice(0, best).join(":")}::${hex.slice(best + bestLen).join(":")}`;
}

/** One address as a comparable key ("tcp/PORT/HOST" with IPv4-mapped folded, "unix/PATH"). */
function addrKey(addr: Deno.Addr | undefined): string | undefined {
  if (!addr) return undefined;
  if (addr.transport === "unix" || addr.transport === "unixpacket") {
    return `unix/${(addr as Deno.UnixAddr).path}`;
  }
  const a = addr as Deno.NetAddr;
  const host = a.hostname.replace(/^\[|\]$/g, "").replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, "$1");
  const norm = host.includes(":") ? inetSockAddr(host, a.port) : null;
  return `tcp/${a.port}/${norm ? (decodeSockAddr(norm.bytes) as Deno.NetAddr).hostname : host}`;
}

type NameCall = (fd: number, buf: Uint8Array, len: Uint8Array) => number;

function nameOf(call: NameCall, fd: number, buf: Uint8Array): Deno.Addr | undefined {
  const len = new Uint32Array([buf.length]);
  if (call(fd, buf, new Uint8Array(len.buffer)) !== 0) return undefined;
  return decodeSockAddr(buf, len[0]);
}

/** This process's open descriptors. */
export function openFds(): number[] {
  const fds: number[] = [];
  for (const entry of Deno.readDirSync("/proc/self/fd")) fds.push(Number(entry.name));
  return fds;
}

/** The local address of a descriptor (getsockname), or undefined if it is no socket. */
export function socketName(fd: number): Deno.Addr | undefined {
  const { libc } = lib();
  return nameOf(libc.getsockname, fd, new Uint8Array(128));
}

/** getsockopt of an int option; undefined on failure. */
export function intOption(fd: number, level: number, name: number): number | undefined {
  const value = new Int32Array(1);
  const len = new Uint32Array([4]);
  const rc = lib().libc.getsockopt(
    fd,
    level,
    name,
    new Uint8Array(value.buffer),
    new Uint8Array(len.buffer),
  );
  return rc === 0 ? value[0] : undefined;
}

/** The descriptor Deno keeps for a socket it accepted (none for one it connected). */
function acceptedFd(conn: object): number | undefined {
  const key = Object.getOwnPropertySymbols(conn).find((s) => s.description === "Deno.internal.fd");
  const fd = key && (conn as Record<symbol, unknown>)[key];
  return typeof fd === "number" ? fd : undefined;
}

/** The descriptor the kernel gives the next socket, unless another thread takes it first. */
export function lowestFreeFd(): number | undefined {
  const { libc } = lib();
  // A copy of stdin is the cheapest new descriptor; stdin may be closed, /dev/null is not.
  let fd = libc.dup(0);
  if (fd < 0) fd = libc.open(cstr("/dev/null"), O_RDWR);
  if (fd < 0) return undefined;
  libc.close(fd);
  return fd;
}

/** How far past its hint a connected socket is looked for (other threads' sockets, made meanwhile). */
const HINT_RANGE = 8;

/** The descriptor of a connected socket with these two addresses, if it is ours. */
export function findConnFd(
  conn: {
    readonly localAddr: Deno.Addr;
    readonly remoteAddr: Deno.Addr;
    readonly fdHint?: number;
  },
): number | undefined {
  const { libc } = lib();
  const local = addrKey(conn.localAddr);
  const remote = addrKey(conn.remoteAddr);
  if (!local?.startsWith("tcp/") || !remote) return undefined;
  const buf = new Uint8Array(128);
  const holds = (fd: number) =>
    addrKey(nameOf(libc.getsockname, fd, buf)) === local &&
    addrKey(nameOf(libc.getpeername, fd, buf)) === remote;
  // Once the connection is closed, its number may belong to another socket: hence the check.
  const accepted = acceptedFd(conn);
  if (accepted !== undefined) return holds(accepted) ? accepted : undefined;
  const hint = conn.fdHint;
  if (hint !== undefined) {
    for (let fd = hint; fd < hint + HINT_RANGE; fd++) if (holds(fd)) return fd;
  }
  return openFds().find(holds);
}

/**
 * The listening sockets bound to `addr`, leaving out those in `before` (the socketIdentity of
 * each socket open just before a listener was made). Another thread's listener on the same address may be
 * among them when both were made at once (SO_REUSEPORT); all threads run the same
 * configuration, so setting the same options on it too is harmless.
 */
export function findListenerFds(addr: Deno.Addr, before?: Set<string>): number[] {
  const want = addrKey(addr);
  return openFds().filter((fd) =>
    addrKey(socketName(fd)) === want && intOption(fd, SOL_SOCKET, SO_ACCEPTCONN) === 1 &&
    !before?.has(socketIdentity(fd))
  );
}

/**
 * A socket's descriptor and inode (`3:socket:[1234]`): another thread may close a socket and
 * the number be reused for a new one, which is then a different socket.
 */
export function socketIdentity(fd: number): string {
  try {
    return `${fd}:${Deno.readLinkSync(`/proc/self/fd/${fd}`)}`;
  } catch {
    return `${fd}:closed`;
  }
}
