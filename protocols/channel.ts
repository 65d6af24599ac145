/** What protocol negotiations are made of: the channel they talk through and their shape. */
import type { Logger } from "../lib/sys/log.ts";
import { withTimeout } from "../lib/sys/timeout.ts";
import type { Conn } from "../lib/net/conn.ts";
import type { TlsConnection } from "../lib/tls/core.ts";
import type { Address, ServiceOptions } from "../lib/config/types.ts";
import type { ProtocolName } from "../lib/config/protocols.ts";

/** Something we can read bytes from and write bytes to (PlainStream or TlsStream). */
export interface ByteStream {
  read(): Promise<Uint8Array<ArrayBuffer> | null>;
  write(data: Uint8Array<ArrayBuffer>): Promise<void>;
  unread(data: Uint8Array<ArrayBuffer>): void;
}

/** The longest line a negotiation accepts from a peer (stunnel's lines are shorter still). */
export const MAX_LINE = 8192;

/**
 * A failed negotiation. `line` is logged at LOG_ERR (unless empty: the reason was logged
 * already); `reset` false is stunnel's "don't reset" (the peer got a proper answer first).
 */
export class ProtocolError extends Error {
  constructor(readonly line: string, readonly reset = true) {
    super(line);
    this.name = "ProtocolError";
  }
}

/** Told whenever a channel starts waiting for its peer (the TIMEOUTbusy clock restarts). */
export type Waiting = (step: string) => void;

/**
 * Line- and byte-oriented reading and writing on one side of a connection during a
 * negotiation. Bytes read past what the negotiation consumed go back to the stream (`release`),
 * so the TLS engine or the data pump sees them next.
 */
export class Channel {
  private buf: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  private inflight: Promise<boolean> | null = null;
  private eof = false;

  constructor(
    private readonly stream: ByteStream,
    private readonly log: Logger,
    private readonly waiting: Waiting,
  ) {}

  /** Reads one more chunk into the buffer; false at EOF. One read is in flight at a time. */
  private fill(): Promise<boolean> {
    if (this.eof) return Promise.resolve(false);
    this.inflight ??= this.stream.read().then((chunk) => {
      this.inflight = null;
      if (chunk === null) {
        this.eof = true;
        return false;
      }
      const next = new Uint8Array(this.buf.length + chunk.length);
      next.set(this.buf);
      next.set(chunk, this.buf.length);
      this.buf = next;
      return true;
    }, (e) => {
      this.inflight = null;
      throw e;
    });
    return this.inflight;
  }

  /** Whether the peer sends anything within `ms` (stunnel's RFC 2487/2595 detection). */
  async dataWithin(ms: number): Promise<boolean> {
    if (this.buf.length > 0 || this.eof) return true;
    return await withTimeout(this.fill().then(() => true), ms, () => false);
  }

  /** One line without its CR LF (stunnel's fd_getline/ssl_getline). */
  async readLine(): Promise<string> {
    for (;;) {
      const nl = this.buf.indexOf(10);
      if (nl >= 0) {
        const end = nl > 0 && this.buf[nl - 1] === 13 ? nl - 1 : nl;
        const line = new TextDecoder("latin1").decode(this.buf.subarray(0, end));
        this.buf = this.buf.slice(nl + 1);
        this.log(7, ` <- ${line}`);
        return line;
      }
      if (this.buf.length > MAX_LINE) throw new ProtocolError("fd_getline: Line too long");
      this.waiting("fd_getline");
      if (!(await this.fill())) throw new ProtocolError("fd_getline: Unexpected socket close");
    }
  }

  /** Exactly `n` bytes (stunnel's s_read). */
  async readBytes(n: number): Promise<Uint8Array<ArrayBuffer>> {
    while (this.buf.length < n) {
      this.waiting("s_read");
      if (!(await this.fill())) throw new ProtocolError("s_read: Unexpected socket close");
    }
    const out = this.buf.slice(0, n);
    this.buf = this.buf.slice(n);
    return out;
  }

  /** A NUL-terminated string (stunnel's ssl_getstring), at most MAX_LINE bytes. */
  async readString(): Promise<string> {
    for (;;) {
      const nul = this.buf.indexOf(0);
      if (nul >= 0) {
        const text = new TextDecoder("latin1").decode(this.buf.subarray(0, nul));
        this.buf = this.buf.slice(nul + 1);
        return text;
      }
      if (this.buf.length > MAX_LINE) throw new ProtocolError("ssl_getstring: String too long");
      this.waiting("ssl_getstring");
      if (!(await this.fill())) {
        throw new ProtocolError("ssl_getstring: Unexpected socket close");
      }
    }
  }

  /** Writes `line` and CR LF (stunnel's fd_putline/ssl_putline). */
  async writeLine(line: string): Promise<void> {
    this.log(7, ` -> ${line}`);
    await this.stream.write(latin1(`${line}\r\n`));
  }

  async writeBytes(data: Uint8Array<ArrayBuffer>): Promise<void> {
    await this.stream.write(data);
  }

  /** Hands the bytes read ahead back to the stream. No read may be in flight. */
  release(): void {
    if (this.inflight) throw new Error("Channel released with a read in flight");
    this.stream.unread(this.buf);
    this.buf = new Uint8Array(0);
  }
}

function latin1(text: string): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i) & 0xff;
  return out;
}

/** What a negotiation phase gets. Channels are there only where the phase can use them. */
export interface NegotiationContext {
  opts: ServiceOptions;
  log: Logger;
  /** The plain local socket (before the handshake in server mode; always in client mode). */
  local?: Channel;
  /** The plain remote socket (once connected, before its handshake in client mode). */
  remote?: Channel;
  /** The TLS side after the handshake (the local socket in server mode, else the remote). */
  tls?: Channel;
  /** The accepted socket, for its addresses. */
  localConn: Conn;
  /** The TLS session once the handshake is done (`proxyVersion = 2` reports on it). */
  tlsConnection?: TlsConnection;
  /** Connect to these addresses instead of `connect` (socks). */
  setTargets(targets: Address[]): void;
}

export type Phase = "early" | "middle" | "late";

/** One side (client or server mode) of a protocol. */
export interface Negotiation {
  /** Server mode: connect the remote before the TLS handshake on the local socket. */
  connectBeforeTls?: boolean;
  early?(ctx: NegotiationContext): Promise<void>;
  middle?(ctx: NegotiationContext): Promise<void>;
  late?(ctx: NegotiationContext): Promise<void>;
}

export interface Protocol {
  name: ProtocolName;
  client?: Negotiation;
  server?: Negotiation;
}
