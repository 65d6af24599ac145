/**
 * `pty = yes` (local mode): the `exec` program runs on a pseudo-terminal instead of pipes, as
 * stunnel's pty_allocate() + connect_local() do. The terminal keeps its default (cooked) line
 * discipline, as in stunnel: echo, line editing and CR/LF translation are the terminal's.
 *
 * The master side is ours: a tty descriptor that Deno's sockets and files refuse, so it is read
 * and written through libc with O_NONBLOCK, and every wait is a poll() with a short timeout on
 * Deno's blocking thread pool. A closed connection therefore never leaves a thread waiting for
 * the program, and the descriptor is closed exactly once, after the last poll returned.
 */
import { errno, lib } from "../sys/ffi.ts";
import { errnoMessage } from "../sys/oserror.ts";
import { type Conn, NOT_A_SOCKET } from "../net/conn.ts";
import type { Logger } from "../sys/log.ts";
import { commandEnd, logChild } from "./spawn.ts";

const O_RDWR = 0x2;
const O_NOCTTY = 0x100;
const O_NONBLOCK = 0x800;
const O_CLOEXEC = 0x80000;
const EINTR = 4;
const EIO = 5;
const EAGAIN = 11;
const POLLIN = 0x1;
const POLLOUT = 0x4;
/** How long one poll() waits before it looks whether the connection ended (ms). */
const POLL_SLICE_MS = 200;

/** `what: strerror (N)`, as stunnel's ioerror() logs it. */
function ioError(what: string, code: number): string {
  return `${what}: ${errnoMessage(code)}`;
}

/** A new pseudo-terminal: our master descriptor and the slave's path (e.g. /dev/pts/3). */
export function allocatePty(): { fd: number; name: string } {
  const { libc } = lib();
  const fd = libc.posix_openpt(O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw new Error(ioError("openpty", errno()));
  const name = new Uint8Array(128);
  if (
    libc.grantpt(fd) !== 0 || libc.unlockpt(fd) !== 0 ||
    libc.ptsname_r(fd, name, BigInt(name.length)) !== 0
  ) {
    const code = errno();
    libc.close(fd);
    throw new Error(ioError("openpty", code));
  }
  return { fd, name: new TextDecoder().decode(name.subarray(0, name.indexOf(0))) };
}

/**
 * The master side of a pseudo-terminal seen as a connected socket, for the pumps. A terminal
 * has no half-close: closeWrite() closes it all, as stunnel closes a non-socket descriptor once
 * the TLS peer is done ("Closing the file descriptor"); the program then gets a hangup.
 */
export class PtyConn implements Conn {
  readonly localAddr: Deno.Addr = NOT_A_SOCKET;
  readonly remoteAddr: Deno.Addr = NOT_A_SOCKET;
  private closed = false;
  private fdClosed = false;
  /** poll() calls still running on the thread pool: the descriptor outlives them. */
  private polling = 0;

  /**
   * `fd`: the master (O_NONBLOCK); `ready`: resolves true once the program holds the slave
   * (until then a read would wait for nothing), false if it never will.
   */
  constructor(private readonly fd: number, private readonly ready: Promise<boolean>) {}

  async read(buf: Uint8Array): Promise<number | null> {
    if (!await this.ready) return null;
    const { libc } = lib();
    for (;;) {
      if (this.closed) return null;
      const n = Number(libc.read(this.fd, buf, BigInt(buf.length)));
      if (n > 0) return n;
      if (n === 0) return null;
      const code = errno();
      // EIO: every descriptor of the slave is closed (the program ended).
      if (code === EIO) return null;
      if (code === EINTR) continue;
      if (code !== EAGAIN) throw new Error(ioError("read", code));
      await this.wait(POLLIN);
    }
  }

  async write(data: Uint8Array): Promise<number> {
    if (!await this.ready) throw new Deno.errors.BrokenPipe("the program did not start");
    const { libc } = lib();
    for (;;) {
      if (this.closed) throw new Deno.errors.BrokenPipe("pseudo-terminal closed");
      const n = Number(libc.write(this.fd, data, BigInt(data.length)));
      if (n >= 0) return n;
      const code = errno();
      if (code === EIO) throw new Deno.errors.BrokenPipe(ioError("write", code));
      if (code === EINTR) continue;
      if (code !== EAGAIN) throw new Error(ioError("write", code));
      await this.wait(POLLOUT);
    }
  }

  closeWrite(): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.release();
  }

  /** Waits until the master is ready for `events` (or a hangup), or the connection ended. */
  private async wait(events: number): Promise<void> {
    const pollfd = new Uint8Array(8);
    const view = new DataView(pollfd.buffer);
    view.setInt32(0, this.fd, true);
    view.setInt16(4, events, true);
    this.polling++;
    try {
      while (!this.closed) {
        view.setInt16(6, 0, true);
        const n = await lib().libc.poll(pollfd, 1n, POLL_SLICE_MS);
        if (n !== 0) return;
      }
    } finally {
      this.polling--;
      this.release();
    }
  }

  /** Closes the descriptor once nothing can use it any more. */
  private release(): void {
    if (!this.closed || this.polling > 0 || this.fdClosed) return;
    this.fdClosed = true;
    lib().libc.close(this.fd);
  }
}

/** What the shell does before it becomes the program: the slave as stdio, a new session. */
const PTY_SCRIPT = [
  "p=$1; shift",
  // The slave becomes stdin, stdout and stderr; fd 3 (the pipe to us) tells that it is open.
  'exec 3>&1 <>"$p" >&0 2>&0 || exit 126',
  "printf . >&3",
  // setsid: a session of its own whose controlling terminal is the slave (TIOCSCTTY).
  'exec 3>&- setsid --ctty "$@"',
].join("\n");

/**
 * Starts `argv` (argv[0] may differ from `path`) on a new pseudo-terminal, logging as stunnel
 * does. Throws (with the errno line to log) when no terminal can be allocated.
 */
export function spawnPty(
  path: string,
  argv: string[],
  env: Record<string, string>,
  log: Logger,
): Conn {
  const { fd, name } = allocatePty();
  log(7, `TTY=${name} allocated`);
  const program = argv[0] === path ? [path, ...argv.slice(1)] : [
    "/bin/bash",
    "-c",
    'p=$1; shift; exec -a "$0" -- "$p" "$@"',
    argv[0],
    path,
    ...argv.slice(1),
  ];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("/bin/sh", {
      args: ["-c", PTY_SCRIPT, "sh", name, ...program],
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
  } catch (e) {
    lib().libc.close(fd);
    throw e;
  }
  logChild(child.pid, commandEnd(child), log);
  const ready = new Response(child.stdout).text().then((text) => text === ".", () => false);
  return new PtyConn(fd, ready);
}
