/**
 * End-to-end: what stunnel's own test suite (tests/ of the stunnel 5.68 source) and monitoring
 * scripts wait for in the log, debug lines included: port 0 in `connect`/`redirect`, a service
 * with several `accept` lines of which some cannot bind, the lines of a reload, inetd mode on
 * pipes, connect+exec sections (`retry`, resumed sessions, `delay`), and the debug lines of one
 * connection of each kind.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_upstream_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { closeQuietly, decode, encode, LineReader, readAll, writeAll } from "./harness/bytes.ts";
import { PROXY } from "./harness/command.ts";
import {
  echoRoundTrip,
  echoServer,
  freePorts,
  tcpConnect,
  tcpServer,
  tlsConnect,
  waitForPortClosed,
} from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { pollUntil } from "./harness/timing.ts";

// ---------------------------------------------------------------------------------------------
// Port 0 outside `accept`: accepted when the file is read, a failure only when used

e2e("connect = 127.0.0.1:0 is accepted and fails only when a client comes", {}, async () => {
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[zero]\nclient = yes\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:0\n`,
  );
  // The client gets nothing: the connection ends (stunnel resets it, even before a write).
  const got = await tcpConnect(port).then(async (conn) => {
    await writeAll(conn, encode("hello\n"));
    return (await readAll(conn)).length;
  }).catch(() => 0);
  assertEquals(got, 0);
  await proxy.waitForLog(/s_connect: connect 127\.0\.0\.1:0: Connection refused \(111\)/);
  await proxy.waitForLog(/No more addresses to connect/);
});

e2e("redirect = 127.0.0.1:0: an authenticated client goes to connect", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  await startProxy(
    GLOBALS + `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      `redirect = 127.0.0.1:0\ncert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
      `CAfile = ${pki.ca}\nverifyChain = yes\n`,
  );
  const tls = await tlsConnect(port, pki.caPem, {
    cert: await Deno.readTextFile(pki.client.cert),
    key: await Deno.readTextFile(pki.client.key),
  });
  await echoRoundTrip(tls, "not redirected\n");
  tls.close();
  assertEquals(echo.connections, 1);
});

// ---------------------------------------------------------------------------------------------
// Several `accept` lines: an address that cannot be bound is left out

e2e("accept lines: a busy address is logged and left out, the others serve", {}, async (s) => {
  const pki = await makePki();
  const echo = echoServer();
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  s.defer(() => busy.close());
  const busyPort = (busy.addr as Deno.NetAddr).port;
  const [a, b] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS + `[multi]\naccept = 127.0.0.1:${a}\naccept = 127.0.0.1:${busyPort}\n` +
      `accept = 127.0.0.1:${b}\nconnect = 127.0.0.1:${echo.port}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
    { waitPorts: [a, b] },
  );
  await proxy.waitForLog(/Accepting new connections/);
  assertMatch(
    proxy.log(),
    new RegExp(
      `Binding service \\[multi\\] to 127\\.0\\.0\\.1:${busyPort}: ` +
        "Address already in use \\(98\\)",
    ),
  );
  for (const port of [a, b]) {
    assertMatch(
      proxy.log(),
      new RegExp(`Service \\[multi\\] \\(FD=\\d+\\) bound to 127\\.0\\.0\\.1:${port}$`, "m"),
    );
    const tls = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(tls, `via ${port}\n`);
    tls.close();
  }
});

e2e("accept lines: a service with no address bound fails", {}, async (s) => {
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  s.defer(() => busy.close());
  const busyPort = (busy.addr as Deno.NetAddr).port;
  const proxy = await startProxy(
    GLOBALS + `[none]\nclient = yes\naccept = 127.0.0.1:${busyPort}\nconnect = 127.0.0.1:1\n`,
    { waitPorts: [], allowFailure: true },
  );
  const status = await proxy.exited;
  assert(!status.success, "the proxy must not run without a bound address");
  assertMatch(proxy.log(), /Binding service \[none\] to 127\.0\.0\.1:\d+: Address already in use/);
  assertMatch(proxy.log(), /Binding service \[none\] failed/);
});

// ---------------------------------------------------------------------------------------------
// Reload: the lines that say which addresses the new configuration listens on

/** The port of the last `Service [NAME] (FD=N) bound to 127.0.0.1:PORT` line in `log`. */
function lastBoundPort(log: string, name: string): number {
  const re = new RegExp(
    `Service \\[${name}\\] \\(FD=\\d+\\) bound to 127\\.0\\.0\\.1:(\\d+)$`,
    "gm",
  );
  const all = [...log.matchAll(re)];
  assert(all.length > 0, `no bound line of [${name}]`);
  return Number(all[all.length - 1][1]);
}

e2e("reload: unbinding and binding lines; accept on port 0 is served", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const conf = (extra: string) =>
    GLOBALS + `[r]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n${extra}`;
  const proxy = await startProxy(conf(""), { waitPorts: [] });
  await proxy.waitForLog(/Accepting new connections/);
  await proxy.writeConfig(conf("TIMEOUTidle = 60\n"));
  const before = proxy.log().length;
  proxy.signal("SIGHUP");
  // What a tool waiting for the reload sees: the old service unbound, the new one bound (ours
  // binds the new one first, so that a failure can keep the old configuration).
  await proxy.waitForLogCount(/Service \[r\] \(FD=\d+\) bound to/, 2);
  await proxy.waitForLog(/Service \[r\] closed$/m);
  const after = proxy.log().slice(before);
  assertMatch(after, /Unbinding service \[r\]/);
  assertMatch(after, /Binding service \[r\]$/m);
  const port = lastBoundPort(after, "r");
  const tls = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(tls, "after the reload\n");
  tls.close();
});

e2e("reload: a changed accept address is closed and the new one bound", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [p1, p2] = freePorts(2);
  const conf = (port: number) =>
    GLOBALS + `[r]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const proxy = await startProxy(conf(p1));
  await proxy.writeConfig(conf(p2));
  proxy.signal("SIGHUP");
  await proxy.waitForLog(
    new RegExp(`Service \\[r\\] \\(FD=\\d+\\) bound to 127\\.0\\.0\\.1:${p2}$`, "m"),
  );
  await proxy.waitForLog(/Service \[r\] closed \(FD=\d+\)/);
  await waitForPortClosed(p1);
  const tls = await tlsConnect(p2, pki.caPem);
  await echoRoundTrip(tls, "on the new port\n");
  tls.close();
});

// ---------------------------------------------------------------------------------------------
// Inetd mode on pipes (a program that starts the proxy with its stdin and stdout)

/** A TLS server that answers each connection's first line with "got LINE" and closes it. */
async function tlsAnswerer(scope: Scope): Promise<number> {
  const pki = await makePki();
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(pki.serverEc.cert),
    key: await Deno.readTextFile(pki.serverEc.key),
  });
  scope.defer(() => listener.close());
  (async () => {
    for await (const conn of listener) {
      const lines = new LineReader(conn);
      lines.readLine(10_000).then((line) => writeAll(conn, encode(`got ${line}`)))
        .catch(() => {}).finally(() => closeQuietly(conn));
    }
  })().catch(() => {});
  return (listener.addr as Deno.NetAddr).port;
}

e2e("inetd mode on pipes: started, and accepted from nobody", {}, async (s) => {
  const port = await tlsAnswerer(s);
  const dir = await s.tempDir("e2e-upstream-");
  const conf = `${dir}/stunnel.conf`;
  await Deno.writeTextFile(
    conf,
    `foreground = yes\ndebug = debug\nsyslog = no\nservice = inetd\nclient = yes\n` +
      `connect = 127.0.0.1:${port}\n`,
  );
  const proxy = spawn([...PROXY, conf]);
  // Tools start talking once this line is there.
  await proxy.stderr.waitFor(
    () => /LOG7\[0\]: Service \[inetd\] started$/m.test(proxy.stderr.text()),
    10_000,
    "Service [inetd] started",
  );
  await proxy.write("hello\n");
  assertEquals(decode(await proxy.readStdout("got hello\n".length)), "got hello\n");
  await proxy.closeStdin();
  assert((await proxy.exited).success, "the proxy ends with the connection");
  assertMatch(proxy.stderr.text(), /LOG5\[0\]: Service \[inetd\] accepted connection$/m);
  // The TLS server ended first: stdout, a pipe, is closed (a socket would be shut down).
  assertMatch(proxy.stderr.text(), /LOG7\[0\]: Closing the file descriptor$/m);
});

// ---------------------------------------------------------------------------------------------
// connect+exec sections: the program is the client side, on one end of a loopback socket pair

/**
 * A connect+exec program: says whether its stdin is a socket, reads the answer (an echo) and
 * appends it to `results`, then ends (the section's connection with it).
 */
async function roundTrip(scope: Scope): Promise<{ program: string; results: string }> {
  const dir = await scope.tempDir("e2e-upstream-");
  const program = `${dir}/round.sh`;
  const results = `${dir}/results`;
  await Deno.writeTextFile(
    program,
    `#!/bin/sh\nif [ -S /dev/stdin ]; then echo socket; else echo pipe; fi\n` +
      `read reply\necho "$reply" >> ${results}\n`,
  );
  await Deno.chmod(program, 0o755);
  return { program, results };
}

async function resultLines(results: string): Promise<string[]> {
  const text = await Deno.readTextFile(results).catch(() => "");
  return text.split("\n").filter((l) => l !== "");
}

/** Server-mode services s1..sN in one proxy, each to the echo backend; returns their ports. */
async function tlsServers(n: number, backend: number): Promise<{ proxy: Proxy; ports: number[] }> {
  const pki = await makePki();
  const ports = freePorts(n);
  const sections = ports.map((port, i) =>
    `[s${i + 1}]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`
  );
  return { proxy: await startProxy(GLOBALS + sections.join("")), ports };
}

/** Each TLS handshake the server proxy logged, in order: its service and whether it resumed. */
function handshakes(log: string): { service: string; reused: boolean }[] {
  const services = new Map<string, string>();
  const found: { service: string; reused: boolean }[] = [];
  for (const line of log.split("\n")) {
    const accepted = /LOG5\[([^\]]+)\]: Service \[([^\]]+)\] accepted connection/.exec(line);
    if (accepted) services.set(accepted[1], accepted[2]);
    const tls = /LOG6\[([^\]]+)\]: TLS accepted: (previous session reused|new session)/.exec(line);
    if (tls) found.push({ service: services.get(tls[1]) ?? "?", reused: tls[2] !== "new session" });
  }
  return found;
}

e2e("connect+exec: started after the binding, retried, resuming its session", {}, async (s) => {
  const echo = echoServer();
  const { proxy: server, ports } = await tlsServers(1, echo.port);
  const { program, results } = await roundTrip(s);
  const client = await startProxy(
    GLOBALS + `[c]\nclient = yes\nexec = ${program}\nconnect = 127.0.0.1:${ports[0]}\n` +
      "retry = yes\n",
    { waitPorts: [] },
  );
  await pollUntil(async () => (await resultLines(results)).length >= 3, 20_000, "three rounds");
  // The program's stdin and stdout are a socket, as in stunnel.
  assertEquals((await resultLines(results)).slice(0, 3), ["socket", "socket", "socket"]);
  const log = client.log();
  const at = (re: RegExp) => log.search(re);
  assert(at(/Skipped exec\+connect service \[c\]/) >= 0, "no Skipped line");
  assert(
    at(/Skipped exec\+connect service \[c\]/) < at(/Starting exec\+connect service \[c\]/),
    "Starting before Skipped",
  );
  assert(
    at(/Starting exec\+connect service \[c\]/) < at(/Accepting new connections/),
    "Accepting new connections before Starting",
  );
  assertMatch(log, /LOG5\[\d+_0\]: Service \[c\] accepted connection from 127\.0\.0\.1:\d+$/m);
  assertMatch(log, /LOG6\[\d+_0\]: Retrying an exec\+connect section/);
  assertMatch(log, /LOG5\[\d+_1\]: Service \[c\] accepted connection from 127\.0\.0\.1:\d+$/m);
  const first = handshakes(server.log()).slice(0, 3);
  assertEquals(first.map((h) => h.reused), [false, true, true]);
});

for (const delay of ["yes", "no"]) {
  e2e(`connect+exec: delay = ${delay}, failover = rr, sessions per target`, {}, async (s) => {
    const echo = echoServer();
    const { proxy: server, ports } = await tlsServers(3, echo.port);
    const { program, results } = await roundTrip(s);
    const client = await startProxy(
      GLOBALS + `[c]\nclient = yes\nexec = ${program}\n` +
        ports.map((p) => `connect = 127.0.0.1:${p}\n`).join("") +
        `delay = ${delay}\nfailover = rr\nretry = yes\n`,
      { waitPorts: [] },
    );
    await pollUntil(async () => (await resultLines(results)).length >= 3, 20_000, "three rounds");
    const first = handshakes(server.log()).slice(0, 3);
    const strategy = delay === "yes" ? "priority" : "round-robin";
    assertMatch(client.log(), new RegExp(`LOG6\\[\\d+_0\\]: failover: ${strategy}, starting at`));
    if (delay === "yes") {
      // The delayed resolver means failover = prio: always the first target, resumed.
      assertEquals(first, [
        { service: "s1", reused: false },
        { service: "s1", reused: true },
        { service: "s1", reused: true },
      ]);
    } else {
      // Round robin: each target once, each with a session of its own.
      assertEquals(new Set(first.map((h) => h.service)).size, 3);
      assertEquals(first.map((h) => h.reused), [false, false, false]);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The debug lines of one connection of each kind

/** Asserts that lines matching `patterns` appear in `log` in this order (others in between). */
function assertInOrder(log: string, patterns: RegExp[]): void {
  let at = 0;
  for (const re of patterns) {
    const m = new RegExp(re.source, re.flags.replace("g", "") + "m").exec(log.slice(at));
    assert(m !== null, `no line matching ${re} after offset ${at} in:\n${log.slice(at)}`);
    at += m.index + m[0].length;
  }
}

e2e("debug lines: a server-mode connection", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  const tls = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(tls, "debug\n");
  tls.close();
  await proxy.waitForLog(/Service \[s\] finished/);
  assertInOrder(proxy.log(), [
    /LOG7\[\d+\]: Service \[s\] started$/,
    /LOG5\[\d+\]: Service \[s\] accepted connection from 127\.0\.0\.1:\d+$/,
    /LOG6\[\d+\]: TLS accepted: new session negotiated$/,
    /LOG6\[\d+\]: TLSv1\.3 ciphersuite: TLS_\w+ \(\d+-bit encryption\)$/,
    /LOG6\[\d+\]: Peer temporary key: X25519, 253 bits$/,
    /LOG6\[\d+\]: s_connect: connecting 127\.0\.0\.1:\d+$/,
    /LOG5\[\d+\]: s_connect: connected 127\.0\.0\.1:\d+$/,
    /LOG5\[\d+\]: Service \[s\] connected remote server from 127\.0\.0\.1:\d+$/,
    /LOG7\[\d+\]: Option TCP_NODELAY set on remote socket$/,
    /LOG6\[\d+\]: TLS closed \(SSL_read\)$/,
    /LOG7\[\d+\]: Sent socket write shutdown$/,
    /LOG5\[\d+\]: Connection closed: 6 byte\(s\) sent to TLS, 6 byte\(s\) sent to socket$/,
    /LOG7\[\d+\]: Service \[s\] finished \(0 left\)$/,
  ]);
  assertMatch(proxy.log(), /LOG7\[\d+\]: Option TCP_NODELAY set on local socket$/m);
});

e2e("debug lines: a client-mode connection, failing over to the second target", {}, async (s) => {
  const port = await tlsAnswerer(s);
  const [accept, dead] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS + `[c]\nclient = yes\naccept = 127.0.0.1:${accept}\n` +
      `connect = 127.0.0.1:${dead}\nconnect = 127.0.0.1:${port}\n`,
  );
  const conn = await tcpConnect(accept);
  await writeAll(conn, encode("hello\n"));
  assertEquals(decode(await readAll(conn)), "got hello\n");
  conn.close();
  await proxy.waitForLog(/Service \[c\] finished/);
  assertInOrder(proxy.log(), [
    /LOG7\[\d+\]: Service \[c\] started$/,
    /LOG5\[\d+\]: Service \[c\] accepted connection from 127\.0\.0\.1:\d+$/,
    /LOG6\[\d+\]: failover: priority, starting at entry #0$/,
    new RegExp(`LOG3\\[\\d+\\]: s_connect: connect 127\\.0\\.0\\.1:${dead}: Connection refused`),
    new RegExp(`LOG5\\[\\d+\\]: s_connect: connected 127\\.0\\.0\\.1:${port}$`),
    /LOG5\[\d+\]: Service \[c\] connected remote server from 127\.0\.0\.1:\d+$/,
    /LOG7\[\d+\]: Option TCP_NODELAY set on remote socket$/,
    /LOG6\[\d+\]: SNI: sending servername: 127\.0\.0\.1$/,
    /LOG6\[\d+\]: TLS connected: new session negotiated$/,
    /LOG6\[\d+\]: Peer temporary key: X25519, 253 bits$/,
    /LOG5\[\d+\]: Connection closed: 6 byte\(s\) sent to TLS, 10 byte\(s\) sent to socket$/,
  ]);
  assertMatch(proxy.log(), /LOG7\[ui\]: No certificate or private key specified$/m);
});

e2e("debug lines: the backend ends first, close_notify goes to the client", {}, async () => {
  const pki = await makePki();
  const backend = tcpServer(async (conn) => {
    await writeAll(conn, encode("bye\n"));
  });
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  const tls = await tlsConnect(port, pki.caPem);
  assertEquals(decode(await readAll(tls)), "bye\n");
  tls.close();
  await proxy.waitForLog(/Service \[s\] finished/);
  assertInOrder(proxy.log(), [
    /LOG6\[\d+\]: Read socket closed \(\w+( \w+)?\)$/,
    /LOG7\[\d+\]: Sending close_notify alert$/,
    /LOG6\[\d+\]: SSL_shutdown successfully sent close_notify alert$/,
    /LOG5\[\d+\]: Connection closed: 4 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket$/,
  ]);
});

e2e("a private key that others may read is a warning", {}, async (s) => {
  const pki = await makePki();
  const dir = await s.tempDir("e2e-upstream-");
  const open = `${dir}/open.key`;
  const closed = `${dir}/closed.key`;
  for (const [file, mode] of [[open, 0o604], [closed, 0o640]] as const) {
    await Deno.copyFile(pki.serverEc.key, file);
    await Deno.chmod(file, mode);
  }
  const [a, b] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS + `[open]\naccept = 127.0.0.1:${a}\nconnect = 127.0.0.1:1\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${open}\n` +
      `[closed]\naccept = 127.0.0.1:${b}\nconnect = 127.0.0.1:1\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${closed}\n`,
  );
  assertInOrder(proxy.log(), [
    new RegExp(`LOG6\\[ui\\]: Loading private key from file: ${open}$`),
    new RegExp(`LOG4\\[ui\\]: Insecure file permissions on ${open}$`),
    new RegExp(`LOG6\\[ui\\]: Private key loaded from file: ${open}$`),
  ]);
  assert(!proxy.log().includes(`Insecure file permissions on ${closed}`), "warned for 0640");
});
