/**
 * The figures of one thread's services (`metrics =`), counted as things happen: plain numbers
 * in objects that live as long as the thread, so that counting costs an addition. The
 * supervisor sums every thread's snapshot when /metrics is asked for.
 */
import { TlsError } from "../tls/core.ts";

/** How a handshake ended: "ok", or why it failed. */
export const HANDSHAKE_RESULTS = [
  "ok",
  "verify_failed",
  "no_shared_cipher",
  "protocol_error",
  "peer_alert",
  "timeout",
  "reset",
  "eof",
  "other",
] as const;
export type HandshakeResult = typeof HANDSHAKE_RESULTS[number];

/** Distinct connect targets counted per service: a protocol (socks) lets clients name them. */
const MAX_TARGETS = 64;
/** Where the failures to further targets are counted. */
export const OTHER_TARGETS = "other";

/** OpenSSL's reasons (in the error text) for each failure kind, first match wins. */
const REASONS: readonly [RegExp, HandshakeResult][] = [
  [
    /certificate verify failed|peer did not return a certificate|certificate required/,
    "verify_failed",
  ],
  [/no shared cipher|no suitable signature|no cipher match|no shared group/, "no_shared_cipher"],
  [/ alert /, "peer_alert"],
  [/unexpected eof/, "eof"],
  [
    /wrong version number|unsupported protocol|http request|packet length too long|unexpected message|record layer failure/,
    "protocol_error",
  ],
];

/** Why a handshake failed; `timedOut`: TIMEOUTbusy ended it. */
export function handshakeFailure(e: unknown, timedOut: boolean): HandshakeResult {
  if (timedOut) return "timeout";
  if (e instanceof Deno.errors.ConnectionReset) return "reset";
  if (e instanceof TlsError) {
    const text = e.errors.map((error) => error.text).join("\n");
    for (const [pattern, result] of REASONS) if (pattern.test(text)) return result;
    return e.errors.length === 0 ? "eof" : "other";
  }
  if (e instanceof Error && e.message === "Peer suddenly disconnected") return "eof";
  if (e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.UnexpectedEof) return "eof";
  return "other";
}

/** One service's counters in one thread (the accepting service's, across reloads). */
export class ServiceCounters {
  accepted = 0;
  active = 0;
  closed = 0;
  bytesToTls = 0;
  bytesToSocket = 0;
  resumedSessions = 0;
  newSessions = 0;
  /** By index of HANDSHAKE_RESULTS. */
  readonly handshakes: number[] = HANDSHAKE_RESULTS.map(() => 0);
  readonly connectFailures = new Map<string, number>();

  handshake(result: HandshakeResult): void {
    this.handshakes[HANDSHAKE_RESULTS.indexOf(result)]++;
  }

  /** Only on a failure: the label is made then, never on the way of a working connection. */
  connectFailed(target: string): void {
    const known = this.connectFailures.has(target) ||
      this.connectFailures.size < MAX_TARGETS - 1;
    const key = known ? target : OTHER_TARGETS;
    this.connectFailures.set(key, (this.connectFailures.get(key) ?? 0) + 1);
  }

  figures(): ServiceFigures {
    return {
      accepted: this.accepted,
      active: this.active,
      closed: this.closed,
      bytesToTls: this.bytesToTls,
      bytesToSocket: this.bytesToSocket,
      resumedSessions: this.resumedSessions,
      newSessions: this.newSessions,
      handshakes: [...this.handshakes],
      connectFailures: Object.fromEntries(this.connectFailures),
    };
  }
}

/** A snapshot of ServiceCounters, as it crosses threads (structured clone). */
export interface ServiceFigures {
  accepted: number;
  active: number;
  closed: number;
  bytesToTls: number;
  bytesToSocket: number;
  resumedSessions: number;
  newSessions: number;
  handshakes: number[];
  connectFailures: Record<string, number>;
}

/** A thread's figures by service name. */
export type ThreadFigures = Record<string, ServiceFigures>;

/** The counters of every service a thread has run, by name (kept across reloads). */
export class ThreadMetrics {
  private readonly services = new Map<string, ServiceCounters>();

  of(name: string): ServiceCounters {
    let counters = this.services.get(name);
    if (!counters) this.services.set(name, counters = new ServiceCounters());
    return counters;
  }

  snapshot(): ThreadFigures {
    return Object.fromEntries([...this.services].map(([name, c]) => [name, c.figures()]));
  }
}

/** The sum of every thread's figures. */
export function sumFigures(threads: readonly ThreadFigures[]): ThreadFigures {
  const total: ThreadFigures = {};
  for (const thread of threads) {
    for (const [name, f] of Object.entries(thread)) {
      const t = total[name] ??= {
        accepted: 0,
        active: 0,
        closed: 0,
        bytesToTls: 0,
        bytesToSocket: 0,
        resumedSessions: 0,
        newSessions: 0,
        handshakes: HANDSHAKE_RESULTS.map(() => 0),
        connectFailures: {},
      };
      for (const key of SCALARS) t[key] += f[key];
      f.handshakes.forEach((n, i) => t.handshakes[i] += n);
      for (const [target, n] of Object.entries(f.connectFailures)) {
        t.connectFailures[target] = (t.connectFailures[target] ?? 0) + n;
      }
    }
  }
  return total;
}

const SCALARS = [
  "accepted",
  "active",
  "closed",
  "bytesToTls",
  "bytesToSocket",
  "resumedSessions",
  "newSessions",
] as const;
