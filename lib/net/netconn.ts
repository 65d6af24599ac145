/**
 * Remote connections that Deno.connect cannot make: bound to a source address (`local`, or the
 * client's own address with `transparent = source`, IP_TRANSPARENT), or with `r:` socket
 * options. The socket is made with libc (socket, setsockopt, bind, a non-blocking connect and a
 * poll() on a thread of its own, bounded by TIMEOUTconnect), logged as stunnel logs it, and then
 * handed to node:net, which reads and writes it on the event loop, as a Conn.
 */
import { Socket } from "node:net";
import { errno, lib } from "../sys/ffi.ts";
import type { Log } from "../sys/log.ts";
import { denoErrorMessage, errnoMessage } from "../sys/oserror.ts";
import type { Address } from "../config/types.ts";
import { type Conn, unnamed } from "./conn.ts";
import { lingerZero } from "./reset.ts";
import {
  decodeSockAddr,
  inetSockAddr,
  SO_ERROR,
  type SockAddr,
  SOL_SOCKET,
  unixSockAddr,
} from "../sys/sockfd.ts";
import { setOptions, type SocketOption } from "./sockopt.ts";

const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_IP = 0;
const IP_TRANSPARENT = 19;
const IP_FREEBIND = 15;
const EINPROGRESS = 115;
const EADDRINUSE = 98;
const EINTR = 4;
const POLLIN = 1;
const POLLOUT = 4;

/** A node error (ECONNRESET ...) as the Deno error the pumps and the log expect. */
function denoError(e: unknown): Error {
  const err = e as { errno?: number; code?: string; message?: string };
  const n = typeof err.errno === "number" ? Math.abs(err.errno) : 0;
  const message = n ? denoErrorMessage(n) : err.message ?? String(e);
  if (err.code === "ECONNRESET") return new Deno.errors.ConnectionReset(message);
  if (err.code === "EPIPE") return new Deno.errors.BrokenPipe(message);
  if (err.code === "ETIMEDOUT") return new Deno.errors.TimedOut(message);
  return new Error(message);
}

function addrOf(call: "getsockname" | "getpeername", fd: number): Deno.Addr {
  const buf = new Uint8Array(128);
  const len = new Uint32Array([buf.length]);
  lib().libc[call](fd, buf, new Uint8Array(len.buffer));
  return decodeSockAddr(buf, len[0]) ?? unnamed();
}

/** A connected socket of ours, read and written through node:net. */
class NetConn implements Conn {
  readonly localAddr: Deno.Addr;
  readonly remoteAddr: Deno.Addr;
  private readonly socket: Socket;
  private readonly queue: Uint8Array[] = [];
  private queued = 0;
  private ended = false;
  private closed = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;

  constructor(private readonly fd: number) {
    this.localAddr = addrOf("getsockname", fd);
    this.remoteAddr = addrOf("getpeername", fd);
    this.socket = new Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
    const notify = () => {
      const wake = this.wake;
      this.wake = undefined;
      wake?.();
    };
    this.socket.on("data", (chunk: Uint8Array) => {
      this.queue.push(chunk);
      this.queued += chunk.length;
      // Backpressure: stop reading while the pump has not taken 64 KiB.
      if (this.queued >= 65536) this.socket.pause();
      notify();
    });
    this.socket.on("end", () => {
      this.ended = true;
      notify();
    });
    this.socket.on("error", (e) => {
      this.failure ??= denoError(e);
      notify();
    });
    this.socket.on("close", () => {
      this.ended = true;
      notify();
    });
  }

  async read(buf: Uint8Array): Promise<number | null> {
    while (this.queue.length === 0 && !this.ended && !this.failure && !this.closed) {
      await new Promise<void>((resolve) => this.wake = resolve);
    }
    if (this.closed) throw new Deno.errors.BadResource("Bad resource ID");
    const head = this.queue[0];
    if (head) {
      const n = Math.min(buf.length, head.length);
      buf.set(head.subarray(0, n));
      if (n === head.length) this.queue.shift();
      else this.queue[0] = head.subarray(n);
      this.queued -= n;
      if (this.queued < 16384 && this.socket.isPaused()) this.socket.resume();
      return n;
    }
    if (this.failure) throw this.failure;
    return null;
  }

  write(data: Uint8Array): Promise<number> {
    if (this.closed) return Promise.reject(new Deno.errors.BadResource("Bad resource ID"));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.socket.write(data, (e) => e ? reject(denoError(e)) : resolve(data.length));
    });
  }

  closeWrite(): Promise<void> {
    if (this.closed || this.socket.writableEnded) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => resolve();
      this.socket.once("finish", done);
      this.socket.once("close", done);
      this.socket.end();
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** `reset = yes`: the close sends RST. */
  resetNow(): boolean {
    if (this.closed) return false;
    const ok = lingerZero(this.fd);
    this.close();
    return ok;
  }
}

/** What makes a remote socket ours instead of Deno's (connect.ts decides). */
export interface OwnSocket {
  /** Source address (`local`, port 0) or the client's address (`transparent = source`). */
  bind?: { host: string; port: number };
  transparent: boolean;
  remoteOptions: readonly SocketOption[];
}

/**
 * One connect attempt through a socket of ours, as stunnel's connect_init + s_connect (logged
 * in stunnel's order: bind, then connect); undefined when it failed (logged).
 */
export async function connectOwn(
  target: Address,
  label: string,
  own: OwnSocket,
  timeoutSeconds: number,
  log: Log,
): Promise<Conn | undefined> {
  const to = target.kind === "unix"
    ? unixSockAddr(target.path)
    : inetSockAddr(target.host, target.port);
  if (!to) {
    log(3, `s_connect: connect ${label}: not a numeric address`);
    return undefined;
  }
  let source: SockAddr | undefined;
  if (own.bind) {
    source = inetSockAddr(own.bind.host, own.bind.port) ?? undefined;
    if (!source) return undefined;
    if (source.family !== to.family) {
      log(7, `Cannot assign an AF=${source.family} address an AF=${to.family} socket`);
      return undefined;
    }
  }
  const { libc } = lib();
  const fd = libc.socket(to.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log(3, `remote socket: ${errnoMessage(errno())}`);
    return undefined;
  }
  let handed = false;
  try {
    if (source && !bindSource(fd, source, own.transparent, log)) return undefined;
    if (!await connectFd(fd, to, label, timeoutSeconds, log)) return undefined;
    const conn = new NetConn(fd);
    handed = true;
    if (!setOptions(fd, own.remoteOptions, "remote", log)) {
      log(4, "Failed to set remote socket options");
    }
    return conn;
  } finally {
    if (!handed) libc.close(fd);
  }
}

function bindSource(fd: number, source: SockAddr, transparent: boolean, log: Log): boolean {
  const { libc } = lib();
  const on = new Uint8Array(new Int32Array([1]).buffer);
  if (transparent) {
    // A failure is left to bind(), as in stunnel (old kernels had no IP_TRANSPARENT).
    if (libc.setsockopt(fd, SOL_IP, IP_TRANSPARENT, on, 4) === 0) {
      log(6, "IP_TRANSPARENT socket option set");
    } else {
      log(3, `setsockopt IP_TRANSPARENT: ${errnoMessage(errno())}`);
      if (libc.setsockopt(fd, SOL_IP, IP_FREEBIND, on, 4) === 0) {
        log(6, "IP_FREEBIND socket option set");
      } else log(3, `setsockopt IP_FREEBIND: ${errnoMessage(errno())}`);
    }
  }
  const view = new DataView(source.bytes.buffer);
  if (view.getUint16(2, false) >= 1024) {
    if (libc.bind(fd, source.bytes, source.bytes.length) === 0) {
      log(6, "bind succeeded on the original port");
      return true;
    }
    const n = errno();
    if (n !== EADDRINUSE) {
      log(3, `bind (original port): ${errnoMessage(n)}`);
      return false;
    }
  }
  view.setUint16(2, 0, false);
  if (libc.bind(fd, source.bytes, source.bytes.length) === 0) {
    log(6, "bind succeeded on an ephemeral port");
    return true;
  }
  log(3, `bind (ephemeral port): ${errnoMessage(errno())}`);
  return false;
}

async function connectFd(
  fd: number,
  target: SockAddr,
  label: string,
  timeoutSeconds: number,
  log: Log,
): Promise<boolean> {
  const { libc } = lib();
  log(6, `s_connect: connecting ${label}`);
  if (libc.connect(fd, target.bytes, target.bytes.length) === 0) {
    log(6, `s_connect: connected ${label}`);
    return true;
  }
  const n = errno();
  if (n !== EINPROGRESS) {
    log(3, `s_connect: connect ${label}: ${errnoMessage(n)}`);
    return false;
  }
  log(7, `s_connect: s_poll_wait ${label}: waiting ${timeoutSeconds} seconds`);
  const pollfd = new Uint8Array(8);
  const view = new DataView(pollfd.buffer);
  view.setInt32(0, fd, true);
  view.setInt16(4, POLLIN | POLLOUT, true);
  const deadline = Date.now() + timeoutSeconds * 1000;
  let ready = -1;
  // A poll() interrupted by a signal (EINTR) is waited again for the time that is left.
  for (let tries = 0; ready < 0 && tries < 100; tries++) {
    ready = await libc.poll(pollfd, 1n, Math.max(0, deadline - Date.now()));
  }
  if (ready < 0) {
    log(3, `s_connect: s_poll_wait ${label}: ${errnoMessage(EINTR)}`);
    return false;
  }
  if (ready === 0) {
    log(3, `s_connect: s_poll_wait ${label}: TIMEOUTconnect exceeded`);
    return false;
  }
  const error = new Int32Array(1);
  const len = new Uint32Array([4]);
  const got = libc.getsockopt(
    fd,
    SOL_SOCKET,
    SO_ERROR,
    new Uint8Array(error.buffer),
    new Uint8Array(len.buffer),
  );
  const failed = got === 0 ? error[0] : errno();
  if (failed) {
    log(3, `s_connect: connect ${label}: ${errnoMessage(failed)}`);
    return false;
  }
  log(5, `s_connect: connected ${label}`);
  return true;
}
