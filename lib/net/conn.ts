/**
 * One side of a connection as the pumps, the connection and the protocols use it: a TCP or
 * Unix socket (Deno's own, or one of ours: netconn.ts), a local program's pipes (exec.ts) or
 * pseudo-terminal (pty.ts), or our stdin and stdout (inetd mode). Deno's TcpConn and UnixConn
 * are Conns as they are.
 */
export interface Conn {
  /** Reads into `buf`: the byte count, or null once the peer has ended its direction. */
  read(buf: Uint8Array): Promise<number | null>;
  /** Writes some of `data` (at least one byte): the byte count. */
  write(data: Uint8Array): Promise<number>;
  /** Ends our direction (TCP FIN, EOF for a program) and keeps reading possible. */
  closeWrite(): Promise<void>;
  close(): void;
  /** For log lines, the IDENT query, the PROXY header, the program's environment. */
  readonly localAddr: Deno.Addr;
  readonly remoteAddr: Deno.Addr;
  /** TCP_NODELAY, on a TCP socket of Deno's. */
  setNoDelay?(noDelay?: boolean): void;
  /** `reset = yes` on a socket of ours (netconn.ts): closes it with RST; false if it cannot. */
  resetNow?(): boolean;
  /** A TCP socket Deno connected: where its descriptor most likely is (sockfd.ts). */
  readonly fdHint?: number;
}

/**
 * The address of a side that is no socket: a pseudo-terminal, our stdin and stdout in inetd
 * mode. stunnel logs such a side as accepted from nobody and closes it instead of shutting it
 * down; compared by identity.
 */
export const NOT_A_SOCKET: Deno.Addr = Object.freeze({ transport: "unix", path: "" });

/** The address of a socket (or a pipe standing in for stunnel's socket pair) without a name. */
export function unnamed(): Deno.UnixAddr {
  return { transport: "unix", path: "" };
}
