/**
 * Gives memory back to the system, in two ways.
 *
 * While a thread has no connection, for a while after its last one ended or a reload: malloc
 * keeps what OpenSSL and the buffers freed (the contexts a reload replaced, the read buffers of
 * ended connections, freed by garbage collections some time later) unless told to give it back,
 * so malloc_trim runs every TRIM_EVERY_MS for TRIM_WINDOW_MS.
 *
 * After a burst: once a thread has accepted many connections and then been idle for a moment
 * (no new connection, next to no CPU: a collection must not pause traffic), one full garbage
 * collection frees what the handshakes left (V8 grew its heap for them and would keep the
 * garbage until much later), and malloc_trim returns the native memory that freed. The
 * connections still open keep only what they use: in the benchmark's 2000 idle connections,
 * about a fifth of the memory per connection.
 *
 * Both are Linux only (malloc_trim is glibc's; the thread's CPU time comes from /proc).
 *
 * V8's collector is reached through node:v8 (--expose-gc) and a node:vm context, loaded on the
 * first reduction only (they load Node's compatibility layer, which start-up does without).
 */
import { lib } from "./ffi.ts";
import { platform } from "./platform.ts";

/** New connections since the last reduction that make the next quiet moment worth one. */
const BURST = 64;
/** How long without a new connection, and with at most IDLE_SHARE of a core, counts as idle. */
const QUIET_MS = 250;
const IDLE_SHARE = 0.02;
/** Reductions are at least this far apart (a full collection stops the thread a moment). */
const MIN_INTERVAL_MS = 2_000;
/** An idle thread gives freed memory back every TRIM_EVERY_MS for TRIM_WINDOW_MS. */
const TRIM_EVERY_MS = 5_000;
const TRIM_WINDOW_MS = 60_000;

export class MemoryReducer {
  private accepted = 0;
  private lastAccept = 0;
  private lastReduction = 0;
  /** The thread's CPU time (ns) when the last check was armed, and when. */
  private cpuNs = 0;
  private cpuAt = 0;
  private armed = false;
  private gc: (() => void) | undefined;
  private stopped = false;
  /** Until when an idle thread trims (Date.now() time), and when it last did. */
  private trimUntil = 0;
  private lastTrim = 0;

  /** The last connection ended, or a reload freed contexts: trim while idle for a while. */
  settle(): void {
    this.trimUntil = Date.now() + TRIM_WINDOW_MS;
  }

  /** The daemon's periodic check (`open`: connections open in this thread). */
  tick(now: number, open: number): void {
    if (!platform().descriptors || open > 0 || now >= this.trimUntil) return;
    if (now - this.lastTrim < TRIM_EVERY_MS) return;
    this.lastTrim = now;
    lib().libc.malloc_trim(0n);
  }

  /** A new connection: a burst arms a check for the quiet moment after it. */
  accept(): void {
    this.accepted++;
    this.lastAccept = performance.now();
    if (this.accepted >= BURST && platform().descriptors) this.arm(QUIET_MS);
  }

  stop(): void {
    this.stopped = true;
  }

  /** A timer of AbortSignal's (setTimeout would load Node's layer: sys/timer.ts). */
  private arm(delayMs: number): void {
    if (this.armed || this.stopped) return;
    this.armed = true;
    this.cpuNs = threadCpuNs();
    this.cpuAt = performance.now();
    AbortSignal.timeout(Math.min(delayMs, QUIET_MS)).addEventListener("abort", () => {
      this.armed = false;
      if (!this.stopped) void this.check();
    }, { once: true });
  }

  private async check(): Promise<void> {
    const now = performance.now();
    const busy = (threadCpuNs() - this.cpuNs) / 1e6 > (now - this.cpuAt) * IDLE_SHARE;
    const wait = Math.max(
      this.lastAccept + QUIET_MS - now,
      this.lastReduction + MIN_INTERVAL_MS - now,
      busy ? QUIET_MS : 0,
    );
    if (wait > 0) return this.arm(wait);
    this.accepted = 0;
    this.lastReduction = now;
    (this.gc ??= await collector())();
    lib().libc.malloc_trim(0n);
  }
}

/** This thread's CPU time so far (ns), from the scheduler's statistics. */
function threadCpuNs(): number {
  return Number(Deno.readTextFileSync("/proc/thread-self/schedstat").split(" ")[0]);
}

/** V8's full collection, as a function (the flag makes new contexts carry `gc`). */
async function collector(): Promise<() => void> {
  const [{ default: v8 }, { default: vm }] = await Promise.all([
    import("node:v8"),
    import("node:vm"),
  ]);
  v8.setFlagsFromString("--expose-gc");
  return vm.runInNewContext("gc") as () => void;
}
