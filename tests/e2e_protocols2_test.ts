/**
 * End-to-end: `protocol =` negotiations, part 2: socks (server mode, the manual's SOCKS VPN),
 * nntp and ldap (client mode) against scripted peers, each checked against stunnel4.
 *
 * The socks service refuses targets on the loopback (stunnel 127.0.0.0/8 and ::1, ours also
 * 0.0.0.0, :: and the IPv4-mapped forms), so it runs in a network namespace of its own, where
 * 192.0.2.1 and 2001:db8::1 (documentation addresses on the namespace's loopback interface, which
 * exists only there) are local without being loopback addresses, and so are its backends. It
 * accepts on a Unix socket, which a relay on 127.0.0.1 joins: nothing is changed on the machine.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_protocols2_test.ts
 */

import { peerServer } from "./scripted_peer.ts";
import { assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, readExactly, waitClosed, writeAll } from "./harness/bytes.ts";
import { PROXY } from "./harness/command.ts";
import { freePorts, tcpConnect, tlsConnect, waitForPort } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, type Scope, spawn, type Spawned } from "./harness/process.ts";
import { configError, GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { startStunnel4 } from "./harness/stunnel4.ts";
import { pollUntil } from "./harness/timing.ts";

const certLines = (pki: Pki) => `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;

// ------------------------------------------------------------------------------- socks

/** A socks server-mode service: no `connect`, the SOCKS request chooses the target. */
function socksServerConf(pki: Pki, accept: number | string): string {
  return GLOBALS + `[socks]\naccept = ${accept}\n${certLines(pki)}protocol = socks\n`;
}

/** The targets of the socks service: local addresses of its namespace, not loopback ones. */
const TARGET_V4 = "192.0.2.1";
const TARGET_V6 = "2001:db8::1";

/** The socks service in its namespace: `port` (on 127.0.0.1 here) reaches it. */
interface SocksHost {
  port: number;
  proxy: Proxy;
  /** Runs a command in the service's namespace, e.g. a backend. */
  inside(cmd: string[]): Spawned;
}

async function socksHost(scope: Scope, pki: Pki): Promise<SocksHost> {
  const ns = `socks${Deno.pid % 100000}${Math.floor(Math.random() * 1000)}`;
  const setUp = await run([
    "sh",
    "-ec",
    `ip netns add ${ns}\nip netns exec ${ns} sh -ec "ip link set lo up\n` +
    `ip addr add ${TARGET_V4}/32 dev lo\nip addr add ${TARGET_V6}/128 dev lo"`,
  ]);
  assertEquals(setUp.code, 0, `network namespace: ${setUp.stderr}`);
  scope.defer(() => run(["ip", "netns", "del", ns]));
  const inside = (cmd: string[]) => spawn(["ip", "netns", "exec", ns, ...cmd], { stdin: false });
  const path = `${await scope.tempDir("e2e-socks-")}/socks.sock`;
  const proxy = await startProxy(socksServerConf(pki, path), {
    cmd: ["ip", "netns", "exec", ns, ...PROXY],
    waitPorts: [],
  });
  await pollUntil(() => Deno.stat(path).then(() => true, () => false), 15_000, "socks socket");
  const [port] = freePorts(1);
  spawn(["socat", `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`, `UNIX-CONNECT:${path}`], {
    stdin: false,
  });
  await waitForPort(port);
  return { port, proxy, inside };
}

/** A backend in the socks service's namespace, on both targets: `program` serves each client. */
async function backendInside(host: SocksHost, program: string): Promise<number> {
  const [port] = freePorts(1);
  const backend = host.inside([
    "socat",
    "-d",
    "-d",
    `TCP6-LISTEN:${port},ipv6only=0,reuseaddr,fork`,
    `EXEC:${program}`,
  ]);
  await backend.waitForOutput(/listening on/);
  return port;
}

/** The client side of the manual's SOCKS VPN: plain SOCKS in, TLS to the socks service. */
function socksClientConf(pki: Pki, accept: number, connect: number): string {
  return GLOBALS +
    `[socks-client]\nclient = yes\naccept = 127.0.0.1:${accept}\n` +
    `connect = 127.0.0.1:${connect}\nCAfile = ${pki.ca}\nverifyChain = yes\n` +
    `checkHost = localhost\n`;
}

async function curlSocks(args: string[]): Promise<{ code: number; body: string; err: string }> {
  const r = await run(["curl", "-sS", "--max-time", "10", ...args], 15_000);
  return { code: r.code, body: r.stdout, err: r.stderr };
}

/** An HTTP/1.0 responder for socat EXEC: reads the request head, answers `body`. */
async function httpResponder(scope: Scope, body: string): Promise<string> {
  const script = `${await scope.tempDir("e2e-http-")}/respond.sh`;
  await Deno.writeTextFile(
    script,
    `#!/bin/sh\ncr=$(printf '\\r')\n` +
      `while IFS= read -r line && [ "$line" != "$cr" ] && [ -n "$line" ]; do :; done\n` +
      `printf 'HTTP/1.0 200 OK\\r\\nContent-Length: ${body.length}\\r\\n\\r\\n%s' '${body}'\n`,
  );
  await Deno.chmod(script, 0o755);
  return script;
}

e2e("socks VPN: curl -> client service -> socks service -> HTTP backend", {
  timeoutMs: 60_000,
}, async (scope) => {
  const pki = await makePki();
  const respond = await httpResponder(scope, "hello through socks\n");
  // The client-mode side by our proxy and by stunnel4; the socks service is the proxy under test.
  for (const start of [startProxy, startStunnel4]) {
    const host = await socksHost(scope, pki);
    const server = host.proxy;
    const b = await backendInside(host, respond);
    const [cPort] = freePorts(1);
    await start(socksClientConf(pki, cPort, host.port));
    const socks = `127.0.0.1:${cPort}`;
    for (
      const args of [
        ["--socks4a", socks, `http://${TARGET_V4}:${b}/`],
        ["--socks4", socks, `http://${TARGET_V4}:${b}/`],
        ["--socks5-hostname", socks, `http://${TARGET_V4}:${b}/`],
        ["--socks5", socks, `http://${TARGET_V4}:${b}/`],
        ["--socks5", socks, `http://[${TARGET_V6}]:${b}/`],
      ]
    ) {
      const r = await curlSocks(args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.err}`);
      assertEquals(r.body, "hello through socks\n", args.join(" "));
    }
    await server.waitForLog(/SOCKS4a resolved "192\.0\.2\.1" to 1 host\(s\)/);
    await server.waitForLog(/SOCKS4 address received/);
    await server.waitForLog(/SOCKS5 IPv6 address received/);
    // The loopback itself is refused, with SOCKS 4's and SOCKS 5's "not allowed" replies.
    const v4a = await curlSocks(["--socks4a", socks, `http://127.0.0.1:${b}/`]);
    assertEquals(v4a.code, 97, v4a.err);
    assertMatch(v4a.err, /\(91\)/);
    const v5h = await curlSocks(["--socks5-hostname", socks, `http://localhost:${b}/`]);
    assertEquals(v5h.code, 97, v5h.err);
    assertMatch(v5h.err, /\(2\)/);
    await server.waitForLog(/SOCKS connection to the IPv4 loopback rejected/);
    await server.stop();
  }
});

/** A TLS connection to the socks service; writes `request`. */
async function socksRaw(port: number, pki: Pki, request: number[]): Promise<Deno.TlsConn> {
  const conn = await tlsConnect(port, pki.caPem);
  await writeAll(conn, Uint8Array.from(request));
  return conn;
}

const be16 = (n: number) => [n >> 8, n & 0xff];

/** The four bytes of TARGET_V4 and the sixteen of TARGET_V6. */
const V4 = [192, 0, 2, 1];
const V6 = [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 1];

e2e("socks: raw SOCKS 4 and 5 requests, the replies, and the data after them", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const host = await socksHost(scope, pki);
  const { port, proxy } = host;
  const echo = await backendInside(host, "cat");
  // SOCKS 4 CONNECT with a USERID: reply VN 0, CD 90, the request's port and address.
  let conn = await socksRaw(port, pki, [4, 1, ...be16(echo), ...V4, 0x75, 0x73, 0]);
  assertEquals([...await readExactly(conn, 8)], [0, 90, ...be16(echo), ...V4]);
  await writeAll(conn, encode("ping4"));
  assertEquals(decode(await readExactly(conn, 5)), "ping4");
  conn.close();
  // SOCKS 5: methods (GSSAPI, none), then CONNECT to a domain name, data in the same write.
  const name = [...encode(TARGET_V4)];
  conn = await socksRaw(port, pki, [
    5,
    2,
    1,
    0,
    ...[5, 1, 0, 3, name.length, ...name, ...be16(echo)],
    ...encode("ping5"),
  ]);
  assertEquals([...await readExactly(conn, 2)], [5, 0]);
  assertEquals([...await readExactly(conn, 10)], [5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
  assertEquals(decode(await readExactly(conn, 5)), "ping5");
  conn.close();
  // SOCKS 5 IPv6: the reply keeps the family and echoes the address.
  conn = await socksRaw(port, pki, [5, 1, 0, 5, 1, 0, 4, ...V6, ...be16(echo)]);
  assertEquals([...await readExactly(conn, 2)], [5, 0]);
  assertEquals([...await readExactly(conn, 22)], [5, 0, 0, 4, ...V6, ...be16(echo)]);
  await writeAll(conn, encode("ping6"));
  assertEquals(decode(await readExactly(conn, 5)), "ping6");
  conn.close();
  await proxy.waitForLog(/SOCKS5 resolved "192\.0\.2\.1" to 1 host\(s\)/);
});

e2e("socks hostile requests: version, methods, address type, commands, refused target", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const [dead] = freePorts(1);
  const { port, proxy } = await socksHost(scope, pki);
  const expectReply = async (request: number[], reply: number[]) => {
    const conn = await socksRaw(port, pki, request);
    assertEquals([...await readExactly(conn, reply.length)], reply, `reply to ${request}`);
    await waitClosed(conn);
    conn.close();
  };
  // An unknown version: no reply at all, the connection is dropped.
  let conn = await socksRaw(port, pki, [6, 1, 0, 0]);
  const got = await readExactly(conn, 1).then((b) => [...b], () => []);
  assertEquals(got, [], "no reply to an unknown version");
  conn.close();
  await proxy.waitForLog(/Unsupported SOCKS version 0x06/);
  // No acceptable SOCKS 5 method (only username/password offered).
  await expectReply([5, 1, 2], [5, 0xff]);
  await proxy.waitForLog(/No supported SOCKS5 authentication method received/);
  // A bad address type: "address type not supported".
  await expectReply([5, 1, 0, 5, 1, 0, 9], [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
  await proxy.waitForLog(/Unsupported SOCKS5 address type 0x09/);
  // A bad version in the SOCKS 5 request: "general SOCKS server failure".
  await expectReply([5, 1, 0, 4, 1, 0, 1], [5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
  await proxy.waitForLog(/Invalid SOCKS5 message version 0x04/);
  // BIND is not supported, in either version.
  await expectReply([5, 1, 0, 5, 2, 0, 1], [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
  await proxy.waitForLog(/Unsupported SOCKS5 command 0x02/);
  await expectReply([4, 2, 0, 80, 1, 2, 3, 4, 0], [0, 91, 0, 80, 1, 2, 3, 4]);
  await proxy.waitForLog(/Unsupported SOCKS4\/SOCKS4a command 0x02/);
  // The loopback and an unresolvable name.
  await expectReply([4, 1, 0, 80, 127, 0, 0, 1, 0], [0, 91, 0, 80, 127, 0, 0, 1]);
  await expectReply(
    [5, 1, 0, 5, 1, 0, 4, ...Array(15).fill(0), 1, 0, 80],
    [5, 0, 5, 2, 0, 4, ...Array(15).fill(0), 1, 0, 80],
  );
  await proxy.waitForLog(/SOCKS connection to the IPv6 loopback rejected/);
  const bad = [...encode("no-such-host.invalid")];
  await expectReply(
    [5, 1, 0, 5, 1, 0, 3, bad.length, ...bad, 0, 80],
    [5, 0, 5, 4, 0, 1, 0, 0, 0, 0, 0, 0],
  );
  await proxy.waitForLog(/SOCKS5 failed to resolve "no-such-host\.invalid"/);
  // stunnel answers before it connects: a refused target gets a success reply, then the close.
  conn = await socksRaw(port, pki, [4, 1, ...be16(dead), ...V4, 0]);
  assertEquals([...await readExactly(conn, 8)], [0, 90, ...be16(dead), ...V4]);
  await waitClosed(conn);
  conn.close();
  await proxy.waitForLog(/s_connect: connect 192\.0\.2\.1:\d+: Connection refused \(111\)/);
});

e2e(
  "socks configuration: the protocol is the second endpoint, `connect` is one too many",
  {},
  async () => {
    const pki = await makePki();
    const base = `${GLOBALS}[s]\naccept = 127.0.0.1:1\n${certLines(pki)}protocol = socks\n`;
    assertMatch(
      await configError(base + "connect = 127.0.0.1:2\n"),
      /Service \[s\]: Each service must define two endpoints/,
    );
  },
);

// ------------------------------------------------------------------------------- nntp, ldap

function clientConf(pki: Pki, accept: number, connect: number, protocol: string): string {
  return GLOBALS +
    `[c]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\nprotocol = ${protocol}\n`;
}

/** Reads one CR LF line from a plain connection, byte by byte. */
async function readLine(conn: Deno.Conn): Promise<string> {
  const bytes: number[] = [];
  for (;;) {
    const [b] = await readExactly(conn, 1);
    if (b === 10) break;
    bytes.push(b);
  }
  if (bytes.at(-1) === 13) bytes.pop();
  return decode(Uint8Array.from(bytes));
}

async function echoOver(conn: Deno.Conn, message: string): Promise<void> {
  await writeAll(conn, encode(message));
  assertEquals(decode(await readExactly(conn, encode(message).length)), message);
}

/** Nothing arrives before the proxy closes the connection. */
async function expectNothing(conn: Deno.Conn): Promise<void> {
  const got = await readExactly(conn, 1).then((b) => [...b], () => []);
  assertEquals(got, [], "no data expected");
  conn.close();
}

e2e("nntp client mode: greeting relayed, STARTTLS, 382, then TLS", {}, async (s) => {
  const pki = await makePki();
  const commands: string[] = [];
  const server = await peerServer(s, async (peer) => {
    peer.write("200 news.example.org InterNetNews NNRP server INN 2.7.1 ready (posting ok)");
    commands.push(await peer.line());
    peer.write("382 Continue with TLS negotiation");
    await peer.upgradeEcho(pki);
  });
  const [port] = freePorts(1);
  await startProxy(clientConf(pki, port, server.port, "nntp"));
  const conn = await tcpConnect(port);
  assertEquals(
    await readLine(conn),
    "200 news.example.org InterNetNews NNRP server INN 2.7.1 ready (posting ok)",
  );
  await echoOver(conn, "GROUP comp.lang.c\r\n");
  conn.close();
  assertEquals(commands, ["STARTTLS"]);
  assertEquals(server.failures, []);
});

e2e("nntp hostile servers: an unknown greeting, STARTTLS refused", {}, async (s) => {
  const pki = await makePki();
  let refuse = false;
  const server = await peerServer(s, async (peer) => {
    if (!refuse) {
      peer.write("400 news.example.org temporarily unavailable");
      await peer.line().catch(() => {});
      return;
    }
    peer.write("201 news.example.org ready (no posting)");
    await peer.line();
    peer.write("580 Can not initiate TLS negotiation");
    await peer.line().catch(() => {});
  });
  const [port] = freePorts(1);
  const proxy = await startProxy(clientConf(pki, port, server.port, "nntp"));
  await expectNothing(await tcpConnect(port));
  await proxy.waitForLog(/LOG3\[[^\]]*\]: Unknown server welcome/);
  refuse = true;
  const conn = await tcpConnect(port);
  assertEquals(await readLine(conn), "201 news.example.org ready (no posting)");
  await expectNothing(conn);
  await proxy.waitForLog(/LOG3\[[^\]]*\]: Server does not support TLS/);
});

/** The StartTLS ExtendedRequest: messageID 1, the OID 1.3.6.1.4.1.1466.20037. */
const LDAP_STARTTLS = [
  0x30,
  0x1d,
  ...[0x02, 0x01, 0x01],
  ...[0x77, 0x18, 0x80, 0x16, ...encode("1.3.6.1.4.1.1466.20037")],
];

/** An ExtendedResponse with `result`, an empty matchedDN and diagnosticMessage. */
function ldapResponse(result: number, opts: { id?: number; winldap?: boolean } = {}): number[] {
  const op = [0x0a, 0x01, result, 0x04, 0x00, 0x04, 0x00];
  const len = (n: number) => opts.winldap ? [0x84, 0, 0, 0, n] : [n];
  const body = [0x02, 0x01, opts.id ?? 1, 0x78, ...len(op.length), ...op];
  return [0x30, ...len(body.length), ...body];
}

e2e(
  "ldap client mode: StartTLS extended operation, then TLS (also WinLDAP lengths)",
  {},
  async (s) => {
    const pki = await makePki();
    const requests: number[][] = [];
    let winldap = false;
    const server = await peerServer(s, async (peer) => {
      requests.push(await peer.bytes(LDAP_STARTTLS.length));
      peer.write(ldapResponse(0, { winldap }));
      await peer.upgradeEcho(pki);
    });
    const [port] = freePorts(1);
    const proxy = await startProxy(clientConf(pki, port, server.port, "ldap"));
    for (const w of [false, true]) {
      winldap = w;
      const conn = await tcpConnect(port);
      // An LDAP bind request, as a client would send it after StartTLS.
      await echoOver(conn, "\x30\x0c\x02\x01\x02\x60\x07\x02\x01\x03\x04\x00\x80\x00");
      conn.close();
    }
    assertEquals(requests, [LDAP_STARTTLS, LDAP_STARTTLS]);
    assertEquals(server.failures, []);
    await proxy.waitForLogCount(/LDAP Start TLS successfully negotiated/, 2);
  },
);

e2e("ldap hostile servers: an error result, a wrong message ID, not a SEQUENCE", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  let reply: number[] = [];
  const server = await peerServer(s, async (peer) => {
    await peer.bytes(LDAP_STARTTLS.length);
    peer.write(reply);
    await peer.bytes(1).catch(() => {});
  });
  const [port] = freePorts(1);
  const proxy = await startProxy(clientConf(pki, port, server.port, "ldap"));
  const cases: [number[], RegExp][] = [
    [ldapResponse(2), /LDAP response has indicated an error \(2\)/],
    [ldapResponse(0, { id: 2 }), /LDAP response has an unexpected message ID value/],
    [[0x31, 0x03, 0x02, 0x01, 0x01], /LDAP response is not UNIVERSAL SEQUENCE/],
    [[0x30, 0x84, 0, 0, 1, 0], /LDAP response too long \(256 byte\(s\)\)/],
    [[0x30, 0x05, 0x02, 0x01, 0x01, 0x65, 0x00], /protocol op is not ExtendedResponse/],
  ];
  for (const [bytes, log] of cases) {
    reply = bytes;
    await expectNothing(await tcpConnect(port));
    await proxy.waitForLog(log);
  }
});

e2e("protocol configuration: nntp and ldap are refused in the server mode", {}, async () => {
  const pki = await makePki();
  const base = `${GLOBALS}[s]\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\n${certLines(pki)}`;
  assertMatch(
    await configError(base + "protocol = nntp\n"),
    /The 'nntp' protocol is not supported in the server mode/,
  );
  assertMatch(
    await configError(base + "protocol = ldap\n"),
    /The 'ldap' protocol is not supported in the server mode/,
  );
});
