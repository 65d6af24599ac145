/**
 * End-to-end test harness: throwaway PKI, free ports, the proxy under test as a subprocess,
 * plain backends (echo, sink, source, HTTP), and TLS peers (openssl s_client/s_server, curl,
 * stunnel4, Deno's own TLS client).
 *
 * The proxy under test is `deno run -A main.ts` unless the environment variable `PROXY_CMD`
 * names another command (e.g. `PROXY_CMD=stunnel4`), so that every end-to-end test can be run
 * against the reference implementation to prove that the test itself is faithful.
 *
 * Everything listens and connects on 127.0.0.1 only. Every process, listener and connection a
 * test makes is registered with the running test's Scope and torn down in its `finally`.
 */

import { createHash } from "node:crypto";

// ---------------------------------------------------------------------------------------------
// Locations and the command under test

/** Absolute path of the repository root (no trailing slash). */
export const REPO: string = decodeURIComponent(new URL("..", import.meta.url).pathname).replace(
  /\/$/,
  "",
);

function splitCommand(s: string): string[] {
  return s.trim().split(/\s+/).filter((x) => x !== "");
}

/** The command that runs the proxy under test; the config file path is appended to it. */
export const PROXY: string[] = Deno.env.get("PROXY_CMD")?.trim()
  ? splitCommand(Deno.env.get("PROXY_CMD")!)
  : [Deno.execPath(), "run", "-A", `${REPO}/main.ts`];

// The proxy adds threads only under load by default; the tests run it with two threads from the
// start, so that every test also crosses threads (a test may still set its own value).
if (!Deno.env.has("STUNNEL_THREADS")) Deno.env.set("STUNNEL_THREADS", "2");

/** True when the proxy under test is stunnel itself (used to mark stunnel-specific gaps). */
export const PROXY_IS_STUNNEL: boolean = /stunnel[0-9]*$/.test(PROXY[0]);

/** The reference implementation, used as a peer in interoperability tests. */
export const STUNNEL4: string[] = splitCommand(Deno.env.get("STUNNEL4_CMD") ?? "stunnel4");

/** The standard global header of test configs: foreground, no pid file, log to stderr. */
export const GLOBALS = "foreground = yes\npid =\nsyslog = no\ndebug = debug\n";

/** One line of the stunnel log format: `2024.01.02 03:04:05 LOG5[0]: text`. */
export const LOG_LINE = /^\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d LOG[0-7]\[[^\]]+\]: /;

// ---------------------------------------------------------------------------------------------
// Timing

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class TimeoutError extends Error {}

/** Rejects with a TimeoutError naming `what` if `promise` has not settled after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` every `intervalMs` until it returns a truthy value; throws after `ms`. */
export async function pollUntil<T>(
  check: () => T | Promise<T>,
  ms: number,
  what: string,
  intervalMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  while (true) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new TimeoutError(`timed out after ${ms} ms: ${what}`);
    await sleep(intervalMs);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-test scope: everything a test starts is cleaned up in its finally

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

function register(fn: Cleanup): void {
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
      const scope = new Scope();
      currentScope = scope;
      try {
        await withTimeout(fn(scope), timeoutMs, `test "${name}"`);
      } catch (e) {
        reportProcesses(scope);
        throw e;
      } finally {
        currentScope = undefined;
        await scope.close();
      }
    },
  });
}

// ---------------------------------------------------------------------------------------------
// Bytes, text, digests

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

// ---------------------------------------------------------------------------------------------
// Stream helpers over Deno.Conn-like objects

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

// ---------------------------------------------------------------------------------------------
// Ports

/** A currently free TCP port on 127.0.0.1. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** `n` distinct free ports. */
export function freePorts(n: number): number[] {
  const listeners = Array.from(
    { length: n },
    () => Deno.listen({ hostname: "127.0.0.1", port: 0 }),
  );
  const ports = listeners.map((l) => (l.addr as Deno.NetAddr).port);
  for (const l of listeners) l.close();
  return ports;
}

async function procListening(port: number): Promise<boolean | undefined> {
  let found = false;
  let readable = false;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
      readable = true;
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4 || f[3] !== "0A") continue; // 0A = LISTEN
      const local = f[1];
      if (parseInt(local.slice(local.lastIndexOf(":") + 1), 16) === port) found = true;
    }
  }
  return readable ? found : undefined;
}

/**
 * Whether something listens on TCP `port` (any local address). Uses /proc/net/tcp so that it
 * never makes a connection to the proxy (which would add lines to its log); falls back to a
 * connection attempt to 127.0.0.1 where /proc is not available.
 */
export async function isListening(port: number): Promise<boolean> {
  const viaProc = await procListening(port);
  if (viaProc !== undefined) return viaProc;
  try {
    const c = await Deno.connect({ hostname: "127.0.0.1", port });
    c.close();
    return true;
  } catch {
    return false;
  }
}

export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  await pollUntil(() => isListening(port), timeoutMs, `port ${port} to listen`);
}

export async function waitForPortClosed(port: number, timeoutMs = 10_000): Promise<void> {
  await pollUntil(async () => !(await isListening(port)), timeoutMs, `port ${port} to close`);
}

/**
 * A port on 127.0.0.1 where connects hang until the connecting side gives up (TIMEOUTconnect):
 * a listener with a backlog of 0 (Deno's listeners cannot have one, hence libc) whose one queue
 * slot is taken by a connection nobody accepts, so that the kernel drops every later SYN.
 */
export async function unansweredPort(): Promise<number> {
  const libc = Deno.dlopen("libc.so.6", {
    socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
    bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
    listen: { parameters: ["i32", "i32"], result: "i32" },
    getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
  });
  const { socket, bind, listen, getsockname, close } = libc.symbols;
  // struct sockaddr_in for 127.0.0.1, port 0 (AF_INET, SOCK_STREAM | SOCK_CLOEXEC).
  const addr = new Uint8Array([2, 0, 0, 0, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
  const len = new Uint32Array([addr.length]);
  const fd = socket(2, 1 | 0o2000000, 0);
  register(() => {
    close(fd);
    libc.close();
  });
  if (
    fd < 0 || bind(fd, addr, addr.length) !== 0 || listen(fd, 0) !== 0 ||
    getsockname(fd, addr, new Uint8Array(len.buffer)) !== 0
  ) {
    throw new Error("unansweredPort: no listener");
  }
  const port = (addr[2] << 8) | addr[3];
  const filler = await Deno.connect({ hostname: "127.0.0.1", port });
  register(() => filler.close());
  return port;
}

// ---------------------------------------------------------------------------------------------
// Subprocesses

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

// ---------------------------------------------------------------------------------------------
// Fixtures

/**
 * Reads `fixtures/<name>` and replaces every `@KEY@` outside comment lines with `vars[KEY]`;
 * throws if a placeholder has no value.
 */
export async function loadFixture(name: string, vars: Record<string, string>): Promise<string> {
  const text = await Deno.readTextFile(`${REPO}/fixtures/${name}`);
  return text.split("\n").map((line) =>
    /^\s*[;#]/.test(line) ? line : line.replace(/@([A-Z][A-Z0-9_]*)@/g, (_, key: string) => {
      if (!(key in vars)) throw new Error(`fixtures/${name}: no value for @${key}@`);
      return vars[key];
    })
  ).join("\n");
}

// ---------------------------------------------------------------------------------------------
// The proxy under test

export interface ProxyOptions {
  /** Command to run instead of PROXY (e.g. STUNNEL4 for a reference peer). */
  cmd?: string[];
  /** Extra arguments placed before the config file path. */
  args?: string[];
  /** Directory for the config file (default: a fresh temp dir of the scope). */
  dir?: string;
  /** File name of the config inside `dir` (default stunnel.conf). */
  confName?: string;
  /** Ports to wait for (default: every `accept` port found in the config). */
  waitPorts?: number[];
  /** Startup time limit (default 20 s). */
  timeoutMs?: number;
  /** Return even if the proxy failed to start, instead of throwing. */
  allowFailure?: boolean;
  cwd?: string;
}

export interface Proxy {
  pid: number;
  /** Path of the config file (rewrite it with writeConfig before a SIGHUP). */
  confPath: string;
  dir: string;
  /** True once every awaited port listened; false if the proxy failed or exited first. */
  ready: boolean;
  /** All of stdout+stderr so far, as text. */
  log(): string;
  /** The log split into lines (the last, unterminated, line included). */
  lines(): string[];
  waitForLog(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** Waits until `re` matches at least `count` times in the log. */
  waitForLogCount(re: RegExp, count: number, timeoutMs?: number): Promise<void>;
  writeConfig(text: string): Promise<void>;
  signal(sig: Deno.Signal): void;
  /** SIGTERM, then SIGKILL after 5 s; resolves with the exit status. */
  stop(): Promise<Deno.CommandStatus>;
  exited: Promise<Deno.CommandStatus>;
  process: Spawned;
}

/** The TCP ports of the `accept =` lines of a config (`1234`, `host:1234`, `:::1234`). */
export function acceptPorts(configText: string): number[] {
  const ports: number[] = [];
  for (const line of configText.split(/\r?\n/)) {
    const m = line.match(/^\s*accept\s*=\s*(?:.*:)?(\d+)\s*$/i);
    if (m) ports.push(Number(m[1]));
  }
  return ports;
}

function countMatches(text: string, re: RegExp): number {
  const g = new RegExp(re.source, re.flags.includes("g") ? re.flags : re.flags + "g");
  return [...text.matchAll(g)].length;
}

/**
 * Writes `configText` to a temp file and starts the proxy on it, then waits until every
 * `accept` port listens, the log says `Configuration failed`, or the process exits.
 * Throws (with the log) if the proxy did not come up, unless `allowFailure` is set.
 */
export async function startProxy(configText: string, opts: ProxyOptions = {}): Promise<Proxy> {
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "e2e-proxy-" });
  if (!opts.dir) register(() => Deno.remove(dir, { recursive: true }));
  const confPath = `${dir}/${opts.confName ?? "stunnel.conf"}`;
  await Deno.writeTextFile(confPath, configText);
  const cmd = [...(opts.cmd ?? PROXY), ...(opts.args ?? []), confPath];
  const p = new Spawned(cmd, { stdin: false, cwd: opts.cwd });
  const ports = opts.waitPorts ?? acceptPorts(configText);
  const timeoutMs = opts.timeoutMs ?? 20_000;
  let exited = false;
  p.exited.then(() => (exited = true));

  const deadline = Date.now() + timeoutMs;
  let ready = false;
  while (Date.now() < deadline) {
    if (exited || /Configuration failed/.test(p.output.text())) break;
    const up = await Promise.all(ports.map(isListening));
    if (up.every((x) => x)) {
      ready = true;
      break;
    }
    await sleep(20);
  }
  const proxy: Proxy = {
    pid: p.pid,
    confPath,
    dir,
    ready,
    process: p,
    exited: p.exited,
    log: () => p.output.text(),
    lines: () => p.output.text().split("\n").filter((l) => l !== ""),
    waitForLog: (re, ms = 10_000) => p.waitForOutput(re, ms),
    waitForLogCount: (re, count, ms = 10_000) =>
      p.output.waitFor(
        () => countMatches(p.output.text(), re) >= count,
        ms,
        `${count} log lines matching ${re}`,
      ),
    writeConfig: (text) => Deno.writeTextFile(confPath, text),
    signal: (sig) => p.signal(sig),
    stop: () => p.stop(5000),
  };
  if (!ready && !opts.allowFailure) {
    await p.stop(2000);
    throw new Error(
      `proxy did not start (${cmd.join(" ")}; waited for ports ${ports.join(",")}):\n` +
        p.output.text(),
    );
  }
  return proxy;
}

/** Starts the reference stunnel (STUNNEL4) on `configText`, e.g. as the peer of the proxy. */
export function startStunnel4(configText: string, opts: ProxyOptions = {}): Promise<Proxy> {
  return startProxy(configText, { ...opts, cmd: STUNNEL4 });
}

/** Runs the proxy with command-line arguments only (e.g. `-version`). */
export function runProxy(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return run([...PROXY, ...args], timeoutMs);
}

// ---------------------------------------------------------------------------------------------
// Throwaway PKI (generated with the openssl CLI, once per test process)

export interface CertKey {
  cert: string;
  key: string;
}

export interface Pki {
  dir: string;
  /** Root CA certificate (PEM path) and its key. */
  ca: string;
  caKey: string;
  /** The root CA certificate, PEM text (for Deno.connectTls caCerts). */
  caPem: string;
  /** Server certificates for CN=localhost, SAN DNS:localhost, IP:127.0.0.1. */
  serverEc: CertKey;
  serverRsa: CertKey;
  /** Client certificate CN=client (clientAuth). */
  client: CertKey;
  /** CN=revoked, signed by the CA and listed in `crl`. */
  revoked: CertKey;
  /** CRL of the root CA, revoking `revoked`. */
  crl: string;
  /** CN=localhost (server and client usage), signed by the CA, expired in 2020. */
  expired: CertKey;
  /** A second, unrelated CA and a localhost server certificate it signed. */
  otherCa: string;
  otherCaKey: string;
  otherServer: CertKey;
  /** Key and certificate (ECDSA server) in one PEM file. */
  combined: string;
  /** PKCS#12 bundle of the ECDSA server key, certificate and CA, empty password. */
  p12: string;
}

/** Runs `openssl ARGS` in `cwd`; ARGS is split on whitespace (file names have no spaces). */
async function openssl(args: string, cwd: string): Promise<void> {
  const r = await run(["openssl", ...splitCommand(args)], 60_000, { cwd, unscoped: true });
  if (r.code !== 0) throw new Error(`openssl ${args} failed (${r.code}):\n${r.stderr}${r.stdout}`);
}

function caConfig(dir: string): string {
  return `[ ca ]
default_ca = CA_default

[ CA_default ]
dir = ${dir}/ca-db
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ server_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;
}

async function generatePki(dir: string): Promise<Pki> {
  await Deno.mkdir(`${dir}/ca-db/newcerts`, { recursive: true });
  await Deno.writeTextFile(`${dir}/ca-db/index.txt`, "");
  await Deno.writeTextFile(`${dir}/ca-db/index.txt.attr`, "unique_subject = no\n");
  await Deno.writeTextFile(`${dir}/ca-db/serial`, "1000\n");
  await Deno.writeTextFile(`${dir}/ca-db/crlnumber`, "1000\n");
  await Deno.writeTextFile(`${dir}/openssl.cnf`, caConfig(dir));
  const ssl = (args: string) => openssl(args, dir);
  const cnf = "-config openssl.cnf";
  const ca = `ca ${cnf} -batch -cert ca.pem -keyfile ca.key`;

  const ecKeys = ["ca", "other-ca", "server-ec", "client", "revoked", "expired", "other-server"];
  await Promise.all([
    ...ecKeys.map((k) =>
      ssl(`genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ${k}.key`)
    ),
    ssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server-rsa.key"),
  ]);

  const selfSigned = (name: string, cn: string) =>
    ssl(
      `req ${cnf} -new -x509 -key ${name}.key -subj /CN=${cn} -days 30 -extensions v3_ca ` +
        `-sha256 -out ${name}.pem`,
    );
  await selfSigned("ca", "Test-Root-CA");
  await selfSigned("other-ca", "Unrelated-Test-CA");

  // Certificates of the root CA go through `openssl ca`, which keeps the database for the CRL
  // and can backdate (for the expired certificate).
  const issue = async (name: string, cn: string, ext: string, dates = "") => {
    await ssl(`req ${cnf} -new -key ${name}.key -subj /CN=${cn} -out ${name}.csr`);
    await ssl(`${ca} -notext -extensions ${ext} ${dates} -in ${name}.csr -out ${name}.pem`);
  };
  await issue("server-ec", "localhost", "server_ext");
  await issue("server-rsa", "localhost", "server_ext");
  await issue("client", "client", "client_ext");
  await issue("revoked", "revoked", "server_ext");
  await issue(
    "expired",
    "localhost",
    "server_ext",
    "-startdate 20200101000000Z -enddate 20200201000000Z",
  );
  await ssl(`${ca} -revoke revoked.pem`);
  await ssl(`${ca} -gencrl -out crl.pem`);

  // A localhost certificate from the unrelated CA (x509 -req, no database needed).
  await ssl(`req ${cnf} -new -key other-server.key -subj /CN=localhost -out other-server.csr`);
  await ssl(
    "x509 -req -in other-server.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial " +
      "-days 30 -sha256 -extfile openssl.cnf -extensions server_ext -out other-server.pem",
  );

  const combined = (await Deno.readTextFile(`${dir}/server-ec.key`)) +
    (await Deno.readTextFile(`${dir}/server-ec.pem`));
  await Deno.writeTextFile(`${dir}/combined.pem`, combined, { mode: 0o600 });
  await ssl(
    "pkcs12 -export -inkey server-ec.key -in server-ec.pem -certfile ca.pem -passout pass: " +
      "-out server.p12",
  );

  const ck = (name: string): CertKey => ({ cert: `${dir}/${name}.pem`, key: `${dir}/${name}.key` });
  return {
    dir,
    ca: `${dir}/ca.pem`,
    caKey: `${dir}/ca.key`,
    caPem: await Deno.readTextFile(`${dir}/ca.pem`),
    serverEc: ck("server-ec"),
    serverRsa: ck("server-rsa"),
    client: ck("client"),
    revoked: ck("revoked"),
    crl: `${dir}/crl.pem`,
    expired: ck("expired"),
    otherCa: `${dir}/other-ca.pem`,
    otherCaKey: `${dir}/other-ca.key`,
    otherServer: ck("other-server"),
    combined: `${dir}/combined.pem`,
    p12: `${dir}/server.p12`,
  };
}

const pkiCache = new Map<string, Promise<Pki>>();
let defaultPkiDir: string | undefined;

/**
 * The throwaway PKI, generated once per test process (the promise is cached). Without `dir`
 * it lives in a temp dir that is removed when the test process exits.
 */
export function makePki(dir?: string): Promise<Pki> {
  if (!dir) {
    if (!defaultPkiDir) {
      defaultPkiDir = Deno.makeTempDirSync({ prefix: "e2e-pki-" });
      const d = defaultPkiDir;
      globalThis.addEventListener("unload", () => {
        try {
          Deno.removeSync(d, { recursive: true });
        } catch {
          // gone already
        }
      });
    }
    dir = defaultPkiDir;
  }
  let p = pkiCache.get(dir);
  if (!p) {
    p = generatePki(dir);
    pkiCache.set(dir, p);
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// Plain backends

/** A small async queue: results pushed by servers, awaited by tests. */
export class Queue<T> {
  #items: T[] = [];
  #waiters: ((v: T) => void)[] = [];

  push(v: T): void {
    const w = this.#waiters.shift();
    if (w) w(v);
    else this.#items.push(v);
  }

  next(ms = 30_000, what = "next result"): Promise<T> {
    if (this.#items.length) return Promise.resolve(this.#items.shift()!);
    return withTimeout(new Promise<T>((resolve) => this.#waiters.push(resolve)), ms, what);
  }

  get length(): number {
    return this.#items.length;
  }
}

export interface Backend {
  port: number;
  /** Number of connections accepted so far. */
  connections: number;
  /** Remote addresses of the accepted connections, in order. */
  peers: Deno.NetAddr[];
  close(): void;
}

/** A plain TCP server on 127.0.0.1 (ephemeral port) running `handler` per connection. */
export function tcpServer(handler: (conn: Deno.TcpConn) => Promise<void>): Backend {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const backend: Backend = {
    port: (listener.addr as Deno.NetAddr).port,
    connections: 0,
    peers: [],
    close() {
      closeQuietly(listener);
      for (const c of conns) closeQuietly(c);
      conns.clear();
    },
  };
  (async () => {
    try {
      for await (const conn of listener) {
        backend.connections++;
        backend.peers.push(conn.remoteAddr);
        conns.add(conn);
        handler(conn).catch(() => {}).finally(() => {
          conns.delete(conn);
          closeQuietly(conn);
        });
      }
    } catch {
      // listener closed
    }
  })();
  register(() => backend.close());
  return backend;
}

/** Echoes every byte back; half-closes its side when the client half-closes. */
export function echoServer(opts: { greeting?: string } = {}): Backend {
  return tcpServer(async (conn) => {
    if (opts.greeting) await writeAll(conn, encode(opts.greeting));
    const buf = new Uint8Array(64 * 1024);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      await writeAll(conn, buf.subarray(0, n));
    }
    await conn.closeWrite().catch(() => {});
    await waitClosed(conn, 10_000).catch(() => {});
  });
}

export interface StreamResult {
  /** What this side received (until the peer half-closed). */
  received: Digest;
  /** What this side sent. */
  sent: Digest;
}

export interface StreamServerOptions {
  /** Bytes of `pattern(send, seed)` to send on each connection (default 0), then half-close. */
  send?: number;
  seed?: number;
  /**
   * After the peer half-closes, send one line `<sha256> <bytes>\n` describing what was received
   * (and only then half-close). Lets a sender that half-closed check the reply arrives in full.
   */
  replyDigest?: boolean;
  /** Send only after the peer half-closed (default: send and receive concurrently). */
  sendAfterEof?: boolean;
}

/**
 * The sink/source backend: per connection, concurrently hashes everything received until the
 * peer half-closes and sends `send` bytes of deterministic data; then half-closes and reports.
 * `sink`: streamServer({ replyDigest: true }); `source`: streamServer({ send: 100 * MiB }).
 */
export function streamServer(
  opts: StreamServerOptions = {},
): Backend & { results: Queue<StreamResult> } {
  const results = new Queue<StreamResult>();
  const backend = tcpServer(async (conn) => {
    const receiving = hashUntilEof(conn);
    const sending = (opts.sendAfterEof ? receiving.then(() => {}) : Promise.resolve())
      .then(() => sendPattern(conn, opts.send ?? 0, opts.seed ?? 1))
      .then(async (d) => {
        if (!opts.replyDigest) await conn.closeWrite();
        return d;
      });
    // Promise.all observes both, so a failure of one never leaves the other unhandled.
    const [received, sent] = await Promise.all([receiving, sending]);
    if (opts.replyDigest) {
      await writeAll(conn, encode(`${received.sha256} ${received.bytes}\n`));
      await conn.closeWrite();
    }
    results.push({ received, sent });
    await waitClosed(conn, 30_000).catch(() => {});
  });
  return Object.assign(backend, { results });
}

export interface HttpRequestInfo {
  method: string;
  url: string;
  headers: Record<string, string>;
}

/** A plain HTTP server (Deno.serve) on 127.0.0.1 answering every request with `body`. */
export function httpServer(body: string): Backend & { requests: Queue<HttpRequestInfo> } {
  const requests = new Queue<HttpRequestInfo>();
  const backend: Backend & { requests: Queue<HttpRequestInfo> } = {
    port: 0,
    connections: 0,
    peers: [],
    requests,
    close: () => {},
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      backend.connections++;
      requests.push({
        method: req.method,
        url: req.url,
        headers: Object.fromEntries(req.headers),
      });
      return new Response(body, { headers: { "content-type": "text/plain" } });
    },
  );
  backend.port = server.addr.port;
  backend.close = () => {
    server.shutdown().catch(() => {});
  };
  register(() => server.shutdown().catch(() => {}));
  return backend;
}

// ---------------------------------------------------------------------------------------------
// Clients and TLS peers

/** A plain TCP connection to 127.0.0.1:port, closed with the scope. */
export async function tcpConnect(port: number): Promise<Deno.TcpConn> {
  const conn = await withTimeout(
    Deno.connect({ hostname: "127.0.0.1", port }),
    5000,
    `connect to 127.0.0.1:${port}`,
  );
  register(() => closeQuietly(conn));
  return conn;
}

export interface TlsClientOptions {
  /** Name to send in SNI and verify (default "localhost"). */
  hostname?: string;
  /** Client certificate and key (PEM text). */
  cert?: string;
  key?: string;
  alpnProtocols?: string[];
}

/**
 * Deno's TLS client: TCP to 127.0.0.1:port, then TLS with SNI/verification for "localhost"
 * against `caPem`. Waits for the handshake.
 */
export async function tlsConnect(
  port: number,
  caPem: string,
  opts: TlsClientOptions = {},
): Promise<Deno.TlsConn> {
  let tls: Deno.TlsConn;
  if (opts.cert && opts.key) {
    // Deno.startTls takes no client certificate: connect by name (localhost) instead.
    tls = await withTimeout(
      Deno.connectTls({
        hostname: opts.hostname ?? "localhost",
        port,
        caCerts: [caPem],
        alpnProtocols: opts.alpnProtocols,
        cert: opts.cert,
        key: opts.key,
      }),
      5000,
      `TLS connect to port ${port}`,
    );
  } else {
    const tcp = await withTimeout(
      Deno.connect({ hostname: "127.0.0.1", port }),
      5000,
      `connect to 127.0.0.1:${port}`,
    );
    tls = await Deno.startTls(tcp, {
      hostname: opts.hostname ?? "localhost",
      caCerts: [caPem],
      alpnProtocols: opts.alpnProtocols,
    });
  }
  register(() => closeQuietly(tls));
  await withTimeout(tls.handshake(), 10_000, "TLS handshake");
  return tls;
}

/**
 * Plain TCP client transfer: concurrently sends `send` bytes of pattern data and hashes what it
 * receives until EOF. After sending it half-closes (`halfClose`, the default), or with
 * `halfCloseAfterEof` only once the peer's EOF has arrived.
 */
export async function tcpTransfer(
  port: number,
  opts: {
    send?: number;
    seed?: number;
    halfClose?: boolean;
    halfCloseAfterEof?: boolean;
    timeoutMs?: number;
  } = {},
): Promise<StreamResult> {
  const conn = await tcpConnect(port);
  const go = async () => {
    const receiving = hashUntilEof(conn);
    const sending = sendPattern(conn, opts.send ?? 0, opts.seed ?? 1).then(async (d) => {
      if (opts.halfCloseAfterEof) await receiving;
      if (opts.halfClose ?? true) await conn.closeWrite();
      return d;
    });
    const [received, sent] = await Promise.all([receiving, sending]);
    return { received, sent };
  };
  try {
    return await withTimeout(go(), opts.timeoutMs ?? 60_000, `transfer via port ${port}`);
  } finally {
    closeQuietly(conn);
  }
}

export interface SClientOptions {
  /** CA file to verify the server with; verification errors are then fatal. */
  ca?: string;
  cert?: string;
  key?: string;
  servername?: string;
  args?: string[];
}

/**
 * `openssl s_client -quiet` to 127.0.0.1:port: stdin goes to the server, server data to stdout.
 * (-quiet implies -ign_eof: closing stdin does not close the connection.)
 */
export function sClient(port: number, opts: SClientOptions = {}): Spawned {
  const args = [
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    opts.servername ?? "localhost",
    "-quiet",
  ];
  if (opts.ca) {
    args.push("-CAfile", opts.ca, "-verify_return_error", "-verify_hostname", "localhost");
  }
  if (opts.cert) args.push("-cert", opts.cert);
  if (opts.key) args.push("-key", opts.key);
  return spawn(["openssl", ...args, ...(opts.args ?? [])]);
}

export interface SServerOptions {
  cert: string;
  key: string;
  /** Require and verify a client certificate against this CA. */
  verifyCa?: string;
  args?: string[];
}

/**
 * `openssl s_server -quiet` on 127.0.0.1:port: client data to stdout, stdin to the client.
 * Use waitForPort (it does not connect) before connecting.
 */
export function sServer(port: number, opts: SServerOptions): Spawned {
  const args = [
    "s_server",
    "-accept",
    `127.0.0.1:${port}`,
    "-cert",
    opts.cert,
    "-key",
    opts.key,
    "-quiet",
  ];
  if (opts.verifyCa) args.push("-Verify", "2", "-CAfile", opts.verifyCa, "-verify_return_error");
  return spawn(["openssl", ...args, ...(opts.args ?? [])]);
}

/** curl to https://localhost:port/ (resolved to 127.0.0.1), verifying with `ca`. */
export function curl(
  port: number,
  ca: string,
  args: string[] = [],
  path = "/",
): Promise<RunResult> {
  return run(
    [
      "curl",
      "-sS",
      "--max-time",
      "10",
      "--resolve",
      `localhost:${port}:127.0.0.1`,
      "--cacert",
      ca,
      ...args,
      `https://localhost:${port}${path}`,
    ],
    15_000,
  );
}

// ---------------------------------------------------------------------------------------------
// Assertions (no @std: JSR is not reachable)

export class AssertionError extends Error {}

export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(msg);
}

function show(v: unknown): string {
  return typeof v === "string"
    ? JSON.stringify(v.length > 2000 ? v.slice(0, 2000) + "…" : v)
    : Deno.inspect(v, { depth: 5 });
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  if (ka.length !== kb.length) return false;
  return ka.every((k) =>
    deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])
  );
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (!deepEqual(actual, expected)) {
    throw new AssertionError(
      `${msg ? msg + "\n" : ""}values differ:\n  actual:   ${show(actual)}\n  expected: ${
        show(expected)
      }`,
    );
  }
}

export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  if (deepEqual(actual, expected)) {
    throw new AssertionError(`${msg ? msg + "\n" : ""}value should differ: ${show(actual)}`);
  }
}

export function assertMatch(actual: string, re: RegExp, msg?: string): void {
  if (!re.test(actual)) {
    throw new AssertionError(`${msg ? msg + "\n" : ""}${show(actual)} does not match ${re}`);
  }
}

export function assertNotMatch(actual: string, re: RegExp, msg?: string): void {
  if (re.test(actual)) {
    throw new AssertionError(`${msg ? msg + "\n" : ""}${show(actual)} matches ${re}`);
  }
}

/** Runs `fn` and returns the error it throws (or rejects with); fails if it does not. */
export async function assertRejects(fn: () => unknown, msg?: string): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new AssertionError(msg ?? "expected an error");
}

/** Escapes `s` for use inside a RegExp. */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}

/** `cert =` and `key =` lines for the harness's ECDSA server certificate. */
export async function serverCertLines(): Promise<string> {
  const pki = await makePki();
  return `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
}

/** Sends `message` through an echo path and asserts that it comes back unchanged. */
export async function echoRoundTrip(conn: Deno.Conn, message: string): Promise<void> {
  await writeAll(conn, encode(message));
  assertEquals(decode(await readExactly(conn, encode(message).length)), message);
}

// ---------------------------------------------------------------------------------------------
// SoftHSM2 tokens for OpenSSL's pkcs11 engine (e2e_engine_test.ts, e2e_manual2_test.ts)

export const SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so";
export const PKCS11_ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
export const PKCS11_TOOL = "/usr/bin/pkcs11-tool";

export interface SoftHsmToken {
  /** Imports a PEM private key as a key object with this label and hex id. */
  importKey(keyPem: string, label: string, id: string): Promise<void>;
  /** Imports a PEM certificate as a certificate object with this label and hex id. */
  importCert(certPem: string, label: string, id: string): Promise<void>;
}

/**
 * A fresh SoftHSM2 token `label` (user PIN `pin`) in a temporary directory of the scope, with
 * SOFTHSM2_CONF pointing at it (inherited by the proxy) until the scope closes. Fails if
 * softhsm2, libengine-pkcs11-openssl or opensc is missing.
 */
export async function softHsmToken(
  scope: Scope,
  label: string,
  pin: string,
): Promise<SoftHsmToken> {
  for (const file of [SOFTHSM_MODULE, PKCS11_ENGINE, "/usr/bin/softhsm2-util", PKCS11_TOOL]) {
    const present = await Deno.stat(file).then(() => true, () => false);
    assert(present, `${file} is missing: install softhsm2, libengine-pkcs11-openssl, opensc`);
  }
  const dir = await scope.tempDir("e2e-softhsm-");
  await Deno.mkdir(`${dir}/tokens`);
  await Deno.writeTextFile(
    `${dir}/softhsm2.conf`,
    `directories.tokendir = ${dir}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n`,
  );
  Deno.env.set("SOFTHSM2_CONF", `${dir}/softhsm2.conf`);
  scope.defer(() => Deno.env.delete("SOFTHSM2_CONF"));
  const tool = async (cmd: string[]) => {
    const r = await run(cmd, 20_000);
    assertEquals(r.code, 0, `${cmd.join(" ")}:\n${r.stdout}${r.stderr}`);
  };
  await tool([
    "softhsm2-util",
    "--init-token",
    "--free",
    "--label",
    label,
    "--pin",
    pin,
    "--so-pin",
    "567890",
  ]);
  let n = 0;
  return {
    async importKey(keyPem, keyLabel, id) {
      const pkcs8 = `${dir}/key${++n}.p8`;
      await tool(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", keyPem, "-out", pkcs8]);
      await tool([
        "softhsm2-util",
        "--import",
        pkcs8,
        "--token",
        label,
        "--label",
        keyLabel,
        "--id",
        id,
        "--pin",
        pin,
      ]);
    },
    async importCert(certPem, certLabel, id) {
      const der = `${dir}/cert${++n}.der`;
      await tool(["openssl", "x509", "-in", certPem, "-outform", "DER", "-out", der]);
      await tool([
        PKCS11_TOOL,
        "--module",
        SOFTHSM_MODULE,
        "--token-label",
        label,
        "--login",
        "--pin",
        pin,
        "--write-object",
        der,
        "--type",
        "cert",
        "--label",
        certLabel,
        "--id",
        id,
      ]);
    },
  };
}

/**
 * One openssl s_client connection through an echo backend: `line` goes there and back (which,
 * in TLS 1.3, also means the tickets sent before it have arrived), then s_client closes.
 * Returns its output ("New, ..." or "Reused, ..."), or what it said when the handshake failed.
 */
export async function sClientEcho(port: number, args: string[], line: string): Promise<string> {
  const p = spawn([
    "openssl",
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    "localhost",
    ...args,
  ]);
  await p.write(`${line}\n`);
  await p.stdout.waitFor(() => p.stdout.text().split("\n").includes(line), 10_000, "the echo")
    .catch(() => {});
  await p.closeStdin();
  await p.wait(10_000);
  return p.output.text();
}

/** Runs the proxy on `text` as `bad.conf`, which it must refuse; its output. */
export async function configError(text: string): Promise<string> {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/bad.conf`, text);
    const r = await runProxy([`${dir}/bad.conf`]);
    assert(r.code !== 0, "the configuration was accepted");
    return r.stdout + r.stderr;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
