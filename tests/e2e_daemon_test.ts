/**
 * End-to-end: the daemon side. A SIGHUP with a broken configuration, `foreground = no` with a
 * pid file, `log = append | overwrite`, `logId = process | unique`, dropping privileges into a
 * chroot jail (as root), SIGUSR2's connection list and `syslog = yes`.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_daemon_test.ts
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  assertNotMatch,
  escapeRegExp,
} from "./harness/assert.ts";
import { PROXY } from "./harness/command.ts";
import {
  echoRoundTrip,
  echoServer,
  freePorts,
  isListening,
  tlsConnect,
  waitForPort,
  waitForPortClosed,
} from "./harness/net.ts";
import { makePki, serverCertLines } from "./harness/pki.ts";
import { e2e, type Scope, spawn, type Spawned } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { pollUntil, sleep } from "./harness/timing.ts";

function service(name: string, accept: number, connect: number): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n`;
}

/** A TLS connection to `port` that echoes `message`; returns the client's local port. */
async function tlsRoundTrip(port: number, message: string): Promise<number> {
  const pki = await makePki();
  const conn = await tlsConnect(port, pki.caPem);
  try {
    await echoRoundTrip(conn, message);
    return (conn.localAddr as Deno.NetAddr).port;
  } finally {
    conn.close();
  }
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch {
    return undefined;
  }
}

/** The State letter of /proc/PID/status, or undefined once the process is gone. */
async function procState(pid: number): Promise<string | undefined> {
  const status = await readIfExists(`/proc/${pid}/status`);
  return status?.match(/^State:\s+(\S)/m)?.[1];
}

/** A process counts as alive if it exists and is not a zombie (nobody may reap it here). */
async function alive(pid: number): Promise<boolean> {
  const state = await procState(pid);
  return state !== undefined && state !== "Z";
}

/** The numeric fields of a `Uid:` or `Gid:` line of /proc/PID/status. */
async function procIds(pid: number, field: "Uid" | "Gid"): Promise<number[]> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const m = status.match(new RegExp(`^${field}:\\s+(.*)$`, "m"));
  assert(m, `no ${field} line in /proc/${pid}/status`);
  return m[1].trim().split(/\s+/).map(Number);
}

/** The first name in an /etc/passwd or /etc/group style file whose numeric id is `id`. */
function nameOfId(file: string, id: number): string | undefined {
  try {
    for (const line of Deno.readTextFileSync(file).split("\n")) {
      const f = line.split(":");
      if (f.length > 2 && Number(f[2]) === id && f[2] !== "") return f[0];
    }
  } catch {
    // no such file
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------

e2e("SIGHUP with a broken configuration: the old service keeps serving", {}, async () => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const good = GLOBALS + await serverCertLines() + service("keep", port, echo.port);
  const proxy = await startProxy(good);
  await tlsRoundTrip(port, "before\n");

  const broken = good + "this line has no equals sign\n";
  const line = broken.split("\n").indexOf("this line has no equals sign") + 1;
  await proxy.writeConfig(broken);
  proxy.signal("SIGHUP");
  await proxy.waitForLog(
    new RegExp(
      `${escapeRegExp(proxy.confPath)}:${line}: "this line has no equals sign": No '=' found`,
    ),
  );
  await proxy.waitForLog(/Failed to reload the configuration file/);

  assert(proxy.process.running, "the proxy exited after a failed reload");
  assert(await isListening(port), "the old service stopped listening after a failed reload");
  await tlsRoundTrip(port, "after the failed reload\n");
  await proxy.waitForLog(
    /Connection closed: 24 byte\(s\) sent to TLS, 24 byte\(s\) sent to socket/,
  );
  assert(proxy.process.running, "the proxy exited");
});

e2e("SIGHUP with a broken configuration: stunnel's log lines, in order", {}, async () => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const good = GLOBALS + await serverCertLines() + service("keep", port, echo.port);
  const proxy = await startProxy(good);
  const before = proxy.log().length;
  await proxy.writeConfig(good + "noSuchOption = 1\n");
  proxy.signal("SIGHUP");
  await proxy.waitForLog(/Failed to reload the configuration file/);
  const after = proxy.log().slice(before);
  const line = good.split("\n").length; // the appended line
  assertMatch(
    after,
    new RegExp(
      `${
        escapeRegExp(proxy.confPath)
      }:${line}: "noSuchOption = 1": Specified option name is not valid ` +
        `here\\n(?:.*\\n)*?.*Configuration failed\\n(?:.*\\n)*?.*Failed to reload the ` +
        `configuration file`,
    ),
  );
  await tlsRoundTrip(port, "still here\n");
});

interface Daemonized {
  port: number;
  confPath: string;
  pidFile: string;
  logFile: string;
  launcher: Spawned;
  /** The daemon's pid, read from the pid file. */
  pid: number;
  /** The log file, for failure messages. */
  logText(): Promise<string>;
}

/**
 * Starts the proxy with `foreground = no`, `pid = FILE` and `output = FILE`; checks that the
 * launched command exits 0 within a few seconds and that the pid file names a live daemon
 * (running our config) that is not the launched process, and that the port listens. The
 * daemon is killed when the scope closes, if it is still the one started here.
 */
async function daemonize(scope: Scope): Promise<Daemonized> {
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-daemon-");
  const pidFile = `${dir}/proxy.pid`;
  const logFile = `${dir}/proxy.log`;
  const confPath = `${dir}/stunnel.conf`;
  await Deno.writeTextFile(
    confPath,
    `foreground = no\npid = ${pidFile}\noutput = ${logFile}\nsyslog = no\ndebug = debug\n` +
      await serverCertLines() + service("bg", port, echo.port),
  );
  const logText = async () => `log file:\n${(await readIfExists(logFile)) ?? "(none)"}`;

  let daemonPid: number | undefined = undefined;
  scope.defer(async () => {
    const pid = daemonPid ?? Number((await readIfExists(pidFile))?.trim() || NaN);
    if (!Number.isInteger(pid) || !(await alive(pid))) return;
    const cmdline = (await readIfExists(`/proc/${pid}/cmdline`)) ?? "";
    if (cmdline.includes(confPath)) Deno.kill(pid, "SIGKILL");
  });

  const started = Date.now();
  const launcher = spawn([...PROXY, confPath], { stdin: false });
  const status = await launcher.wait(15_000);
  const elapsed = Date.now() - started;
  assertEquals(status.code, 0, `launcher failed: ${launcher.output.text()}\n${await logText()}`);
  assert(elapsed < 8000, `the launcher took ${elapsed} ms to exit`);

  const pidText = await pollUntil(
    async () => (await readIfExists(pidFile))?.match(/^\d+\n?$/)?.[0],
    10_000,
    "the pid file",
  );
  daemonPid = Number(pidText.trim());
  assertNotEquals(daemonPid, launcher.pid, "the pid file holds the launcher's pid");
  await waitForPort(port, 10_000);
  assert(await alive(daemonPid), `pid ${daemonPid} from the pid file is not running`);
  const cmdline = (await readIfExists(`/proc/${daemonPid}/cmdline`)) ?? "";
  assert(cmdline.includes(confPath), `pid ${daemonPid} is not our daemon: ${cmdline}`);
  return { port, confPath, pidFile, logFile, launcher, pid: daemonPid, logText };
}

e2e("foreground = no: the launcher exits 0 and the daemon runs on its own", {}, async (scope) => {
  const d = await daemonize(scope);
  try {
    const local = await tlsRoundTrip(d.port, "daemonized\n");
    await pollUntil(
      async () =>
        new RegExp(`accepted connection from 127\\.0\\.0\\.1:${local}`).test(
          (await readIfExists(d.logFile)) ?? "",
        ),
      10_000,
      "the connection in the log file",
    );

    Deno.kill(d.pid, "SIGTERM");
    await pollUntil(async () => !(await alive(d.pid)), 10_000, "the daemon to exit");
    await pollUntil(
      async () => (await readIfExists(d.pidFile)) === undefined,
      5000,
      "pid file removal",
    );
    await waitForPortClosed(d.port, 5000);
    assertMatch((await readIfExists(d.logFile)) ?? "", /Terminated/);
  } catch (e) {
    console.error(await d.logText());
    throw e;
  }
});

e2e("foreground = no: the daemon lets go of the launcher's stdio", {}, async (scope) => {
  // stunnel's daemon points its stdin, stdout and stderr at /dev/null and logs only to the
  // output file, so nothing waits on (or writes into) the pipes of whoever launched it.
  const d = await daemonize(scope);
  for (const fd of [0, 1, 2]) {
    assertEquals(
      await Deno.readLink(`/proc/${d.pid}/fd/${fd}`),
      "/dev/null",
      `fd ${fd} of the daemon`,
    );
  }
  assertEquals(d.launcher.output.text(), "", "the launcher printed something on success");
});

async function startWithLogMode(scope: Scope, mode: "append" | "overwrite"): Promise<string> {
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-logmode-");
  const logFile = `${dir}/proxy.log`;
  await Deno.writeTextFile(logFile, "PRE-EXISTING LINE\n");
  const proxy = await startProxy(
    GLOBALS + `output = ${logFile}\nlog = ${mode}\n` + await serverCertLines() +
      service("logmode", port, echo.port),
    { dir },
  );
  await tlsRoundTrip(port, "logged\n");
  await pollUntil(
    async () => /Connection closed/.test((await readIfExists(logFile)) ?? ""),
    10_000,
    "the connection in the log file",
  );
  await proxy.stop();
  return await Deno.readTextFile(logFile);
}

e2e("log = append keeps what the output file held", {}, async (scope) => {
  const text = await startWithLogMode(scope, "append");
  assert(text.startsWith("PRE-EXISTING LINE\n"), `old content lost:\n${text}`);
  assertMatch(text, /Configuration successful/);
});

e2e("log = overwrite truncates the output file", {}, async (scope) => {
  const text = await startWithLogMode(scope, "overwrite");
  assertNotMatch(text, /PRE-EXISTING LINE/);
  assertMatch(text, /Configuration successful/);
  assertMatch(text, /Connection closed/);
});

e2e("logId = process: connection lines carry the daemon's pid", {}, async () => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + "logId = process\n" + await serverCertLines() + service("p", port, echo.port),
  );
  const local = await tlsRoundTrip(port, "pid\n");
  await proxy.waitForLog(new RegExp(`LOG5\\[${proxy.pid}\\]: Connection closed`));
  assertMatch(
    proxy.log(),
    new RegExp(
      `LOG5\\[${proxy.pid}\\]: Service \\[p\\] accepted connection from 127\\.0\\.0\\.1:${local}`,
    ),
  );
});

e2e("logId = unique: a non-numeric id per connection", {}, async () => {
  // stunnel 5.68 prints 22 base64 characters (e.g. LOG5[SxGewkkFZ3eZdTq9aEOqUO]); only the
  // shared properties are checked: not a number, constant for a connection, unique per one.
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + "logId = unique\n" + await serverCertLines() + service("u", port, echo.port),
  );
  const ids: string[] = [];
  for (const message of ["one\n", "two\n"]) {
    const local = await tlsRoundTrip(port, message);
    const m = await proxy.waitForLog(
      new RegExp(
        `LOG5\\[([^\\]]+)\\]: Service \\[u\\] accepted connection from 127\\.0\\.0\\.1:${local}`,
      ),
    );
    const id = m[1];
    assertMatch(id, /^[!-~]{8,}$/, "the id is printable and at least 8 characters");
    assertNotMatch(id, /^\d+$/, "the id is a number");
    assertNotEquals(id, "ui");
    assertNotEquals(id, String(proxy.pid));
    await proxy.waitForLog(new RegExp(`LOG5\\[${escapeRegExp(id)}\\]: Connection closed`));
    ids.push(id);
  }
  assertNotEquals(ids[0], ids[1], "two connections share an id");
});

const NOBODY = nameOfId("/etc/passwd", 65534);
const NOGROUP = nameOfId("/etc/group", 65534);
const canDropPrivileges = Deno.uid() === 0 && NOBODY !== undefined && NOGROUP !== undefined;
if (!canDropPrivileges) {
  console.error(
    "e2e_daemon: skipping the setuid/setgid/chroot test " +
      (Deno.uid() !== 0 ? "(not running as root)" : "(no user or group with id 65534)"),
  );
}

e2e(
  "setuid, setgid and chroot: ids 65534, root in the jail, TLS still works",
  { ignore: !canDropPrivileges },
  async (scope) => {
    const echo = echoServer();
    const [port] = freePorts(1);
    const jail = await Deno.realPath(await scope.tempDir("e2e-jail-"));
    // No pid file: stunnel would write it inside the jail after chroot.
    const proxy = await startProxy(
      GLOBALS + `chroot = ${jail}\nsetuid = ${NOBODY}\nsetgid = ${NOGROUP}\n` +
        await serverCertLines() + service("jailed", port, echo.port),
    );
    // The ids change after the listener is bound: wait for them.
    await pollUntil(
      async () => {
        assert(proxy.process.running, "the proxy exited after it had bound its port");
        return (await procIds(proxy.pid, "Uid")).every((x) => x === 65534);
      },
      10_000,
      "the uid to become 65534",
    );
    assertEquals(await procIds(proxy.pid, "Uid"), [65534, 65534, 65534, 65534]);
    assertEquals(await procIds(proxy.pid, "Gid"), [65534, 65534, 65534, 65534]);
    assertEquals(await Deno.readLink(`/proc/${proxy.pid}/root`), jail);
    await tlsRoundTrip(port, "from inside the jail\n");
    await proxy.waitForLog(/Connection closed: 21 byte\(s\) sent to TLS, 21 byte\(s\) sent/);
    assert(proxy.process.running);
  },
);

e2e("SIGUSR2 does not stop the daemon", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(GLOBALS + await serverCertLines() + service("s", port, echo.port));
  const open = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(open, "hello\n");
  proxy.signal("SIGUSR2");
  await proxy.waitForLog(/Active connections/);
  await sleep(200);
  assert(proxy.process.running, "the proxy exited on SIGUSR2");
  await echoRoundTrip(open, "still open\n");
  open.close();
  await tlsRoundTrip(port, "new connection\n");
  assert(proxy.process.running, "the proxy exited");
});

e2e("SIGUSR2 lists the active connections as stunnel does", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(GLOBALS + await serverCertLines() + service("s", port, echo.port));
  const open = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(open, "hello\n");
  proxy.signal("SIGUSR2");
  await proxy.waitForLog(/Listed \d+ active connection\(s\)/, 5000);
  const log = proxy.log();
  // The byte counts are not checked: stunnel 5.68 showed "0 byte(s) sent to TLS" here although
  // the echo had already arrived (its counters lag behind the transfer).
  assertMatch(log, /LOG0\[ui\]: Active connections:\n/);
  assertMatch(
    log,
    /LOG0\[ui\]: Active connection \d+: Service \[s\], \d+ byte\(s\) sent to TLS, \d+ byte\(s\) sent to socket\n/,
  );
  assertMatch(log, /LOG0\[ui\]: Listed 1 active connection\(s\)\n/);
  open.close();
});

e2e("syslog = yes does not break start-up", {}, async () => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    "foreground = yes\npid =\nsyslog = yes\ndebug = debug\n" + await serverCertLines() +
      service("sys", port, echo.port),
  );
  await tlsRoundTrip(port, "syslog\n");
  await proxy.waitForLog(/Connection closed: 7 byte\(s\) sent to TLS, 7 byte\(s\) sent to socket/);
  assert(proxy.process.running);
});
