/**
 * The proxy under test as a subprocess: its configuration, its start (waiting for its ports),
 * its log; and its refusals of a configuration.
 */
import { assert } from "./assert.ts";
import { PROXY, REPO } from "./command.ts";
import { isListening } from "./net.ts";
import { register, run, type RunResult, Spawned } from "./process.ts";
import { sleep } from "./timing.ts";

/** The standard global header of test configs: foreground, no pid file, log to stderr. */
export const GLOBALS = "foreground = yes\npid =\nsyslog = no\ndebug = debug\n";

/** One line of the stunnel log format: `2024.01.02 03:04:05 LOG5[0]: text`. */
export const LOG_LINE = /^\d{4}\.\d\d\.\d\d \d\d:\d\d:\d\d LOG[0-7]\[[^\]]+\]: /;

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

/** Runs the proxy with command-line arguments only (e.g. `-version`). */
export function runProxy(args: string[], timeoutMs = 20_000): Promise<RunResult> {
  return run([...PROXY, ...args], timeoutMs);
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
