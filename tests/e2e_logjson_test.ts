/**
 * End-to-end: `logFormat = json` (extension): every log line, on stderr and in the output file,
 * is one JSON object; one connection's lines carry its service, number and peer, and its close
 * line the byte counts and the duration. `logFormat = text` is stunnel's format.
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { closeQuietly, decode, encode, readExactly, writeAll } from "./harness/bytes.ts";
import { echoServer, freePorts, tlsConnect } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e } from "./harness/process.ts";
import { configError, GLOBALS, LOG_LINE, startProxy } from "./harness/proxy.ts";
import { pollUntil } from "./harness/timing.ts";

const EXTRA = "logFormat is an extension of stunnel-deno";

interface JsonLine {
  time: string;
  level: number;
  levelName: string;
  id: string;
  service?: string;
  connection?: number;
  peer?: string;
  message: string;
  bytesToTls?: number;
  bytesToSocket?: number;
  durationMs?: number;
}

/** Every line parsed; throws naming the first line that is not a JSON object. */
function parseAll(text: string): JsonLine[] {
  return text.split("\n").filter((l) => l !== "").map((line) => {
    try {
      return JSON.parse(line) as JsonLine;
    } catch {
      throw new Error(`not a JSON log line: ${line}`);
    }
  });
}

e2e("logFormat = json: one JSON object per line, a connection's lifecycle", {
  extra: EXTRA,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-logjson-");
  const output = `${dir}/stunnel.log`;
  const conf = `${GLOBALS}logFormat = json\noutput = ${output}\n` +
    `[echo]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const proxy = await startProxy(conf);
  const tls = await tlsConnect(port, pki.caPem);
  const local = `127.0.0.1:${(tls.localAddr as Deno.NetAddr).port}`;
  await writeAll(tls, encode("hello json\n"));
  assertEquals(decode(await readExactly(tls, 11)), "hello json\n");
  await new Promise((r) => setTimeout(r, 300));
  closeQuietly(tls);
  await proxy.waitForLog(/Connection closed/);
  await proxy.stop();

  const lines = parseAll(proxy.log());
  const fileLines = parseAll(await Deno.readTextFile(output));
  assertEquals(fileLines.map((l) => l.message), lines.map((l) => l.message));
  for (const line of lines) {
    assertMatch(line.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert(line.level >= 0 && line.level <= 7, `level ${line.level}`);
    assertEquals(
      line.levelName,
      ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"][line.level],
    );
    assert(!LOG_LINE.test(line.message), "the message has no text-format prefix");
  }
  const ui = lines.find((l) => l.message === "Configuration successful");
  assertEquals(ui?.id, "ui");
  assertEquals(ui?.level, 5);
  const accepted = lines.find((l) => /^Service \[echo\] accepted connection from /.test(l.message));
  assert(accepted, "an accepted-connection line");
  assertEquals(accepted.service, "echo");
  assertEquals(accepted.peer, local);
  assertEquals(accepted.connection, Number(accepted.id));
  const mine = lines.filter((l) => l.id === accepted.id);
  assert(mine.length >= 5, `the connection's lines: ${mine.length}`);
  for (const line of mine) {
    assertEquals(line.service, "echo");
    assertEquals(line.peer, local);
    assertEquals(line.connection, accepted.connection);
  }
  const closed = mine.find((l) => l.message.startsWith("Connection closed: "));
  assert(closed, "a close line");
  assertEquals(
    closed.message,
    "Connection closed: 11 byte(s) sent to TLS, 11 byte(s) sent to socket",
  );
  assertEquals(closed.bytesToTls, 11);
  assertEquals(closed.bytesToSocket, 11);
  assert(typeof closed.durationMs === "number" && closed.durationMs >= 300, "duration");
  assert(closed.durationMs! < 20_000, "duration bounded");
  // The lifecycle in order: accepted, connected the remote, closed.
  const order = ["accepted connection", "connected remote server", "Connection closed"].map((m) =>
    mine.findIndex((l) => l.message.includes(m))
  );
  assert(order.every((i, n) => i >= 0 && (n === 0 || i > order[n - 1])), `order ${order}`);
});

e2e("logFormat = json with logId = unique: the connection number is drawn for it", {
  extra: EXTRA,
}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const conf = `${GLOBALS}logFormat = json\n` +
    `[echo]\nlogId = unique\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const proxy = await startProxy(conf);
  for (let i = 0; i < 2; i++) {
    const tls = await tlsConnect(port, pki.caPem);
    await writeAll(tls, encode("x"));
    await readExactly(tls, 1);
    closeQuietly(tls);
  }
  await proxy.waitForLogCount(/Connection closed/, 2);
  const closes = parseAll(proxy.log()).filter((l) => l.message.startsWith("Connection closed"));
  assertEquals(closes.length, 2);
  for (const c of closes) assertMatch(c.id, /^[A-Za-z0-9]{22}$/);
  assert(closes[0].connection !== closes[1].connection, "distinct connection numbers");
  assert(closes.every((c) => Number.isInteger(c.connection)), "numbers");
});

e2e("logFormat = text (the default) is stunnel's line format", { extra: EXTRA }, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const conf = `${GLOBALS}logFormat = text\n` +
    `[echo]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const proxy = await startProxy(conf);
  const tls = await tlsConnect(port, pki.caPem);
  closeQuietly(tls);
  await proxy.waitForLog(/Connection (closed|reset)/);
  await pollUntil(() => proxy.lines().length > 5, 5000, "log lines");
  for (const line of proxy.lines()) assertMatch(line, LOG_LINE);
});

e2e("logFormat: a bad value names the file, line and option", { extra: EXTRA }, async () => {
  const out = await configError(`${GLOBALS}logFormat = xml\n[s]\naccept = 1\nconnect = 2\n`);
  assertMatch(
    out,
    /bad\.conf:5: "logFormat = xml": The argument needs to be either 'text' or 'json'/,
  );
});
