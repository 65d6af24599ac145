/**
 * Public API: run the proxy from a stunnel.conf, or embed a Daemon with a Configuration.
 */
import { ConfigError, loadConfig, parseConfigText } from "./lib/config/parser.ts";
import { newRuntime, StartError } from "./lib/proxy/daemon.ts";
import { cstr, lib, O_RDWR, OpenSslMissing } from "./lib/sys/ffi.ts";
import { chooseTlsEngine, type TlsEngineChoice } from "./lib/tls/choice.ts";
import { refusalsOfRun } from "./lib/config/platform.ts";
import { platform, platformLine } from "./lib/sys/platform.ts";
import { runInetd } from "./lib/proxy/inetd.ts";
import { early, LogSink } from "./lib/sys/log.ts";
import { checkConfiguration } from "./lib/process/check.ts";
import { Notifier } from "./lib/sys/notify.ts";
import { openStartupLog } from "./lib/proxy/startup.ts";
import { Supervisor } from "./lib/process/supervisor.ts";
import type { Configuration } from "./lib/config/types.ts";

export { ConfigError, loadConfig } from "./lib/config/parser.ts";
export { Daemon, StartError } from "./lib/proxy/daemon.ts";
export { Supervisor } from "./lib/process/supervisor.ts";
export { LogSink } from "./lib/sys/log.ts";
export type * from "./lib/config/types.ts";

/** The stunnel release whose behaviour this implementation follows. */
export const STUNNEL_VERSION = "5.68";
export const VERSION = "0.1.0";

/** Set in the environment of the detached child that `foreground = no` starts. */
const DETACHED_ENV = "STUNNEL_DENO_DETACHED";
const READY = "ready\n";
/** The number of threads that serve connections (default: one per core). */
const THREADS_ENV = "STUNNEL_THREADS";

/** stunnel's banner; `tls`: the engine chosen (by default as `tlsEngine = auto` would). */
export function versionLines(tls?: TlsEngineChoice): string[] {
  const choice = tls ?? defaultChoice();
  // stunnel names its configure host (x86_64-pc-linux-gnu); elsewhere Deno's target.
  const host = Deno.build.os === "linux" ? `${Deno.build.arch}-pc-linux-gnu` : Deno.build.target;
  const head = [
    `stunnel ${STUNNEL_VERSION} on ${host} platform`,
    `stunnel-deno ${VERSION} (TypeScript on Deno ${Deno.version.deno})`,
  ];
  if (choice.openssl) {
    const { version, libssl, libcrypto } = choice.openssl;
    const openssl = version.replace(/^OpenSSL /, "");
    return [
      ...head,
      `Compiled with OpenSSL ${openssl}`,
      `Running  with OpenSSL ${openssl}`,
      `OpenSSL loaded from ${libssl} and ${libcrypto}`,
      platformLine(platform()),
      "Threading:DENO Sockets:DENO,IPv6 TLS:SNI",
    ];
  }
  return [
    ...head,
    `TLS engine: Deno's own TLS (rustls), ${choice.how}`,
    ...(choice.fallback ? [choice.fallback] : []),
    platformLine(platform()),
    "Threading:DENO Sockets:DENO,IPv6",
  ];
}

/** `-version` and friends: the engine `tlsEngine = auto` would run, with the environment's files. */
function defaultChoice(): TlsEngineChoice {
  try {
    return chooseTlsEngine({ tlsEngine: "auto" });
  } catch (e) {
    // STUNNEL_LIBSSL/LIBCRYPTO named files that do not load.
    return { engine: "deno", how: "no TLS engine", fallback: (e as Error).message };
  }
}

export type ConfigSource = { path: string } | { fd: number };

function load(source: ConfigSource): Promise<Configuration> {
  if ("path" in source) return loadConfig(source.path);
  // Through /dev/fd, a pipe or socket can be read as well as a file.
  const text = Deno.readTextFileSync(`/dev/fd/${source.fd}`);
  return Promise.resolve(parseConfigText(text, `descriptor ${source.fd}`));
}

/** Runs the daemon until a signal stops it; returns the process exit code. */
export async function run(source: ConfigSource): Promise<number> {
  const config = await loadOrReport(source);
  if (!config) return 1;
  const tls = chooseEngineOrReport(config);
  if (!tls) return 1;
  const { libc } = platform();
  if ("missing" in libc && libc.named) {
    early(3, `STUNNEL_LIBC: ${libc.missing}`);
    return 1;
  }
  const detached = Deno.env.get(DETACHED_ENV) === "1";
  if (config.global.foreground === "no" && !detached && !config.inetd) {
    return await detach();
  }
  if (config.inetd) return await runInetd(config, versionLines(tls));
  if (detached) lib().libc.setsid();
  return await runDaemon(config, source, detached, tls);
}

/**
 * The TLS engine (`tlsEngine`), before anything uses OpenSSL; undefined after logging why there
 * is none, or which options Deno's TLS cannot honour.
 */
function chooseEngineOrReport(config: Configuration): TlsEngineChoice | undefined {
  let tls: TlsEngineChoice;
  try {
    tls = chooseTlsEngine(config.global);
  } catch (e) {
    if (!(e instanceof OpenSslMissing)) throw e;
    early(3, e.message);
    early(3, "Configuration failed");
    return undefined;
  }
  const refused = refusalsOfRun(config, platform(), tls.engine === "deno" ? tls.how : undefined);
  if (refused.length === 0) return tls;
  if (tls.engine === "deno" && tls.fallback) early(3, tls.fallback);
  for (const line of refused) early(3, line);
  early(3, "Configuration failed");
  return undefined;
}

/**
 * `-check` (extension): parses and loads everything a start would, to stderr only, and says
 * `Configuration successful` (0) or why not (1); binds, forks and writes nothing.
 */
export async function check(source: ConfigSource): Promise<number> {
  const config = await loadOrReport(source);
  if (!config) return 1;
  const tls = chooseEngineOrReport(config);
  if (!tls) return 1;
  const global = { ...config.global, output: undefined, syslog: false };
  const sink = new LogSink(global, Math.max(global.debugLevel, 5));
  const log = sink.bind("ui", global.debugLevel);
  try {
    if (!await checkConfiguration(config, tls, log)) {
      log(3, "Configuration failed");
      return 1;
    }
    log(5, "Configuration successful");
    return 0;
  } finally {
    sink.close();
  }
}

/** The configuration, or undefined after logging why it cannot be read. */
async function loadOrReport(source: ConfigSource): Promise<Configuration | undefined> {
  try {
    return await load(source);
  } catch (e) {
    const lines = e instanceof ConfigError ? e.lines : [(e as Error).message];
    for (const line of lines) early(3, line);
    early(3, "Configuration failed");
    return undefined;
  }
}

/** The Supervisor of the services, from its start until a signal stops it. */
async function runDaemon(
  config: Configuration,
  source: ConfigSource,
  detached: boolean,
  tls: TlsEngineChoice,
): Promise<number> {
  const started = openStartupLog(config, versionLines(tls));
  if (!started) return 1;
  const { sink, ui } = started;
  // A detached daemon's launcher shows the errors of its start-up only if it fails.
  if (detached) sink.heldBack = [];
  const threads = threadCount(config);
  const supervisor = new Supervisor(
    config,
    () => load(source),
    sink,
    newRuntime(threads > 1, tls),
    threads,
    Deno.env.has(THREADS_ENV),
    Notifier.fromEnvironment(),
  );
  try {
    await supervisor.start();
  } catch (e) {
    if (!(e instanceof StartError)) ui(3, (e as Error).message);
    ui(3, "Configuration failed");
    for (const line of sink.heldBack ?? []) Deno.stderr.writeSync(line);
    sink.close();
    return 1;
  }
  if (detached) {
    // The launcher exits once it reads this; the daemon then lets go of its pipes.
    await Deno.stdout.write(new TextEncoder().encode(READY));
    sink.heldBack = undefined;
    detachStdio();
  }
  await supervisor.wait();
  return 0;
}

/**
 * Up to one thread per core, each with its own listening socket per service (SO_REUSEPORT),
 * where every accept address allows it (a fixed TCP port). STUNNEL_THREADS=N asks for exactly
 * N threads from the start; by default threads are added while the running ones are saturated.
 */
function threadCount(config: Configuration): number {
  const wanted = Number(Deno.env.get(THREADS_ENV) ?? navigator.hardwareConcurrency ?? 1);
  if (!(wanted > 1)) return 1;
  const shareable = config.services.every((s) =>
    s.accept.length > 0 && s.accept.every((a) => a.kind === "tcp" && a.port !== 0)
  );
  return shareable && reusePortWorks() ? Math.min(Math.floor(wanted), 64) : 1;
}

/** SO_REUSEPORT needs Deno's `net` unstable feature (deno.json); without it, one thread. */
function reusePortWorks(): boolean {
  try {
    Deno.listen({ hostname: "127.0.0.1", port: 0, reusePort: true }).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * `foreground = no`: a detached copy of this process (in a new session) runs the daemon; we
 * relay its start-up messages and exit with success once it is accepting connections.
 */
async function detach(): Promise<number> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...execArgs(), ...Deno.args],
    env: { [DETACHED_ENV]: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    detached: true,
  }).spawn();
  const relay = child.stderr.pipeTo(
    new WritableStream({ write: (chunk) => void Deno.stderr.writeSync(chunk) }),
  ).catch(() => {});
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  const ready = value !== undefined && new TextDecoder().decode(value) === READY;
  if (!ready) {
    await relay;
    return (await child.status).code || 1;
  }
  reader.releaseLock();
  child.unref();
  return 0;
}

/** Points stdout and stderr at /dev/null, so that no write can fail on a closed pipe. */
function detachStdio(): void {
  const { libc } = lib();
  const fd = libc.open(cstr("/dev/null"), O_RDWR);
  if (fd < 0) return;
  libc.dup2(fd, 1);
  libc.dup2(fd, 2);
  if (fd > 2) libc.close(fd);
}

/** The runtime arguments this process was started with (`run -A main.ts`, or none if compiled). */
function execArgs(): string[] {
  const main = new URL("./main.ts", import.meta.url);
  return main.protocol === "file:" ? ["run", "-A", main.pathname] : [];
}
