/**
 * The data of the reliability load and its checks, shared by the clients and the backend.
 *
 * Every stream is a window into one fixed pseudo-random ring, starting at an offset chosen per
 * request, so either end knows every byte it should receive and compares each one as it
 * arrives; both ends also hash what they sent and received (sha256) and exchange the digests.
 * The ring's length is prime, so no chunk boundary lines up with its period.
 *
 * One request on a connection: the client sends the line
 * `REQ <id> <up> <down> <upStart> <downStart>` and `up` bytes of stream `upStart`; the backend
 * meanwhile sends `down` bytes of stream `downStart`, and when both are done the line
 * `END <id> <sha256 received> <bytes received> <first bad offset or -1> <sha256 sent>`.
 */
import { Buffer } from "node:buffer";
import { createHash, type Hash } from "node:crypto";

export const RING = 1_048_583;
/** The longest piece compared or sent at once. */
export const MAX_PIECE = 64 * 1024;

const ring: Uint8Array = (() => {
  const out = new Uint8Array(RING + MAX_PIECE);
  let x = 0x9e3779b9;
  for (let i = 0; i < RING; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  out.copyWithin(RING, 0, MAX_PIECE);
  return out;
})();

/** Bytes [pos, pos + n) of the stream that starts at ring offset `start` (n ≤ MAX_PIECE). */
export function piece(start: number, pos: number, n: number): Uint8Array {
  const at = (start + pos) % RING;
  return ring.subarray(at, at + n);
}

export interface Reader {
  read(p: Uint8Array): Promise<number | null>;
}

export interface Writer {
  write(p: Uint8Array): Promise<number>;
}

export async function writeAll(w: Writer, data: Uint8Array): Promise<void> {
  for (let off = 0; off < data.length;) off += await w.write(data.subarray(off));
}

/** Sends `total` bytes of stream `start`; returns their sha256. */
export async function sendStream(w: Writer, start: number, total: number): Promise<string> {
  const h = createHash("sha256");
  for (let pos = 0; pos < total;) {
    const p = piece(start, pos, Math.min(MAX_PIECE, total - pos));
    h.update(p);
    await writeAll(w, p);
    pos += p.length;
  }
  return h.digest("hex");
}

/** Compares arriving bytes with stream `start` and hashes them. */
export class StreamCheck {
  readonly #hash: Hash = createHash("sha256");
  bytes = 0;
  /** Stream offset of the first byte that differed, or -1. */
  firstBad = -1;

  constructor(readonly start: number) {}

  update(data: Uint8Array): void {
    this.#hash.update(data);
    for (let off = 0; off < data.length;) {
      const n = Math.min(MAX_PIECE, data.length - off);
      const got = data.subarray(off, off + n);
      const want = piece(this.start, this.bytes, n);
      if (this.firstBad < 0 && !Buffer.from(got.buffer, got.byteOffset, n).equals(want)) {
        let i = 0;
        while (got[i] === want[i]) i++;
        this.firstBad = this.bytes + i;
      }
      this.bytes += n;
      off += n;
    }
  }

  digest(): string {
    return this.#hash.digest("hex");
  }
}

/** Buffered reading of lines and counted bytes from a Reader. */
export class BufReader {
  #buf = new Uint8Array(0);
  #eof = false;

  constructor(readonly r: Reader) {}

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(64 * 1024);
    const n = await this.r.read(chunk);
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#buf = this.#buf.length
      ? Buffer.concat([this.#buf, chunk.subarray(0, n)])
      : chunk.slice(0, n);
    return true;
  }

  /** A line without its LF; null at EOF before any byte of it; throws past `max` bytes. */
  async line(max = 512): Promise<string | null> {
    for (;;) {
      const nl = this.#buf.indexOf(10);
      if (nl >= 0) {
        const text = new TextDecoder().decode(this.#buf.subarray(0, nl));
        this.#buf = this.#buf.subarray(nl + 1);
        return text;
      }
      if (this.#buf.length > max) throw new Error(`line longer than ${max} bytes`);
      if (!(await this.#fill())) {
        if (this.#buf.length === 0) return null;
        throw new Error(`EOF inside a line (${this.#buf.length} bytes)`);
      }
    }
  }

  /** Feeds exactly `n` bytes to `sink` as they arrive; returns how many came before EOF. */
  async bytes(n: number, sink: (chunk: Uint8Array) => void): Promise<number> {
    let got = 0;
    while (got < n) {
      if (this.#buf.length === 0 && !(await this.#fill())) return got;
      const take = Math.min(n - got, this.#buf.length);
      sink(this.#buf.subarray(0, take));
      this.#buf = this.#buf.subarray(take);
      got += take;
    }
    return got;
  }

  /** True when the peer closed with nothing more to read. */
  async atEof(): Promise<boolean> {
    return this.#buf.length === 0 && !(await this.#fill());
  }
}

export interface Request {
  id: string;
  up: number;
  down: number;
  upStart: number;
  downStart: number;
}

export function requestLine(q: Request): string {
  return `REQ ${q.id} ${q.up} ${q.down} ${q.upStart} ${q.downStart}\n`;
}

export function parseRequest(line: string): Request | undefined {
  const f = line.split(" ");
  if (f.length !== 6 || f[0] !== "REQ") return undefined;
  const [up, down, upStart, downStart] = f.slice(2).map(Number);
  if (![up, down, upStart, downStart].every((n) => Number.isSafeInteger(n) && n >= 0)) {
    return undefined;
  }
  return { id: f[1], up, down, upStart: upStart % RING, downStart: downStart % RING };
}

export interface Trailer {
  id: string;
  receivedSha: string;
  received: number;
  firstBad: number;
  sentSha: string;
}

export function trailerLine(t: Trailer): string {
  return `END ${t.id} ${t.receivedSha} ${t.received} ${t.firstBad} ${t.sentSha}\n`;
}

export function parseTrailer(line: string): Trailer | undefined {
  const f = line.split(" ");
  if (f.length !== 6 || f[0] !== "END") return undefined;
  return {
    id: f[1],
    receivedSha: f[2],
    received: Number(f[3]),
    firstBad: Number(f[4]),
    sentSha: f[5],
  };
}
