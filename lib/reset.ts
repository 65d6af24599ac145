/**
 * `reset = yes`: a connection that fails on our side is closed with a TCP RST (SO_LINGER 0)
 * instead of a FIN, so that the peer cannot take the failure for an orderly end of data.
 *
 * Deno does not expose socket file descriptors, so the descriptor is found among this
 * process's open sockets by its address pair (getsockname/getpeername). This runs only on the
 * error path, and costs two system calls per open socket.
 */
import { cstr, lib, O_RDWR } from "./ffi.ts";

const SOL_SOCKET = 1;
const SO_LINGER = 13;
const AF_INET = 2;
const AF_INET6 = 10;

/** The port and the address bytes of a sockaddr, as "port/byte.byte...". */
function sockaddrKey(buf: Uint8Array): string | undefined {
  const view = new DataView(buf.buffer);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === AF_INET) return `${port}/${buf.subarray(4, 8).join(".")}`;
  if (family === AF_INET6) {
    const addr = buf.subarray(8, 24);
    // An IPv4-mapped address is the same peer as its IPv4 form.
    const mapped = addr.subarray(0, 10).every((b) => b === 0) && addr[10] === 0xff &&
      addr[11] === 0xff;
    return `${port}/${mapped ? addr.subarray(12).join(".") : addr.join(".")}`;
  }
  return undefined;
}

function netAddrKey(addr: Deno.NetAddr): string {
  const host = addr.hostname.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
  if (!host.includes(":")) return `${addr.port}/${host}`;
  const [head, tail = ""] = host.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const words = host.includes("::")
    ? [...left, ...Array(8 - left.length - right.length).fill("0"), ...right]
    : left;
  return `${addr.port}/${
    words.flatMap((w) => [parseInt(w, 16) >> 8, parseInt(w, 16) & 255])
      .join(".")
  }`;
}

function findSocketFd(conn: Deno.Conn): number | undefined {
  const { libc } = lib();
  const local = netAddrKey(conn.localAddr as Deno.NetAddr);
  const remote = netAddrKey(conn.remoteAddr as Deno.NetAddr);
  const buf = new Uint8Array(128);
  const len = new Uint32Array(1);
  const lenBytes = new Uint8Array(len.buffer);
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(entry.name);
    len[0] = buf.length;
    if (libc.getsockname(fd, buf, lenBytes) !== 0 || sockaddrKey(buf) !== local) continue;
    len[0] = buf.length;
    if (libc.getpeername(fd, buf, lenBytes) === 0 && sockaddrKey(buf) === remote) return fd;
  }
  return undefined;
}

/**
 * Closes the socket of `conn` with RST at once; false if it could not be found. Deno's own
 * close sends FIN first (shutdown before close), so the socket is closed here instead: its
 * descriptor is replaced by /dev/null (dup2), which keeps the number taken until Deno closes it.
 */
export function resetNow(conn: Deno.Conn): boolean {
  if (conn.localAddr.transport !== "tcp") return false;
  const { libc } = lib();
  try {
    const fd = findSocketFd(conn);
    if (fd === undefined) return false;
    const linger = new Int32Array([1, 0]);
    const lingerBytes = new Uint8Array(linger.buffer);
    if (libc.setsockopt(fd, SOL_SOCKET, SO_LINGER, lingerBytes, linger.byteLength) !== 0) {
      return false;
    }
    const devNull = libc.open(cstr("/dev/null"), O_RDWR);
    if (devNull < 0) return false;
    const replaced = libc.dup2(devNull, fd) === fd;
    libc.close(devNull);
    return replaced;
  } catch {
    return false;
  }
}
