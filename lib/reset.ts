/**
 * `reset = yes`: a connection that fails is closed with a TCP RST (SO_LINGER 0) instead of a
 * FIN, so that the peer cannot take the failure for an orderly end of data.
 *
 * Deno does not expose socket file descriptors, so the descriptor is found through /proc: the
 * socket's inode from /proc/net/tcp{,6} by its address pair, then the fd that links to it.
 * This runs only on the error path.
 */
import { lib } from "./ffi.ts";

const SOL_SOCKET = 1;
const SO_LINGER = 13;

/** /proc/net/tcp's address form: little-endian hex words, then the port in hex. */
function procAddress(addr: Deno.NetAddr, v6: boolean): string {
  const port = addr.port.toString(16).toUpperCase().padStart(4, "0");
  if (!v6) {
    const v4 = addr.hostname.split(".").map(Number).reverse();
    return `${v4.map((b) => b.toString(16).toUpperCase().padStart(2, "0")).join("")}:${port}`;
  }
  const bytes = ipv6Bytes(addr.hostname);
  let hex = "";
  for (let word = 0; word < 4; word++) {
    for (let i = 3; i >= 0; i--) {
      hex += bytes[word * 4 + i].toString(16).toUpperCase().padStart(2, "0");
    }
  }
  return `${hex}:${port}`;
}

function ipv6Bytes(host: string): number[] {
  const v4mapped = host.match(/^(.*:)(\d+\.\d+\.\d+\.\d+)$/);
  let text = host;
  const tail: number[] = [];
  if (v4mapped) {
    text = `${v4mapped[1]}0:0`;
    tail.push(...v4mapped[2].split(".").map(Number));
  }
  const [head, rest = ""] = text.split("::");
  const left = head ? head.split(":") : [];
  const right = rest ? rest.split(":") : [];
  const words = text.includes("::")
    ? [...left, ...Array(8 - left.length - right.length).fill("0"), ...right]
    : left;
  const bytes = words.flatMap((w) => {
    const n = parseInt(w || "0", 16);
    return [n >> 8, n & 0xff];
  });
  if (tail.length) bytes.splice(12, 4, ...tail);
  return bytes;
}

function socketInode(conn: Deno.Conn): string | undefined {
  const local = conn.localAddr as Deno.NetAddr;
  const remote = conn.remoteAddr as Deno.NetAddr;
  const v6 = local.hostname.includes(":");
  const key = `${procAddress(local, v6)} ${procAddress(remote, v6)}`;
  const table = Deno.readTextFileSync(v6 ? "/proc/net/tcp6" : "/proc/net/tcp");
  for (const line of table.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (`${f[1]} ${f[2]}` === key) return f[9];
  }
  return undefined;
}

function socketFd(inode: string): number | undefined {
  const target = `socket:[${inode}]`;
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      if (Deno.readLinkSync(`/proc/self/fd/${entry.name}`) === target) return Number(entry.name);
    } catch {
      // closed while we looked
    }
  }
  return undefined;
}

/** Makes the next close of `conn` send RST; false if the socket could not be found. */
export function lingerZero(conn: Deno.Conn): boolean {
  if (conn.localAddr.transport !== "tcp") return false;
  try {
    const inode = socketInode(conn);
    const fd = inode === undefined ? undefined : socketFd(inode);
    if (fd === undefined) return false;
    const linger = new Int32Array([1, 0]);
    return lib().libc.setsockopt(
      fd,
      SOL_SOCKET,
      SO_LINGER,
      new Uint8Array(linger.buffer),
      linger.byteLength,
    ) === 0;
  } catch {
    return false;
  }
}
