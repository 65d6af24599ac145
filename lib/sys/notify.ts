/**
 * systemd's readiness protocol (sd_notify): `KEY=VALUE` lines in one datagram to the Unix
 * socket named by NOTIFY_SOCKET (a path, or an abstract name written with a leading `@`).
 * Nothing is sent when the variable is not set, so a stunnel.conf run without a supervisor
 * behaves as before.
 */
import { cstr, lib } from "./ffi.ts";
import { platform } from "./platform.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const CLOCK_MONOTONIC = 1;
/** sizeof(sockaddr_un.sun_path) */
const SUN_PATH = 108;

/** CLOCK_MONOTONIC in microseconds, as systemd's `MONOTONIC_USEC=` wants it. */
export function monotonicUsec(): bigint {
  const ts = new BigInt64Array(2);
  lib().libc.clock_gettime(CLOCK_MONOTONIC, new Uint8Array(ts.buffer));
  return ts[0] * 1_000_000n + ts[1] / 1000n;
}

/** sockaddr_un of NOTIFY_SOCKET; undefined if it cannot be one. */
function notifyAddress(name: string): Uint8Array | undefined {
  const abstract = name.startsWith("@");
  const path = abstract ? cstr(name.slice(1)).subarray(0, -1) : cstr(name);
  if (!abstract && !name.startsWith("/")) return undefined;
  if (path.length + (abstract ? 1 : 0) > SUN_PATH) return undefined;
  // An abstract name starts with a NUL byte and its length counts, with no terminating NUL.
  const addr = new Uint8Array(2 + (abstract ? 1 : 0) + path.length);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(path, abstract ? 3 : 2);
  return addr;
}

/** The supervisor's side of sd_notify; one per process. */
export class Notifier {
  private constructor(private readonly address: Uint8Array) {}

  /** The notifier of NOTIFY_SOCKET, or undefined when the process has no supervisor to tell. */
  static fromEnvironment(): Notifier | undefined {
    // systemd is Linux's; its socket is written through the C library.
    if (!platform().descriptors) return undefined;
    const name = Deno.env.get("NOTIFY_SOCKET");
    const address = name ? notifyAddress(name) : undefined;
    return address && new Notifier(address);
  }

  /**
   * Sends `lines` as one datagram; false if it could not be sent. Never blocks: a supervisor
   * that does not read its socket loses the message, not the event loop.
   */
  send(...lines: string[]): boolean {
    const { libc } = lib();
    const fd = libc.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    try {
      if (libc.connect(fd, this.address, this.address.length) !== 0) return false;
      const message = new TextEncoder().encode(lines.join("\n"));
      return Number(libc.write(fd, message, BigInt(message.length))) === message.length;
    } finally {
      libc.close(fd);
    }
  }
}
