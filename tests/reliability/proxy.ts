/**
 * The proxy under test as the reliability suite runs it: the real program (harness/command.ts PROXY,
 * so PROXY_CMD=stunnel4 works too) with its log in a file (`output =`, counted afterwards) and
 * its stdout and stderr in another; and the backend process. Both inherit the suite's
 * descriptor limit (proc.ts raiseNofile).
 */
import { PROXY, PROXY_IS_STUNNEL, REPO } from "../harness/command.ts";
import { pollUntil, sleep } from "../harness/timing.ts";
import { inspectorUrl } from "./gc.ts";
import { listeningSockets } from "./proc.ts";

export interface Process {
  pid: number;
  exited: Promise<Deno.CommandStatus>;
  /** Undefined while it runs. */
  status(): Deno.CommandStatus | undefined;
  signal(sig: Deno.Signal): void;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<Deno.CommandStatus>;
}

/** Starts `cmd` with stdout and stderr appended to `outPath` (or discarded). */
function startProcess(cmd: string[], outPath: string | undefined, env?: Record<string, string>) {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const sink = outPath
    ? Deno.openSync(outPath, { write: true, create: true, append: true })
    : undefined;
  const encoder = new TextEncoder();
  let stdoutText = "";
  const pumpOut = (async () => {
    for await (const chunk of child.stdout) {
      sink?.writeSync(chunk);
      if (stdoutText.length < 4096) stdoutText += new TextDecoder().decode(chunk);
    }
  })().catch(() => {});
  const pumpErr = (async () => {
    for await (const chunk of child.stderr) sink?.writeSync(chunk);
  })().catch(() => {});
  let status: Deno.CommandStatus | undefined;
  const exited = child.status.then(async (s) => {
    status = s;
    await Promise.all([pumpOut, pumpErr]);
    sink?.writeSync(encoder.encode(`[exited: code ${s.code}, signal ${s.signal}]\n`));
    sink?.close();
    return s;
  });
  const signal = (sig: Deno.Signal) => {
    try {
      child.kill(sig);
    } catch {
      // gone already
    }
  };
  const proc: Process = {
    pid: child.pid,
    exited,
    status: () => status,
    signal,
    async stop(graceMs = 10_000) {
      if (!status) signal("SIGTERM");
      const timer = setTimeout(() => signal("SIGKILL"), graceMs);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
  return { proc, stdout: () => stdoutText };
}

// Last resort if the suite itself is interrupted: no process of ours outlives it.
const live = new Set<Process>();
globalThis.addEventListener("unload", () => {
  for (const p of live) p.signal("SIGKILL");
});
function track(p: Process): Process {
  live.add(p);
  p.exited.then(() => live.delete(p));
  return p;
}

export interface SoakProxy extends Process {
  /** The V8 inspector's URL (see gc.ts), when the proxy runs on Deno. */
  inspector?: string;
  dir: string;
  confPath: string;
  /** The `output =` file. */
  logPath: string;
  /** Its stdout and stderr. */
  consolePath: string;
}

/** The proxy runs with this many threads from the start (STUNNEL_THREADS). */
export const THREADS = 2;
/** Listening sockets per service: one per thread (stunnel listens in one thread). */
export const LISTENERS = PROXY_IS_STUNNEL ? 1 : THREADS;

/** The global section of the suite's proxies: the log goes to `dir`/proxy.log at level 5. */
export function soakGlobals(dir: string): string {
  return `foreground = yes\npid =\nsyslog = no\ndebug = notice\noutput = ${dir}/proxy.log\n`;
}

/** `deno run ARGS`: the proxy under test runs on Deno (not PROXY_CMD=stunnel4 or the like). */
const ON_DENO = PROXY[0] === Deno.execPath() && PROXY[1] === "run";

/**
 * Starts the proxy on `config` (written to `dir`) and waits until every thread listens. With
 * `inspect`, a Deno proxy runs with its V8 inspector on a free loopback port (gc.ts).
 */
export async function startSoakProxy(
  dir: string,
  config: string,
  ports: number[],
  inspect = false,
): Promise<SoakProxy> {
  const confPath = `${dir}/stunnel.conf`;
  await Deno.writeTextFile(confPath, config);
  const consolePath = `${dir}/proxy.console`;
  const cmd = inspect && ON_DENO
    ? [PROXY[0], "run", "--inspect=127.0.0.1:0", ...PROXY.slice(2), confPath]
    : [...PROXY, confPath];
  // All threads from the start: a thread added under load would read as a leak.
  const { proc } = startProcess(cmd, consolePath, { STUNNEL_THREADS: String(THREADS) });
  track(proc);
  const proxy: SoakProxy = { ...proc, dir, confPath, logPath: `${dir}/proxy.log`, consolePath };
  try {
    await pollUntil(
      () => proc.status() || ports.every((p) => listeningSockets(p) === LISTENERS),
      30_000,
      `the proxy to listen on ${ports.join(", ")}`,
      50,
    );
  } catch (e) {
    await proc.stop(1000);
    throw e;
  }
  const consoleText = await Deno.readTextFile(consolePath);
  if (proc.status()) throw new Error(`the proxy exited at start:\n${consoleText}`);
  if (inspect && ON_DENO) {
    proxy.inspector = inspectorUrl(consoleText);
    if (!proxy.inspector) throw new Error(`no inspector URL in ${consolePath}`);
  }
  return proxy;
}

export interface Backend extends Process {
  port: number;
}

/** Starts tests/reliability/backend.ts on `port` (0: any) and waits until it listens. */
export async function startBackend(port: number, outPath?: string): Promise<Backend> {
  const cmd = [Deno.execPath(), "run", "-A", `${REPO}/tests/reliability/backend.ts`, String(port)];
  const { proc, stdout } = startProcess(cmd, outPath);
  track(proc);
  const line = await pollUntil(
    () => proc.status() ? "exited" : stdout().match(/listening (\d+)/)?.[1],
    30_000,
    "the backend to listen",
    20,
  );
  if (line === "exited") throw new Error(`the backend did not start (port ${port})`);
  return { ...proc, port: Number(line) };
}

/** Waits `ms`, but returns early once `stop()` is true (checked every 100 ms). */
export async function pause(ms: number, stop: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!stop() && Date.now() < end) await sleep(Math.min(100, end - Date.now()));
}
