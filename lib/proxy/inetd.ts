/**
 * Inetd mode: a configuration without [service] sections serves exactly one connection, the
 * one on our stdin and stdout (started by inetd, xinetd, socat ... EXEC:), with the service
 * built from the global section; the process ends with the connection. Logs go to `output` or
 * syslog, never to stdout (that is the connection).
 */
import { Connection } from "./connection.ts";
import { newRuntime } from "./daemon.ts";
import { setUpGlobalCrypto } from "../tls/engine.ts";
import { lib } from "../sys/ffi.ts";
import { early } from "../sys/log.ts";
import { every } from "../sys/timer.ts";
import { openStartupLog } from "./startup.ts";
import { Service } from "./service.ts";
import { decodeSockAddr } from "../sys/sockfd.ts";
import { type Conn, NOT_A_SOCKET } from "../net/conn.ts";
import { TlsError } from "../tls/core.ts";
import type { Configuration } from "../config/types.ts";

const SHUT_WR = 1;

/** The peer of descriptor 0 if it is a socket (a Unix one may be unnamed); else NOT_A_SOCKET. */
function stdinPeer(): Deno.Addr {
  const buf = new Uint8Array(128);
  const len = new Uint32Array([buf.length]);
  if (lib().libc.getpeername(0, buf, new Uint8Array(len.buffer)) !== 0) return NOT_A_SOCKET;
  return decodeSockAddr(buf, len[0]) ?? NOT_A_SOCKET;
}

/**
 * Our stdin and stdout seen as one connected socket. A write shutdown is a socket shutdown
 * when stdout is a socket, else the close of stdout (a pipe).
 */
class StdioConn implements Conn {
  readonly remoteAddr: Deno.Addr = stdinPeer();
  /** Not a TCP address: `reset = yes` cannot find (and must not touch) our stdio. */
  readonly localAddr: Deno.Addr = NOT_A_SOCKET;
  private writeClosed = false;
  private closed = false;

  read(buf: Uint8Array): Promise<number | null> {
    return Deno.stdin.read(buf);
  }

  write(data: Uint8Array): Promise<number> {
    return Deno.stdout.write(data);
  }

  closeWrite(): Promise<void> {
    if (!this.writeClosed) {
      this.writeClosed = true;
      if (lib().libc.shutdown(1, SHUT_WR) !== 0) closeQuietly(Deno.stdout);
    }
    return Promise.resolve();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeQuietly(Deno.stdin);
    if (!this.writeClosed) {
      this.writeClosed = true;
      closeQuietly(Deno.stdout);
    }
  }
}

function closeQuietly(stream: { close(): void }): void {
  try {
    stream.close();
  } catch {
    // already closed
  }
}

/** Global options refused in inetd mode, and why. */
const INETD_REFUSED = {
  // stunnel drops privileges in inetd mode too; that is not done here yet: refused, not ignored.
  chroot: "is not supported yet in inetd mode",
  setuid: "is not supported yet in inetd mode",
  setgid: "is not supported yet in inetd mode",
  // One process per connection: a metrics server or a file watch would live as long as it.
  metrics: "cannot be used in inetd mode (one process per connection)",
  watchFiles: "cannot be used in inetd mode (one process per connection)",
} as const;

/** Serves the one connection on stdin/stdout; returns the process exit code. */
export async function runInetd(config: Configuration, banner: string[]): Promise<number> {
  for (const [name, reason] of Object.entries(INETD_REFUSED)) {
    const option = name as keyof typeof INETD_REFUSED;
    if (!config.global[option]) continue;
    const where = config.global.where[option];
    early(3, `${where ? `${where.file}:${where.line}: ` : ""}option '${option}' ${reason}`);
    early(3, "Configuration failed");
    return 1;
  }
  const started = openStartupLog(config, banner);
  if (!started) return 1;
  const { sink, ui } = started;
  // stunnel names the section of inetd mode after the global `service` option.
  const opts = { ...config.services[0], name: config.global.service };
  // mod.ts runs inetd mode with OpenSSL only (Deno's TLS needs sockets Deno made).
  const runtime = newRuntime(false, { engine: "openssl", how: "tlsEngine = openssl" });
  if (!setUpGlobalCrypto(config.global, ui)) {
    ui(3, "Configuration failed");
    sink.close();
    return 1;
  }
  let service: Service;
  try {
    service = await Service.create(opts, ui, runtime);
  } catch (e) {
    if (e instanceof TlsError) { for (const line of e.logLines()) ui(3, line); }
    else ui(3, (e as Error).message);
    ui(3, `Service [${opts.name}]: Failed to initialize TLS context`);
    ui(3, "Configuration failed");
    sink.close();
    return 1;
  }
  await service.prepare(ui);
  ui(5, "Configuration successful");
  const log = sink.bind("0", opts.debugLevel);
  log(7, `Service [${opts.name}] started`);
  const connection = new Connection(service, new StdioConn(), log);
  const stopTimer = every(1000, () => connection.checkTimeout(Date.now()));
  try {
    await connection.run();
  } finally {
    stopTimer();
    service.free();
  }
  log(7, `Service [${opts.name}] finished (0 left)`);
  sink.close();
  return 0;
}
