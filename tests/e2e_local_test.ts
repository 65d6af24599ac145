/**
 * End-to-end: local mode (`exec`, `execArgs`) and inetd mode. The exec'd programs are small
 * shell scripts (stand-ins for imapd and friends) that report their environment and arguments;
 * inetd mode is driven by socat (`TCP-LISTEN:...,fork EXEC:"proxy stunnel.conf"`).
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_local_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, LineReader, readAll, waitClosed, writeAll } from "./harness/bytes.ts";
import { PROXY } from "./harness/command.ts";
import { freePorts, tcpServer, tlsConnect, waitForPort } from "./harness/net.ts";
import { sClient } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, type Scope, spawn, type Spawned } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { pollUntil, sleep } from "./harness/timing.ts";

/** Writes an executable shell script into the scope's temp dir; returns its path. */
async function script(scope: Scope, name: string, body: string): Promise<string> {
  const dir = await scope.tempDir("e2e-local-");
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, `#!/bin/sh\n${body}`);
  await Deno.chmod(path, 0o755);
  return path;
}

/** Prints what stunnel tells a local-mode program, one line, then echoes its input. */
const ENV_THEN_CAT = 'echo "host=$REMOTE_HOST port=$REMOTE_PORT dn=$SSL_CLIENT_DN ' +
  'idn=$SSL_CLIENT_I_DN args=$*"\nexec cat\n';

e2e("exec: the program sees the peer's address and certificate, data both ways", {}, async (s) => {
  const pki = await makePki();
  const prog = await script(s, "env.sh", ENV_THEN_CAT);
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[local]\naccept = 127.0.0.1:${port}\nexec = ${prog}\nexecArgs = env.sh one  two\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
      `CAfile = ${pki.ca}\nverifyChain = yes\n`,
  );
  const tls = await tlsConnect(port, pki.caPem, {
    cert: await Deno.readTextFile(pki.client.cert),
    key: await Deno.readTextFile(pki.client.key),
  });
  const lines = new LineReader(tls);
  const first = await lines.readLine(10_000);
  const local = tls.localAddr as Deno.NetAddr;
  assertEquals(
    first,
    `host=127.0.0.1 port=${local.port} dn=CN=client idn=CN=Test-Root-CA args=one two\n`,
  );
  await writeAll(tls, encode("ping\n"));
  assertEquals(await lines.readLine(10_000), "ping\n");
  await writeAll(tls, encode("pong\n"));
  assertEquals(await lines.readLine(10_000), "pong\n");
  // EOF to the program: cat exits, and the connection ends.
  await tls.closeWrite();
  assertEquals(await waitClosed(tls, 10_000), "eof");
  await proxy.waitForLog(/Local mode child started \(PID=\d+\)/);
  await proxy.waitForLog(
    /Connection closed: \d+ byte\(s\) sent to TLS, 10 byte\(s\) sent to socket/,
  );
});

e2e("exec = /bin/cat: an echo service, no client certificate, no SSL_CLIENT_DN", {}, async () => {
  const pki = await makePki();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[cat]\naccept = 127.0.0.1:${port}\nexec = /bin/cat\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  const client = sClient(port, { ca: pki.ca });
  const message = "through cat\n".repeat(100);
  await client.write(message);
  assertEquals(decode(await client.readStdout(message.length)), message);
  await client.stop();
  await proxy.waitForLog(/Connection closed: 1200 byte\(s\) sent to TLS, 1200 byte\(s\) sent/);
});

e2e("exec: the program's exit ends the connection", {}, async (s) => {
  const pki = await makePki();
  const prog = await script(s, "bye.sh", "echo bye\n");
  const [port] = freePorts(1);
  await startProxy(
    GLOBALS + `[bye]\naccept = 127.0.0.1:${port}\nexec = ${prog}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  const tls = await tlsConnect(port, pki.caPem);
  assertEquals(decode(await readAll(tls, 10_000)), "bye\n");
});

e2e("execArgs: $0 is the program's argv[0]", {}, async () => {
  const pki = await makePki();
  const [port] = freePorts(1);
  // Without arguments after the command string, sh's $0 is its own argv[0].
  await startProxy(
    GLOBALS + `[argv0]\naccept = 127.0.0.1:${port}\nexec = /bin/sh\n` +
      "execArgs = not-sh -c echo$IFS$0\n" +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  const tls = await tlsConnect(port, pki.caPem);
  assertEquals(decode(await readAll(tls, 10_000)), "not-sh\n");
});

e2e("the manual's imapd example, with a stand-in imapd", {}, async (s) => {
  const pki = await makePki();
  // Greets, answers LOGOUT and ends, as imapd does; $0 is the script (execArgs' imapd
  // is argv[0], which a shell script does not see).
  const imapd = await script(
    s,
    "imapd",
    'printf "* OK stand-in imapd ready (%s)\\r\\n" "$REMOTE_HOST"\n' +
      'while read -r tag cmd; do\n  case "$cmd" in\n' +
      '    LOGOUT*) printf "* BYE\\r\\n%s OK LOGOUT completed\\r\\n" "$tag"; exit 0;;\n' +
      '    *) printf "%s BAD unknown\\r\\n" "$tag";;\n  esac\ndone\n',
  );
  const [port] = freePorts(1);
  await startProxy(
    GLOBALS + `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
      `[imapd]\naccept = 127.0.0.1:${port}\nexec = ${imapd}\nexecArgs = imapd\n`,
  );
  const tls = await tlsConnect(port, pki.caPem);
  const lines = new LineReader(tls);
  assertEquals(await lines.readLine(10_000), "* OK stand-in imapd ready (127.0.0.1)\r\n");
  await writeAll(tls, encode("a1 NOOP\r\n"));
  assertEquals(await lines.readLine(10_000), "a1 BAD unknown\r\n");
  await writeAll(tls, encode("a2 LOGOUT\r\n"));
  assertEquals(await lines.readLine(10_000), "* BYE\r\n");
  assertEquals(await lines.readLine(10_000), "a2 OK LOGOUT completed\r\n");
  assertEquals(await waitClosed(tls, 10_000), "eof");
});

e2e("exec: a program that cannot be started ends the connection", {}, async (s) => {
  const pki = await makePki();
  const dir = await s.tempDir("e2e-local-");
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[missing]\naccept = 127.0.0.1:${port}\nexec = ${dir}/no-such-program\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  // As if the program had ended at once: no data, then the end of the stream.
  const tls = await tlsConnect(port, pki.caPem);
  assertEquals((await readAll(tls, 10_000)).length, 0);
  tls.close();
  await proxy.waitForLog(/Connection closed: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent/);
});

/** socat accepting on a free port and running the proxy on `config` for each connection. */
async function inetd(
  scope: Scope,
  config: string,
): Promise<{ port: number; log: string; socat: Spawned }> {
  const dir = await scope.tempDir("e2e-inetd-");
  const log = `${dir}/stunnel.log`;
  const conf = `${dir}/stunnel.conf`;
  await Deno.writeTextFile(conf, config.replaceAll("@LOG@", log));
  const [port] = freePorts(1);
  const words = [...PROXY, conf];
  // socat's EXEC splits its command on spaces and ends it at ':' or ','.
  if (words.some((w) => /\s/.test(w))) throw new Error(`a space in ${words.join(" ")}`);
  const command = words.join(" ").replaceAll(":", "\\:").replaceAll(",", "\\,");
  const socat = spawn([
    "socat",
    `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`,
    `EXEC:${command}`,
  ], { stdin: false });
  await waitForPort(port);
  return { port, log, socat };
}

/** Inetd mode's configuration: no section, logs to a file (stdout is the connection). */
function inetdConfig(pki: { serverEc: { cert: string; key: string } }, rest: string): string {
  return `pid =\nsyslog = no\ndebug = info\noutput = @LOG@\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n${rest}`;
}

e2e("inetd mode: exec through socat, one connection per process", {}, async (s) => {
  const pki = await makePki();
  const prog = await script(s, "env.sh", ENV_THEN_CAT);
  const { port, log } = await inetd(s, inetdConfig(pki, `exec = ${prog}\nexecArgs = env.sh x\n`));
  for (const round of [1, 2]) {
    const tls = await tlsConnect(port, pki.caPem);
    const lines = new LineReader(tls);
    // The local side is socat's socket pair, not an IP socket.
    assertEquals(await lines.readLine(10_000), "host=localhost port= dn= idn= args=x\n");
    await writeAll(tls, encode(`round ${round}\n`));
    assertEquals(await lines.readLine(10_000), `round ${round}\n`);
    await tls.closeWrite();
    assertEquals(await waitClosed(tls, 10_000), "eof");
  }
  // Each connection's process writes the log file; the second may still be finishing.
  const text = await pollUntil(
    async () => {
      const text = await Deno.readTextFile(log);
      return text.match(/Connection closed/g)?.length === 2 ? text : undefined;
    },
    10_000,
    "two connections in the log",
  );
  assertMatch(text, /Service \[stunnel\] accepted connection from unnamed socket/);
  assertMatch(text, /Local mode child started/);
});

e2e("inetd mode: connect to a backend (the global section is the service)", {}, async (s) => {
  const pki = await makePki();
  const backend = tcpServer(async (conn) => {
    await writeAll(conn, encode("hello from backend\n"));
    const lines = new LineReader(conn);
    const line = await lines.readLine(10_000);
    if (line !== null) await writeAll(conn, encode(`got ${line}`));
    await conn.closeWrite().catch(() => {});
  });
  const { port, log } = await inetd(s, inetdConfig(pki, `connect = 127.0.0.1:${backend.port}\n`));
  const tls = await tlsConnect(port, pki.caPem);
  const lines = new LineReader(tls);
  assertEquals(await lines.readLine(10_000), "hello from backend\n");
  await writeAll(tls, encode("data\n"));
  assertEquals(await lines.readLine(10_000), "got data\n");
  assertEquals(await waitClosed(tls, 10_000), "eof");
  tls.close();
  const text = await pollUntil(
    async () => {
      const text = await Deno.readTextFile(log);
      return /Connection closed/.test(text) ? text : undefined;
    },
    10_000,
    "the connection's end in the log",
  );
  assertMatch(text, /Service \[stunnel\] connected remote server from 127\.0\.0\.1:\d+/);
});

e2e("inetd mode: an accept option is refused", {}, async (s) => {
  const pki = await makePki();
  const [port] = freePorts(1);
  const { port: socatPort, socat } = await inetd(
    s,
    inetdConfig(pki, `accept = 127.0.0.1:${port}\nexec = /bin/cat\n`),
  );
  // The proxy refuses its configuration: the TLS handshake cannot succeed.
  const refused = await tlsConnect(socatPort, pki.caPem).then(() => false, () => true);
  assert(refused, "the handshake succeeded");
  await socat.waitForOutput(/'accept' option is only allowed in a \[section\]/);
});

/** A TLS server that records what each connection sent until its end. */
async function tlsRecorder(scope: Scope): Promise<{ port: number; received: string[] }> {
  const pki = await makePki();
  const [port] = freePorts(1);
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port,
    cert: await Deno.readTextFile(pki.serverEc.cert),
    key: await Deno.readTextFile(pki.serverEc.key),
  });
  scope.defer(() => listener.close());
  const received: string[] = [];
  (async () => {
    for await (const conn of listener) {
      readAll(conn, 10_000).then((data) => received.push(decode(data)), () => {})
        .finally(() => conn.close());
    }
  })().catch(() => {});
  return { port, received };
}

for (const retry of ["yes", "no"]) {
  e2e(`connect+exec: the program is the client side, retry = ${retry}`, {}, async (s) => {
    const pki = await makePki();
    const server = await tlsRecorder(s);
    const prog = await script(s, "hello.sh", 'echo "hello from $0"\n');
    const proxy = await startProxy(
      GLOBALS + `[client]\nclient = yes\nconnect = 127.0.0.1:${server.port}\nexec = ${prog}\n` +
        `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\nretry = ${retry}\n`,
    );
    await pollUntil(() => server.received.length >= 1, 10_000, "a first connection");
    assertEquals(server.received[0], `hello from ${prog}\n`);
    if (retry === "yes") {
      // Restarted after a delay (stunnel: one second), not in a busy loop.
      await pollUntil(() => server.received.length >= 2, 10_000, "a second connection");
      await proxy.waitForLog(/Retrying an exec\+connect section/);
      await sleep(500);
      assert(server.received.length <= 3, `${server.received.length} connections in ~2 s`);
    } else {
      await sleep(2500);
      assertEquals(server.received.length, 1);
    }
  });
}

e2e("inetd mode: setuid is refused, not ignored", {
  extra: "stunnel drops privileges in inetd mode; ours refuses chroot/setuid/setgid there",
}, async (s) => {
  const pki = await makePki();
  const { port, socat } = await inetd(s, inetdConfig(pki, "setuid = nobody\nexec = /bin/cat\n"));
  const refused = await tlsConnect(port, pki.caPem).then(() => false, () => true);
  assert(refused, "the handshake succeeded");
  await socat.waitForOutput(/:7: option 'setuid' is not supported yet in inetd mode/);
});
