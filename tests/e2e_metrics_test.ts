/**
 * End-to-end: `metrics = [HOST:]PORT` (an extension). /metrics is scraped with curl, checked
 * with promtool (Debian's prometheus package) and read with the Python client's parser
 * (python3-prometheus-client); its figures must be those of a known sequence of connections,
 * summed over two threads. The HTTP server answers only GET /metrics and /healthz and cuts off
 * hostile clients.
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { closeQuietly, decode, encode, readAll } from "./harness/bytes.ts";
import { echoRoundTrip, echoServer, freePort, freePorts, tlsConnect } from "./harness/net.ts";
import { sClientEcho } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, run, spawn } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { PROXY } from "./harness/command.ts";
import { pollUntil, sleep, withTimeout } from "./harness/timing.ts";

const EXTRA = "metrics = is an extension of this implementation";

/** One sample: its labels and value. */
interface Sample {
  labels: Record<string, string>;
  value: number;
}

/** The body of GET /metrics, by curl. */
async function scrape(port: number): Promise<string> {
  const r = await run(["curl", "-sS", "--max-time", "10", `http://127.0.0.1:${port}/metrics`]);
  assertEquals(r.code, 0, `curl: ${r.stderr}`);
  return r.stdout;
}

/** promtool's verdict on an exposition (exit 0: well formed and no lint problems). */
async function promtoolCheck(text: string): Promise<void> {
  const p = spawn(["promtool", "check", "metrics"]);
  await p.write(text);
  await p.closeStdin();
  const status = await p.wait(20_000);
  assertEquals(status.code, 0, `promtool check metrics:\n${p.output.text()}`);
}

const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.setdefault(s.name, []).append({"labels": s.labels, "value": s.value})
print(json.dumps(out))
`;

/** The samples of an exposition by metric name, as the Prometheus Python client parses them. */
async function parse(text: string): Promise<Record<string, Sample[]>> {
  const p = spawn(["/usr/bin/python3", "-c", PARSE]);
  await p.write(text);
  await p.closeStdin();
  const status = await p.wait(20_000);
  assertEquals(status.code, 0, `prometheus_client parser:\n${p.output.text()}`);
  return JSON.parse(p.stdout.text());
}

/** The value of the sample of `name` whose labels include `labels` (0 when there is none). */
function value(samples: Record<string, Sample[]>, name: string, labels = {}): number {
  const found = (samples[name] ?? []).filter((s) =>
    Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
  assert(found.length <= 1, `${name} ${JSON.stringify(labels)}: ${found.length} samples`);
  return found[0]?.value ?? 0;
}

/** The notAfter of a PEM certificate, as a Unix time (openssl x509 -enddate). */
async function notAfter(cert: string): Promise<number> {
  const r = await run(["openssl", "x509", "-in", cert, "-noout", "-enddate"]);
  const m = r.stdout.match(/notAfter=(.*)/);
  assert(m, r.stdout);
  return Date.parse(m[1].replace(" GMT", "Z").replace(/ +/g, " ")) / 1000;
}

/** Runs the proxy with STUNNEL_THREADS=2: both threads accept from the start. */
async function twoThreads(config: string): Promise<Proxy> {
  const threads = Deno.env.get("STUNNEL_THREADS");
  Deno.env.set("STUNNEL_THREADS", "2");
  try {
    return await startProxy(config);
  } finally {
    if (threads === undefined) Deno.env.delete("STUNNEL_THREADS");
    else Deno.env.set("STUNNEL_THREADS", threads);
  }
}

/** A raw HTTP exchange: what the server answered before it closed (bounded in time). */
async function rawHttp(port: number, request: string | Uint8Array): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(typeof request === "string" ? encode(request) : request).catch(() => 0);
    return decode(await readAll(conn, 10_000).catch(() => new Uint8Array()));
  } finally {
    closeQuietly(conn);
  }
}

e2e(
  "metrics: a known sequence of connections, summed over two threads, parsed by promtool",
  { extra: EXTRA, timeoutMs: 90_000 },
  async () => {
    const pki = await makePki();
    const echo = echoServer();
    const [tls, verified, down, metrics, closed] = freePorts(5);
    const cert = `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
    const config = GLOBALS + `metrics = 127.0.0.1:${metrics}\n` +
      `[tls]\naccept = 127.0.0.1:${tls}\nconnect = 127.0.0.1:${echo.port}\n${cert}` +
      `[verified]\naccept = 127.0.0.1:${verified}\nconnect = 127.0.0.1:${echo.port}\n${cert}` +
      `CAfile = ${pki.ca}\nverifyChain = yes\n` +
      `[down]\naccept = 127.0.0.1:${down}\nconnect = 127.0.0.1:${closed}\n${cert}`;
    const proxy = await twoThreads(config);
    await proxy.waitForLog(/Serving with 2 threads/);

    // 10 connections of 6 bytes each way, then a session and its resumption (5 bytes each).
    for (let i = 0; i < 10; i++) {
      const conn = await tlsConnect(tls, pki.caPem);
      await echoRoundTrip(conn, "hello\n");
      conn.close();
    }
    const session = `${await Deno.makeTempDir()}/session`;
    assertMatch(await sClientEcho(tls, ["-tls1_3", "-sess_out", session], "ping"), /^New, /m);
    assertMatch(await sClientEcho(tls, ["-tls1_3", "-sess_in", session], "ping"), /^Reused, /m);
    // A client certificate of another CA: a verify failure.
    const refused = spawn([
      "openssl",
      "s_client",
      "-connect",
      `127.0.0.1:${verified}`,
      "-cert",
      pki.otherServer.cert,
      "-key",
      pki.otherServer.key,
    ]);
    await proxy.waitForLog(/certificate verify failed/);
    await refused.closeStdin();
    await refused.wait(10_000);
    // A backend that refuses: a connect failure after a good handshake.
    const lost = await tlsConnect(down, pki.caPem);
    await withTimeout(readAll(lost).catch(() => {}), 10_000, "the close");
    await proxy.waitForLog(/s_connect: connect 127\.0\.0\.1:\d+: Connection refused/);
    // A reload that works, and one that does not.
    const beforeReload = Date.now() / 1000;
    proxy.signal("SIGHUP");
    await proxy.waitForLogCount(/Configuration successful/, 2);
    const afterReload = Date.now() / 1000;
    await proxy.writeConfig(config + "noSuchOption = 1\n");
    proxy.signal("SIGHUP");
    await proxy.waitForLog(/Failed to reload the configuration file/);

    // Every connection has ended in both threads.
    let text = "";
    let samples: Record<string, Sample[]> = {};
    await pollUntil(
      async () => {
        text = await scrape(metrics);
        samples = await parse(text);
        return value(samples, "stunnel_connections_closed_total", { service: "tls" }) === 12 &&
          value(samples, "stunnel_connections_closed_total", { service: "verified" }) === 1 &&
          value(samples, "stunnel_connections_closed_total", { service: "down" }) === 1;
      },
      20_000,
      "every connection to be closed",
    );
    await promtoolCheck(text);

    const v = (name: string, labels: Record<string, string> = {}) => value(samples, name, labels);
    const tlsSvc = { service: "tls" };
    assertEquals(v("stunnel_threads"), 2);
    assertEquals(v("stunnel_connections_accepted_total", tlsSvc), 12);
    assertEquals(v("stunnel_connections_active", tlsSvc), 0);
    assertEquals(v("stunnel_transferred_bytes_total", { ...tlsSvc, direction: "to_socket" }), 70);
    assertEquals(v("stunnel_transferred_bytes_total", { ...tlsSvc, direction: "to_tls" }), 70);
    assertEquals(v("stunnel_handshakes_total", { ...tlsSvc, result: "ok" }), 12);
    assertEquals(v("stunnel_sessions_total", { ...tlsSvc, session: "resumed" }), 1);
    assertEquals(v("stunnel_sessions_total", { ...tlsSvc, session: "new" }), 11);
    const verifiedSvc = { service: "verified" };
    assertEquals(v("stunnel_connections_accepted_total", verifiedSvc), 1);
    assertEquals(v("stunnel_handshakes_total", { ...verifiedSvc, result: "verify_failed" }), 1);
    assertEquals(v("stunnel_handshakes_total", { ...verifiedSvc, result: "ok" }), 0);
    const downSvc = { service: "down" };
    assertEquals(v("stunnel_handshakes_total", { ...downSvc, result: "ok" }), 1);
    assertEquals(
      v("stunnel_connect_failures_total", { ...downSvc, target: `127.0.0.1:${closed}` }),
      1,
    );
    assertEquals(v("stunnel_connect_failures_total", tlsSvc), 0);
    assertEquals(v("stunnel_reloads_total", { result: "success" }), 1);
    assertEquals(v("stunnel_reloads_total", { result: "failure" }), 1);
    const last = v("stunnel_last_reload_success_timestamp_seconds");
    assert(last >= beforeReload - 1 && last <= afterReload + 1, `last reload at ${last}`);
    assertEquals(
      v("stunnel_certificate_not_after_seconds", { ...tlsSvc, file: pki.serverEc.cert }),
      await notAfter(pki.serverEc.cert),
    );
    assertEquals(v("stunnel_accepting"), 1);
    await proxy.stop();
  },
);

/** A server-mode service [tls] to an echo backend, with `extra` lines, and metrics served. */
async function metricsProxy(extra: string) {
  const pki = await makePki();
  const echo = echoServer();
  const [tls, metrics] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS + `metrics = 127.0.0.1:${metrics}\n[tls]\naccept = 127.0.0.1:${tls}\n` +
      `connect = 127.0.0.1:${echo.port}\ncert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
      extra,
  );
  return { pki, proxy, tls, metrics };
}

e2e(
  "metrics: only GET /metrics and /healthz; bounded requests; slow clients are cut off",
  { extra: EXTRA, timeoutMs: 60_000 },
  async () => {
    const { pki, proxy, tls, metrics } = await metricsProxy("");
    await proxy.waitForLog(/Metrics served on 127\.0\.0\.1:\d+/);
    await proxy.waitForLog(/Accepting new connections/);
    const healthz = await run([
      "curl",
      "-s",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `http://127.0.0.1:${metrics}/healthz`,
    ]);
    assertEquals(healthz.stdout, "200");
    const status = (answer: string) => answer.split("\r\n", 1)[0];
    assertEquals(
      status(await rawHttp(metrics, "GET /nope HTTP/1.1\r\n\r\n")),
      "HTTP/1.1 404 Not Found",
    );
    assertEquals(
      status(await rawHttp(metrics, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")),
      "HTTP/1.1 405 Method Not Allowed",
    );
    assertEquals(status(await rawHttp(metrics, "hello\r\n\r\n")), "HTTP/1.1 400 Bad Request");
    const huge = `GET /metrics HTTP/1.1\r\nX: ${"a".repeat(20_000)}\r\n\r\n`;
    assertEquals(
      status(await rawHttp(metrics, huge)),
      "HTTP/1.1 431 Request Header Fields Too Large",
    );
    const head = await rawHttp(metrics, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assertMatch(head, /^HTTP\/1\.1 200 OK\r\n/);
    assert(head.endsWith("\r\n\r\n"), "a HEAD answer has no body");

    // Clients that send nothing hold the server at most 5 s, and do not stop others nor the proxy.
    const idle = await Promise.all(
      Array.from({ length: 20 }, () => Deno.connect({ hostname: "127.0.0.1", port: metrics })),
    );
    const started = Date.now();
    const conn = await tlsConnect(tls, pki.caPem);
    await echoRoundTrip(conn, "still here\n");
    conn.close();
    const ends = await Promise.all(idle.map((c) => readAll(c, 10_000).then(() => Date.now())));
    for (const end of ends) assert(end - started < 7000, `an idle client held ${end - started} ms`);
    idle.forEach(closeQuietly);
    assertMatch(await scrape(metrics), /^stunnel_connections_accepted_total\{service="tls"\} 1$/m);
    // A client that stops reading is cut off too; the server goes on.
    const stalled = await Deno.connect({ hostname: "127.0.0.1", port: metrics });
    await stalled.write(encode("GET /metrics HTTP/1.1\r\n\r\n"));
    await sleep(6000);
    closeQuietly(stalled);
    assertMatch(await scrape(metrics), /^stunnel_accepting 1$/m);
    await proxy.stop();
  },
);

e2e(
  "metrics: a bad address is refused with file and line; a port in use stops the start",
  { extra: EXTRA, timeoutMs: 30_000 },
  async () => {
    const bad = await startProxy(GLOBALS + "metrics = /run/metrics.sock\n", {
      allowFailure: true,
      waitPorts: [],
    });
    await bad.exited;
    assertMatch(
      bad.log(),
      /stunnel\.conf:5: "metrics = \/run\/metrics\.sock": A TCP address is required/,
    );
    const busy = Deno.listen({ hostname: "127.0.0.1", port: freePort() });
    const port = (busy.addr as Deno.NetAddr).port;
    try {
      const proxy = await startProxy(
        GLOBALS + `metrics = 127.0.0.1:${port}\n[s]\naccept = 127.0.0.1:${freePort()}\n` +
          `connect = 127.0.0.1:${freePort()}\nclient = yes\n`,
        { allowFailure: true, waitPorts: [] },
      );
      const status = await proxy.exited;
      assert(!status.success, "the proxy started without its metrics port");
      assertMatch(
        proxy.log(),
        new RegExp(`Binding metrics to 127\\.0\\.0\\.1:${port}: .*in use`, "i"),
      );
    } finally {
      busy.close();
    }
  },
);

e2e(
  "metrics: /healthz is 503 until the proxy accepts, 200 from then on",
  { extra: EXTRA, timeoutMs: 30_000 },
  async () => {
    const pki = await makePki();
    const [tls, metrics] = freePorts(2);
    const dir = await Deno.makeTempDir();
    const conf = `${dir}/stunnel.conf`;
    // Two threads: the worker's start (its own TLS contexts and sockets) comes before accepting.
    await Deno.writeTextFile(
      conf,
      GLOBALS + `metrics = 127.0.0.1:${metrics}
[tls]
accept = 127.0.0.1:${tls}
` +
        `connect = 127.0.0.1:${freePort()}
cert = ${pki.serverRsa.cert}
` +
        `key = ${pki.serverRsa.key}
`,
    );
    const proxy = spawn([...PROXY, conf], { env: { STUNNEL_THREADS: "2" } });
    /** Each answer, and whether the log said "Accepting new connections" before it was asked. */
    const seen: { status: string; accepting: boolean }[] = [];
    while (seen.filter((s) => s.status === "200").length < 3) {
      const accepting = /Accepting new connections/.test(proxy.output.text());
      const answer = await rawHttp(metrics, "GET /healthz HTTP/1.1\r\n\r\n").catch(() => "");
      if (answer) seen.push({ status: answer.split(" ")[1], accepting });
      await sleep(5);
    }
    const early = seen.filter((s) => !s.accepting).map((s) => s.status);
    assert(early.includes("503"), `no 503 while starting: ${JSON.stringify(seen)}`);
    // Asked before the log said so, a 200 may come from the moment between the two.
    assert(!seen.some((s) => s.accepting && s.status !== "200"), JSON.stringify(seen));
    assertEquals(seen.at(-1)?.status, "200");
    await proxy.stop(5000);
  },
);

e2e(
  "metrics and watchFiles are refused in inetd mode",
  { extra: EXTRA, timeoutMs: 30_000 },
  async () => {
    const pki = await makePki();
    const dir = await Deno.makeTempDir();
    for (
      const [option, line] of [["metrics", "metrics = 127.0.0.1:1"], [
        "watchFiles",
        "watchFiles = yes",
      ]]
    ) {
      const conf = `${dir}/${option}.conf`;
      await Deno.writeTextFile(
        conf,
        `foreground = yes\n${line}\nconnect = 127.0.0.1:1\ncert = ${pki.serverEc.cert}\n` +
          `key = ${pki.serverEc.key}\n`,
      );
      const r = await run([...PROXY, conf]);
      assertEquals(r.code, 1);
      assertMatch(
        r.stderr,
        new RegExp(`${option}\\.conf:2: option '${option}' cannot be used in inetd mode`),
      );
    }
  },
);

const RESET = `
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"\\x16\\x03\\x01")
# Accepted by then: a connection reset in the accept queue may never be accepted.
time.sleep(0.5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
`;

e2e(
  "metrics: failed handshakes by reason",
  { extra: EXTRA, timeoutMs: 60_000 },
  async () => {
    const { pki, proxy, tls, metrics } = await metricsProxy("TIMEOUTbusy = 1\n");
    await proxy.waitForLog(/Accepting new connections/);
    const failures = () => proxy.log().match(/Connection (reset|closed): 0 byte/g)?.length ?? 0;
    const sClient = async (args: string[]) => {
      const p = spawn(["openssl", "s_client", "-connect", `127.0.0.1:${tls}`, ...args]);
      await p.closeStdin();
      await p.wait(10_000);
    };
    // No cipher in common: an RSA suite against an ECDSA certificate.
    await sClient(["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"]);
    // The client refuses the server's certificate (another CA): its alert ends the handshake.
    await sClient(["-CAfile", pki.otherCa, "-verify_return_error"]);
    // Plain HTTP on the TLS port.
    await rawHttp(tls, "GET / HTTP/1.0\r\n\r\n");
    // A client that goes away before a ClientHello; one that sends nothing; one that resets.
    (await Deno.connect({ hostname: "127.0.0.1", port: tls })).close();
    const silent = await Deno.connect({ hostname: "127.0.0.1", port: tls });
    const reset = await run(["/usr/bin/python3", "-c", RESET, String(tls)]);
    assertEquals(reset.code, 0, reset.stderr);
    await pollUntil(() => failures() >= 6, 20_000, "six failed handshakes");
    closeQuietly(silent);
    const samples = await parse(await scrape(metrics));
    const result = (r: string) =>
      value(samples, "stunnel_handshakes_total", { service: "tls", result: r });
    assertEquals(
      Object.fromEntries(
        ["no_shared_cipher", "peer_alert", "protocol_error", "eof", "timeout", "reset", "ok"]
          .map((r) => [r, result(r)]),
      ),
      {
        no_shared_cipher: 1,
        peer_alert: 1,
        protocol_error: 1,
        eof: 1,
        timeout: 1,
        reset: 1,
        ok: 0,
      },
    );
    assertEquals(result("other") + result("verify_failed"), 0);
    await proxy.stop();
  },
);
