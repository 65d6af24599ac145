/**
 * End-to-end: `alpn = h2,http/1.1` (extension). A server-mode service selects the first of its
 * protocols the client offers (none in common: no ALPN, the handshake goes on); curl speaks
 * HTTP/2 through it to an h2c backend; a client-mode service offers its list to openssl
 * s_server. The selected protocol is logged at LOG6.
 */

import { assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { curl, freePorts, tcpConnect, waitForPort } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, register, run } from "./harness/process.ts";
import { configError, GLOBALS, startProxy } from "./harness/proxy.ts";
import { sServer } from "./harness/openssl.ts";
import { decode, encode, readExactly, writeAll } from "./harness/bytes.ts";

const EXTRA = "alpn is an extension of stunnel-deno";

async function serverService(connect: number, alpn: string): Promise<[number, string]> {
  const pki = await makePki();
  const [port] = freePorts(1);
  return [
    port,
    `${GLOBALS}[tls]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${connect}\n` +
    `alpn = ${alpn}\ncert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  ];
}

/** What `openssl s_client -alpn LIST` reports of the handshake. */
async function sClientAlpn(port: number, offer: string): Promise<string> {
  const r = await run([
    "bash",
    "-c",
    `openssl s_client -connect 127.0.0.1:${port} -servername localhost -alpn '${offer}' ` +
    "</dev/null 2>&1",
  ]);
  return r.stdout;
}

e2e("alpn (server): the service's first protocol that the client offers", {
  extra: EXTRA,
}, async () => {
  const [port, conf] = await serverService(9, "h2,http/1.1");
  const proxy = await startProxy(conf);
  assertMatch(await sClientAlpn(port, "http/1.1,h2"), /^ALPN protocol: h2$/m);
  await proxy.waitForLog(/LOG6\[\d+\]: ALPN: selected protocol: h2$/m);
  assertMatch(await sClientAlpn(port, "http/1.1"), /^ALPN protocol: http\/1\.1$/m);
  await proxy.waitForLog(/ALPN: selected protocol: http\/1\.1$/m);
});

e2e("alpn (server): nothing in common, the handshake goes on without ALPN", {
  extra: EXTRA,
}, async () => {
  const [port, conf] = await serverService(9, "h2");
  const proxy = await startProxy(conf);
  const out = await sClientAlpn(port, "spdy/3");
  assertMatch(out, /No ALPN negotiated/);
  assertMatch(out, /^New, TLSv1\.3/m);
  await proxy.waitForLog(/ALPN: no protocol selected/);
});

e2e("alpn (server): curl --http2 speaks h2 through to an h2c backend", {
  extra: EXTRA,
}, async () => {
  const pki = await makePki();
  const [backendPort] = freePorts(1);
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: backendPort, signal: ac.signal, onListen: () => {} },
    () => new Response("hello h2\n"),
  );
  register(() => {
    ac.abort();
    return server.finished;
  });
  const [port, conf] = await serverService(backendPort, "h2,http/1.1");
  await startProxy(conf);
  const r = await curl(port, pki.ca, ["--http2", "-v", "--write-out", "%{http_version}\n"]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /ALPN: server accepted h2/);
  assertEquals(r.stdout, "hello h2\n2\n");
  // Without alpn, curl gets no ALPN answer and stays with HTTP/1.1.
  const [plainPort, plainConf] = await serverService(backendPort, "h2");
  await startProxy(plainConf.replace("alpn = h2\n", ""));
  const r1 = await curl(plainPort, pki.ca, ["--http2", "-v", "--write-out", "%{http_version}\n"]);
  assertEquals(r1.code, 0, r1.stderr);
  assertNotMatch(r1.stderr, /server accepted h2/);
  assertEquals(r1.stdout, "hello h2\n1.1\n");
});

e2e("alpn (client): the list is offered to openssl s_server -alpn h2", {
  extra: EXTRA,
}, async () => {
  const pki = await makePki();
  const [serverPort, port] = freePorts(2);
  const server = sServer(serverPort, {
    cert: pki.serverEc.cert,
    key: pki.serverEc.key,
    args: ["-alpn", "h2", "-naccept", "1"],
  });
  await waitForPort(serverPort);
  const proxy = await startProxy(
    `${GLOBALS}[c]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
      `connect = 127.0.0.1:${serverPort}\nalpn = http/1.1,h2\nCAfile = ${pki.ca}\n` +
      `verifyChain = yes\ncheckHost = localhost\n`,
  );
  const conn = await tcpConnect(port);
  await writeAll(conn, encode("ping\n"));
  await server.waitForOutput(/ping/);
  await proxy.waitForLog(/LOG6\[\d+\]: ALPN: selected protocol: h2$/m);
  await server.write("pong\n");
  assertEquals(decode(await readExactly(conn, 5)), "pong\n");
});

e2e("alpn: a bad list names the file, line and option", { extra: EXTRA }, async () => {
  const out = await configError(`${GLOBALS}[s]\naccept = 1\nconnect = 2\nalpn = h2,,x\n`);
  assertMatch(out, /bad\.conf:8: "alpn = h2,,x": Illegal ALPN protocol list/);
  // Only a service that sets alpn logs it.
  const [port, conf] = await serverService(9, "h2");
  const proxy = await startProxy(conf.replace("alpn = h2\n", ""));
  await sClientAlpn(port, "h2");
  await proxy.waitForLog(/Connection (closed|reset)/);
  assertNotMatch(proxy.log(), /ALPN/);
});

e2e("alpn (server, tlsEngine = deno): Deno's TLS selects from the list too", {
  extra: EXTRA,
}, async () => {
  const [port, conf] = await serverService(9, "h2,http/1.1");
  const proxy = await startProxy(`tlsEngine = deno\n${conf}`);
  assertMatch(await sClientAlpn(port, "http/1.1,h2"), /^ALPN protocol: h2$/m);
  await proxy.waitForLog(/LOG6\[\d+\]: ALPN: selected protocol: h2$/m);
});
