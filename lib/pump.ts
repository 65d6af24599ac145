/**
 * The two pumps of a connection: each direction copies from a stream to the other, awaiting
 * every write before the next read, so buffers stay bounded and backpressure reaches the sender.
 */
import type { TlsConnection } from "./tls.ts";

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

const MIN_READ = 4096;
const MAX_READ = 65536;

/**
 * Reads start small, so that idle connections pin little memory, and grow while reads come
 * back full (a busy stream), up to 64 KiB, which costs far less CPU per byte than 16 KiB.
 */
class ReadBuffer {
  private size = MIN_READ;

  next(): Uint8Array<ArrayBuffer> {
    return new Uint8Array(this.size);
  }

  filled(n: number): void {
    if (n === this.size && this.size < MAX_READ) this.size *= 2;
  }
}

export class PlainStream implements Stream {
  private readonly buffer = new ReadBuffer();
  private closed = false;

  constructor(readonly conn: Deno.Conn) {}

  async read(): Promise<Uint8Array<ArrayBuffer> | null> {
    const buf = this.buffer.next();
    const n = await this.conn.read(buf);
    if (n === null) return null;
    this.buffer.filled(n);
    return buf.subarray(0, n);
  }

  async write(data: Uint8Array<ArrayBuffer>): Promise<void> {
    let offset = 0;
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
  /** Writers waiting for input from the peer (a renegotiation in progress). */
  private inputWaiters: (() => void)[] = [];
  private sentCloseNotify = false;

  constructor(conn: Deno.Conn, readonly tls: TlsConnection) {
    this.socket = new PlainStream(conn);
  }

  /** Completes the handshake; throws a TlsError or a socket error. */
  async handshake(): Promise<void> {
    while (!this.tls.handshake()) {
      await this.flush();
      await this.fill();
    }
    await this.flush();
  }

  /** Reads ciphertext from the socket into the engine; at EOF the engine sees EOF. */
  private async fill(): Promise<void> {
    const data = await this.socket.read();
    if (data === null) this.tls.feedEof();
    else this.tls.feed(data);
    const waiters = this.inputWaiters;
    this.inputWaiters = [];
    for (const wake of waiters) wake();
  }

  async read(): Promise<Uint8Array<ArrayBuffer> | null> {
    let out = new Uint8Array(MIN_READ * 4);
    for (;;) {
      const r = this.tls.read(out);
      if (typeof r === "number") return out.subarray(0, r);
      if (r === "closed") {
        await this.flush();
        return null;
      }
      // Output produced while reading (tickets, key updates, renegotiation) goes out first.
      await this.flush();
      await this.fill();
      if (out.length < MAX_READ) out = new Uint8Array(MAX_READ);
    }
  }

  async write(data: Uint8Array<ArrayBuffer>): Promise<void> {
    let offset = this.tls.write(data);
    while (offset < data.length) {
      await this.flush();
      await new Promise<void>((wake) => this.inputWaiters.push(wake));
      offset += this.tls.write(data.subarray(offset));
    }
    await this.flush();
  }

  async closeWrite(): Promise<void> {
    if (this.sentCloseNotify) return;
    this.sentCloseNotify = true;
    this.tls.shutdown();
    await this.flush();
  }

  /**
   * Sends every pending byte of ciphertext. One flush runs at a time; callers that arrive
   * while it runs share it, and it keeps going until the engine has nothing more to send.
   */
  flush(): Promise<void> {
    this.flushing ??= this.drain().finally(() => this.flushing = null);
    return this.flushing;
  }

  private async drain(): Promise<void> {
    for (;;) {
      const pending = this.tls.pendingOutput();
      if (pending === 0) return;
      const out = new Uint8Array(Math.min(pending, MAX_READ * 2));
      const n = this.tls.takeOutput(out);
      await this.socket.write(out.subarray(0, n));
    }
  }

  close(): void {
    this.socket.close();
  }
}

/** Called with each chunk that crossed, for byte counts and idle timers. */
export type Progress = (bytes: number) => void;

/** Copies `from` to `to` until `from` ends, then ends `to`. */
export async function pipe(from: Stream, to: Stream, progress: Progress): Promise<void> {
  for (;;) {
    const chunk = await from.read();
    if (chunk === null) break;
    await to.write(chunk);
    progress(chunk.length);
  }
  await to.closeWrite();
}
