/**
 * End-to-end: `pty = yes` (the exec'd program on a pseudo-terminal), `libwrap = yes` (TCP
 * Wrappers: /etc/hosts.allow and /etc/hosts.deny) and `ident = USERNAME` (RFC 1413, against an
 * IDENT stand-in on 127.0.0.1:113). Needs root: it edits the hosts files (one line with a
 * unique daemon name, removed afterwards) and listens on port 113.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_access_test.ts
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  escapeRegExp,
} from "./harness/assert.ts";
import { encode, LineReader, waitClosed, writeAll } from "./harness/bytes.ts";
import { PROXY } from "./harness/command.ts";
import { echoRoundTrip, echoServer, freePorts, tlsConnect } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, run, type Scope } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { pollUntil } from "./harness/timing.ts";

const pkiPromise = makePki();

/** Writes an executable shell script into the scope's temp dir; returns its path. */
async function script(scope: Scope, name: string, body: string): Promise<string> {
  const dir = await scope.tempDir("e2e-access-");
  const path = `${dir}/${name}`;
  await Deno.writeTextFile(path, `#!/bin/sh\n${body}`);
  await Deno.chmod(path, 0o755);
  return path;
}

async function serverSection(name: string, port: number, rest: string): Promise<string> {
  const pki = await pkiPromise;
  return `[${name}]\naccept = 127.0.0.1:${port}\n${rest}` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
}

// ---------------------------------------------------------------------------------------------
// pty

/** The /dev/ptmx descriptors a process holds (our side of its pseudo-terminals). */
function ptmxDescriptors(pid: number): number {
  let n = 0;
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`) === "/dev/ptmx") n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

function processAlive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** The program's line, with the terminal's CR LF (ONLCR of a cooked terminal). */
async function ptyLine(lines: LineReader): Promise<string> {
  const line = await lines.readLine(10_000);
  assert(line !== null, "the program's output ended early");
  return line;
}

e2e("pty: the program's stdin and stdout are a cooked pseudo-terminal", {}, async (s) => {
  const pki = await pkiPromise;
  const prog = await script(
    s,
    "tty.sh",
    '[ -t 0 ] && [ -t 1 ] && echo "both terminals"\ntty\n' +
      'stty -a | grep -o -w -e "-\\?icanon" -e "-\\?echo" | tr "\\n" " "; echo\n' +
      'read line\necho "got:$line"\n',
  );
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + await serverSection("pty", port, `exec = ${prog}\npty = yes\n`),
  );
  const tls = await tlsConnect(port, pki.caPem);
  const lines = new LineReader(tls);
  assertEquals(await ptyLine(lines), "both terminals\r\n");
  const tty = await ptyLine(lines);
  assertMatch(tty, /^\/dev\/pts\/\d+\r\n$/);
  // Canonical mode with echo: stunnel does not make the terminal raw.
  assertEquals(await ptyLine(lines), "icanon echo \r\n");
  await writeAll(tls, encode("hello\n"));
  // The terminal echoes the input line (ICRNL/ONLCR: CR LF), then the program answers.
  assertEquals(await ptyLine(lines), "hello\r\n");
  assertEquals(await ptyLine(lines), "got:hello\r\n");
  // The program ends: the slave closes, and so does the connection.
  assertEquals(await waitClosed(tls, 10_000), "eof");
  tls.close();
  await proxy.waitForLog(new RegExp(`TTY=${tty.trim()} allocated`));
  await proxy.waitForLog(/Local mode child started \(PID=\d+\)/);
  await proxy.waitForLog(
    /Connection closed: \d+ byte\(s\) sent to TLS, 6 byte\(s\) sent to socket/,
  );
});

e2e(
  "pty: the terminal is the program's controlling terminal",
  {
    extra: "stunnel 5.68 leaves the child in its own session, without a controlling terminal; " +
      "ours gets a session whose controlling terminal is the pty (setsid --ctty)",
  },
  async (s) => {
    const pki = await pkiPromise;
    const prog = await script(
      s,
      "ctty.sh",
      'if (exec 3<>/dev/tty) 2>/dev/null; then echo "ctty=$(ps -o tty= -p $$)"; ' +
        "else echo no-ctty; fi\n",
    );
    const [port] = freePorts(1);
    await startProxy(GLOBALS + await serverSection("pty", port, `exec = ${prog}\npty = yes\n`));
    const tls = await tlsConnect(port, pki.caPem);
    const lines = new LineReader(tls);
    assertMatch(await ptyLine(lines), /^ctty=pts\/\d+\s*\r\n$/);
  },
);

e2e("pty: closing the connection ends the program and frees the terminal", {}, async (s) => {
  const pki = await pkiPromise;
  // A program that would run forever: only the hangup of its terminal ends it.
  const prog = await script(s, "wait.sh", 'echo "pid=$$"\nexec cat >/dev/null\n');
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + await serverSection("pty", port, `exec = ${prog}\npty = yes\n`),
  );
  const pids: number[] = [];
  for (let i = 0; i < 3; i++) {
    const tls = await tlsConnect(port, pki.caPem);
    const line = await ptyLine(new LineReader(tls));
    const m = /^pid=(\d+)\r\n$/.exec(line);
    assert(m, `unexpected first line ${JSON.stringify(line)}`);
    pids.push(Number(m[1]));
    await writeAll(tls, encode("some input\n"));
    tls.close();
  }
  await proxy.waitForLogCount(/Connection (closed|reset): /, 3);
  // Every program got its hangup and ended; no terminal is left open in the proxy.
  await pollUntil(() => pids.every((pid) => !processAlive(pid)), 10_000, "the programs end");
  await pollUntil(() => ptmxDescriptors(proxy.pid) === 0, 10_000, "no pty master left");
  assertEquals(ptmxDescriptors(proxy.pid), 0);
  // The proxy still serves.
  const tls = await tlsConnect(port, pki.caPem);
  assertMatch(await ptyLine(new LineReader(tls)), /^pid=\d+\r\n$/);
});

// ---------------------------------------------------------------------------------------------
// libwrap

/** Appends `line` to a hosts_access file for the test, removing exactly that line afterwards. */
async function hostsLine(scope: Scope, file: string, line: string): Promise<void> {
  let text = "";
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (text !== "" && !text.endsWith("\n")) text += "\n";
  await Deno.writeTextFile(file, `${text}${line}\n`);
  scope.defer(async () => {
    const now = await Deno.readTextFile(file);
    const lines = now.split("\n");
    const i = lines.indexOf(line);
    if (i >= 0) lines.splice(i, 1);
    await Deno.writeTextFile(file, lines.join("\n"));
  });
}

const WRAP = `e2e-wrap-${Deno.pid}`;

/** A TLS client that the proxy must refuse before (or during) the handshake. */
async function refusedHandshake(port: number): Promise<void> {
  const pki = await pkiPromise;
  await assertRejects(async () => {
    const tls = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(tls, "must not pass\n");
  }, "the connection should have been refused");
}

async function accepted(proxy: Proxy, service: string, port: number): Promise<void> {
  const pki = await pkiPromise;
  const tls = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(tls, `hello ${service}\n`);
  tls.close();
  await proxy.waitForLog(
    new RegExp(`Service \\[${service}\\] accepted connection from 127\\.0\\.0\\.1:\\d+`),
  );
}

e2e("libwrap: hosts.deny refuses a service, hosts.allow lets another through", {}, async (s) => {
  const backend = echoServer();
  const [denied, allowed, open, off] = freePorts(4);
  await hostsLine(s, "/etc/hosts.deny", `${WRAP}-deny: ALL`);
  await hostsLine(s, "/etc/hosts.deny", `${WRAP}-allow: ALL`);
  await hostsLine(s, "/etc/hosts.allow", `${WRAP}-allow: 127.0.0.1`);
  await hostsLine(s, "/etc/hosts.deny", `${WRAP}-off: ALL`);
  const connect = `connect = 127.0.0.1:${backend.port}\n`;
  const proxy = await startProxy(
    GLOBALS +
      await serverSection(`${WRAP}-deny`, denied, `${connect}libwrap = yes\n`) +
      await serverSection(`${WRAP}-allow`, allowed, `${connect}libwrap = yes\n`) +
      // No line names this one: allowed by default.
      await serverSection(`${WRAP}-open`, open, `${connect}libwrap = yes\n`) +
      // Its line would deny, but libwrap is off (the default).
      await serverSection(`${WRAP}-off`, off, connect),
  );

  await refusedHandshake(denied);
  const refused = await proxy.waitForLog(
    new RegExp(`Service \\[${WRAP}-deny\\] REFUSED by libwrap from 127\\.0\\.0\\.1:(\\d+)`),
  );
  assert(Number(refused[1]) > 0);
  await proxy.waitForLog(/See hosts_access\(5\) manual for details/);
  await proxy.waitForLog(/Connection reset: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/);
  assert(
    !new RegExp(`Service \\[${WRAP}-deny\\] accepted connection`).test(proxy.log()),
    "a refused connection must not be logged as accepted",
  );
  assertEquals(backend.connections, 0);

  await accepted(proxy, `${WRAP}-allow`, allowed);
  await accepted(proxy, `${WRAP}-open`, open);
  await accepted(proxy, `${WRAP}-off`, off);
  assertEquals(backend.connections, 3);
});

e2e("libwrap: many connections at once are each checked", {}, async (s) => {
  const backend = echoServer();
  const [denied, allowed] = freePorts(2);
  await hostsLine(s, "/etc/hosts.deny", `${WRAP}-many-deny: 127.0.0.1`);
  const connect = `connect = 127.0.0.1:${backend.port}\n`;
  const proxy = await startProxy(
    GLOBALS +
      await serverSection(`${WRAP}-many-deny`, denied, `${connect}libwrap = yes\n`) +
      await serverSection(`${WRAP}-many-ok`, allowed, `${connect}libwrap = yes\n`),
  );
  const pki = await pkiPromise;
  const results = await Promise.all(
    Array.from({ length: 12 }, async (_, i) => {
      const port = i % 2 === 0 ? denied : allowed;
      try {
        const tls = await tlsConnect(port, pki.caPem);
        await echoRoundTrip(tls, `n${i}\n`);
        tls.close();
        return port === allowed;
      } catch {
        return port === denied;
      }
    }),
  );
  assertEquals(results.filter((ok) => ok).length, 12, JSON.stringify(results));
  await proxy.waitForLogCount(/REFUSED by libwrap from 127\.0\.0\.1:\d+/, 6);
});

e2e(
  "libwrap: a missing libwrap.so.0 is a configuration error of the line",
  {
    extra: "stunnel4 is linked with libwrap: without it, it does not start at all (no " +
      "configuration error); ours opens the library only for libwrap = yes",
  },
  async (s) => {
    const pki = await pkiPromise;
    const dir = await s.tempDir("e2e-access-");
    const [port] = freePorts(1);
    const confPath = `${dir}/stunnel.conf`;
    await Deno.writeTextFile(
      confPath,
      GLOBALS + `[nowrap]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\nlibwrap = yes\n` +
        `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
    );
    // A mount namespace of its own where the library is an empty file.
    const hide = 'mount --bind /dev/null "$(readlink -f /lib/x86_64-linux-gnu/libwrap.so.0)" && ' +
      'exec "$@"';
    const result = await run(["unshare", "-m", "sh", "-c", hide, "sh", ...PROXY, confPath]);
    assertEquals(result.code, 1, result.stdout + result.stderr);
    assertMatch(
      result.stdout + result.stderr,
      new RegExp(
        `${escapeRegExp(confPath)}:8: "libwrap = yes": libwrap is not available: ` +
          `/lib/x86_64-linux-gnu/libwrap\\.so\\.0: file too short`,
      ),
    );
  },
);

// ---------------------------------------------------------------------------------------------
// ident

/**
 * An IDENT server stand-in on port 113 of `hostname` answering each query with
 * `answer(query)`: null hangs up at once, "" keeps the connection open without an answer.
 */
function identd(
  scope: Scope,
  answer: (query: string) => string | null,
  hostname = "127.0.0.1",
): { queries: string[] } {
  const listener = Deno.listen({ hostname, port: 113 });
  const queries: string[] = [];
  scope.defer(() => listener.close());
  (async () => {
    for await (const conn of listener) {
      (async () => {
        try {
          const lines = new LineReader(conn);
          const query = await lines.readLine(5000);
          if (query === null) return;
          queries.push(query);
          const reply = answer(query);
          // "": no answer, the connection stays open (until the stand-in closes).
          if (reply === "") await lines.readLine(8000).catch(() => {});
          else if (reply !== null) await writeAll(conn, encode(reply));
        } finally {
          try {
            conn.close();
          } catch {
            // closed
          }
        }
      })().catch(() => {});
    }
  })().catch(() => {});
  return { queries };
}

/** "PEER , OURS : USERID : UNIX : user" for a query "PEER , OURS". */
function userid(user: string): (query: string) => string {
  return (query) => `${query.trim()} : USERID : UNIX : ${user}\r\n`;
}

e2e("ident: only the configured user gets through", {}, async (s) => {
  const backend = echoServer();
  const ident = identd(s, userid("alice"));
  const [alice, bob] = freePorts(2);
  const connect = `connect = 127.0.0.1:${backend.port}\n`;
  const proxy = await startProxy(
    GLOBALS +
      await serverSection("ident-alice", alice, `${connect}ident = alice\n`) +
      await serverSection("ident-bob", bob, `${connect}ident = bob\n`),
  );
  const pki = await pkiPromise;
  const tls = await tlsConnect(alice, pki.caPem);
  await echoRoundTrip(tls, "as alice\n");
  const client = (tls.localAddr as Deno.NetAddr).port;
  // RFC 1413: the client's port, then ours, as the client's IDENT server sees them.
  assertEquals(ident.queries[0], `${client} , ${alice}\r\n`);
  await proxy.waitForLog(/IDENT authentication passed/);
  tls.close();

  await refusedHandshake(bob);
  await proxy.waitForLog(
    /Connection from 127\.0\.0\.1:\d+ REFUSED by IDENT \(user "alice"\)/,
  );
  await proxy.waitForLog(/Connection reset: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/);
  assertEquals(backend.connections, 1);
});

e2e("ident: an IPv6 client's IDENT server is asked at its address", {}, async (s) => {
  const backend = echoServer();
  const ident = identd(s, userid("alice"), "::1");
  const free = Deno.listen({ hostname: "::1", port: 0 });
  const port = (free.addr as Deno.NetAddr).port;
  free.close();
  const pki = await pkiPromise;
  const proxy = await startProxy(
    GLOBALS + `[ident6]\naccept = ::1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
      `ident = alice\ncert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  // The check comes before the handshake: a plain connection is enough.
  const conn = await Deno.connect({ hostname: "::1", port });
  s.defer(() => conn.close());
  await proxy.waitForLog(/IDENT authentication passed/);
  const client = (conn.localAddr as Deno.NetAddr).port;
  assertEquals(ident.queries, [`${client} , ${port}\r\n`]);
  // stunnel's s_ntop(): an IPv6 address without brackets.
  await proxy.waitForLog(/LOG6\[[^\]]+\]: s_connect: connecting ::1:113$/m);
  await proxy.waitForLog(/LOG5\[[^\]]+\]: s_connect: connected ::1:113$/m);
});

e2e("ident: a malformed answer, an error answer or no IDENT server refuse", {}, async (s) => {
  const backend = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS +
      await serverSection(
        "ident",
        port,
        `connect = 127.0.0.1:${backend.port}\nident = alice\nTIMEOUTbusy = 3\n`,
      ),
  );
  // No IDENT server at all.
  await refusedHandshake(port);
  await proxy.waitForLog(/s_connect: connect 127\.0\.0\.1:113: Connection refused \(111\)/);

  let reply: string | null = "garbage without colons\r\n";
  identd(s, () => reply);
  await refusedHandshake(port);
  await proxy.waitForLog(/Malformed IDENT response/);

  reply = "1 , 2 : ERROR : NO-USER\r\n";
  await refusedHandshake(port);
  await proxy.waitForLog(/Incorrect IDENT response type/);

  // The user name is compared exactly (leading spaces skipped, nothing else).
  reply = "1 , 2 : USERID : UNIX :   alice \r\n";
  await refusedHandshake(port);
  await proxy.waitForLog(/REFUSED by IDENT \(user "alice "\)/);

  // The IDENT server hangs up without an answer.
  reply = null;
  await refusedHandshake(port);
  await proxy.waitForLog(/s_read: Unexpected socket close/);

  // The IDENT server never answers: TIMEOUTbusy.
  reply = "";
  const started = Date.now();
  await refusedHandshake(port);
  assert(Date.now() - started >= 2500, "refused before TIMEOUTbusy");
  await proxy.waitForLog(/s_read_eof: s_poll_wait: TIMEOUTbusy exceeded: sending reset/);

  reply = "1 , 2 : USERID : UNIX :   alice\r\n";
  const pki = await pkiPromise;
  const tls = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(tls, "alice at last\n");
  assertEquals(backend.connections, 1);
});
