/**
 * What this platform lets the program do beyond Deno's own API. Deno's sockets, files, processes
 * and TLS work everywhere; two things do not:
 * - the C library (syslog, setsid, setuid/setgid/chroot, user and group names): glibc on Linux,
 *   libSystem on macOS, none on Windows (or with STUNNEL_LIBC=none);
 * - work on a socket's descriptor (socket options, reset, transparent proxying, `local`, exec
 *   and pty on a socket, inetd mode, sd_notify, the system resolver called directly): Linux
 *   only, as Deno hides descriptors and they are found through /proc/self/fd, with Linux's
 *   structure layouts and constants.
 * config/platform.ts refuses the options that need what is missing; the defaults that would
 * need it (`reset`, the default socket options, detaching, syslog) fall back to Deno's API.
 */
import { LibcMissing, loadLibc } from "./ffi.ts";

export interface Platform {
  /** The C library loaded for FFI, or why there is none. */
  libc: { file: string } | { missing: string; named: boolean };
  /** Descriptor-level socket work is possible (Linux, with its C library). */
  descriptors: boolean;
}

let known: Platform | undefined;

/** This thread's platform (the same in every thread: it depends on the OS and environment). */
export function platform(): Platform {
  if (known) return known;
  let libc: Platform["libc"];
  try {
    libc = { file: loadLibc() };
  } catch (e) {
    if (!(e instanceof LibcMissing)) throw e;
    libc = { missing: e.message, named: e.named };
  }
  return known = { libc, descriptors: "file" in libc && Deno.build.os === "linux" };
}

/** Why an option that needs the C library cannot be used here. */
export function withoutLibc(p: Platform): string | undefined {
  return "missing" in p.libc ? `it needs the C library: ${p.libc.missing}` : undefined;
}

/** Why an option that works on a socket's descriptor cannot be used here. */
export function withoutDescriptors(p: Platform): string | undefined {
  if (p.descriptors) return undefined;
  return withoutLibc(p) ??
    `it works on socket descriptors, which is done on Linux only (this is ${Deno.build.os})`;
}

/** `-version` and the banner: the C library in use, and what the platform leaves out. */
export function platformLine(p: Platform): string {
  if ("missing" in p.libc) {
    return `C library: none (${p.libc.missing.replace(/^no C library \((.*)\)$/, "$1")}): ` +
      "no syslog, daemon mode, privileges or socket options";
  }
  return p.descriptors
    ? `C library loaded from ${p.libc.file}`
    : `C library loaded from ${p.libc.file}; no socket options (Linux only)`;
}
