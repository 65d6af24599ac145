/**
 * The two pumps of a connection: each direction copies from a stream to the other, awaiting
 * every write before the next read, so buffers stay bounded and backpressure reaches the sender.
 */
import type { Conn } from "../net/conn.ts";
import type { TlsConnection } from "../tls/core.ts";

/** One side of a connection, seen as a byte stream (plain socket or TLS over a socket). */
export interface Stream {
  /** The next chunk, valid until the next call; null at an orderly end (FIN or close_notify). */
  read(): Promise<Uint8Array<ArrayBuffer> | null>;
  write(data: Uint8Array<ArrayBuffer>): Promise<void>;
  /** Ends our direction (TCP FIN, or TLS close_notify) and keeps reading possible. */
  closeWrite(): Promise<void>;
  /** Closes the socket at once. Safe to call more than once. */
  close(): void;
}

/** The first read of a socket (a ClientHello, a request, a greeting fits). */
const FIRST_READ = 4096;
const MIN_READ = 1024;
const MAX_READ = 65536;
/** The engine's output for one 64 KiB write: four full records and their overhead. */
const CHUNK = MAX_READ + 4 * 256;

/**
 * Buffers lent for the duration of one synchronous step or one awaited write, so that idle
 * connections hold none of them and busy ones do not allocate per chunk.
 */
class BufferPool {
  private readonly free: Uint8Array<ArrayBuffer>[] = [];

  get(): Uint8Array<ArrayBuffer> {
    return this.free.pop() ?? new Uint8Array(CHUNK);
  }

  put(buf: Uint8Array<ArrayBuffer>): void {
    if (this.free.length < 256) this.free.push(buf);
  }
}

const pool = new BufferPool();

const DONE: Promise<void> = Promise.resolve();

/**
 * A socket's read buffer starts small, so that idle connections pin little memory, and grows
 * while reads come back full (a busy stream) up to 64 KiB, which costs far less CPU per byte
 * than 16 KiB. A read that fills a sixteenth of it or less (a request, the end of a burst)
 * shrinks it a step: an idle connection waits with the size its traffic needs (a pending read
 * holds its buffer). It is reused: a chunk is only valid until the next read.
 */
class ReadBuffer {
  private buf = new Uint8Array(FIRST_READ);

  get(): Uint8Array<ArrayBuffer> {
    return this.buf;
  }

  filled(n: number): void {
    const size = this.buf.length;
    if (n === size && size < MAX_READ) this.buf = new Uint8Array(size * 4);
    else if (n <= size / 16 && size > MIN_READ) this.buf = new Uint8Array(size / 4);
  }
}

export class PlainStream implements Stream {
  private readonly buffer = new ReadBuffer();
  private closed = false;
  /** Bytes a protocol negotiation read ahead and handed back (`unread`), returned first. */
  private pending: Uint8Array<ArrayBuffer> | null = null;

  constructor(readonly conn: Conn) {}

  /** Makes `data` the next chunk `read` returns (bytes read ahead by a line reader). */
  unread(data: Uint8Array<ArrayBuffer>): void {
    if (data.length > 0) this.pending = data;
  }

  /** Bytes read ahead and not yet returned (they must not be lost under a TLS upgrade). */
  get hasPending(): boolean {
    return this.pending !== null;
  }

  /** Not async: an idle connection waits in as few suspended frames as can be (memory). */
  read(): Promise<Uint8Array<ArrayBuffer> | null> {
    if (this.pending) {
      const data = this.pending;
      this.pending = null;
      return Promise.resolve(data);
    }
    const buf = this.buffer.get();
    return this.conn.read(buf).then((n) => {
      if (n === null) return null;
      this.buffer.filled(n);
      return buf.subarray(0, n);
    });
  }

  async write(data: Uint8Array<ArrayBuffer>): Promise<void> {
    let offset = await this.conn.write(data);
    while (offset < data.length) offset += await this.conn.write(data.subarray(offset));
  }

  async closeWrite(): Promise<void> {
    if (!this.closed) await this.conn.closeWrite();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.conn.close();
    } catch {
      // already closed by the peer's reset
    }
  }
}

/** TLS over a socket: ciphertext moves between the socket and the engine's memory BIOs. */
export class TlsStream implements Stream {
  private readonly socket: PlainStream;
  private flushing: Promise<void> | null = null;
  /** The socket read in progress, shared by the reader and a writer that needs input. */
  private filling: Promise<void> | null = null;
  private sentCloseNotify = false;
  /** Plaintext a protocol negotiation read ahead and handed back (`unread`), returned first. */
  private pendingPlain: Uint8Array<ArrayBuffer> | null = null;

  /** Over a socket, or over a PlainStream that a negotiation already read from. */
  constructor(conn: Conn | PlainStream, readonly tls: TlsConnection) {
    this.socket = conn instanceof PlainStream ? conn : new PlainStream(conn);
  }

  /** Makes `data` the next chunk `read` returns (plaintext read ahead by a line reader). */
  unread(data: Uint8Array<ArrayBuffer>): void {
    if (data.length > 0) this.pendingPlain = data;
  }

  /** Our close_notify went out (closeWrite sends none to a peer that just closed TCP). */
  get closeNotifySent(): boolean {
    return this.sentCloseNotify;
  }

  /**
   * Completes the handshake; throws a TlsError or a socket error. `waiting` is told before each
   * wait for the peer: as in stunnel, TIMEOUTbusy bounds each wait, not the whole handshake.
   */
  async handshake(waiting: () => void): Promise<void> {
    try {
      while (!this.tls.handshake()) {
        if (this.peerEnd === "eof") throw new Error("Peer suddenly disconnected");
        waiting();
        await this.flush();
        waiting();
        await (this.tls.paused ?? this.fill());
      }
    } catch (e) {
      // The peer learns why: OpenSSL has queued a fatal alert (e.g. "certificate required").
      await this.flush().catch(() => {});
      throw e;
    }
    waiting();
    await this.flush();
  }

  /** How the peer ended its direction, once it has: stunnel logs the two differently. */
  peerEnd: "close_notify" | "eof" | undefined;

  /**
   * Reads ciphertext from the socket into the engine; at EOF the engine sees EOF. One read runs
   * at a time, shared by the reader and a writer that waits for the peer: either may start it,
   * since the other may have ended, and it fails when the socket is closed.
   */
  private fill(): Promise<void> {
    return this.filling ??= this.receive();
  }

  /** Runs as `filling` (it always awaits before it ends, so the assignment comes first). */
  private async receive(): Promise<void> {
    let data: Uint8Array<ArrayBuffer> | null;
    try {
      data = await this.socket.read();
    } catch (e) {
      // After our close_notify nothing more is owed in either direction: a reset instead of
      // the peer's close_notify (openssl s_time, many browsers) loses nothing.
      if (!(this.sentCloseNotify && e instanceof Deno.errors.ConnectionReset)) throw e;
      data = null;
    } finally {
      this.filling = null;
    }
    if (data === null) {
      this.peerEnd ??= "eof";
      this.tls.feedEof();
    } else {
      this.tls.feed(data);
    }
  }

  /** Plaintext lent from the pool while decrypted data waits to be consumed. */
  private plain: Uint8Array<ArrayBuffer> | null = null;

  async read(): Promise<Uint8Array<ArrayBuffer> | null> {
    if (this.pendingPlain) {
      const data = this.pendingPlain;
      this.pendingPlain = null;
      return data;
    }
    for (;;) {
      const out = this.plain ??= pool.get();
      const r = this.tls.read(out);
      if (typeof r === "number") return out.subarray(0, this.readMore(out, r));
      this.plain = null;
      pool.put(out);
      if (r === "closed") {
        this.peerEnd = "close_notify";
        await this.flush();
        return null;
      }
      // Like stunnel, a peer that closes TCP without close_notify ends the stream normally.
      if (this.peerEnd === "eof") return null;
      // Output produced while reading (tickets, key updates, renegotiation) is sent without
      // waiting: a peer that is itself blocked writing to us only drains once we read.
      if (this.flushing === null && this.tls.pendingOutput() > 0) this.flush().catch(() => {});
      await this.fill();
    }
  }

  /** SSL_read returns one record at a time: batch what is already here into one chunk. */
  private readMore(out: Uint8Array<ArrayBuffer>, have: number): number {
    while (out.length - have >= 16384 && this.tls.pendingInput() > 0) {
      const r = this.tls.read(out.subarray(have));
      if (typeof r !== "number") break;
      have += r;
    }
    return have;
  }

  /** A renegotiation in progress makes the engine wait for the peer: then this reads too. */
  async write(data: Uint8Array<ArrayBuffer>): Promise<void> {
    let offset = this.tls.write(data);
    while (offset < data.length) {
      await this.flush();
      await this.fill();
      offset += this.tls.write(data.subarray(offset));
    }
    await this.flush();
  }

  async closeWrite(): Promise<void> {
    // A peer that closed without close_notify gets none either, as from stunnel.
    if (this.sentCloseNotify || this.peerEnd === "eof") return;
    this.sentCloseNotify = true;
    this.tls.shutdown();
    await this.flush();
  }

  /**
   * Sends every pending byte of ciphertext. One flush runs at a time; callers that arrive
   * while it runs share it, and it keeps going until the engine has nothing more to send.
   */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    // drain() must reach its first await before it may clear `flushing`.
    if (this.tls.pendingOutput() === 0) return DONE;
    return this.flushing = this.drain();
  }

  private async drain(): Promise<void> {
    try {
      while (this.tls.pendingOutput() > 0) {
        const out = pool.get();
        try {
          const n = this.tls.takeOutput(out);
          await this.socket.write(out.subarray(0, n));
        } finally {
          pool.put(out);
        }
      }
    } finally {
      this.flushing = null;
    }
  }

  close(): void {
    // A plaintext buffer may still be in a write that the close is failing: not back to the pool.
    this.socket.close();
    this.plain = null;
  }
}

/**
 * TLS of Deno's own (`tlsEngine = deno`): a Deno.TlsConn is a socket that reads and writes
 * plaintext; only the handshake and the ways the peer can end differ from a plain socket.
 */
export class DenoTlsStream extends PlainStream {
  /** How the peer ended its direction, once it has (as TlsStream.peerEnd). */
  peerEnd: "close_notify" | "eof" | undefined;
  private sentCloseNotify = false;

  constructor(readonly tlsConn: Deno.TlsConn) {
    super(tlsConn);
  }

  get closeNotifySent(): boolean {
    return this.sentCloseNotify;
  }

  /** Completes the handshake (one wait: TIMEOUTbusy bounds it as a whole): the ALPN chosen. */
  async handshake(waiting: () => void): Promise<string | null> {
    waiting();
    return (await this.tlsConn.handshake()).alpnProtocol;
  }

  override read(): Promise<Uint8Array<ArrayBuffer> | null> {
    return super.read().then((data) => {
      if (data === null) this.peerEnd ??= "close_notify";
      return data;
    }, (e) => {
      // Like stunnel, a peer that closes TCP without close_notify ends the stream normally.
      if (!(e instanceof Deno.errors.UnexpectedEof)) throw e;
      this.peerEnd ??= "eof";
      return null;
    });
  }

  override async closeWrite(): Promise<void> {
    // A peer that closed without close_notify gets none either, as from stunnel.
    if (this.sentCloseNotify || this.peerEnd === "eof") return;
    this.sentCloseNotify = true;
    await super.closeWrite();
  }
}

/** Told of each chunk when it was read (it is then buffered) and when it crossed. */
export interface Progress {
  read(): void;
  crossed(bytes: number): void;
}

/** Copies `from` to `to` until `from` ends, then ends `to`. */
export async function pipe(from: Stream, to: Stream, progress: Progress): Promise<void> {
  for (;;) {
    const chunk = await from.read();
    if (chunk === null) break;
    progress.read();
    await to.write(chunk);
    progress.crossed(chunk.length);
  }
  await to.closeWrite();
}
