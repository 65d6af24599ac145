/**
 * Local mode (`exec`, `execArgs`): a program started per connection whose stdin and stdout are
 * one side of the connection, as stunnel's inetd-type programs. The child's pipes are wrapped
 * in a socket-like object, so that the pumps and protocol negotiations treat it as a socket;
 * the program of a connect+exec section gets a real socket instead (spawnExecConnect).
 */
import { lib } from "../sys/ffi.ts";
import type { Logger } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { type Conn, unnamed } from "../net/conn.ts";
import { loopbackPair } from "../net/socketpair.ts";
import { spawnPty } from "./pty.ts";
import { childEnd, commandEnd, logChild, spawnOnSocket } from "./spawn.ts";
import type { TlsConnection } from "../tls/core.ts";
import { peerNames } from "../tls/verify.ts";
import type { ServiceOptions } from "../config/types.ts";

/** A connect+exec section: the program is the local side, started without a listener. */
export function isExecConnect(opts: ServiceOptions): boolean {
  return opts.exec !== undefined && opts.connect.length > 0 && opts.accept.length === 0;
}

/** What a child learns about its peer from the environment, as stunnel sets it. */
export function execEnvironment(
  peer: Deno.Addr,
  tls: TlsConnection | undefined,
): Record<string, string> {
  const env: Record<string, string> = {};
  if (peer.transport === "tcp" || peer.transport === "udp") {
    env.REMOTE_HOST = peer.hostname.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
    env.REMOTE_PORT = String(peer.port);
  } else {
    // stunnel: a peer without an IP address (a Unix socket, a pipe in inetd mode).
    env.REMOTE_HOST = "localhost";
  }
  const names = tls && peerNames(tls);
  if (names) {
    env.SSL_CLIENT_DN = names.subject;
    env.SSL_CLIENT_I_DN = names.issuer;
  }
  return env;
}

/**
 * A running child seen as a connected socket: reads come from its stdout, writes go to its
 * stdin; closeWrite() closes its stdin (EOF for the program).
 */
class ExecConn implements Conn {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;
  private leftover: Uint8Array | null = null;
  private writeClosed = false;
  private closed = false;
  readonly localAddr: Deno.Addr = unnamed();
  readonly remoteAddr: Deno.Addr = unnamed();

  /** The child's stdout and stdin. */
  constructor(output: ReadableStream<Uint8Array>, input: WritableStream<Uint8Array>) {
    this.reader = output.getReader();
    this.writer = input.getWriter();
  }

  async read(buf: Uint8Array): Promise<number | null> {
    let chunk = this.leftover;
    this.leftover = null;
    while (chunk === null || chunk.length === 0) {
      const { value, done } = await this.reader.read();
      if (done) return null;
      chunk = value;
    }
    const n = Math.min(buf.length, chunk.length);
    buf.set(chunk.subarray(0, n));
    if (n < chunk.length) this.leftover = chunk.subarray(n);
    return n;
  }

  async write(data: Uint8Array): Promise<number> {
    // The pump's buffer is reused once this resolves: the pipe gets its own copy.
    await this.writer.write(data.slice());
    return data.length;
  }

  async closeWrite(): Promise<void> {
    if (this.writeClosed) return;
    this.writeClosed = true;
    await this.writer.close().catch(() => {});
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.reader.cancel().catch(() => {});
    if (!this.writeClosed) {
      this.writeClosed = true;
      this.writer.abort().catch(() => {});
    }
  }
}

/**
 * Starts the `exec` program with `execArgs` (argv[0] included) and the peer's environment.
 * Its stderr is ours, as in stunnel. Logs its start and its end.
 */
export function spawnExec(
  opts: ServiceOptions,
  env: Record<string, string>,
  log: Logger,
): Conn {
  const path = opts.exec!;
  const argv = programArgv(opts);
  if (opts.pty) {
    try {
      return spawnPty(path, argv, env, log);
    } catch (e) {
      log(3, e instanceof Error ? e.message : String(e));
      return endedProgram(path);
    }
  }
  // Deno.Command always passes the path as argv[0]; bash's `exec -a` sets another one without
  // an extra process (the shell replaces itself with the program).
  const [command, args] = argv[0] === path ? [path, argv.slice(1)] : [
    "/bin/bash",
    ["-c", 'p=$1; shift; exec -a "$0" -- "$p" "$@"', argv[0], path, ...argv.slice(1)],
  ];
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(command, {
      args,
      env,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
  } catch (e) {
    // stunnel forks first: a program that cannot be executed is a child that ends at once,
    // so the connection ends as if it had (no data, then close_notify).
    log(3, `Cannot execute ${path}: ${osErrorText(e)}`);
    return endedProgram(path);
  }
  logChild(child.pid, commandEnd(child), log);
  return new ExecConn(child.stdout, child.stdin);
}

/** `execArgs` (argv[0] included), or just the `exec` path. */
function programArgv(opts: ServiceOptions): string[] {
  return opts.execArgs && opts.execArgs.length > 0 ? opts.execArgs : [opts.exec!];
}

/**
 * The program of a connect+exec section, as stunnel's connect_local() starts it: on one end of a
 * loopback socket pair, whose other end is returned (the local side of the section's
 * connection), or on a pseudo-terminal with `pty = yes`. A program that cannot be executed is
 * logged, and its end of the pair is closed at once.
 */
export async function spawnExecConnect(
  opts: ServiceOptions,
  env: Record<string, string>,
  log: Logger,
): Promise<Deno.Conn> {
  if (opts.pty) return spawnExec(opts, env, log) as unknown as Deno.Conn;
  const { conn, fd } = await loopbackPair();
  try {
    const pid = spawnOnSocket(opts.exec!, programArgv(opts), env, fd);
    logChild(pid, childEnd(pid), log);
  } catch (e) {
    log(3, `Cannot execute ${opts.exec}: ${(e as Error).message}`);
  } finally {
    lib().libc.close(fd);
  }
  return conn;
}

/** A program that ended at once: no data, then the end of the connection. */
function endedProgram(path: string): ExecConn {
  return new ExecConn(
    new ReadableStream({ start: (c) => c.close() }),
    new WritableStream({
      write: () => {
        throw new Deno.errors.BrokenPipe(`${path} is not running`);
      },
    }),
  );
}
