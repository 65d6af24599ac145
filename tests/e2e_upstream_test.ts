/**
 * End-to-end: what stunnel's own test suite (tests/ of the stunnel 5.68 source) and monitoring
 * scripts wait for in the log, debug lines included: port 0 in `connect`/`redirect`, a service
 * with several `accept` lines of which some cannot bind, the lines of a reload, inetd mode on
 * pipes, connect+exec sections (`retry`, resumed sessions, `delay`), and the debug lines of one
 * connection of each kind.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_upstream_test.ts
 */

import {
  assert,
  assertEquals,
  assertMatch,
  e2e,
  echoRoundTrip,
  echoServer,
  encode,
  freePorts,
  GLOBALS,
  makePki,
  readAll,
  startProxy,
  tcpConnect,
  tlsConnect,
  writeAll,
} from "./helpers.ts";

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
