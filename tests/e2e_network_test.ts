/**
 * End-to-end: the network side of a service. Failover between several `connect` addresses (rr
 * and prio), the delayed resolver, Unix sockets on both ends, IPv6, `accept` on port 0, the
 * three timeouts (TIMEOUTidle, TIMEOUTbusy, TIMEOUTclose), `reset`, the SNI a client-mode
 * service sends, and 200 concurrent connections.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_network_test.ts
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import {
  closeQuietly,
  concat,
  decode,
  encode,
  pattern,
  readExactly,
  waitClosed,
  writeAll,
} from "./harness/bytes.ts";
import {
  echoRoundTrip,
  echoServer,
  freePorts,
  tcpConnect,
  tcpServer,
  tlsConnect,
  unansweredPort,
  waitForPort,
} from "./harness/net.ts";
import { makePki, serverCertLines } from "./harness/pki.ts";
import { e2e, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { pollUntil, withTimeout } from "./harness/timing.ts";

/** A TLS connection to the server-mode port that reads the backend's greeting line. */
async function greetingVia(port: number): Promise<string> {
  const pki = await makePki();
  const conn = await tlsConnect(port, pki.caPem);
  try {
    return decode(await readExactly(conn, 2));
  } finally {
    closeQuietly(conn);
  }
}

/** Echoes on every connection `listener` accepts; all closed with the scope. */
function serveEcho(scope: Scope, listener: Deno.Listener): { peers: Deno.Addr[] } {
  const conns = new Set<Deno.Conn>();
  const state = { peers: [] as Deno.Addr[] };
  scope.defer(() => {
    closeQuietly(listener);
    for (const c of conns) closeQuietly(c);
  });
  const echo = async (conn: Deno.Conn) => {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await conn.read(buf);
        if (n === null) break;
        await writeAll(conn, buf.subarray(0, n));
      }
    } catch {
      // peer went away
    } finally {
      conns.delete(conn);
      closeQuietly(conn);
    }
  };
  (async () => {
    try {
      for await (const conn of listener) {
        state.peers.push(conn.remoteAddr);
        conns.add(conn);
        echo(conn);
      }
    } catch {
      // listener closed
    }
  })();
  return state;
}

/**
 * `n` ports free on 127.0.0.1, ::1 and the IPv6 wildcard alike (freePorts checks 127.0.0.1
 * only, and a listener on ::1 may hold the same number): the kernel picks them for the IPv6
 * wildcard, then each is checked on 127.0.0.1.
 */
function freePortsAllFamilies(n: number): number[] {
  for (let tries = 0; tries < 20; tries++) {
    const held = Array.from({ length: n }, () => Deno.listen({ hostname: "::", port: 0 }));
    const ports = held.map((l) => (l.addr as Deno.NetAddr).port);
    for (const l of held) closeQuietly(l);
    const ok = ports.every((port) => {
      try {
        Deno.listen({ hostname: "127.0.0.1", port }).close();
        return true;
      } catch {
        return false;
      }
    });
    if (ok) return ports;
  }
  throw new Error("no free ports");
}

// ---------------------------------------------------------------------------------------------
// Failover

e2e("failover = rr spreads connections over both connect addresses", {}, async () => {
  const a = echoServer({ greeting: "A\n" });
  const b = echoServer({ greeting: "B\n" });
  const [port] = freePorts(1);
  await startProxy(
    GLOBALS + `[rr]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${a.port}\n` +
      `connect = 127.0.0.1:${b.port}\nfailover = rr\n${await serverCertLines()}`,
  );
  const seen: string[] = [];
  for (let i = 0; i < 6; i++) seen.push((await greetingVia(port)).trim());
  assertEquals(a.connections + b.connections, 6, `greetings: ${seen.join(",")}`);
  assert(a.connections >= 1 && b.connections >= 1, `both backends used: ${seen.join(",")}`);
  // stunnel takes the addresses in turn: A B A B A B (or B A B A ...).
  assertEquals(a.connections, 3, `greetings: ${seen.join(",")}`);
  for (let i = 1; i < seen.length; i++) assert(seen[i] !== seen[i - 1], seen.join(","));
});

e2e("failover = prio (default) uses the first address until it fails", {}, async () => {
  const a = echoServer({ greeting: "A\n" });
  const b = echoServer({ greeting: "B\n" });
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[prio]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${a.port}\n` +
      `connect = 127.0.0.1:${b.port}\n${await serverCertLines()}`,
  );
  for (let i = 0; i < 4; i++) assertEquals(await greetingVia(port), "A\n");
  assertEquals([a.connections, b.connections], [4, 0]);
  a.close();
  for (let i = 0; i < 3; i++) assertEquals(await greetingVia(port), "B\n");
  assertEquals([a.connections, b.connections], [4, 3]);
  await proxy.waitForLog(
    new RegExp(
      `LOG3\\[[^\\]]+\\]: s_connect: connect 127\\.0\\.0\\.1:${a.port}: ` +
        `Connection refused \\(111\\)`,
    ),
  );
  await proxy.waitForLog(new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${b.port}`));
});

e2e("TIMEOUTconnect: an address that does not answer is given up for the next", {}, async () => {
  const silent = await unansweredPort();
  const b = echoServer({ greeting: "B\n" });
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[slow]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${silent}\n` +
      `connect = 127.0.0.1:${b.port}\nTIMEOUTconnect = 1\n${await serverCertLines()}`,
  );
  assertEquals(await greetingVia(port), "B\n");
  await proxy.waitForLog(
    new RegExp(
      `LOG3\\[[^\\]]+\\]: s_connect: s_poll_wait 127\\.0\\.0\\.1:${silent}: ` +
        "TIMEOUTconnect exceeded$",
      "m",
    ),
  );
  await proxy.waitForLog(new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${b.port}`));
});

// ---------------------------------------------------------------------------------------------
// Delayed resolver

e2e("delay = yes with connect = localhost:PORT", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[delayed]\naccept = 127.0.0.1:${port}\nconnect = localhost:${echo.port}\n` +
      `delay = yes\n${await serverCertLines()}`,
  );
  for (let i = 0; i < 2; i++) {
    const conn = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(conn, `delayed ${i}\n`);
    conn.close();
  }
  assertEquals(echo.connections, 2);
  await proxy.waitForLog(new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${echo.port}`));
});

e2e("a connect host that does not resolve switches to the delayed resolver", {}, async () => {
  const pki = await makePki();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[unresolved]\naccept = 127.0.0.1:${port}\n` +
      `connect = no-such-host.invalid:80\n${await serverCertLines()}`,
  );
  // It started and listens (startProxy waited for the port). The TLS handshake completes,
  // then the name lookup fails and the connection is dropped.
  const conn = await tlsConnect(port, pki.caPem);
  await waitClosed(conn, 10_000);
  await proxy.waitForLog(/Connection reset: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/);
  const log = proxy.log();
  // The connection's lines (numeric ids), then the start-up ones ([ui]).
  assertMatch(log, /LOG3\[\d+\]: Error resolving "no-such-host\.invalid": /);
  assertMatch(log, /LOG3\[\d+\]: No remote host resolved$/m);
  // At start-up: the same error, then the switch to the delayed resolver.
  assertMatch(
    log,
    /LOG3\[ui\]: Error resolving "no-such-host\.invalid": .*\n.*LOG6\[ui\]: Cannot resolve connect target - delaying DNS lookup$/m,
  );
  assertMatch(log, /Configuration successful/);
  assert(proxy.process.running, "the proxy keeps running");
});

// ---------------------------------------------------------------------------------------------
// Unix sockets

e2e("accept = /path/sock: TLS over a Unix socket (openssl s_client -unix)", {}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const dir = await scope.tempDir("e2e-unix-");
  const sock = `${dir}/tls.sock`;
  const proxy = await startProxy(
    GLOBALS + `[unix-in]\naccept = ${sock}\nconnect = 127.0.0.1:${echo.port}\n` +
      (await serverCertLines()),
  );
  // Wait for the socket file and for the listener behind it (a connection refused means the
  // socket is bound but does not listen yet).
  await pollUntil(
    async () => {
      try {
        (await Deno.connect({ transport: "unix", path: sock })).close();
        return true;
      } catch {
        return false;
      }
    },
    10_000,
    "the proxy to listen on the Unix socket",
  );
  const client = spawn([
    "openssl",
    "s_client",
    "-unix",
    sock,
    "-CAfile",
    pki.ca,
    "-verify_return_error",
    "-servername",
    "localhost",
    "-quiet",
  ]);
  const message = "over a unix socket\n";
  await client.write(message);
  assertEquals(decode(await client.readStdout(message.length)), message);
  await client.stop();
  assertEquals(echo.connections, 1);
  // (stunnel logs the probe as "Connection reset/closed": a Unix socket cannot be reset.)
  await proxy.waitForLogCount(/Connection [a-z/]+: /, 2);
  const log = proxy.log();
  assertMatch(log, /Connection closed: 19 byte\(s\) sent to TLS, 19 byte\(s\) sent to socket/);
  // stunnel prints a Unix socket address as "localhost:PATH", and a Unix peer as "unnamed socket".
  const where = `localhost:${sock.replace(/[.]/g, "\\.")}`;
  assertMatch(log, new RegExp(`Service \\[unix-in\\] (?:\\(FD=\\d+\\) )?bound to ${where}$`, "m"));
  assertMatch(log, /LOG5\[\d+\]: Service \[unix-in\] accepted connection from unnamed socket$/m);
});

e2e("connect = /path/sock: server mode to a plain Unix socket backend", {}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-unix-");
  const sock = `${dir}/echo.sock`;
  const echo = serveEcho(scope, Deno.listen({ transport: "unix", path: sock }));
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS +
      `[unix-out]\naccept = 127.0.0.1:${port}\nconnect = ${sock}\n${await serverCertLines()}`,
  );
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "to a unix backend\n");
  await echoRoundTrip(conn, "x".repeat(100_000));
  conn.close();
  assertEquals(echo.peers.length, 1);
  await proxy.waitForLog(/Connection closed: 100018 byte\(s\) sent to TLS/);
  // stunnel prints a Unix socket address as "localhost:PATH", and a Unix peer as "unnamed socket".
  const log = proxy.log();
  const where = `localhost:${sock.replace(/[.]/g, "\\.")}`;
  assertMatch(log, new RegExp(`s_connect: connecting ${where}$`, "m"));
  assertMatch(log, new RegExp(`s_connect: connected ${where}$`, "m"));
  assertMatch(log, /Service \[unix-out\] connected remote server from unnamed socket$/m);
});

// ---------------------------------------------------------------------------------------------
// IPv6

e2e("IPv6: accept = ::1:PORT and :::PORT, connect = ::1:PORT", {}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const listener6 = Deno.listen({ hostname: "::1", port: 0 });
  const echo6 = { port: (listener6.addr as Deno.NetAddr).port, ...serveEcho(scope, listener6) };
  const [p1, p2, p3] = freePortsAllFamilies(3);
  const cert = await serverCertLines();
  const proxy = await startProxy(
    GLOBALS +
      `[v6-loop]\naccept = ::1:${p1}\nconnect = 127.0.0.1:${echo.port}\n${cert}` +
      `[v6-any]\naccept = :::${p2}\nconnect = 127.0.0.1:${echo.port}\n${cert}` +
      `[v6-out]\naccept = 127.0.0.1:${p3}\nconnect = ::1:${echo6.port}\n${cert}`,
  );
  await proxy.waitForLog(
    new RegExp(`Service \\[v6-loop\\] (?:\\(FD=\\d+\\) )?bound to ::1:${p1}$`, "m"),
  );
  await proxy.waitForLog(
    new RegExp(`Service \\[v6-any\\] (?:\\(FD=\\d+\\) )?bound to :::${p2}$`, "m"),
  );

  for (const [name, port] of [["v6-loop", p1], ["v6-any", p2]] as const) {
    const tcp = await withTimeout(
      Deno.connect({ hostname: "::1", port }),
      5000,
      `connect to [::1]:${port}`,
    );
    scope.defer(() => closeQuietly(tcp));
    const tls = await Deno.startTls(tcp, { hostname: "localhost", caCerts: [pki.caPem] });
    scope.defer(() => closeQuietly(tls));
    await withTimeout(tls.handshake(), 10_000, "TLS handshake");
    await echoRoundTrip(tls, `via ${name}\n`);
    const local = tls.localAddr as Deno.NetAddr;
    await proxy.waitForLog(
      new RegExp(`Service \\[${name}\\] accepted connection from ::1:${local.port}`),
    );
    tls.close();
  }

  const conn = await tlsConnect(p3, pki.caPem);
  await echoRoundTrip(conn, "to an IPv6 backend\n");
  conn.close();
  assertEquals(echo6.peers.length, 1);
  const peer6 = echo6.peers[0] as Deno.NetAddr;
  assertEquals(peer6.hostname, "::1");
  await proxy.waitForLog(new RegExp(`s_connect: connected ::1:${echo6.port}`));
  await proxy.waitForLog(
    new RegExp(`Service \\[v6-out\\] connected remote server from ::1:${peer6.port}`),
  );
});

// ---------------------------------------------------------------------------------------------
// accept on port 0

e2e("accept = 127.0.0.1:0 binds an ephemeral port and logs it", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const proxy = await startProxy(
    GLOBALS + `[zero]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:${echo.port}\n` +
      (await serverCertLines()),
    { waitPorts: [] },
  );
  const m = await proxy.waitForLog(
    /Service \[zero\] (?:\(FD=\d+\) )?bound to 127\.0\.0\.1:(\d+)/,
  );
  const port = Number(m[1]);
  assert(port > 0, `bound port ${port}`);
  await waitForPort(port);
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "port zero\n");
  conn.close();
  assertEquals(echo.connections, 1);
});

// ---------------------------------------------------------------------------------------------
// Timeouts

e2e("TIMEOUTidle = 2 closes an idle established connection", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[idle]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      `TIMEOUTidle = 2\n${await serverCertLines()}`,
  );
  const conn = await tlsConnect(port, pki.caPem);
  await echoRoundTrip(conn, "then silence\n");
  const start = Date.now();
  await waitClosed(conn, 8000);
  const elapsed = Date.now() - start;
  assert(elapsed >= 1500 && elapsed <= 6000, `closed after ${elapsed} ms`);
  await proxy.waitForLog(/Connection [a-z/]+: /, 5000);
  // stunnel: "LOG6[0]: transfer: s_poll_wait: TIMEOUTidle exceeded: sending reset"
  assertMatch(proxy.log(), /TIMEOUTidle exceeded: sending reset$/m);
  assertMatch(
    proxy.log(),
    /Connection reset: 13 byte\(s\) sent to TLS, 13 byte\(s\) sent to socket/,
  );
});

e2e("TIMEOUTbusy = 2 drops a client that never starts the TLS handshake", {}, async () => {
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[busy]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      `TIMEOUTbusy = 2\n${await serverCertLines()}`,
  );
  const conn = await tcpConnect(port);
  const start = Date.now();
  await waitClosed(conn, 8000);
  const elapsed = Date.now() - start;
  assert(elapsed >= 1500 && elapsed <= 6000, `closed after ${elapsed} ms`);
  await proxy.waitForLog(/Connection [a-z/]+: /, 5000);
  // stunnel: "LOG6[0]: ssl_start: s_poll_wait: TIMEOUTbusy exceeded: sending reset"
  assertMatch(proxy.log(), /TIMEOUTbusy exceeded: sending reset$/m);
  assertMatch(proxy.log(), /Connection reset: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/);
  assertEquals(echo.connections, 0);
});

e2e("TIMEOUTclose = 1 ends a half-closed connection whose other side stays open", {}, async () => {
  const pki = await makePki();
  // The backend sends a greeting and half-closes at once, then keeps its read side open and
  // records when the proxy finally closes it.
  let backendEofAt = 0;
  const backend = tcpServer(async (conn) => {
    await writeAll(conn, encode("bye\n"));
    await conn.closeWrite();
    await waitClosed(conn, 20_000);
    backendEofAt = Date.now();
  });
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + `[close]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
      `TIMEOUTclose = 1\n${await serverCertLines()}`,
  );
  const conn = await tlsConnect(port, pki.caPem);
  assertEquals(decode(await readExactly(conn, 4)), "bye\n");
  const start = Date.now();
  // The client keeps its connection open and sends nothing.
  await pollUntil(() => backendEofAt !== 0, 8000, "the proxy to close the backend connection");
  const elapsed = backendEofAt - start;
  assert(elapsed >= 500 && elapsed <= 6000, `closed after ${elapsed} ms`);
  await proxy.waitForLog(/Connection [a-z/]+: /, 5000);
  // stunnel: "LOG3[0]: transfer: s_poll_wait: TIMEOUTclose exceeded: closing"
  assertMatch(proxy.log(), /TIMEOUTclose exceeded: closing$/m);
  // Running out of TIMEOUTclose is an orderly end: "closed", not "reset".
  assertMatch(
    proxy.log(),
    /Connection closed: 4 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket/,
  );
  conn.close();
});

// ---------------------------------------------------------------------------------------------
// reset

for (const reset of ["yes", "no"] as const) {
  e2e(`reset = ${reset}: backend refused after the handshake`, {}, async () => {
    const pki = await makePki();
    const [port, dead] = freePorts(2);
    const proxy = await startProxy(
      GLOBALS + `[reset]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${dead}\n` +
        `reset = ${reset}\n${await serverCertLines()}`,
    );
    const conn = await tlsConnect(port, pki.caPem);
    let outcome: string;
    try {
      const n = await withTimeout(conn.read(new Uint8Array(1024)), 10_000, "read");
      outcome = n === null ? "eof" : `data ${n}`;
    } catch (e) {
      outcome = (e as Error).name;
    }
    // reset = yes: the TCP connection is reset (RST). reset = no: plain close (FIN), without
    // close_notify, which a TLS client reports as an unexpected EOF.
    assertEquals(outcome, reset === "yes" ? "ConnectionReset" : "UnexpectedEof");
    await proxy.waitForLog(/Connection [a-z/]+: /, 5000);
    const log = proxy.log();
    assertMatch(
      log,
      new RegExp(
        `LOG3\\[\\d+\\]: s_connect: connect 127\\.0\\.0\\.1:${dead}: Connection refused \\(111\\)$`,
        "m",
      ),
    );
    assertMatch(log, /LOG3\[\d+\]: No more addresses to connect$/m);
    // The log says "reset" only when a reset was actually sent.
    assertMatch(
      log,
      new RegExp(
        `LOG5\\[\\d+\\]: Connection ${reset === "yes" ? "reset" : "closed"}: ` +
          `0 byte\\(s\\) sent to TLS, 0 byte\\(s\\) sent to socket`,
      ),
    );
  });
}

// ---------------------------------------------------------------------------------------------
// SNI in client mode

/**
 * openssl s_server for SNI checks. Without -quiet, and given a -servername of its own, it prints
 * the SNI of every client ("Hostname in TLS extension: ..."); it serves one connection at a time.
 */
async function sniServer() {
  const pki = await makePki();
  const [port] = freePorts(1);
  const server = spawn([
    "openssl",
    "s_server",
    "-accept",
    `127.0.0.1:${port}`,
    "-cert",
    pki.serverEc.cert,
    "-key",
    pki.serverEc.key,
    "-servername",
    "name.example",
    "-cert2",
    pki.serverEc.cert,
    "-key2",
    pki.serverEc.key,
  ]);
  await waitForPort(port);
  return {
    port,
    server,
    /** The SNI names received so far, in order. */
    hostnames: () =>
      [...server.stdout.text().matchAll(/Hostname in TLS extension: "([^"]*)"/g)].map((m) => m[1]),
    /** One plain connection through the client-mode port `via`, carrying `marker`. */
    async through(via: number, marker: string): Promise<void> {
      const conn = await tcpConnect(via);
      await writeAll(conn, encode(marker));
      await server.stdout.waitFor(
        () => server.stdout.text().includes(marker),
        10_000,
        `s_server to receive ${JSON.stringify(marker)}`,
      );
      conn.close();
      await server.stdout.waitFor(
        () => /DONE|ERROR/.test(server.stdout.text().split(marker)[1] ?? ""),
        10_000,
        "s_server to finish the connection",
      );
    },
  };
}

function clientService(name: string, accept: number, connect: string, extra = ""): string {
  return `[${name}]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = ${connect}\n${extra}`;
}

e2e("client mode: sni = NAME, sni = (empty), default = the connect host name", {}, async () => {
  const s = await sniServer();
  const [pDefault, pNamed, pEmpty] = freePorts(3);
  const proxy = await startProxy(
    GLOBALS + clientService("sni-default", pDefault, `localhost:${s.port}`) +
      clientService("sni-named", pNamed, `127.0.0.1:${s.port}`, "sni = name.example\n") +
      clientService("sni-empty", pEmpty, `localhost:${s.port}`, "sni =\n"),
  );
  await s.through(pDefault, "one-default\n");
  assertEquals(s.hostnames(), ["localhost"]);
  await s.through(pNamed, "two-named\n");
  assertEquals(s.hostnames(), ["localhost", "name.example"]);
  assertMatch(s.server.stdout.text(), /Switching server context/);
  await s.through(pEmpty, "three-empty\n");
  assertEquals(s.hostnames(), ["localhost", "name.example"], "sni = (empty) sends no SNI");

  await proxy.waitForLogCount(/Connection [a-z/]+: /, 3, 5000);
  const log = proxy.log();
  const id = (name: string) =>
    log.match(new RegExp(`LOG5\\[([^\\]]+)\\]: Service \\[${name}\\] accepted connection`))![1];
  assertMatch(
    log,
    new RegExp(`LOG6\\[${id("sni-default")}\\]: SNI: sending servername: localhost$`, "m"),
  );
  assertMatch(
    log,
    new RegExp(`LOG6\\[${id("sni-named")}\\]: SNI: sending servername: name\\.example$`, "m"),
  );
  assertMatch(log, new RegExp(`LOG6\\[${id("sni-empty")}\\]: SNI: extension disabled$`, "m"));
});

e2e("client mode: with connect = 127.0.0.1:PORT stunnel sends the address as SNI", {}, async () => {
  // RFC 6066 does not allow IP addresses in SNI, but stunnel 5.68 sends the connect host
  // whatever it is, and a drop-in replacement does the same.
  const s = await sniServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(GLOBALS + clientService("sni-ip", port, `127.0.0.1:${s.port}`));
  await s.through(port, "ip-host\n");
  assertEquals(s.hostnames(), ["127.0.0.1"]);
  await proxy.waitForLog(/Connection [a-z/]+: /, 5000);
  assertMatch(proxy.log(), /LOG6\[\d+\]: SNI: sending servername: 127\.0\.0\.1$/m);
});

// ---------------------------------------------------------------------------------------------
// Many connections at once

e2e("200 concurrent connections, 64 KiB each, all intact", { timeoutMs: 40_000 }, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS.replace("debug = debug", "debug = notice") +
      `[many]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      (await serverCertLines()),
  );
  const N = 200;
  const SIZE = 64 * 1024;
  const one = async (i: number) => {
    const data = concat([...pattern(SIZE, 1000 + i)]);
    const conn = await tlsConnect(port, pki.caPem);
    const [, got] = await Promise.all([writeAll(conn, data), readExactly(conn, SIZE, 20_000)]);
    conn.close();
    return got.every((x, j) => x === data[j]);
  };
  const start = Date.now();
  const results = await withTimeout(
    Promise.all(Array.from({ length: N }, (_, i) => one(i))),
    20_000,
    `${N} concurrent echo connections`,
  );
  const elapsed = Date.now() - start;
  const bad = results.flatMap((ok, i) => ok ? [] : [i]);
  assertEquals(bad, [], "connections whose echo differed");
  assert(elapsed < 20_000, `took ${elapsed} ms`);
  await proxy.waitForLogCount(
    /Connection closed: 65536 byte\(s\) sent to TLS, 65536 byte\(s\) sent to socket/,
    N,
    15_000,
  );
  assertNotMatch(proxy.log(), /Connection reset/);
  assertEquals(echo.connections, N);
});
