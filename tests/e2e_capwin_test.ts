/**
 * End-to-end: `protocol = capwin` (both modes) and `protocol = capwinctrl` (client mode) against
 * scripted peers: a TLS server that answers the credentials, a mock LDAP server that records the
 * BindRequest, and a real slapd. Each test is checked against stunnel4
 * (PROXY_CMD=stunnel4 deno test -A tests/e2e_capwin_test.ts).
 *
 * What stunnel 5.68 does (from its binary, confirmed here): capwinctrl stores the first 99 bytes
 * of a control connection as the credentials of the whole process; capwin client mode sends
 * 0x1f USER 0x1f PASSWORD 0x1f 0x1c of them after the handshake and wants `BINGO`; capwin server
 * mode reads them, binds as uid=USER,ou=people,O=CAPWIN,C=US at protocolHost, and answers
 * `BINGO` (after connecting the backend) or `FAILED`.
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, readExactly, waitClosed, writeAll } from "./harness/bytes.ts";
import {
  echoServer,
  freePorts,
  tcpConnect,
  tlsConnect,
  unansweredPort,
  waitForPort,
} from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, type Scope, spawn } from "./harness/process.ts";
import { configError, GLOBALS, startProxy } from "./harness/proxy.ts";

const FS = 0x1c;
/** The only BindResponse stunnel 5.68 accepts (long-form lengths, resultCode 0). */
const BIND_OK = [
  0x30,
  0x84,
  0,
  0,
  0,
  0x10,
  0x02,
  0x01,
  0x01,
  0x61,
  0x84,
  0,
  0,
  0,
  0x07,
  0x0a,
  0x01,
  0x00,
  0x04,
  0x00,
  0x04,
  0x00,
];
/** The same with resultCode 49 (invalidCredentials). */
const BIND_REFUSED = BIND_OK.map((b, i) => i === 17 ? 49 : b);
/** A success as OpenLDAP writes it (short-form lengths, 14 bytes). */
const BIND_OK_SHORT = [0x30, 0x0c, 0x02, 0x01, 0x01, 0x61, 0x07, 0x0a, 0x01, 0, 0x04, 0, 0x04, 0];

const bytes = (s: string) => [...s].map((c) => c.charCodeAt(0));
const text = (b: Uint8Array | number[]) => String.fromCharCode(...b);

/** A TLS server (the capwin server side): reads up to 0x1c, answers `reply`, then echoes. */
function capwinServer(scope: Scope, pki: Pki, reply: () => string) {
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: Deno.readTextFileSync(pki.serverEc.cert),
    key: Deno.readTextFileSync(pki.serverEc.key),
  });
  const received: string[] = [];
  scope.defer(() => listener.close());
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const got: number[] = [];
        const one = new Uint8Array(1);
        while (got.at(-1) !== FS) {
          if ((await conn.read(one)) === null) return;
          got.push(one[0]);
        }
        received.push(text(got));
        await writeAll(conn, encode(reply()));
        const buf = new Uint8Array(4096);
        for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
          await writeAll(conn, buf.subarray(0, n));
        }
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed
        }
      });
    }
  })().catch(() => {});
  return { port: (listener.addr as Deno.NetAddr).port, received };
}

/** A mock LDAP server: records each request (by its one-byte length), answers `reply()`. */
function ldapServer(scope: Scope, reply: () => number[], path?: string) {
  const listener = path
    ? Deno.listen({ transport: "unix", path })
    : Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const requests: number[][] = [];
  scope.defer(() => listener.close());
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const head = await readExactly(conn, 2);
        const rest = await readExactly(conn, head[1]);
        requests.push([...head, ...rest]);
        await writeAll(conn, Uint8Array.from(reply()));
        // stunnel closes after the response.
        await waitClosed(conn, 5000).catch(() => {});
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed
        }
      });
    }
  })().catch(() => {});
  return { port: path ? 0 : (listener.addr as Deno.NetAddr).port, requests };
}

/** The BindRequest stunnel sends for `dn` and `password`. */
function bindRequest(dn: string, password: string): number[] {
  const total = dn.length + password.length + 14;
  return [
    0x30,
    total - 2,
    0x02,
    0x01,
    0x01,
    0x60,
    total - 7,
    0x02,
    0x01,
    0x03,
    0x04,
    dn.length,
    ...bytes(dn),
    0x80,
    password.length,
    ...bytes(password),
  ];
}

/** Sends `data` to a control service and waits for it to close the connection. */
async function setCredentials(port: number, data: string): Promise<void> {
  const conn = await tcpConnect(port);
  await writeAll(conn, Uint8Array.from(bytes(data)));
  await conn.closeWrite();
  const end = await waitClosed(conn);
  // Past 99 bytes the rest stays unread: the close may come as a reset.
  if (data.length <= 99) assertEquals(end, "eof");
  conn.close();
}

/** The proxy closes (or resets) the connection; nothing but `expect` arrives first. */
async function expectEnd(conn: Deno.Conn, expect = ""): Promise<void> {
  if (expect) assertEquals(decode(await readExactly(conn, expect.length)), expect);
  const rest = await readExactly(conn, 1, 8000).then((b) => [...b], (e) => String(e));
  assert(!Array.isArray(rest), `no more data expected, got ${rest}`);
  conn.close();
}

function serverConf(pki: Pki, accept: number, backend: number, ldap: string, extra = ""): string {
  return GLOBALS +
    `[s]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backend}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nprotocol = capwin\n` +
    `protocolHost = ${ldap}\n${extra}`;
}

function clientConf(pki: Pki, ctrl: number, accept: number, server: number): string {
  return GLOBALS +
    `[ctrl]\nclient = yes\naccept = 127.0.0.1:${ctrl}\nprotocol = capwinctrl\n` +
    `[c]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${server}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\nprotocol = capwin\n`;
}

// ------------------------------------------------------------------------------- client mode

e2e("capwinctrl sets the credentials; capwin client mode sends them and wants BINGO", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  const server = capwinServer(s, pki, () => "BINGO");
  const [ctrl, port] = freePorts(2);
  // Two threads from the start: the credentials must reach the other thread too (stunnel4
  // ignores the variable; its threads share the buffer anyway).
  const threads = Deno.env.get("STUNNEL_THREADS");
  Deno.env.set("STUNNEL_THREADS", "2");
  let proxy;
  try {
    proxy = await startProxy(clientConf(pki, ctrl, port, server.port));
  } finally {
    if (threads === undefined) Deno.env.delete("STUNNEL_THREADS");
    else Deno.env.set("STUNNEL_THREADS", threads);
  }
  // Before any credentials: the connection is refused after the handshake.
  await expectEnd(await tcpConnect(port));
  await proxy.waitForLog(/LOG3\[[^\]]*\]: CapWIN: No credentials set/);
  await setCredentials(ctrl, "AUTH\x1falice\x1fs3cr+t \x1fextra field\x1c");
  await proxy.waitForLog(/LOG5\[[^\]]*\]: CapWIN: Credentials set/);
  assertMatch(proxy.log(), /LOG7\[[^\]]*\]: CapWIN: Setting credentials/);
  // Several connections, so that both threads serve some.
  for (let i = 0; i < 6; i++) {
    const conn = await tcpConnect(port);
    const message = `through capwin ${i}`;
    await writeAll(conn, encode(message));
    assertEquals(decode(await readExactly(conn, message.length)), message);
    conn.close();
  }
  assertEquals(server.received.length, 6);
  for (const r of server.received) assertEquals(r, "\x1falice\x1fs3cr+t \x1f\x1c");
  await proxy.waitForLogCount(/LOG5\[[^\]]*\]: CapWIN: Authentication succeeded/, 6);
  assertMatch(proxy.log(), /LOG7\[[^\]]*\]: CapWIN: Sending credentials/);
  assertMatch(proxy.log(), /LOG7\[[^\]]*\]: CapWIN: Waiting for response/);
  // New credentials replace the old ones; only the first 99 bytes count.
  const user = "u".repeat(80);
  await setCredentials(ctrl, `AUTH\x1f${user}\x1fpw\x1f\x1c`);
  let conn = await tcpConnect(port);
  await writeAll(conn, encode("x"));
  assertEquals(decode(await readExactly(conn, 1)), "x");
  conn.close();
  assertEquals(server.received.at(-1), `\x1f${user}\x1fpw\x1f\x1c`);
  await setCredentials(ctrl, `AUTH\x1f${"v".repeat(90)}\x1fpassword\x1f\x1c`); // 0x1c cut off
  conn = await tcpConnect(port);
  await expectEnd(conn);
  await proxy.waitForLog(/LOG3\[[^\]]*\]: CapWIN: Malformed credentials \(3\)/);
});

e2e("capwin client mode, hostile peers: bad credentials and answers end the connection", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  let reply = "BINGO";
  const server = capwinServer(s, pki, () => reply);
  const [ctrl, port] = freePorts(2);
  const proxy = await startProxy(clientConf(pki, ctrl, port, server.port));
  const cases: [string, RegExp][] = [
    ["AUTH-alice-pw-\x1c", /CapWIN: Malformed credentials \(1\)/],
    ["AUTH\x1falice", /CapWIN: Malformed credentials \(2\)/],
    ["AUTH\x1falice\x1fpw", /CapWIN: Malformed credentials \(3\)/],
    ["AUTH\x1falice\x1fpw\x1f", /CapWIN: Malformed credentials \(4\)/],
    ["LOGIN\x1falice\x1fpw\x1f\x1c", /CapWIN: Invalid authentication request/],
    ["AUTH\x00\x1falice\x1fpw\x1f\x1c", /CapWIN: Malformed credentials \(1\)/], // a C string
  ];
  for (const [credentials, log] of cases) {
    await setCredentials(ctrl, credentials);
    await expectEnd(await tcpConnect(port));
    await proxy.waitForLog(new RegExp(`LOG3\\[[^\\]]*\\]: ${log.source}`));
  }
  assertEquals(server.received, [], "nothing sent with malformed credentials");
  // A server that does not say BINGO.
  await setCredentials(ctrl, "AUTH\x1falice\x1fpw\x1f\x1c");
  reply = "FAILED";
  await expectEnd(await tcpConnect(port));
  await proxy.waitForLog(/LOG3\[[^\]]*\]: CapWIN: Authentication failed/);
  reply = "BINGO";
  const conn = await tcpConnect(port);
  await writeAll(conn, encode("fine"));
  assertEquals(decode(await readExactly(conn, 4)), "fine");
  conn.close();
  assertEquals(server.received.length, 2);
});

e2e(
  "capwinctrl needs no connect (two endpoints already), and is no server protocol",
  {},
  async () => {
    const pki = await makePki();
    const base = `${GLOBALS}[c]\nclient = yes\naccept = 127.0.0.1:1\nprotocol = capwinctrl\n`;
    assertMatch(
      await configError(base + "connect = 127.0.0.1:2\n"),
      /Each service must define two endpoints/,
    );
    assertMatch(
      await configError(
        `${GLOBALS}[s]\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\ncert = ${pki.serverEc.cert}\n` +
          `key = ${pki.serverEc.key}\nprotocol = capwinctrl\n`,
      ),
      /The 'capwinctrl' protocol is not supported in the server mode/,
    );
  },
);

// ------------------------------------------------------------------------------- server mode

e2e("capwin server mode: LDAP bind at protocolHost, BINGO once the backend is connected", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  const ldap = ldapServer(s, () => BIND_OK);
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(serverConf(pki, port, echo.port, `127.0.0.1:${ldap.port}`));
  const tls = await tlsConnect(port, pki.caPem);
  // The first field is ignored; DN specials of the user are escaped (not '='); bytes
  // after the 0x1c are data for the backend.
  await writeAll(tls, encode('X\x1fal+i;c,e"<>#=\\\x1fpa ss\x1fF4\x1cEXTRA'));
  assertEquals(decode(await readExactly(tls, 5)), "BINGO");
  await writeAll(tls, encode("ping"));
  assertEquals(decode(await readExactly(tls, 9)), "EXTRAping");
  tls.close();
  assertEquals(ldap.requests, [
    bindRequest('uid=al\\+i\\;c\\,e\\"\\<\\>\\#=\\\\,ou=people,O=CAPWIN,C=US', "pa ss"),
  ]);
  const log = await proxy.waitForLog(/Connection closed/).then(() => proxy.log());
  const order = [
    /LOG7\[[^\]]*\]: LDAP: Connecting the server/,
    new RegExp(`LOG5\\[[^\\]]*\\]: s_connect: connected 127\\.0\\.0\\.1:${ldap.port}`),
    /LOG7\[[^\]]*\]: LDAP: Sending BindRequest/,
    /LOG7\[[^\]]*\]: LDAP: Waiting for BindResponse/,
    /LOG5\[[^\]]*\]: CapWIN: Authentication succeeded/,
    new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${echo.port}`),
  ].map((re) => log.search(re));
  assert(order.every((at, i) => at >= 0 && (i === 0 || at > order[i - 1])), `order: ${order}`);
});

e2e("capwin server mode: protocolHost may be a Unix socket", {}, async (s) => {
  const pki = await makePki();
  const dir = await Deno.makeTempDir({ prefix: "e2e-capwin-" });
  s.defer(() => Deno.remove(dir, { recursive: true }));
  const ldap = ldapServer(s, () => BIND_OK, `${dir}/ldap.sock`);
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(serverConf(pki, port, echo.port, `${dir}/ldap.sock`));
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("\x1fbob\x1fpw\x1f\x1c"));
  assertEquals(decode(await readExactly(tls, 5)), "BINGO");
  tls.close();
  assertEquals(ldap.requests, [bindRequest("uid=bob,ou=people,O=CAPWIN,C=US", "pw")]);
  await proxy.waitForLog(/LOG5\[[^\]]*\]: CapWIN: Authentication succeeded/);
});

e2e("capwin server mode: an LDAP server that does not answer the connect: TIMEOUTconnect", {
  timeoutMs: 30_000,
}, async () => {
  const pki = await makePki();
  const silent = await unansweredPort();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    serverConf(pki, port, echo.port, `127.0.0.1:${silent}`, "TIMEOUTconnect = 1\n"),
  );
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("\x1fbob\x1fpw\x1f\x1c"));
  await expectEnd(tls, "FAILED");
  await proxy.waitForLog(
    new RegExp(
      `LOG3\\[[^\\]]*\\]: s_connect: s_poll_wait 127\\.0\\.0\\.1:${silent}: ` +
        "TIMEOUTconnect exceeded",
    ),
  );
  await proxy.waitForLog(/LOG3\[[^\]]*\]: CapWIN: Authentication failed/);
  assertEquals(echo.connections, 0);
});

e2e("capwin server mode, hostile peers: refusals answer FAILED, garbage ends the connection", {
  timeoutMs: 50_000,
}, async (s) => {
  const pki = await makePki();
  let reply = BIND_REFUSED;
  const ldap = ldapServer(s, () => reply);
  const echo = echoServer();
  const [port, port2] = freePorts(2);
  const proxy = await startProxy(serverConf(pki, port, echo.port, `127.0.0.1:${ldap.port}`));
  const attempt = async (credentials: string, expect: string, log: RegExp) => {
    const tls = await tlsConnect(port, pki.caPem);
    await writeAll(tls, encode(credentials));
    await expectEnd(tls, expect);
    await proxy.waitForLog(log);
  };
  // The LDAP server refuses: FAILED, and the connection closes (not reset).
  await attempt(
    "\x1fbob\x1fwrong\x1f\x1c",
    "FAILED",
    /LOG3\[[^\]]*\]: CapWIN: Authentication failed/,
  );
  await proxy.waitForLog(/Connection closed: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/);
  // No 0x1c in the first 99 bytes, or a missing separator: malformed, reset.
  await attempt("A".repeat(120), "", /LOG3\[[^\]]*\]: CapWIN: Malformed credentials \(1\)/);
  await attempt("\x1fbob\x1fpw\x1c", "", /LOG3\[[^\]]*\]: CapWIN: Malformed credentials \(3\)/);
  // Too long for stunnel's one-byte BER lengths: refused before any LDAP connection.
  const before = ldap.requests.length;
  await attempt(
    `\x1f${"u".repeat(50)}\x1f${"p".repeat(40)}\x1f\x1c`,
    "FAILED",
    /LOG3\[[^\]]*\]: LDAP: Request too long/,
  );
  assertEquals(ldap.requests.length, before);
  // A success in OpenLDAP's short form, then EOF: stunnel reads 22 bytes and fails.
  reply = BIND_OK_SHORT;
  await attempt("\x1fbob\x1fpw\x1f\x1c", "", /LOG3\[[^\]]*\]: s_read: Unexpected socket close/);
  // The client closes in the middle of the credentials.
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("\x1fbob"));
  await tls.closeWrite();
  await expectEnd(tls);
  await proxy.waitForLog(/LOG3\[[^\]]*\]: s_ssl_read: Unexpected socket close/);
  // An LDAP server that is not there.
  const closed = await startProxy(
    serverConf(pki, port2, echo.port, `127.0.0.1:${freePorts(1)[0]}`),
  );
  const t2 = await tlsConnect(port2, pki.caPem);
  await writeAll(t2, encode("\x1fbob\x1fpw\x1f\x1c"));
  await expectEnd(t2, "FAILED");
  await closed.waitForLog(
    /LOG3\[[^\]]*\]: s_connect: connect 127\.0\.0\.1:\d+: Connection refused/,
  );
  await closed.waitForLog(/LOG3\[[^\]]*\]: CapWIN: Authentication failed/);
  // Still serving a proper client.
  reply = BIND_OK;
  const ok = await tlsConnect(port, pki.caPem);
  await writeAll(ok, encode("\x1fbob\x1fpw\x1f\x1c"));
  assertEquals(decode(await readExactly(ok, 5)), "BINGO");
  await writeAll(ok, encode("still"));
  assertEquals(decode(await readExactly(ok, 5)), "still");
  ok.close();
});

/** slapd whose root DN is a CapWIN user: uid=john (password "secret"), stats on its output. */
async function capwinSlapd(scope: Scope, port: number) {
  const dir = await Deno.makeTempDir({ prefix: "e2e-capwin-slapd-" });
  scope.defer(() => Deno.remove(dir, { recursive: true }));
  await Deno.mkdir(`${dir}/db`);
  await Deno.writeTextFile(
    `${dir}/slapd.conf`,
    `include /etc/ldap/schema/core.schema\npidfile ${dir}/slapd.pid\ndatabase ldif\n` +
      `directory ${dir}/db\nsuffix "O=CAPWIN,C=US"\n` +
      `rootdn "uid=john,ou=people,O=CAPWIN,C=US"\nrootpw secret\n`,
  );
  const slapd = spawn(
    ["slapd", "-f", `${dir}/slapd.conf`, "-h", `ldap://127.0.0.1:${port}/`, "-d", "stats"],
    { stdin: false },
  );
  await waitForPort(port);
  return slapd;
}

e2e("capwin server mode against a real slapd: a valid bind, but its answer is too short", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  const [ldapPort, port] = freePorts(2);
  const slapd = await capwinSlapd(s, ldapPort);
  const echo = echoServer();
  const proxy = await startProxy(
    serverConf(pki, port, echo.port, `127.0.0.1:${ldapPort}`, "TIMEOUTbusy = 2\n"),
  );
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("\x1fjohn\x1fsecret\x1f\x1c"));
  // slapd accepts the bind, but its 14-byte success never makes the 22 bytes stunnel 5.68
  // waits for (Active Directory's long-form lengths): TIMEOUTbusy ends the connection.
  await slapd.output.waitFor(
    () => /RESULT tag=97 err=0 /.test(slapd.output.text()),
    10_000,
    "slapd's successful bind",
  );
  assertMatch(slapd.output.text(), /BIND dn="uid=john,ou=people,o=CAPWIN,c=US" method=128/);
  await expectEnd(tls);
  // stunnel's line; ours may also come from the connection's own TIMEOUTbusy clock ("s_read").
  await proxy.waitForLog(
    /LOG6\[[^\]]*\]: s_read(_eof)?: s_poll_wait: TIMEOUTbusy exceeded: sending reset/,
  );
  assertEquals(echo.connections, 0);
});

e2e("capwin server mode without protocolHost is a configuration error", {
  extra: "stunnel 5.68 accepts it and crashes on the first client",
}, async () => {
  const pki = await makePki();
  const conf = `${GLOBALS}[s]\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nprotocol = capwin\n`;
  assertMatch(await configError(conf), /bad\.conf:10: protocol 'capwin' needs 'protocolHost'/);
  assertMatch(
    await configError(conf + "protocolHost = 127.0.0.1:389\nprotocolUsername = x\n"),
    /bad\.conf:12: option 'protocolUsername' is not used by protocol 'capwin' in the server mode/,
  );
});
