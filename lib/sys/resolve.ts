/**
 * Name resolution: libc's getaddrinfo(), as stunnel resolves, and the only resolver here.
 * While the configuration is read (`local`, `sessiond`) it is called directly, as stunnel does;
 * for connections (connect targets, OCSP responders, the CapWIN LDAP server, SOCKS requests,
 * libwrap's forward check) on Deno's blocking thread pool, so that a slow name server does not
 * stop the event loop.
 */
import { lib, type Ptr } from "./ffi.ts";
import { gaiErrorText } from "./oserror.ts";
import { decodeSockAddr, inetSockAddr } from "./sockfd.ts";
import { platform } from "./platform.ts";

const AI_PASSIVE = 1;
const SOCK_STREAM = 1;

/** A name that did not resolve; the message is stunnel's log line. */
export class ResolveError extends Error {
  constructor(host: string, why: string) {
    super(`Error resolving "${host}": ${why}`);
  }
}

export interface ResolveHints {
  /** Only addresses of this family (AF_INET ...); all families by default. */
  family?: number;
  /** AI_PASSIVE: an address to bind to (`local`). */
  passive?: boolean;
}

/** What getaddrinfo() takes: the name, `struct addrinfo` hints, and a cell for the result. */
function request(host: string, hints: ResolveHints) {
  // struct addrinfo: ai_flags, ai_family, ai_socktype, ai_protocol, ... (48 bytes).
  const fields = new Int32Array(12);
  fields[0] = hints.passive ? AI_PASSIVE : 0;
  fields[1] = hints.family ?? 0;
  fields[2] = SOCK_STREAM;
  return {
    name: new TextEncoder().encode(`${host}\0`),
    hints: new Uint8Array(fields.buffer),
    result: new BigUint64Array(1),
  };
}

/** The numeric addresses of a getaddrinfo() result, in its order; frees the list. */
function addresses(host: string, rc: number, result: BigUint64Array): string[] {
  if (rc !== 0) throw new ResolveError(host, gaiErrorText(rc));
  const { libc } = lib();
  const head = Deno.UnsafePointer.create(result[0]);
  const found: string[] = [];
  try {
    // ai_addrlen at offset 16, ai_addr at 24, ai_next at 40.
    for (let entry: Ptr = head; entry !== null;) {
      const info = new Deno.UnsafePointerView(entry);
      const len = info.getUint32(16);
      const addr = info.getPointer(24);
      if (addr !== null) {
        const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(addr, len).slice(0));
        const decoded = decodeSockAddr(bytes, len);
        if (decoded?.transport === "tcp") found.push(decoded.hostname);
      }
      entry = info.getPointer(40);
    }
  } finally {
    libc.freeaddrinfo(head);
  }
  if (found.length === 0) throw new ResolveError(host, "no IP address");
  return found;
}

/**
 * Whether getaddrinfo() is called for `host`: not for a numeric address, which is its own, nor
 * off Linux, as the structures are read with Linux's layout; there the name is left to Deno,
 * which resolves it when it connects or binds (to its first address).
 */
function direct(host: string): boolean {
  return inetSockAddr(host, 0) === null && platform().descriptors;
}

/** The addresses of `host`, resolved now (while the configuration is read); throws ResolveError. */
export function getaddrinfoSync(host: string, hints: ResolveHints = {}): string[] {
  if (!direct(host)) return [host];
  const r = request(host, hints);
  const rc = lib().libc.getaddrinfo(r.name, null, r.hints, new Uint8Array(r.result.buffer));
  return addresses(host, rc, r.result);
}

/**
 * The addresses of `host`, resolved on a thread of the pool; a numeric host is its own address
 * (no trip to the pool). Throws ResolveError.
 */
export async function getaddrinfo(host: string, hints: ResolveHints = {}): Promise<string[]> {
  if (!direct(host)) return [host];
  const r = request(host, hints);
  const rc = await lib().libc.getaddrinfo_async(
    r.name,
    null,
    r.hints,
    new Uint8Array(r.result.buffer),
  );
  return addresses(host, rc, r.result);
}
