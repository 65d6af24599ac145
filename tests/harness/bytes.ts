/** Bytes, text and digests; reading and writing Deno.Conn-like streams. */
import { createHash } from "node:crypto";
import { withTimeout } from "./timing.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encode(s: string): Uint8Array {
  return enc.encode(s);
}

export function decode(b: Uint8Array): string {
  return dec.decode(b);
}

export function concat(chunks: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const c of chunks) n += c.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash("sha256").update(data).digest("hex");
}

export interface Digest {
  sha256: string;
  bytes: number;
}

export const MiB = 1024 * 1024;
const CHUNK = 64 * 1024;

/** Deterministic pseudo-random bytes (xorshift32), produced in chunks of up to 64 KiB. */
export function* pattern(total: number, seed = 1): Generator<Uint8Array> {
  let x = (seed * 2654435761) >>> 0 || 0x9e3779b9;
  let left = total;
  while (left > 0) {
    const n = Math.min(CHUNK, left);
    const words = new Uint32Array(Math.ceil(n / 4));
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      words[i] = x;
    }
    yield new Uint8Array(words.buffer, 0, n);
    left -= n;
  }
}

/** The digest of `pattern(total, seed)`. */
export function patternDigest(total: number, seed = 1): Digest {
  const h = createHash("sha256");
  for (const c of pattern(total, seed)) h.update(c);
  return { sha256: h.digest("hex"), bytes: total };
}

/** A random buffer of `n` bytes. */
export function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let off = 0; off < n; off += 65536) crypto.getRandomValues(b.subarray(off, off + 65536));
  return b;
}

export interface Reader {
  read(p: Uint8Array): Promise<number | null>;
}

export interface Writer {
  write(p: Uint8Array): Promise<number>;
}

export async function writeAll(w: Writer, data: Uint8Array): Promise<void> {
  let off = 0;
  while (off < data.length) off += await w.write(data.subarray(off));
}

/** Writes `pattern(total, seed)`; returns its digest. */
export async function sendPattern(w: Writer, total: number, seed = 1): Promise<Digest> {
  const h = createHash("sha256");
  for (const c of pattern(total, seed)) {
    h.update(c);
    await writeAll(w, c);
  }
  return { sha256: h.digest("hex"), bytes: total };
}

/** Reads until EOF (or until `limit` bytes, if given), hashing as it goes. */
export async function hashUntilEof(r: Reader, limit = Infinity): Promise<Digest> {
  const h = createHash("sha256");
  const buf = new Uint8Array(256 * 1024);
  let bytes = 0;
  while (bytes < limit) {
    const want = Math.min(buf.length, limit - bytes);
    const n = await r.read(buf.subarray(0, want));
    if (n === null) break;
    h.update(buf.subarray(0, n));
    bytes += n;
  }
  return { sha256: h.digest("hex"), bytes };
}

/** Reads exactly `n` bytes; throws on early EOF or after `ms`. */
export function readExactly(r: Reader, n: number, ms = 10_000): Promise<Uint8Array> {
  const go = async () => {
    const out = new Uint8Array(n);
    let off = 0;
    while (off < n) {
      const got = await r.read(out.subarray(off));
      if (got === null) throw new Error(`EOF after ${off} of ${n} bytes`);
      off += got;
    }
    return out;
  };
  return withTimeout(go(), ms, `reading ${n} bytes`);
}

/** Reads until EOF; throws after `ms`. */
export function readAll(r: Reader, ms = 10_000): Promise<Uint8Array> {
  const go = async () => {
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(64 * 1024);
    while (true) {
      const n = await r.read(buf);
      if (n === null) break;
      chunks.push(buf.slice(0, n));
    }
    return concat(chunks);
  };
  return withTimeout(go(), ms, "reading until EOF");
}

/**
 * Waits until the peer closes: resolves "eof" on a clean EOF, "error" on a reset or TLS error,
 * after discarding any data. Throws after `ms`.
 */
export function waitClosed(r: Reader, ms = 10_000): Promise<"eof" | "error"> {
  const go = async (): Promise<"eof" | "error"> => {
    const buf = new Uint8Array(16 * 1024);
    try {
      while ((await r.read(buf)) !== null) { /* discard */ }
      return "eof";
    } catch {
      return "error";
    }
  };
  return withTimeout(go(), ms, "waiting for the peer to close");
}

/** Line-oriented reading on top of a Reader (lines keep their terminator). */
export class LineReader {
  #r: Reader;
  #buf: Uint8Array = new Uint8Array(0);
  #eof = false;

  constructor(r: Reader) {
    this.#r = r;
  }

  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    const chunk = new Uint8Array(16 * 1024);
    const n = await this.#r.read(chunk);
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#buf = concat([this.#buf, chunk.subarray(0, n)]);
    return true;
  }

  /** The next line including "\n", the unterminated rest at EOF, or null at EOF. */
  readLine(ms = 10_000): Promise<string | null> {
    const go = async () => {
      while (true) {
        const i = this.#buf.indexOf(10);
        if (i >= 0) {
          const line = this.#buf.subarray(0, i + 1);
          this.#buf = this.#buf.slice(i + 1);
          return decode(line);
        }
        if (!(await this.#fill())) {
          if (this.#buf.length === 0) return null;
          const rest = decode(this.#buf);
          this.#buf = new Uint8Array(0);
          return rest;
        }
      }
    };
    return withTimeout(go(), ms, "reading a line");
  }
}

export function closeQuietly(c: { close(): void } | undefined): void {
  try {
    c?.close();
  } catch {
    // already closed
  }
}
