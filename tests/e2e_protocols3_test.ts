/**
 * End-to-end: `protocol =` negotiations, part 3: cifs (both modes), connect with NTLM proxy
 * authentication, and socks in the client mode, against scripted peers, each checked against
 * stunnel4 (PROXY_CMD=stunnel4 deno test -A tests/e2e_protocols3_test.ts).
 *
 * The socks client sends the original destination of a REDIRECTed connection; that needs a
 * netfilter rule, so that test runs the proxy, an echo backend and the client in a network
 * namespace of their own (`unshare -rn`, iptables): nothing is changed on the machine. The
 * socks service refuses loopback targets, so inside that namespace the "remote" destination is
 * 192.0.2.1 (TEST-NET-1) on its loopback interface, which exists only there.
 */

import { Buffer } from "node:buffer";
import { createHash } from "node:crypto";
import { createServer as createTlsServer } from "node:tls";
import { peerServer, ScriptedPeer } from "./scripted_peer.ts";
import { assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, readExactly, writeAll } from "./harness/bytes.ts";
import { PROXY } from "./harness/command.ts";
import { echoServer, freePorts, tcpConnect } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, type Scope } from "./harness/process.ts";
import { configError, GLOBALS, startProxy } from "./harness/proxy.ts";

const certLines = (pki: Pki) => `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;

function clientConf(pki: Pki, accept: number, connect: number, extra: string): string {
  return GLOBALS +
    `[c]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\n${extra}`;
}

async function echoOver(conn: Deno.Conn, message: string): Promise<void> {
  await writeAll(conn, encode(message));
  assertEquals(decode(await readExactly(conn, encode(message).length)), message);
}

/** Nothing (or only `expect`) arrives before the proxy closes the connection. */
async function expectClose(conn: Deno.Conn, expect: number[] = []): Promise<void> {
  if (expect.length) assertEquals([...await readExactly(conn, expect.length)], expect);
  const got = await readExactly(conn, 1).then((b) => [...b], () => []);
  assertEquals(got, [], "no more data expected");
  conn.close();
}

// ------------------------------------------------------------------------------------- cifs

const USE_TLS = [0x83, 0, 0, 1, 0x8e];

e2e("cifs client mode: empty session request, 'use TLS' response, then TLS", {}, async (s) => {
  const pki = await makePki();
  const requests: number[][] = [];
  const server = await peerServer(s, async (peer) => {
    requests.push(await peer.bytes(4));
    peer.write(USE_TLS);
    await peer.upgradeEcho(pki);
  });
  const [port] = freePorts(1);
  await startProxy(clientConf(pki, port, server.port, "protocol = cifs\n"));
  const conn = await tcpConnect(port);
  await echoOver(conn, "\x00\x00\x00\x04SMB!");
  conn.close();
  assertEquals(requests, [[0x81, 0, 0, 0]]);
  assertEquals(server.failures, []);
});

e2e("cifs server mode: a session request gets 'use TLS', then TLS to the backend", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  await startProxy(
    GLOBALS +
      `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n${certLines(pki)}` +
      "protocol = cifs\n",
  );
  // A NetBIOS session request with a (called, calling) name body.
  const body = [
    ...encode(" CKFDENECFDEFFCFGEFFCCACACACACACA\0 EMEPEDEBEMEJEOEFCACACACACACACAAA\0"),
  ];
  const tcp = await tcpConnect(port);
  await writeAll(tcp, Uint8Array.from([0x81, 0, 0, body.length, ...body]));
  assertEquals([...await readExactly(tcp, 5)], USE_TLS);
  const tls = await Deno.startTls(tcp, { hostname: "localhost", caCerts: [pki.caPem] });
  await echoOver(tls, "after the NetBIOS negotiation");
  tls.close();
});

e2e("cifs hostile peers: wrong packets either way end the connection with stunnel's reason", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  // Server mode: anything but a session request, and an oversized one.
  const echo = echoServer();
  const [sPort, cPort] = freePorts(2);
  const server = await startProxy(
    GLOBALS +
      `[s]\naccept = 127.0.0.1:${sPort}\nconnect = 127.0.0.1:${echo.port}\n${certLines(pki)}` +
      "protocol = cifs\n",
  );
  let tcp = await tcpConnect(sPort);
  await writeAll(tcp, Uint8Array.of(0x85, 0, 0, 0)); // a keep-alive
  await expectClose(tcp, [0x83, 0, 0, 1, 0x81]); // "access denied"
  await server.waitForLog(/LOG3\[[^\]]*\]: Client did not send session setup/);
  tcp = await tcpConnect(sPort);
  await writeAll(tcp, Uint8Array.of(0x81, 0, 0, 125, ...Array(125).fill(0x41)));
  await expectClose(tcp);
  await server.waitForLog(/LOG3\[[^\]]*\]: Received block too long/);
  tcp = await tcpConnect(sPort); // garbage, then EOF
  await writeAll(tcp, encode("GE"));
  await tcp.closeWrite();
  await expectClose(tcp);
  await server.waitForLog(/LOG3\[[^\]]*\]: s_read: Unexpected socket close/);
  // Client mode: every malformed response of the server.
  let response: number[] = [];
  const backend = await peerServer(s, async (peer) => {
    await peer.bytes(4);
    peer.write(response);
    await peer.bytes(1).catch(() => {});
  });
  const client = await startProxy(clientConf(pki, cPort, backend.port, "protocol = cifs\n"));
  const cases: [number[], RegExp][] = [
    [[0x82, 0, 0, 0, 0], /LOG3\[[^\]]*\]: Negative response expected/],
    [[0x83, 0, 0, 2, 0x8e, 0], /LOG3\[[^\]]*\]: Unexpected NetBIOS response size/],
    [[0x83, 0, 0, 1, 0x80], /LOG3\[[^\]]*\]: Remote server does not require TLS/],
  ];
  for (const [bytes, log] of cases) {
    response = bytes;
    await expectClose(await tcpConnect(cPort));
    await client.waitForLog(log);
  }
  // Both still serve a proper peer.
  tcp = await tcpConnect(sPort);
  await writeAll(tcp, Uint8Array.of(0x81, 0, 0, 0));
  assertEquals([...await readExactly(tcp, 5)], USE_TLS);
  const tls = await Deno.startTls(tcp, { hostname: "localhost", caCerts: [pki.caPem] });
  await echoOver(tls, "still serving");
  tls.close();
});

// ----------------------------------------------------------------------------- connect, NTLM

/** The expected NTLM (v1) response: DES of `nonce` under the three 7-byte parts of the hash. */
async function expectedNtResponse(password: string, nonce: Uint8Array): Promise<number[]> {
  const utf16 = Buffer.from(password, "utf16le");
  const hash = [...createHash("md4").update(utf16).digest(), 0, 0, 0, 0, 0];
  const out: number[] = [];
  for (let part = 0; part < 3; part++) {
    // 56 key bits, 7 to a byte, in the high bits (the parity bit is ignored by DES).
    const bits = hash.slice(part * 7, part * 7 + 7).map((b) => b.toString(2).padStart(8, "0"))
      .join("");
    const key = Array.from({ length: 8 }, (_, i) => parseInt(bits.slice(i * 7, i * 7 + 7), 2) << 1);
    const hex = key.map((b) => b.toString(16).padStart(2, "0")).join("");
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeFile(`${dir}/in`, nonce);
      const r = await run([
        "openssl",
        "enc",
        "-des-ecb",
        "-nopad",
        "-K",
        hex,
        "-in",
        `${dir}/in`,
        "-out",
        `${dir}/out`,
        "-provider",
        "legacy",
        "-provider",
        "default",
      ]);
      assertEquals(r.code, 0, `openssl enc -des-ecb: ${r.stderr}`);
      out.push(...await Deno.readFile(`${dir}/out`));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  return out;
}

/** A security buffer of an NTLM message: the bytes it points at. */
function field(msg: Buffer, at: number): Buffer {
  const len = msg.readUInt16LE(at), off = msg.readUInt32LE(at + 4);
  return msg.subarray(off, off + len);
}

/** A type-2 message with `nonce` (the only part stunnel reads). */
function type2(nonce: Uint8Array): string {
  const msg = Buffer.alloc(32);
  msg.write("NTLMSSP\0", 0, "latin1");
  msg.writeUInt32LE(2, 8);
  msg.writeUInt32LE(0x00000202, 20);
  msg.set(nonce, 24);
  return msg.toString("base64");
}

/** Reads one request (lines up to the empty one). */
async function request(peer: ScriptedPeer): Promise<string[]> {
  const lines: string[] = [];
  for (let l = await peer.line(); l !== ""; l = await peer.line()) lines.push(l);
  return lines;
}

const NTLM_OPTS = "protocol = connect\nprotocolHost = target.example:443\n" +
  "protocolAuthentication = NTLM\nprotocolDomain = EXAMPLE\nprotocolUsername = alice\n" +
  "protocolPassword = Secret#123\nprotocolHeader = X-Test: 3\n";

e2e("connect with NTLM: type 1, the 407 challenge, type 3 with the right NT response", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  const nonce = Uint8Array.from([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
  const expected = await expectedNtResponse("Secret#123", nonce);
  const seen: string[][] = [];
  const type3s: Buffer[] = [];
  const server = await peerServer(s, async (peer) => {
    seen.push(await request(peer));
    peer.write("HTTP/1.1 407 Proxy Authentication Required");
    peer.write(`Proxy-Authenticate: NTLM ${type2(nonce)}`);
    peer.write("Content-Length: 9");
    peer.write("");
    peer.write(encode("forbidden"));
    const second = await request(peer);
    seen.push(second);
    const auth = second.find((l) => l.startsWith("Proxy-Authorization: NTLM "));
    type3s.push(Buffer.from(auth!.slice(26), "base64"));
    peer.write("HTTP/1.1 200 Connection established");
    peer.write("");
    await peer.upgradeEcho(pki);
  });
  const [port] = freePorts(1);
  const proxy = await startProxy(clientConf(pki, port, server.port, NTLM_OPTS));
  const conn = await tcpConnect(port);
  await echoOver(conn, "through the NTLM proxy");
  conn.close();
  assertEquals(server.failures, []);
  // The fixed type-1 message: "NTLMSSP", type 1, flags OEM and NTLM, no domain or workstation.
  const t1 = Buffer.from([..."NTLMSSP"].map((c) => c.charCodeAt(0)).concat(Array(25).fill(0)));
  t1[8] = 1, t1[12] = 2, t1[13] = 2;
  assertEquals(seen[0], [
    "CONNECT target.example:443 HTTP/1.1",
    "Host: target.example:443",
    "Proxy-Connection: keep-alive",
    `Proxy-Authorization: NTLM ${t1.toString("base64")}`,
  ]);
  assertEquals(seen[1].length, 4);
  assertEquals(seen[1][0], "CONNECT target.example:443 HTTP/1.1");
  assertEquals(seen[1][1], "Host: target.example:443");
  assertEquals(seen[1][3], "X-Test: 3");
  const t3 = type3s[0];
  assertEquals(t3.subarray(0, 8).toString("latin1"), "NTLMSSP\0");
  assertEquals(t3.readUInt32LE(8), 3);
  assertEquals([...field(t3, 20)], expected, "NT response");
  assertEquals(field(t3, 12).length, 0, "no LM response");
  assertEquals(field(t3, 28).toString("latin1"), "EXAMPLE");
  assertEquals(field(t3, 36).toString("latin1"), "alice");
  await proxy.waitForLog(/CONNECT request accepted/);
});

e2e("connect with NTLM, hostile proxies: every refusal is logged, the service goes on", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  let script: (peer: ScriptedPeer) => Promise<void> = async () => {};
  const server = await peerServer(s, (peer) => script(peer));
  const [port] = freePorts(1);
  const proxy = await startProxy(clientConf(pki, port, server.port, NTLM_OPTS));
  const challenge = (headers: string[]) => async (peer: ScriptedPeer) => {
    await request(peer);
    peer.write("HTTP/1.1 407 Proxy Authentication Required");
    for (const h of headers) peer.write(h);
    peer.write("");
    // After a bad challenge the proxy under test closes instead of sending a second request.
    if (!(await request(peer).then(() => true, () => false))) return;
    peer.write("HTTP/1.1 403 Forbidden");
    peer.write("");
    await peer.bytes(1).catch(() => {});
  };
  const cases: [typeof script, RegExp][] = [
    [async (peer) => {
      await request(peer);
      peer.write("HTTP/1.1 403 Forbidden");
      peer.write("Content-Type: text/plain");
      peer.write("");
      await peer.bytes(1).catch(() => {});
    }, /LOG3\[[^\]]*\]: Proxy-Authenticate: NTLM authorization request rejected/],
    [
      challenge(["Proxy-Authenticate: Basic realm=x"]),
      /LOG3\[[^\]]*\]: Proxy-Authenticate: NTLM header not found/,
    ],
    [
      challenge([`Proxy-Authenticate: NTLM ${type2(new Uint8Array(8))}`, "Content-Length: x1"]),
      /LOG3\[[^\]]*\]: Proxy-Authenticate: Invalid Content-Length/,
    ],
    [
      challenge([`Proxy-Authenticate: NTLM ${type2(new Uint8Array(8))}`]),
      /LOG3\[[^\]]*\]: CONNECT request rejected/,
    ],
  ];
  for (const [c, log] of cases) {
    script = c;
    await expectClose(await tcpConnect(port));
    await proxy.waitForLog(log);
  }
  // Garbage with no end of line: the proxy closes its side; the connection ends.
  script = async (peer) => {
    await request(peer);
    peer.write(encode("\x16\x03\x01 garbage without an end of line"));
    peer.sock.end();
  };
  await expectClose(await tcpConnect(port));
  // stunnel 5.68 words it "s_read: ..."; protocols/channel.ts says "fd_getline: ...".
  await proxy.waitForLog(/LOG3\[[^\]]*\]: (s_read|fd_getline): Unexpected socket close/);
  assertEquals(server.failures, []);
});

e2e("connect with NTLM without OpenSSL's legacy provider: the connection fails, logged", {
  extra: "stunnel 5.68 uses libcrypto's built-in MD4 and DES, not the legacy provider",
}, async (s) => {
  const pki = await makePki();
  let requests = 0;
  const server = await peerServer(s, async (peer) => {
    await request(peer);
    requests++;
  });
  const [port] = freePorts(1);
  // OPENSSL_MODULES is where OpenSSL looks for providers: an empty directory has none.
  const empty = await Deno.makeTempDir();
  s.defer(() => Deno.remove(empty, { recursive: true }));
  const saved = Deno.env.get("OPENSSL_MODULES");
  Deno.env.set("OPENSSL_MODULES", empty);
  let proxy;
  try {
    proxy = await startProxy(clientConf(pki, port, server.port, NTLM_OPTS));
  } finally {
    if (saved === undefined) Deno.env.delete("OPENSSL_MODULES");
    else Deno.env.set("OPENSSL_MODULES", saved);
  }
  await expectClose(await tcpConnect(port));
  await proxy.waitForLog(
    /LOG3\[[^\]]*\]: NTLM authentication is not available: the OpenSSL legacy provider could not be loaded/,
  );
  assertEquals(requests, 0, "no request without the type-1 message");
});

e2e("protocol configuration: NTLM needs protocolDomain, domain without NTLM", {
  extra: "stunnel 5.68 crashes on NTLM without protocolDomain and ignores an unused domain",
}, async () => {
  const base = `${GLOBALS}[c]\nclient = yes\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\n` +
    "protocol = connect\nprotocolHost = a:1\n";
  assertMatch(
    await configError(
      base + "protocolAuthentication = NTLM\nprotocolUsername = u\nprotocolPassword = p\n",
    ),
    /bad\.conf:\d+: protocolAuthentication 'NTLM' needs 'protocolDomain'/,
  );
  assertMatch(
    await configError(base + "protocolDomain = D\n"),
    /bad\.conf:\d+: option 'protocolDomain' is only used by protocolAuthentication 'NTLM'/,
  );
});

// ----------------------------------------------------------------------------- socks client

/** A TLS server that answers every SOCKS 5 method request with `reply()`. */
async function socksServerReplying(scope: Scope, pki: Pki, reply: () => number[]): Promise<number> {
  const server = createTlsServer({
    cert: Deno.readTextFileSync(pki.serverEc.cert),
    key: Deno.readTextFileSync(pki.serverEc.key),
  }, (sock) => {
    sock.once("data", () => sock.write(Uint8Array.from(reply())));
    sock.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  scope.defer(() => server.close());
  const addr = server.address();
  return typeof addr === "object" && addr ? addr.port : 0;
}

e2e("socks client mode, hostile socks servers: a bad version, no acceptable method", {
  timeoutMs: 40_000,
}, async (s) => {
  const pki = await makePki();
  let reply: number[] = [];
  const remote = await socksServerReplying(s, pki, () => reply);
  const [port] = freePorts(1);
  const proxy = await startProxy(clientConf(pki, port, remote, "protocol = socks\n"));
  const cases: [number[], RegExp][] = [
    [[4, 0], /LOG3\[[^\]]*\]: Invalid SOCKS5 message version 0x04/],
    [[5, 0xff], /LOG3\[[^\]]*\]: No supported SOCKS5 authentication method received/],
  ];
  for (const [bytes, log] of cases) {
    reply = bytes;
    await expectClose(await tcpConnect(port));
    await proxy.waitForLog(log);
  }
});

/** Runs `script` with bash in a new user and network namespace; its output. */
async function inNamespace(script: string, env: Record<string, string>): Promise<string> {
  const r = await run(["unshare", "-rn", "bash", "-c", script], 40_000, { env });
  assertEquals(r.code, 0, `namespace script failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

e2e("socks client mode: a REDIRECTed connection goes to its original destination", {
  timeoutMs: 50_000,
}, async (s) => {
  const pki = await makePki();
  const dir = await Deno.makeTempDir({ prefix: "e2e-socks-ns-" });
  s.defer(() => Deno.remove(dir, { recursive: true }));
  // Inside the namespace: the socks client service [c] on 7001 (where 192.0.2.1:7000 is
  // redirected for connections from 192.0.2.2), the socks service [s] on 7002, an echo backend
  // on 192.0.2.1:7000 (reached by [s] directly: its source is not 192.0.2.2), and the client.
  await Deno.writeTextFile(
    `${dir}/stunnel.conf`,
    GLOBALS +
      `[c]\nclient = yes\naccept = 127.0.0.1:7001\nconnect = 127.0.0.1:7002\nCAfile = ${pki.ca}\n` +
      "verifyChain = yes\ncheckHost = localhost\nprotocol = socks\n" +
      `[s]\naccept = 127.0.0.1:7002\n${certLines(pki)}protocol = socks\n`,
  );
  const script = `
    set -e
    export PATH="$PATH:/usr/sbin:/sbin"
    ip link set lo up
    ip addr add 192.0.2.1/32 dev lo
    ip addr add 192.0.2.2/32 dev lo
    iptables -t nat -A OUTPUT -p tcp -s 192.0.2.2 -d 192.0.2.1 --dport 7000 \\
      -j REDIRECT --to-ports 7001
    socat TCP-LISTEN:7000,bind=192.0.2.1,reuseaddr,fork EXEC:cat &
    backend=$!
    $PROXY_LINE "$DIR/stunnel.conf" > "$DIR/proxy.log" 2>&1 &
    proxy=$!
    trap 'kill $proxy $backend 2>/dev/null || true' EXIT
    for i in $(seq 200); do
      (exec 3<>/dev/tcp/127.0.0.1/7001 && exec 4<>/dev/tcp/127.0.0.1/7002) 2>/dev/null && break
      sleep 0.05
    done
    echo "redirected: $(printf 'ping through socks' | timeout 10 socat -t 3 - \\
      TCP:192.0.2.1:7000,bind=192.0.2.2)"
    echo "direct: $(printf 'ping direct' | timeout 10 socat -t 3 - TCP:127.0.0.1:7001 || true)"
    sleep 0.5
  `;
  const out = await inNamespace(script, { PROXY_LINE: PROXY.join(" "), DIR: dir });
  const log = await Deno.readTextFile(`${dir}/proxy.log`);
  assertMatch(out, /^redirected: ping through socks$/m, `${out}\n${log}`);
  assertMatch(log, /LOG6\[[^\]]*\]: Sending SOCKS5 IPv4 address/);
  assertMatch(log, /LOG6\[[^\]]*\]: SOCKS5 IPv4 address received/);
  assertMatch(log, /LOG6\[[^\]]*\]: SOCKS5 request succeeded/);
  // A connection that was not redirected has its own address as the original destination:
  // the loopback, which the socks service refuses; the client logs the refusal.
  assertMatch(out, /^direct: $/m, out);
  assertMatch(log, /LOG3\[[^\]]*\]: SOCKS connection to the IPv4 loopback rejected/);
  assertMatch(log, /LOG3\[[^\]]*\]: SOCKS5 request failed: Connection not allowed by ruleset/);
});

// ----------------------------------------------------------------------------- capwin

e2e("capwinctrl is refused in the server mode, as stunnel words it", {}, async () => {
  const pki = await makePki();
  const base = `${GLOBALS}[s]\naccept = 127.0.0.1:1\nconnect = 127.0.0.1:2\n${certLines(pki)}`;
  assertMatch(
    await configError(base + "protocol = capwinctrl\n"),
    /Service \[s\]: The 'capwinctrl' protocol is not supported in the server mode/,
  );
});

// capwin and capwinctrl themselves: tests/e2e_capwin_test.ts.
