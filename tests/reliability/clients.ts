/**
 * The clients of the reliability load: TLS sessions that run pattern.ts requests through the
 * proxy and check every byte, and the hostile ones (resets mid-stream, garbage, half-sent
 * ClientHellos). Every one is bounded in time.
 */
import {
  BufReader,
  parseTrailer,
  type Request,
  requestLine,
  RING,
  sendStream,
  StreamCheck,
  writeAll,
} from "./pattern.ts";
import type { Rng } from "./rng.ts";

/** Data that arrived different from what was sent: never excused by a fault. */
export class Corrupt extends Error {
  override name = "Corrupt";
}

/** What the load counted: connections to the proxy, bytes checked each way. */
export interface Counters {
  connections: number;
  /** Client → backend bytes whose sha256 the backend confirmed. */
  upChecked: number;
  /** Backend → client bytes compared one by one (and, per request, by sha256). */
  downChecked: number;
}

export function newCounters(): Counters {
  return { connections: 0, upChecked: 0, downChecked: 0 };
}

const encoder = new TextEncoder();

export interface Target {
  port: number;
  caPem: string;
}

/** The connections of one bounded piece of work, closed when its time is up. */
export class Closer {
  #items: { close(): void }[] = [];

  add<T extends { close(): void }>(item: T): T {
    this.#items.push(item);
    return item;
  }

  closeAll(): void {
    for (const item of this.#items) {
      try {
        item.close();
      } catch {
        // closed already
      }
    }
  }
}

/**
 * Runs `fn`; after `ms` closes what is registered with the closer (failing what is pending) and
 * throws "stalled". The closer is `fn`'s own, closed when it ends, unless the caller gives one
 * (whose connections then outlive `fn`).
 */
export async function bounded<T>(
  ms: number,
  fn: (closer: Closer) => Promise<T>,
  given?: Closer,
): Promise<T> {
  const closer = given ?? new Closer();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    closer.closeAll();
  }, ms);
  try {
    return await fn(closer);
  } catch (e) {
    if (timedOut) throw new Error(`stalled: not done after ${ms} ms`);
    throw e;
  } finally {
    clearTimeout(timer);
    if (!given) closer.closeAll();
  }
}

/** A TCP connection to the proxy, counted. */
async function tcp(t: Target, counters: Counters, closer: Closer): Promise<Deno.TcpConn> {
  const conn = closer.add(await Deno.connect({ hostname: "127.0.0.1", port: t.port }));
  counters.connections++;
  return conn;
}

/** One TLS connection through the proxy to the backend. */
export class Session {
  readonly #reader: BufReader;
  private constructor(readonly conn: Deno.TlsConn, readonly counters: Counters) {
    this.#reader = new BufReader(conn);
  }

  /** Connects and completes the handshake; `closer` gets the connection. */
  static async open(t: Target, counters: Counters, closer: Closer): Promise<Session> {
    const conn = await tcp(t, counters, closer);
    const tls = closer.add(
      await Deno.startTls(conn, { hostname: "localhost", caCerts: [t.caPem] }),
    );
    await tls.handshake();
    return new Session(tls, counters);
  }

  close(): void {
    this.conn.close();
  }

  /** The request line of `q`. */
  send(q: Request): Promise<void> {
    return writeAll(this.conn, encoder.encode(requestLine(q)));
  }

  /** The bytes `q` sends; their sha256. */
  upload(q: Request): Promise<string> {
    return sendStream(this.conn, q.upStart, q.up);
  }

  /** One request; throws Corrupt if a byte or digest differs, another error if cut short. */
  async request(q: Request): Promise<void> {
    await this.send(q);
    const down = new StreamCheck(q.downStart);
    const [upSha, got] = await Promise.all([
      this.upload(q),
      this.#reader.bytes(q.down, (chunk) => down.update(chunk)),
    ]);
    this.counters.downChecked += got;
    if (down.firstBad >= 0) {
      throw new Corrupt(`${q.id}: byte ${down.firstBad} from the backend differs`);
    }
    if (got < q.down) throw new Error(`${q.id}: EOF after ${got} of ${q.down} bytes`);
    const line = await this.#reader.line();
    if (line === null) throw new Error(`${q.id}: EOF before the trailer`);
    const t = parseTrailer(line);
    if (!t) throw new Corrupt(`${q.id}: not a trailer: ${JSON.stringify(line.slice(0, 200))}`);
    if (t.id !== q.id) throw new Corrupt(`${q.id}: the trailer of ${t.id} (crossed connections)`);
    if (t.firstBad >= 0) throw new Corrupt(`${q.id}: byte ${t.firstBad} to the backend differs`);
    if (t.received !== q.up || t.receivedSha !== upSha) {
      throw new Corrupt(`${q.id}: the backend got ${t.received} of ${q.up} bytes, other sha256`);
    }
    if (t.sentSha !== down.digest()) throw new Corrupt(`${q.id}: sha256 from the backend differs`);
    this.counters.upChecked += q.up;
  }

  /** Half-closes (close_notify) and expects the backend's EOF with nothing more. */
  async finish(): Promise<void> {
    await this.conn.closeWrite();
    if (!(await this.#reader.atEof())) throw new Corrupt("data after the last trailer");
  }

  /** Reads `n` bytes of stream `start` (checked); for the resets mid-stream. */
  async partial(start: number, n: number): Promise<void> {
    const check = new StreamCheck(start);
    this.counters.downChecked += await this.#reader.bytes(n, (chunk) => check.update(chunk));
    if (check.firstBad >= 0) throw new Corrupt(`byte ${check.firstBad} from the backend differs`);
  }
}

let requests = 0;

/** A request with fresh stream offsets; `id` names the connection it travels on. */
export function newRequest(rng: Rng, id: string, up: number, down: number): Request {
  return {
    id: `${id}.${++requests}`,
    up,
    down,
    upStart: rng.int(0, RING - 1),
    downStart: rng.int(0, RING - 1),
  };
}

/** A ClientHello as Deno's TLS client sends it (captured on a plain listener). */
export async function captureClientHello(caPem: string): Promise<Uint8Array> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const tls = Deno.startTls(conn, { hostname: "localhost", caCerts: [caPem] });
  const server = await listener.accept();
  listener.close();
  const reader = new BufReader(server);
  const header: number[] = [];
  await reader.bytes(5, (c) => header.push(...c));
  const record: number[] = [...header];
  await reader.bytes((header[3] << 8) | header[4], (c) => record.push(...c));
  server.close();
  await tls.then((t) => t.close(), () => {});
  return Uint8Array.from(record);
}

/** Bytes that are not a TLS handshake: random, TLS-looking, plain HTTP, an SSLv2 header. */
export function garbageBytes(rng: Rng): Uint8Array {
  switch (rng.int(0, 3)) {
    case 0:
      return rng.bytes(rng.int(1, 4096));
    case 1: { // a record header that promises more than follows, or nonsense lengths
      const body = rng.bytes(rng.int(0, 300));
      return Uint8Array.of(rng.pick([0x14, 0x15, 0x16, 0x17, 0x18]), 3, rng.int(0, 4), ...body);
    }
    case 2:
      return encoder.encode(`GET / HTTP/1.1\r\nHost: localhost\r\n\r\n`);
    default:
      return Uint8Array.of(0x80, rng.int(0, 255), 0x01, 0x00, 0x02, ...rng.bytes(rng.int(0, 64)));
  }
}

/** Sends `data` in up to three pieces, `gapMs` apart. */
async function dribble(conn: Deno.Conn, rng: Rng, data: Uint8Array, gapMs: number) {
  const cuts = [0, rng.int(0, data.length), rng.int(0, data.length), data.length].sort((a, b) =>
    a - b
  );
  for (let i = 0; i < 3; i++) {
    if (cuts[i + 1] > cuts[i]) await writeAll(conn, data.subarray(cuts[i], cuts[i + 1]));
    await new Promise((r) => setTimeout(r, rng.int(0, gapMs)));
  }
}

/** Whether the proxy closes within `ms` (anything it sends is read and dropped). */
async function closedWithin(conn: Deno.Conn, ms: number): Promise<boolean> {
  const buf = new Uint8Array(16 * 1024);
  const read = (async () => {
    try {
      while ((await conn.read(buf)) !== null) { /* drop */ }
    } catch {
      // reset: closed too
    }
    return true;
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((r) => timer = setTimeout(() => r(false), ms));
  try {
    return await Promise.race([read, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Garbage on the TLS port; true when the proxy closed the connection by itself. */
export function sendGarbage(t: Target, rng: Rng, counters: Counters): Promise<boolean> {
  return bounded(10_000, async (closer) => {
    const conn = await tcp(t, counters, closer);
    await dribble(conn, rng, garbageBytes(rng), 50).catch(() => {});
    return await closedWithin(conn, 3000);
  });
}

/** A ClientHello cut short, then silence for up to 3 s; true when the proxy closed first. */
export function sendHalfHello(
  t: Target,
  rng: Rng,
  hello: Uint8Array,
  counters: Counters,
): Promise<boolean> {
  return bounded(10_000, async (closer) => {
    const conn = await tcp(t, counters, closer);
    await dribble(conn, rng, hello.subarray(0, rng.int(1, hello.length - 1)), 200).catch(() => {});
    return await closedWithin(conn, rng.int(100, 3000));
  });
}

/** Runs `fn(0..n-1)` with at most `concurrency` at a time. */
export async function pool(
  n: number,
  concurrency: number,
  fn: (i: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < n) await fn(next++);
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
}
