/**
 * A program whose stdin and stdout are one socket of ours, as stunnel starts the program of a
 * connect+exec section on one end of its socket pair. Deno.Command only gives pipes, so this is
 * posix_spawn(3): the socket is duplicated onto descriptors 0 and 1 in the child only (here it
 * stays close-on-exec, so no other program inherits it), SIGPIPE, which Deno ignores, is the
 * program's default again, and no signal is blocked. Its stderr is ours.
 */
import { cstr, lib } from "../sys/ffi.ts";
import { errnoMessage } from "../sys/oserror.ts";
import type { Logger } from "../sys/log.ts";
import { SIGNAL_NAMES } from "../sys/names.ts";

/** How a program ended: its exit code, or the name of the signal that ended it. */
export type ChildEnd = { code: number } | { signal: string };

const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const SIGPIPE = 13;
/** Room for glibc's posix_spawn_file_actions_t (80 bytes) and posix_spawnattr_t (336). */
const OPAQUE_BYTES = 512;
const SIGSET_BYTES = 128;

/** A NULL-terminated array of pointers to the strings (which must outlive its use). */
function pointers(strings: Uint8Array<ArrayBuffer>[]): Uint8Array<ArrayBuffer> {
  const array = new BigUint64Array(strings.length + 1);
  strings.forEach((s, i) => array[i] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(s))));
  return new Uint8Array(array.buffer);
}

/**
 * Starts `path` with `argv` (argv[0] included) and our environment plus `env`, on socket `fd`;
 * returns its pid. Throws the reason (`strerror (N)`) when it cannot be executed.
 */
export function spawnOnSocket(
  path: string,
  argv: string[],
  env: Record<string, string>,
  fd: number,
): number {
  const { libc } = lib();
  const actions = new Uint8Array(OPAQUE_BYTES);
  const attr = new Uint8Array(OPAQUE_BYTES);
  libc.posix_spawn_file_actions_init(actions);
  libc.posix_spawnattr_init(attr);
  try {
    libc.posix_spawn_file_actions_adddup2(actions, fd, 0);
    libc.posix_spawn_file_actions_adddup2(actions, fd, 1);
    const defaults = new Uint8Array(SIGSET_BYTES);
    defaults[(SIGPIPE - 1) >> 3] |= 1 << ((SIGPIPE - 1) & 7);
    libc.posix_spawnattr_setsigdefault(attr, defaults);
    libc.posix_spawnattr_setsigmask(attr, new Uint8Array(SIGSET_BYTES));
    libc.posix_spawnattr_setflags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    const args = argv.map(cstr);
    const vars = Object.entries({ ...Deno.env.toObject(), ...env }).map(([k, v]) =>
      cstr(`${k}=${v}`)
    );
    const pid = new Int32Array(1);
    const rc = libc.posix_spawn(
      new Uint8Array(pid.buffer),
      cstr(path),
      actions,
      attr,
      pointers(args),
      pointers(vars),
    );
    if (rc !== 0) throw new Error(errnoMessage(rc));
    return pid[0];
  } finally {
    libc.posix_spawn_file_actions_destroy(actions);
    libc.posix_spawnattr_destroy(attr);
  }
}

/** The end of a program started by spawnOnSocket (waitpid on a thread of its own). */
export async function childEnd(pid: number): Promise<ChildEnd> {
  const status = new Int32Array(1);
  if (await lib().libc.waitpid(pid, new Uint8Array(status.buffer), 0) !== pid) {
    throw new Error(`waitpid ${pid} failed`);
  }
  const signal = status[0] & 0x7f;
  return signal === 0
    ? { code: (status[0] >> 8) & 0xff }
    : { signal: SIGNAL_NAMES[signal] ?? `signal ${signal}` };
}

/** Logs the start of a local-mode program, and its end when it comes, as stunnel does. */
export function logChild(pid: number, end: Promise<ChildEnd>, log: Logger): void {
  log(6, `Local mode child started (PID=${pid})`);
  end.then((how) => {
    if ("signal" in how) log(6, `Child process ${pid} terminated on ${how.signal}`);
    else log(6, `Child process ${pid} finished with code ${how.code}`);
  }, () => {});
}

/** How a program started with Deno.Command ended, in ChildEnd's terms. */
export function commandEnd(child: Deno.ChildProcess): Promise<ChildEnd> {
  return child.status.then((s) => s.signal ? { signal: s.signal } : { code: s.code });
}
