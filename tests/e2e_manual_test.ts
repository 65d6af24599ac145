/**
 * End-to-end: the remote-mode examples of the stunnel(8) manual, kept as fixtures under
 * fixtures/manual/, with the manual's ports rewritten to free loopback ports. The e-mail
 * client's side of the manual (client example) is chained to the server example, which
 * forwards to a scripted plain IMAP-ish backend.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_manual_test.ts
 */

import { assertEquals, assertMatch } from "./harness/assert.ts";
import { decode, encode, LineReader, waitClosed, writeAll } from "./harness/bytes.ts";
import { freePorts, tcpConnect, tcpServer } from "./harness/net.ts";
import { sClient } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e } from "./harness/process.ts";
import { GLOBALS, loadFixture, startProxy } from "./harness/proxy.ts";

/**
 * A tiny plain IMAP-ish server: greets with `* OK ready`, echoes every line, and answers
 * `TAG LOGOUT` with `* BYE` + `TAG OK LOGOUT completed` before closing.
 */
function imapBackend() {
  return tcpServer(async (conn) => {
    await writeAll(conn, encode("* OK ready\r\n"));
    const lines = new LineReader(conn);
    while (true) {
      const line = await lines.readLine(30_000);
      if (line === null) break;
      const logout = line.match(/^(\S+) LOGOUT\r?\n$/i);
      if (logout) {
        await writeAll(conn, encode(`* BYE\r\n${logout[1]} OK LOGOUT completed\r\n`));
        break;
      }
      await writeAll(conn, encode(line));
    }
    await conn.closeWrite().catch(() => {});
    await waitClosed(conn, 10_000).catch(() => {});
  });
}

/** The manual's server example (accept = 993, connect = 143) on free loopback ports. */
async function startServerExample(accept: number, connect: number) {
  const pki = await makePki();
  const config = await loadFixture("manual/imapd-remote.conf", {
    GLOBALS: GLOBALS + `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
    ACCEPT: `127.0.0.1:${accept}`,
    CONNECT: `127.0.0.1:${connect}`,
  });
  return await startProxy(config);
}

/** The manual's client example (accept = 143, connect = servername:993). */
async function startClientExample(accept: number, connect: number) {
  const config = await loadFixture("manual/imap-client.conf", {
    GLOBALS,
    ACCEPT: `127.0.0.1:${accept}`,
    CONNECT: `127.0.0.1:${connect}`,
  });
  return await startProxy(config);
}

e2e("manual: imap client example -> imapd remote-mode example -> IMAP backend", {}, async () => {
  const backend = imapBackend();
  const [serverPort, clientPort] = freePorts(2);
  const server = await startServerExample(serverPort, backend.port);
  const client = await startClientExample(clientPort, serverPort);

  // The e-mail client talks plain IMAP to the local client-mode service.
  const conn = await tcpConnect(clientPort);
  const lines = new LineReader(conn);
  assertEquals(await lines.readLine(), "* OK ready\r\n");
  await writeAll(conn, encode("a1 NOOP\r\n"));
  assertEquals(await lines.readLine(), "a1 NOOP\r\n");
  await writeAll(conn, encode("a2 LOGOUT\r\n"));
  assertEquals(await lines.readLine(), "* BYE\r\n");
  assertEquals(await lines.readLine(), "a2 OK LOGOUT completed\r\n");
  // The backend closes after LOGOUT, and the close travels back through both tunnels.
  assertEquals(await lines.readLine(), null);
  conn.close();

  await client.waitForLog(
    /LOG5\[[^\]]+\]: Service \[imap\] accepted connection from 127\.0\.0\.1:/,
  );
  await client.waitForLog(new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${serverPort}`));
  await client.waitForLog(/TLS connected: new session negotiated/);
  await server.waitForLog(
    /LOG5\[[^\]]+\]: Service \[imapd\] accepted connection from 127\.0\.0\.1:/,
  );
  await server.waitForLog(new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${backend.port}`));
  await server.waitForLog(/TLS accepted: new session negotiated/);
  // 12 + 9 + 7 + 24 bytes came from the backend; 9 + 11 went to it.
  await server.waitForLog(
    /Connection closed: 52 byte\(s\) sent to TLS, 20 byte\(s\) sent to socket/,
  );
  await client.waitForLog(
    /Connection closed: 20 byte\(s\) sent to TLS, 52 byte\(s\) sent to socket/,
  );
  assertEquals(backend.connections, 1);
});

e2e(
  "manual: imapd remote-mode example serves a TLS e-mail client (openssl s_client)",
  {},
  async () => {
    const pki = await makePki();
    const backend = imapBackend();
    const [serverPort] = freePorts(1);
    const server = await startServerExample(serverPort, backend.port);

    const mua = sClient(serverPort, { ca: pki.ca });
    assertEquals(decode(await mua.readStdout(12)), "* OK ready\r\n");
    await mua.write("t1 CAPABILITY\r\n");
    await mua.stdout.waitFor(
      () => decode(mua.stdout.bytes()).includes("t1 CAPABILITY\r\n"),
      10_000,
      "the echoed command",
    );
    await mua.write("t2 LOGOUT\r\n");
    const status = await mua.wait(10_000);
    assertEquals(
      decode(mua.stdout.bytes()),
      "* OK ready\r\nt1 CAPABILITY\r\n* BYE\r\nt2 OK LOGOUT completed\r\n",
    );
    assertEquals(status.code, 0);
    await server.waitForLog(
      /Connection closed: \d+ byte\(s\) sent to TLS, 26 byte\(s\) sent to socket/,
    );
    assertMatch(server.log(), /Service \[imapd\] accepted connection from 127\.0\.0\.1:\d+/);
  },
);
