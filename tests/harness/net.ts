/**
 * Ports on 127.0.0.1, plain backends (echo, sink, source, HTTP) and clients (TCP, Deno's own TLS
 * client, curl). Everything listens and connects on 127.0.0.1 only.
 */
import { assertEquals } from "./assert.ts";
import {
  closeQuietly,
  decode,
  type Digest,
  encode,
  hashUntilEof,
  readExactly,
  sendPattern,
  waitClosed,
  writeAll,
} from "./bytes.ts";
import { register, run, type RunResult } from "./process.ts";
import { pollUntil, withTimeout } from "./timing.ts";

/** A currently free TCP port on 127.0.0.1. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** `n` distinct free ports. */
export function freePorts(n: number): number[] {
  const listeners = Array.from(
    { length: n },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  return ports;
}

async function procListening(port: number): Promise<boolean | undefined> {
  let found = false;
  let readable = false;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
      readable = true;
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4 || f[3] !== "0A") continue; // 0A = LISTEN
      const local = f[1];
      if (parseInt(local.slice(local.lastIndexOf(":") + 1), 16) === port) found = true;
    }
  }
  return readable ? found : undefined;
}

/**
 * Whether something listens on TCP `port` (any local address). Uses /proc/net/tcp so that it
 * never makes a connection to the proxy (which would add lines to its log); falls back to a
 * connection attempt to 127.0.0.1 where /proc is not available.
 */
export async function isListening(port: number): Promise<boolean> {
  const viaProc = await procListening(port);
  if (viaProc !== undefined) return viaProc;
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    c.close();
    return true;
  } catch {
    return false;
  }
}

export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  await pollUntil(() => isListening(port), timeoutMs, `port ${port} to listen`);
}

export async function waitForPortClosed(port: number, timeoutMs = 10_000): Promise<void> {
  await pollUntil(async () => !(await isListening(port)), timeoutMs, `port ${port} to close`);
}

/**
 * A port on 127.0.0.1 where connects hang until the connecting side gives up (TIMEOUTconnect):
 * a listener with a backlog of 0 (Deno's listeners cannot have one, hence libc) whose one queue
 * slot is taken by a connection nobody accepts, so that the kernel drops every later SYN.
 */
export async function unansweredPort(): Promise<number> {
  const libc = Deno.dlopen("libc.so.6", {
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    listen: { parameters: ["i32", "i32"], result: "i32" },
    getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  });
  const { socket, bind, listen, getsockname, close } = libc.symbols;
  // struct sockaddr_in for 127.0.0.1, port 0 (AF_INET, SOCK_STREAM | SOCK_CLOEXEC).
  const addr = new Uint8Array([2, 0, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
  const len = new Uint32Array([addr.length]);
  const fd = socket(2, 1 | 0o2000000, 0);
  register(() => {
    close(fd);
    libc.close();
  });
  if (
    fd < 0 || bind(fd, addr, addr.length) !== 0 || listen(fd, 0) !== 0 ||
    getsockname(fd, addr, new Uint8Array(len.buffer)) !== 0
  ) {
    throw new Error("unansweredPort: no listener");
  }
  const port = (addr[2] << 8) | addr[3];
  const filler = await Deno.connect({ hostname: "127.0.0.1", port });
  register(() => filler.close());
  return port;
}

/** A small async queue: results pushed by servers, awaited by tests. */
export class Queue<T> {
  #items: T[] = [];
  #waiters: ((v: T) => void)[] = [];

  push(v: T): void {
    const w = this.#waiters.shift();
    if (w) w(v);
    else this.#items.push(v);
  }

  next(ms = 30_000, what = "next result"): Promise<T> {
    if (this.#items.length) return Promise.resolve(this.#items.shift()!);
    return withTimeout(new Promise<T>((resolve) => this.#waiters.push(resolve)), ms, what);
  }

  get length(): number {
    return this.#items.length;
  }
}

export interface Backend {
  port: number;
  /** Number of connections accepted so far. */
  connections: number;
  /** Remote addresses of the accepted connections, in order. */
  peers: Deno.NetAddr[];
  close(): void;
}

/** A plain TCP server on 127.0.0.1 (ephemeral port) running `handler` per connection. */
export function tcpServer(handler: (conn: Deno.TcpConn) => Promise<void>): Backend {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const backend: Backend = {
    port: (listener.addr as Deno.NetAddr).port,
    connections: 0,
    peers: [],
    close() {
      closeQuietly(listener);
      for (const c of conns) closeQuietly(c);
      conns.clear();
    },
  };
  (async () => {
    try {
      for await (const conn of listener) {
        backend.connections++;
        backend.peers.push(conn.remoteAddr);
        conns.add(conn);
        handler(conn).catch(() => {}).finally(() => {
          conns.delete(conn);
          closeQuietly(conn);
        });
      }
    } catch {
      // listener closed
    }
  })();
  register(() => backend.close());
  return backend;
}

/** Echoes every byte back; half-closes its side when the client half-closes. */
export function echoServer(opts: { greeting?: string } = {}): Backend {
  return tcpServer(async (conn) => {
    if (opts.greeting) await writeAll(conn, encode(opts.greeting));
    const buf = new Uint8Array(64 * 1024);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      await writeAll(conn, buf.subarray(0, n));
    }
    await conn.closeWrite().catch(() => {});
    await waitClosed(conn, 10_000).catch(() => {});
  });
}

export interface StreamResult {
  /** What this side received (until the peer half-closed). */
  received: Digest;
  /** What this side sent. */
  sent: Digest;
}

export interface StreamServerOptions {
  /** Bytes of `pattern(send, seed)` to send on each connection (default 0), then half-close. */
  send?: number;
  seed?: number;
  /**
   * After the peer half-closes, send one line `<sha256> <bytes>\n` describing what was received
   * (and only then half-close). Lets a sender that half-closed check the reply arrives in full.
   */
  replyDigest?: boolean;
  /** Send only after the peer half-closed (default: send and receive concurrently). */
  sendAfterEof?: boolean;
}

/**
 * The sink/source backend: per connection, concurrently hashes everything received until the
 * peer half-closes and sends `send` bytes of deterministic data; then half-closes and reports.
 * `sink`: streamServer({ replyDigest: true }); `source`: streamServer({ send: 100 * MiB }).
 */
export function streamServer(
  opts: StreamServerOptions = {},
): Backend & { results: Queue<StreamResult> } {
  const results = new Queue<StreamResult>();
  const backend = tcpServer(async (conn) => {
    const receiving = hashUntilEof(conn);
    const sending = (opts.sendAfterEof ? receiving.then(() => {}) : Promise.resolve())
      .then(() => sendPattern(conn, opts.send ?? 0, opts.seed ?? 1))
      .then(async (d) => {
        if (!opts.replyDigest) await conn.closeWrite();
        return d;
      });
    // Promise.all observes both, so a failure of one never leaves the other unhandled.
    const [received, sent] = await Promise.all([receiving, sending]);
    if (opts.replyDigest) {
      await writeAll(conn, encode(`${received.sha256} ${received.bytes}\n`));
      await conn.closeWrite();
    }
    results.push({ received, sent });
    await waitClosed(conn, 30_000).catch(() => {});
  });
  return Object.assign(backend, { results });
}

export interface HttpRequestInfo {
  method: string;
  url: string;
  headers: Record<string, string>;
}

/** A plain HTTP server (Deno.serve) on 127.0.0.1 answering every request with `body`. */
export function httpServer(body: string): Backend & { requests: Queue<HttpRequestInfo> } {
  const requests = new Queue<HttpRequestInfo>();
  const backend: Backend & { requests: Queue<HttpRequestInfo> } = {
    port: 0,
    connections: 0,
    peers: [],
    requests,
    close: () => {},
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      backend.connections++;
      requests.push({
        method: req.method,
        url: req.url,
        headers: Object.fromEntries(req.headers),
      });
      return new Response(body, { headers: { "content-type": "text/plain" } });
    },
  );
  backend.port = server.addr.port;
  backend.close = () => {
    server.shutdown().catch(() => {});
  };
  register(() => server.shutdown().catch(() => {}));
  return backend;
}

/** A plain TCP connection to 127.0.0.1:port, closed with the scope. */
export async function tcpConnect(port: number): Promise<Deno.TcpConn> {
  const conn = await withTimeout(
    Deno.connect({ hostname: "127.0.0.1", port }),
    5000,
    `connect to 127.0.0.1:${port}`,
  );
  register(() => closeQuietly(conn));
  return conn;
}

export interface TlsClientOptions {
  /** Name to send in SNI and verify (default "localhost"). */
  hostname?: string;
  /** Client certificate and key (PEM text). */
  cert?: string;
  key?: string;
  alpnProtocols?: string[];
}

/**
 * Deno's TLS client: TCP to 127.0.0.1:port, then TLS with SNI/verification for "localhost"
 * against `caPem`. Waits for the handshake.
 */
export async function tlsConnect(
  port: number,
  caPem: string,
  opts: TlsClientOptions = {},
): Promise<Deno.TlsConn> {
  let tls: Deno.TlsConn;
  if (opts.cert && opts.key) {
    // Deno.startTls takes no client certificate: connect by name (localhost) instead.
    tls = await withTimeout(
      Deno.connectTls({
        hostname: opts.hostname ?? "localhost",
        port,
        caCerts: [caPem],
        alpnProtocols: opts.alpnProtocols,
        cert: opts.cert,
        key: opts.key,
      }),
      5000,
      `TLS connect to port ${port}`,
    );
  } else {
    const tcp = await withTimeout(
      Deno.connect({ hostname: "127.0.0.1", port }),
      5000,
      `connect to 127.0.0.1:${port}`,
    );
    tls = await Deno.startTls(tcp, {
      hostname: opts.hostname ?? "localhost",
      caCerts: [caPem],
      alpnProtocols: opts.alpnProtocols,
    });
  }
  register(() => closeQuietly(tls));
  await withTimeout(tls.handshake(), 10_000, "TLS handshake");
  return tls;
}

/**
 * Plain TCP client transfer: concurrently sends `send` bytes of pattern data and hashes what it
 * receives until EOF. After sending it half-closes (`halfClose`, the default), or with
 * `halfCloseAfterEof` only once the peer's EOF has arrived.
 */
export async function tcpTransfer(
  port: number,
  opts: {
    send?: number;
    seed?: number;
    halfClose?: boolean;
    halfCloseAfterEof?: boolean;
    timeoutMs?: number;
  } = {},
): Promise<StreamResult> {
  const conn = await tcpConnect(port);
  const go = async () => {
    const receiving = hashUntilEof(conn);
    const sending = sendPattern(conn, opts.send ?? 0, opts.seed ?? 1).then(async (d) => {
      if (opts.halfCloseAfterEof) await receiving;
      if (opts.halfClose ?? true) await conn.closeWrite();
      return d;
    });
    const [received, sent] = await Promise.all([receiving, sending]);
    return { received, sent };
  };
  try {
    return await withTimeout(go(), opts.timeoutMs ?? 60_000, `transfer via port ${port}`);
  } finally {
    closeQuietly(conn);
  }
}

/** curl to https://localhost:port/ (resolved to 127.0.0.1), verifying with `ca`. */
export function curl(
  port: number,
  ca: string,
  args: string[] = [],
  path = "/",
): Promise<RunResult> {
  return run(
    [
      "curl",
      "-sS",
      "--max-time",
      "10",
      "--resolve",
      `localhost:${port}:127.0.0.1`,
      "--cacert",
      ca,
      ...args,
      `https://localhost:${port}${path}`,
    ],
    15_000,
  );
}

/** Sends `message` through an echo path and asserts that it comes back unchanged. */
export async function echoRoundTrip(conn: Deno.Conn, message: string): Promise<void> {
  await writeAll(conn, encode(message));
  assertEquals(decode(await readExactly(conn, encode(message).length)), message);
}
