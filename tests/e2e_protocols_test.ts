/**
 * End-to-end: `protocol =` negotiations (protocols/) against scripted peers that speak like the
 * real servers and clients (an MTA with STARTTLS, IMAP and POP3 servers, PostgreSQL's
 * SSLRequest, a HAProxy PROXY v1 backend, an HTTP CONNECT proxy), in both modes, chained with
 * stunnel4 both ways, hostile peers, and the configuration errors.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_protocols_test.ts
 */

import { peerServer } from "./scripted_peer.ts";
import { assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, readExactly, waitClosed, writeAll } from "./harness/bytes.ts";
import { freePorts, tcpConnect, tcpServer } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e } from "./harness/process.ts";
import { configError, GLOBALS, startProxy } from "./harness/proxy.ts";
import { startStunnel4 } from "./harness/stunnel4.ts";

// ------------------------------------------------------------------------------- helpers

/** Reads one line (without CR LF) one byte at a time, so nothing after it is consumed. */
async function readLine(conn: Deno.Conn, ms = 10_000): Promise<string> {
  const deadline = Date.now() + ms;
  const bytes: number[] = [];
  const one = new Uint8Array(1);
  for (;;) {
    if (Date.now() > deadline) throw new Error(`no line within ${ms} ms: ${bytes}`);
    const n = await conn.read(one);
    if (n === null) {
      throw new Error(`EOF while reading a line (got "${decode(Uint8Array.from(bytes))}")`);
    }
    if (one[0] === 10) break;
    bytes.push(one[0]);
  }
  if (bytes.at(-1) === 13) bytes.pop();
  return decode(Uint8Array.from(bytes));
}

async function writeLine(conn: Deno.Conn, line: string): Promise<void> {
  await writeAll(conn, encode(`${line}\r\n`));
}

/** TLS on an already connected socket, verifying "localhost" against the test CA. */
async function startTls(conn: Deno.TcpConn, pki: Pki): Promise<Deno.TlsConn> {
  const tls = await Deno.startTls(conn, { hostname: "localhost", caCerts: [pki.caPem] });
  await tls.handshake();
  return tls;
}

async function echoOver(conn: Deno.Conn, message: string): Promise<void> {
  await writeAll(conn, encode(message));
  assertEquals(decode(await readExactly(conn, encode(message).length)), message);
}

const certLines = (pki: Pki) => `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;

function serverConf(pki: Pki, accept: number, connect: number, extra: string): string {
  return GLOBALS +
    `[s]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n${certLines(pki)}${extra}`;
}

function clientConf(pki: Pki, accept: number, connect: number, extra: string): string {
  return GLOBALS +
    `[c]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\n${extra}`;
}

// ------------------------------------------------------------------------------- smtp

/** A plain MTA behind a server-mode STARTTLS proxy: greets, answers EHLO, MAIL, QUIT. */
function plainMta(greeting = "220 mx.example.org ESMTP Postfix") {
  const seen: string[] = [];
  const backend = tcpServer(async (conn) => {
    await writeLine(conn, greeting);
    for (;;) {
      const line = await readLine(conn, 20_000);
      seen.push(line);
      if (/^EHLO /i.test(line)) {
        await writeAll(conn, encode("250-mx.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n"));
      } else if (/^MAIL FROM:/i.test(line)) await writeLine(conn, "250 2.1.0 Ok");
      else if (/^QUIT/i.test(line)) {
        await writeLine(conn, "221 2.0.0 Bye");
        return;
      } else await writeLine(conn, "502 5.5.2 Error: command not recognized");
    }
  });
  return { backend, seen };
}

/** An SMTP client speaking STARTTLS to `port`; returns the TLS connection after EHLO. */
async function smtpStarttlsClient(port: number, pki: Pki): Promise<string[]> {
  const conn = await tcpConnect(port);
  const transcript: string[] = [];
  let line: string;
  do transcript.push(line = await readLine(conn)); while (line.startsWith("220-"));
  await writeLine(conn, "EHLO client.example");
  do transcript.push(line = await readLine(conn)); while (line.startsWith("250-"));
  await writeLine(conn, "STARTTLS");
  transcript.push(await readLine(conn));
  const tls = await startTls(conn, pki);
  await writeLine(tls, "EHLO client.example");
  do transcript.push(line = await readLine(tls)); while (line.startsWith("250-"));
  await writeLine(tls, "MAIL FROM:<a@example.org>");
  transcript.push(await readLine(tls));
  await writeLine(tls, "QUIT");
  transcript.push(await readLine(tls));
  tls.close();
  return transcript;
}

e2e("smtp server mode: STARTTLS answered by the proxy, the MTA behind it", {}, async () => {
  const pki = await makePki();
  const { backend, seen } = plainMta();
  const [port] = freePorts(1);
  const proxy = await startProxy(serverConf(pki, port, backend.port, "protocol = smtp\n"));
  const transcript = await smtpStarttlsClient(port, pki);
  assertEquals(transcript, [
    "220 mx.example.org stunnel for ESMTP Postfix",
    "250-mx.example.org",
    "250 STARTTLS",
    "220 Go ahead",
    "250-mx.example.org",
    "250-PIPELINING",
    "250 8BITMIME",
    "250 2.1.0 Ok",
    "221 2.0.0 Bye",
  ]);
  // The MTA sees the client's commands from inside TLS only.
  assertEquals(seen, ["EHLO client.example", "MAIL FROM:<a@example.org>", "QUIT"]);
  await proxy.waitForLog(/RFC 2487 detected/);
});

/** An MTA with STARTTLS (Postfix's replies); after TLS it echoes. Records the commands. */
async function starttlsMta(
  pki: Pki,
  scope: { defer(fn: () => void): void },
  opts: { refuse?: boolean; greeting?: string } = {},
) {
  const commands: string[] = [];
  const server = await peerServer(scope, async (io) => {
    io.write(opts.greeting ?? "220-mx.example.org ESMTP Postfix");
    if (!opts.greeting) io.write("220 mx.example.org continues");
    commands.push(await io.line());
    io.write("250-mx.example.org");
    io.write("250-PIPELINING");
    io.write("250-STARTTLS");
    io.write("250 8BITMIME");
    commands.push(await io.line());
    if (opts.refuse) {
      io.write("454 4.7.0 TLS not available due to local problem");
      await io.line().catch(() => {});
      return;
    }
    io.write("220 2.0.0 Ready to start TLS");
    await io.upgradeEcho(pki);
  });
  return { ...server, commands };
}

e2e("smtp client mode: greeting relayed, EHLO and STARTTLS to a real-style MTA", {}, async (s) => {
  const pki = await makePki();
  const mta = await starttlsMta(pki, s);
  const [port] = freePorts(1);
  await startProxy(clientConf(pki, port, mta.port, "protocol = smtp\n"));
  const conn = await tcpConnect(port);
  assertEquals(await readLine(conn), "220-mx.example.org ESMTP Postfix");
  assertEquals(await readLine(conn), "220 mx.example.org continues");
  await echoOver(conn, "EHLO inside TLS\r\n");
  assertEquals(mta.commands, ["EHLO localhost", "STARTTLS"]);
  assertEquals(mta.failures, []);
});

e2e("smtp client mode: protocolHost names the EHLO", {}, async (s) => {
  const pki = await makePki();
  const mta = await starttlsMta(pki, s, { greeting: "220 mx.example.org ESMTP" });
  const [port] = freePorts(1);
  await startProxy(
    clientConf(pki, port, mta.port, "protocol = smtp\nprotocolHost = relay.example.org\n"),
  );
  const conn = await tcpConnect(port);
  assertEquals(await readLine(conn), "220 mx.example.org ESMTP");
  await echoOver(conn, "data\n");
  assertEquals(mta.commands, ["EHLO relay.example.org", "STARTTLS"]);
});

e2e("smtp client -> smtp server (ours and stunnel4 both ways)", { timeoutMs: 45_000 }, async () => {
  const pki = await makePki();
  const { backend, seen } = plainMta("220 mx.example.org ESMTP");
  for (
    const [clientCmd, serverCmd] of [["proxy", "proxy"], ["proxy", "stunnel4"], [
      "stunnel4",
      "proxy",
    ]]
  ) {
    const [cPort, sPort] = freePorts(2);
    const start = (cmd: string) => cmd === "proxy" ? startProxy : startStunnel4;
    const server = await start(serverCmd)(
      serverConf(pki, sPort, backend.port, "protocol = smtp\n"),
    );
    const client = await start(clientCmd)(
      clientConf(pki, cPort, sPort, "protocol = smtp\n"),
    );
    seen.length = 0;
    const conn = await tcpConnect(cPort);
    // The greeting the server-mode side made, relayed by the client-mode side.
    assertEquals(await readLine(conn), "220 mx.example.org stunnel for ESMTP");
    await writeLine(conn, "EHLO me");
    assertEquals(await readLine(conn), "250-mx.example.org");
    await readLine(conn);
    await readLine(conn);
    await writeLine(conn, "QUIT");
    assertEquals(await readLine(conn), "221 2.0.0 Bye");
    conn.close();
    assertEquals(seen, ["EHLO me", "QUIT"], `${clientCmd} -> ${serverCmd}`);
    await client.stop();
    await server.stop();
  }
});

e2e("smtp hostile peers: garbage greeting, refused STARTTLS", {}, async (s) => {
  const pki = await makePki();
  // A server-mode proxy whose backend does not speak SMTP.
  const garbage = tcpServer(async (conn) => {
    await writeLine(conn, "HTTP/1.1 400 Bad Request");
    await waitClosed(conn).catch(() => {});
  });
  const [p1, p2] = freePorts(2);
  const server = await startProxy(serverConf(pki, p1, garbage.port, "protocol = smtp\n"));
  const c1 = await tcpConnect(p1);
  await waitClosed(c1);
  await server.waitForLog(/LOG3\[.*Unknown server welcome/);
  // A client-mode proxy whose MTA refuses STARTTLS: the client gets the greeting, then EOF.
  const mta = await starttlsMta(pki, s, { refuse: true, greeting: "220 mx ESMTP" });
  const client = await startProxy(clientConf(pki, p2, mta.port, "protocol = smtp\n"));
  const c2 = await tcpConnect(p2);
  assertEquals(await readLine(c2), "220 mx ESMTP");
  await waitClosed(c2);
  await client.waitForLog(/LOG3\[.*Remote server is not RFC 2487 compliant/);
});

e2e("smtp: a client sending an over-long line instead of EHLO is dropped", {
  extra: "stunnel grows its line buffer without a limit; lines are capped at 8 KiB here",
}, async () => {
  const pki = await makePki();
  const { backend } = plainMta();
  const [p3] = freePorts(1);
  const third = await startProxy(serverConf(pki, p3, backend.port, "protocol = smtp\n"));
  const c3 = await tcpConnect(p3);
  await readLine(c3);
  await writeAll(c3, encode("X".repeat(64 * 1024))).catch(() => {});
  await waitClosed(c3);
  await third.waitForLog(/LOG3\[.*fd_getline: Line too long/);
});

// ------------------------------------------------------------------------------- proxy

e2e("proxy: the backend gets a PROXY TCP4 line with the client's address", {}, async () => {
  const pki = await makePki();
  const lines: string[] = [];
  const backend = tcpServer(async (conn) => {
    lines.push(await readLine(conn));
    const buf = new Uint8Array(1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      await writeAll(conn, buf.subarray(0, n));
    }
  });
  const [port] = freePorts(1);
  await startProxy(serverConf(pki, port, backend.port, "protocol = proxy\n"));
  const tcp = await tcpConnect(port);
  const clientPort = (tcp.localAddr as Deno.NetAddr).port;
  const tls = await startTls(tcp, pki);
  await echoOver(tls, "after the header\n");
  assertEquals(lines, [`PROXY TCP4 127.0.0.1 127.0.0.1 ${clientPort} ${port}`]);
});

e2e("proxy: refused in client mode (stunnel's message)", {}, async () => {
  const pki = await makePki();
  const [a, b] = freePorts(2);
  const proxy = await startProxy(clientConf(pki, a, b, "protocol = proxy\n"), {
    allowFailure: true,
  });
  await proxy.waitForLog(/The 'proxy' protocol is not supported in the client mode/);
  await proxy.exited;
});

// ------------------------------------------------------------------------------- pgsql

const SSL_REQUEST = new Uint8Array([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

e2e("pgsql server mode: SSLRequest answered 'S', then TLS to the backend", {}, async () => {
  const pki = await makePki();
  const backend = tcpServer(async (conn) => {
    const buf = new Uint8Array(1024);
    for (;;) {
      const n = await conn.read(buf);
      if (n === null) break;
      await writeAll(conn, buf.subarray(0, n));
    }
  });
  const [port] = freePorts(1);
  await startProxy(serverConf(pki, port, backend.port, "protocol = pgsql\n"));
  const tcp = await tcpConnect(port);
  await writeAll(tcp, SSL_REQUEST);
  assertEquals(decode(await readExactly(tcp, 1)), "S");
  const tls = await startTls(tcp, pki);
  await echoOver(tls, "startup message\n");
});

e2e("pgsql client mode: SSLRequest to a PostgreSQL-style server", {}, async (s) => {
  const pki = await makePki();
  const pg = await peerServer(s, async (io) => {
    const req = await io.bytes(8);
    assertEquals([...req], [...SSL_REQUEST]);
    io.write(encode("S"));
    await io.upgradeEcho(pki);
  });
  const [port] = freePorts(1);
  await startProxy(clientConf(pki, port, pg.port, "protocol = pgsql\n"));
  const conn = await tcpConnect(port);
  await echoOver(conn, "hello postgres\n");
  assertEquals(pg.failures, []);
});

e2e("pgsql hostile peers: no SSLRequest; a server answering 'N'", {}, async (s) => {
  const pki = await makePki();
  const pg = await peerServer(s, async (io) => {
    await io.bytes(8);
    io.write(encode("N"));
    await io.line().catch(() => {});
  });
  const [p1, p2] = freePorts(2);
  const server = await startProxy(serverConf(pki, p1, pg.port, "protocol = pgsql\n"));
  const c1 = await tcpConnect(p1);
  await writeAll(c1, encode("GET / HTTP/1.0\r\n\r\n"));
  await waitClosed(c1);
  await server.waitForLog(/LOG3\[.*PostgreSQL client did not request TLS, rejecting/);
  const client = await startProxy(clientConf(pki, p2, pg.port, "protocol = pgsql\n"));
  const c2 = await tcpConnect(p2);
  await waitClosed(c2);
  await client.waitForLog(/LOG3\[.*PostgreSQL server rejected TLS/);
});

// ------------------------------------------------------------------------------- imap, pop3

e2e("imap server mode: CAPABILITY gets STARTTLS, then TLS to the server", {}, async () => {
  const pki = await makePki();
  const seen: string[] = [];
  const backend = tcpServer(async (conn) => {
    await writeLine(conn, "* OK [CAPABILITY IMAP4rev1 LOGIN] Dovecot ready.");
    for (;;) {
      const line = await readLine(conn, 20_000);
      seen.push(line);
      const [tag, cmd] = line.split(" ");
      if (/^CAPABILITY$/i.test(cmd)) {
        await writeLine(conn, "* CAPABILITY IMAP4rev1 LOGIN");
        await writeLine(conn, `${tag} OK Capability completed.`);
      } else if (/^LOGOUT$/i.test(cmd)) {
        await writeLine(conn, "* BYE Logging out");
        await writeLine(conn, `${tag} OK Logout completed.`);
        return;
      } else await writeLine(conn, `${tag} OK done`);
    }
  });
  const [port] = freePorts(1);
  await startProxy(serverConf(pki, port, backend.port, "protocol = imap\n"));
  const conn = await tcpConnect(port);
  assertEquals(await readLine(conn), "* OK [KAPABILITY IMAP4rev1 LOGIN] Dovecot ready. (stunnel)");
  await writeLine(conn, "a1 CAPABILITY");
  assertEquals(await readLine(conn), "* CAPABILITY IMAP4rev1 LOGIN STARTTLS");
  assertEquals(await readLine(conn), "a1 OK Capability completed.");
  await writeLine(conn, "a2 STARTTLS");
  assertEquals(await readLine(conn), "a2 OK Begin TLS negotiation now");
  const tls = await startTls(conn, pki);
  await writeLine(tls, "a3 NOOP");
  assertEquals(await readLine(tls), "a3 OK done");
  assertEquals(seen, ["a1 CAPABILITY", "a3 NOOP"]);
});

e2e("imap client mode, and a server without STARTTLS", {}, async (s) => {
  const pki = await makePki();
  const imapd = await peerServer(s, async (io) => {
    io.write("* OK IMAP4rev1 ready");
    const line = await io.line();
    if (line !== "stunnel STARTTLS") throw new Error(line);
    io.write("stunnel OK Begin TLS negotiation now");
    await io.upgradeEcho(pki);
  });
  const noTls = await peerServer(s, async (io) => {
    io.write("* OK IMAP4rev1 ready");
    await io.line();
    io.write("stunnel BAD unknown command");
    await io.line().catch(() => {});
  });
  const [p1, p2] = freePorts(2);
  await startProxy(clientConf(pki, p1, imapd.port, "protocol = imap\n"));
  const c1 = await tcpConnect(p1);
  assertEquals(await readLine(c1), "* OK Connected.");
  await echoOver(c1, "a1 NOOP\r\n");
  const refused = await startProxy(clientConf(pki, p2, noTls.port, "protocol = imap\n"));
  const c2 = await tcpConnect(p2);
  assertEquals(await readLine(c2), "* OK Connected.");
  assertEquals(await readLine(c2), "* BYE stunnel: Server does not support TLS");
  await waitClosed(c2);
  await refused.waitForLog(/LOG3\[.*Server does not support TLS/);
});

e2e("pop3 both modes: STLS, CAPA, and a client that does not want TLS", {}, async (s) => {
  const pki = await makePki();
  const backend = tcpServer(async (conn) => {
    await writeLine(conn, "+OK Dovecot ready.");
    const line = await readLine(conn, 20_000);
    await writeLine(conn, `+OK got ${line}`);
    await waitClosed(conn).catch(() => {});
  });
  const popd = await peerServer(s, async (io) => {
    io.write("+OK POP3 ready");
    if ((await io.line()) !== "STLS") throw new Error("no STLS");
    io.write("+OK Begin TLS negotiation");
    await io.upgradeEcho(pki);
  });
  const [p1, p2] = freePorts(2);
  const server = await startProxy(serverConf(pki, p1, backend.port, "protocol = pop3\n"));
  const c1 = await tcpConnect(p1);
  assertEquals(await readLine(c1), "+OK Dovecot ready. + stunnel");
  await writeLine(c1, "CAPA");
  assertEquals(await readLine(c1), "+OK Stunnel capability list follows");
  assertEquals(await readLine(c1), "STLS");
  assertEquals(await readLine(c1), ".");
  await writeLine(c1, "STLS");
  assertEquals(await readLine(c1), "+OK Stunnel starts TLS negotiation");
  const tls = await startTls(c1, pki);
  await writeLine(tls, "USER me");
  assertEquals(await readLine(tls), "+OK got USER me");
  tls.close();
  // A client that goes on in plain text.
  const c3 = await tcpConnect(p1);
  await readLine(c3);
  await writeLine(c3, "USER me");
  await waitClosed(c3);
  await server.waitForLog(/LOG3\[.*Client does not want TLS/);
  await startProxy(clientConf(pki, p2, popd.port, "protocol = pop3\n"));
  const c2 = await tcpConnect(p2);
  assertEquals(await readLine(c2), "+OK POP3 ready");
  await echoOver(c2, "STAT\r\n");
  assertEquals(popd.failures, []);
});

// ------------------------------------------------------------------------------- connect

e2e("connect client mode: CONNECT with Basic auth and a custom header", {}, async (s) => {
  const pki = await makePki();
  const requests: string[][] = [];
  const httpProxy = await peerServer(s, async (io) => {
    const head: string[] = [];
    for (let line = await io.line(); line !== ""; line = await io.line()) head.push(line);
    requests.push(head);
    if (head[0] !== "CONNECT target.example:443 HTTP/1.1") {
      io.write("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n");
      return;
    }
    io.write("HTTP/1.1 200 Connection established\r\nProxy-Agent: test\r\n");
    await io.upgradeEcho(pki);
  });
  const [p1, p2] = freePorts(2);
  const proxy = await startProxy(clientConf(
    pki,
    p1,
    httpProxy.port,
    "protocol = connect\nprotocolHost = target.example:443\nprotocolUsername = user\n" +
      "protocolPassword = secret\nprotocolHeader = X-Test: yes\nprotocolHeader = X-Two: 2\n",
  ));
  const conn = await tcpConnect(p1);
  await echoOver(conn, "through the HTTP proxy\n");
  assertEquals(requests[0], [
    "CONNECT target.example:443 HTTP/1.1",
    "Host: target.example:443",
    `Proxy-Authorization: basic ${btoa("user:secret")}`,
    "X-Test: yes",
    "X-Two: 2",
  ]);
  await proxy.waitForLog(/CONNECT request accepted/);
  // A proxy that refuses.
  const refused = await startProxy(clientConf(
    pki,
    p2,
    httpProxy.port,
    "protocol = connect\nprotocolHost = elsewhere.example:443\n",
  ));
  const c2 = await tcpConnect(p2);
  await waitClosed(c2);
  await refused.waitForLog(/LOG3\[.*CONNECT request rejected/);
});

// ------------------------------------------------------------------------------- config errors

e2e("protocol configuration errors name the line", {
  extra: "stunnel accepts unused protocol* options, crashes on capwin without protocolHost, on " +
    "NTLM without domain",
}, async () => {
  const pki = await makePki();
  const base = `${GLOBALS}[s]\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\n${certLines(pki)}`;
  assertMatch(
    await configError(base + "protocol = capwin\n"),
    /bad\.conf:\d+: protocol 'capwin' needs 'protocolHost'/,
  );
  assertMatch(
    await configError(base + "protocol = proxy\nprotocolUsername = x\n"),
    /bad\.conf:\d+: option 'protocolUsername' is not used by protocol 'proxy' in the server mode/,
  );
  assertMatch(
    await configError(base + "protocolHost = x:1\n"),
    /bad\.conf:\d+: option 'protocolHost' needs a 'protocol'/,
  );
  assertMatch(
    await configError(base + "client = yes\nprotocol = connect\n"),
    /bad\.conf:\d+: protocol 'connect' needs 'protocolHost'/,
  );
  assertMatch(
    await configError(
      base +
        "client = yes\nprotocol = connect\nprotocolHost = a:1\nprotocolAuthentication = NTLM\n" +
        "protocolUsername = u\nprotocolPassword = p\n",
    ),
    /bad\.conf:\d+: protocolAuthentication 'NTLM' needs 'protocolDomain'/,
  );
});
