/**
 * A peer in memory for the protocol negotiations of protocols/: a ByteStream (what a Channel
 * reads from and writes to) whose incoming bytes are scripted and whose outgoing bytes are kept.
 */
import { type ByteStream, Channel, type NegotiationContext } from "../../protocols/channel.ts";
import { defaultServiceOptions } from "../../lib/config/options.ts";
import type { Logger } from "../../lib/sys/log.ts";
import type { Address, ServiceOptions } from "../../lib/config/types.ts";

/** Latin-1 text to bytes, as the negotiations put lines on the wire. */
export function bytes(text: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

export function latin1(data: Uint8Array): string {
  return String.fromCharCode(...data);
}

/**
 * The other end of a negotiation. `sends` is there to read from the start; `answer` is told
 * every line written to the peer and returns what the peer sends then (or nothing).
 */
export class MemoryPeer implements ByteStream {
  /** Every byte written to the peer, as Latin-1 text. */
  written = "";
  /** What the negotiation read ahead and handed back (Channel.release). */
  handedBack = "";
  private incoming: Uint8Array<ArrayBuffer>[] = [];
  private ended = false;
  private wake: (() => void) | undefined;
  private partial = "";

  constructor(
    sends = "",
    private readonly answer: (line: string) => string | undefined = () => undefined,
  ) {
    if (sends !== "") this.incoming.push(bytes(sends));
  }

  /** The peer sends `data`. */
  send(data: string | Uint8Array<ArrayBuffer>): void {
    this.incoming.push(typeof data === "string" ? bytes(data) : data);
    this.wake?.();
  }

  /** The peer closes its side: reads end once what it sent is read. */
  end(): void {
    this.ended = true;
    this.wake?.();
  }

  /** The lines written to the peer, without their CR LF. */
  lines(): string[] {
    return this.written.split("\r\n").slice(0, -1);
  }

  async read(): Promise<Uint8Array<ArrayBuffer> | null> {
    while (this.incoming.length === 0 && !this.ended) {
      await new Promise<void>((resolve) => this.wake = resolve);
      this.wake = undefined;
    }
    return this.incoming.shift() ?? null;
  }

  write(data: Uint8Array<ArrayBuffer>): Promise<void> {
    const chunk = latin1(data);
    this.written += chunk;
    this.partial += chunk;
    for (let nl = this.partial.indexOf("\r\n"); nl >= 0; nl = this.partial.indexOf("\r\n")) {
      const reply = this.answer(this.partial.slice(0, nl));
      this.partial = this.partial.slice(nl + 2);
      if (reply !== undefined) this.send(reply);
    }
    return Promise.resolve();
  }

  unread(data: Uint8Array<ArrayBuffer>): void {
    this.handedBack = latin1(data) + this.handedBack;
  }
}

/** A Logger that keeps every line as `LOG<level>: <message>`. */
export function recordingLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const log = (level: number, message: string) => void lines.push(`LOG${level}: ${message}`);
  return Object.assign(log, { level: 7, lines });
}

/** A Channel of a negotiation talking to `peer`. */
export function channelTo(peer: MemoryPeer, log: Logger = recordingLog()): Channel {
  return new Channel(peer, log, () => {});
}

/** What a negotiation phase gets, with `targets` keeping what it chose (socks). */
export function negotiation(
  fields: Partial<Omit<NegotiationContext, "opts">> & { opts?: Partial<ServiceOptions> } = {},
): NegotiationContext & { targets: Address[] } {
  const targets: Address[] = [];
  return {
    log: recordingLog(),
    localConn: {} as Deno.Conn,
    ...fields,
    opts: { ...defaultServiceOptions("test"), ...fields.opts },
    targets,
    setTargets: (chosen) => void targets.push(...chosen),
  };
}
