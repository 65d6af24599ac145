/**
 * The per-test Scope and the subprocesses of a test. Every process, listener and connection a
 * test makes is registered with the running test's Scope and torn down in its `finally`.
 */
import { PROXY_IS_STUNNEL } from "./command.ts";
import { concat, encode } from "./bytes.ts";
import { TimeoutError, withTimeout } from "./timing.ts";

type Cleanup = () => unknown;

export class Scope {
  #cleanups: Cleanup[] = [];
  /** Processes started in this scope, for the failure report. */
  processes: Spawned[] = [];

  /** Registers a cleanup; cleanups run in reverse order and never throw. */
  defer(fn: Cleanup): void {
    this.#cleanups.push(fn);
  }

  /** A fresh temporary directory, removed when the scope closes. */
  async tempDir(prefix = "e2e-"): Promise<string> {
    const dir = await Deno.makeTempDir({ prefix });
    this.defer(() => Deno.remove(dir, { recursive: true }));
    return dir;
  }

  async close(): Promise<void> {
    while (this.#cleanups.length) {
      const fn = this.#cleanups.pop()!;
      try {
        await withTimeout(Promise.resolve().then(fn), 10_000, "cleanup");
      } catch {
        // best effort
      }
    }
  }
}

let currentScope: Scope | undefined;
const liveProcesses = new Set<Deno.ChildProcess>();

export function register(fn: Cleanup): void {
  if (currentScope) currentScope.defer(fn);
}

// I/O left dangling by a test that already failed or timed out (a write interrupted by the
// cleanup, say) must not abort the remaining tests of the file: report it and go on.
globalThis.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  console.error("e2e harness: ignored an unhandled rejection:", e.reason);
});

// Last resort if the test process itself goes away: kill what we started, synchronously.
globalThis.addEventListener("unload", () => {
  for (const child of liveProcesses) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
});

/** On failure: the tail of every process's output (all of it with E2E_VERBOSE=1). */
function reportProcesses(scope: Scope): void {
  const all = Deno.env.get("E2E_VERBOSE") === "1";
  for (const p of scope.processes) {
    const lines = p.output.text().split("\n");
    const shown = all ? lines : lines.slice(-40);
    console.error(
      `----- ${p.cmd.join(" ")} (pid ${p.pid})` +
        (shown.length < lines.length ? `, last ${shown.length} lines` : "") +
        ` -----\n${shown.join("\n")}`,
    );
  }
}

export interface E2eOptions {
  /** Overall time limit of the test (default 30 s). */
  timeoutMs?: number;
  ignore?: boolean;
  /**
   * Marks a requirement of ours that stunnel 5.68 itself does not meet (the text says why):
   * the test's name gets the prefix "[extra] " and it is skipped when PROXY_CMD is stunnel.
   */
  extra?: string;
  /**
   * For a check of a figure that depends on how busy the machine is (CPU shares, rates): how
   * many times it is run before it counts as failed (default 1). Each failed attempt is
   * printed with its error.
   */
  attempts?: number;
}

/**
 * Declares an end-to-end test: sanitizers off (subprocesses and sockets outlive single awaits),
 * an overall timeout, and a Scope whose cleanups (processes, listeners, temp dirs) always run.
 */
export function e2e(name: string, opts: E2eOptions, fn: (scope: Scope) => Promise<void>): void {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  Deno.test({
    name: opts.extra ? `[extra] ${name}` : name,
    ignore: opts.ignore || (opts.extra !== undefined && PROXY_IS_STUNNEL),
    sanitizeOps: false,
    sanitizeResources: false,
    sanitizeExit: false,
    fn: async () => {
      const attempts = opts.attempts ?? 1;
      for (let attempt = 1;; attempt++) {
        const scope = new Scope();
        currentScope = scope;
        try {
          await withTimeout(fn(scope), timeoutMs, `test "${name}"`);
          return;
        } catch (e) {
          reportProcesses(scope);
          if (attempt >= attempts) throw e;
          console.error(`attempt ${attempt} of ${attempts} failed, trying again: ${e}`);
        } finally {
          currentScope = undefined;
          await scope.close();
        }
      }
    },
  });
}

/** A growing byte buffer that can be awaited for content. */
class Collector {
  chunks: Uint8Array[] = [];
  length = 0;
  #text = "";
  #decoder = new TextDecoder();
  #waiters = new Set<() => void>();
  done = false;

  push(c: Uint8Array): void {
    this.chunks.push(c);
    this.length += c.length;
    this.#text += this.#decoder.decode(c, { stream: true });
    this.#notify();
  }

  end(): void {
    this.done = true;
    this.#text += this.#decoder.decode();
    this.#notify();
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  text(): string {
    return this.#text;
  }

  bytes(): Uint8Array {
    if (this.chunks.length > 1) this.chunks = [concat(this.chunks)];
    return this.chunks[0] ?? new Uint8Array();
  }

  /** Resolves when `pred()` is true; rejects after `ms`, or on end of stream if `pred` fails. */
  waitFor(pred: () => boolean, ms: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pred()) {
          finish();
          resolve();
        } else if (this.done) {
          finish();
          reject(new Error(`stream ended before ${what}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new TimeoutError(`timed out after ${ms} ms: ${what}`));
      }, ms);
      const finish = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
      check();
    });
  }
}

async function drain(stream: ReadableStream<Uint8Array>, sinks: Collector[]): Promise<void> {
  try {
    for await (const c of stream) for (const s of sinks) s.push(c);
  } catch {
    // the process went away
  } finally {
    for (const s of sinks) s.end();
  }
}

export interface SpawnOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Pipe stdin (default true). */
  stdin?: boolean;
  /** Do not tie the process to the running test's scope (for shared, cached work). */
  unscoped?: boolean;
}

/** A running subprocess with captured stdout/stderr and an optional stdin writer. */
export class Spawned {
  readonly child: Deno.ChildProcess;
  readonly cmd: string[];
  readonly pid: number;
  readonly stdout = new Collector();
  readonly stderr = new Collector();
  /** stdout and stderr interleaved in arrival order, as text. */
  readonly output = new Collector();
  readonly exited: Promise<Deno.CommandStatus>;
  #stdin?: WritableStreamDefaultWriter<Uint8Array>;
  #exitStatus?: Deno.CommandStatus;

  constructor(cmd: string[], opts: SpawnOptions = {}) {
    this.cmd = cmd;
    this.child = new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      cwd: opts.cwd,
      env: opts.env,
      stdin: opts.stdin === false ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.pid = this.child.pid;
    liveProcesses.add(this.child);
    if (opts.stdin !== false) this.#stdin = this.child.stdin.getWriter();
    const pumps = Promise.all([
      drain(this.child.stdout, [this.stdout, this.output]),
      drain(this.child.stderr, [this.stderr, this.output]),
    ]);
    this.exited = this.child.status.then(async (s) => {
      this.#exitStatus = s;
      liveProcesses.delete(this.child);
      await withTimeout(pumps, 2000, "output pipes to close").catch(() => {});
      return s;
    });
    if (!opts.unscoped) {
      register(() => this.stop());
      currentScope?.processes.push(this);
    }
  }

  get running(): boolean {
    return this.#exitStatus === undefined;
  }

  async write(data: Uint8Array | string): Promise<void> {
    if (!this.#stdin) throw new Error("stdin is not piped");
    await this.#stdin.write(typeof data === "string" ? encode(data) : data);
  }

  async closeStdin(): Promise<void> {
    try {
      await this.#stdin?.close();
    } catch {
      // already closed
    }
  }

  signal(sig: Deno.Signal): void {
    try {
      this.child.kill(sig);
    } catch {
      // already exited
    }
  }

  /** Waits for stdout to hold at least `n` bytes and returns them all. */
  async readStdout(n: number, ms = 10_000): Promise<Uint8Array> {
    await this.stdout.waitFor(() => this.stdout.length >= n, ms, `${n} bytes on stdout`);
    return this.stdout.bytes();
  }

  /** Waits for the interleaved stdout+stderr text to match `re`; returns the match. */
  async waitForOutput(re: RegExp, ms = 10_000): Promise<RegExpMatchArray> {
    let m: RegExpMatchArray | null = null;
    await this.output.waitFor(
      () => (m = this.output.text().match(re)) !== null,
      ms,
      `output of ${this.cmd[0]} to match ${re}`,
    );
    return m!;
  }

  /** Waits for exit, up to `ms`. */
  wait(ms = 10_000): Promise<Deno.CommandStatus> {
    return withTimeout(this.exited, ms, `${this.cmd.join(" ")} to exit`);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit status. */
  async stop(graceMs = 5000): Promise<Deno.CommandStatus> {
    await this.closeStdin();
    if (this.running) this.signal("SIGTERM");
    try {
      return await withTimeout(this.exited, graceMs, "exit after SIGTERM");
    } catch {
      this.signal("SIGKILL");
      return await this.exited;
    }
  }
}

export function spawn(cmd: string[], opts: SpawnOptions = {}): Spawned {
  return new Spawned(cmd, opts);
}

export interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (killed after `timeoutMs`), capturing its output. */
export async function run(cmd: string[], timeoutMs = 20_000, opts: SpawnOptions = {}): Promise<
  RunResult
> {
  const p = new Spawned(cmd, { ...opts, stdin: opts.stdin ?? false });
  let status: Deno.CommandStatus;
  try {
    status = await withTimeout(p.exited, timeoutMs, cmd.join(" "));
  } catch (e) {
    await p.stop(500);
    throw e;
  }
  return {
    code: status.code,
    signal: status.signal,
    stdout: p.stdout.text(),
    stderr: p.stderr.text(),
  };
}
