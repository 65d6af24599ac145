/**
 * End-to-end: `protocol = proxy` with `proxyVersion = 2` (extension): the binary PROXY v2
 * header with the TLS TLVs, read byte by byte by a plain TCP backend (IPv4 and IPv6) and by
 * HAProxy with `accept-proxy`, which echoes what it understood; version 1 stays stunnel's line.
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { closeQuietly, decode, encode, writeAll } from "./harness/bytes.ts";
import { curl, freePorts, Queue, tcpServer, tlsConnect, waitForPort } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, spawn } from "./harness/process.ts";
import { configError, GLOBALS, startProxy } from "./harness/proxy.ts";
import { withTimeout } from "./harness/timing.ts";

const EXTRA = "proxyVersion is an extension of stunnel-deno";
const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

interface V2Header {
  command: number;
  family: number;
  src: string;
  dst: string;
  srcPort: number;
  dstPort: number;
  tlvs: Map<number, Uint8Array>;
}

/** The spec's parser (section 2.2), independent of the program's writer. */
function parseV2(bytes: Uint8Array): V2Header {
  assertEquals([...bytes.subarray(0, 12)], SIGNATURE, "signature");
  assertEquals(bytes[12] >> 4, 2, "version 2");
  const length = (bytes[14] << 8) | bytes[15];
  assertEquals(bytes.length, 16 + length, "the header length covers the rest");
  const body = bytes.subarray(16);
  const view = new DataView(body.buffer, body.byteOffset, body.length);
  const family = bytes[13];
  let offset = 0;
  let src = "", dst = "", srcPort = 0, dstPort = 0;
  if (family === 0x11) {
    src = [...body.subarray(0, 4)].join(".");
    dst = [...body.subarray(4, 8)].join(".");
    srcPort = view.getUint16(8);
    dstPort = view.getUint16(10);
    offset = 12;
  } else if (family === 0x21) {
    const v6 = (b: Uint8Array) =>
      Array.from({ length: 8 }, (_, i) => ((b[2 * i] << 8) | b[2 * i + 1]).toString(16)).join(":");
    src = v6(body.subarray(0, 16));
    dst = v6(body.subarray(16, 32));
    srcPort = view.getUint16(32);
    dstPort = view.getUint16(34);
    offset = 36;
  }
  return {
    command: bytes[12] & 0x0f,
    family,
    src,
    dst,
    srcPort,
    dstPort,
    tlvs: parseTlvs(body.subarray(offset)),
  };
}

function parseTlvs(bytes: Uint8Array): Map<number, Uint8Array> {
  const tlvs = new Map<number, Uint8Array>();
  for (let i = 0; i < bytes.length;) {
    const length = (bytes[i + 1] << 8) | bytes[i + 2];
    assert(i + 3 + length <= bytes.length, "a TLV inside the header");
    tlvs.set(bytes[i], bytes.subarray(i + 3, i + 3 + length));
    i += 3 + length;
  }
  return tlvs;
}

/** A backend that captures the PROXY v2 header (its length is in its bytes 14-15). */
function headerBackend(): { port: number; headers: Queue<Uint8Array> } {
  const headers = new Queue<Uint8Array>();
  const backend = tcpServer(async (conn) => {
    let got = new Uint8Array(0);
    const buf = new Uint8Array(4096);
    while (got.length < 16 || got.length < 16 + ((got[14] << 8) | got[15])) {
      const n = await conn.read(buf);
      if (n === null) break;
      got = new Uint8Array([...got, ...buf.subarray(0, n)]);
    }
    headers.push(got.subarray(0, 16 + ((got[14] << 8) | got[15])));
    await writeAll(conn, encode("ok"));
    await conn.read(buf).catch(() => null);
  });
  return { port: backend.port, headers };
}

function service(accept: string, connect: number, pki: Awaited<ReturnType<typeof makePki>>) {
  return `[pp]\naccept = ${accept}\nconnect = 127.0.0.1:${connect}\nprotocol = proxy\n` +
    `proxyVersion = 2\ncert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\n`;
}

e2e("proxyVersion = 2: the header and its TLS TLVs (ALPN too), byte by byte (IPv4)", {
  extra: EXTRA,
}, async () => {
  const pki = await makePki();
  const backend = headerBackend();
  const [port] = freePorts(1);
  await startProxy(GLOBALS + service(`127.0.0.1:${port}`, backend.port, pki) + "alpn = h2\n");
  const tls = await tlsConnect(port, pki.caPem, {
    alpnProtocols: ["h2"],
    cert: await Deno.readTextFile(pki.client.cert),
    key: await Deno.readTextFile(pki.client.key),
  });
  const header = parseV2(await backend.headers.next(10_000, "the header"));
  const local = tls.localAddr as Deno.NetAddr;
  assertEquals(header.command, 1, "PROXY");
  assertEquals(header.family, 0x11, "TCP over IPv4");
  assertEquals([header.src, header.srcPort], [local.hostname, local.port]);
  assertEquals([header.dst, header.dstPort], ["127.0.0.1", port]);
  assertEquals(decode(header.tlvs.get(0x02)!), "localhost", "PP2_TYPE_AUTHORITY");
  assertEquals(decode(header.tlvs.get(0x01)!), "h2", "PP2_TYPE_ALPN");
  const ssl = header.tlvs.get(0x20)!;
  assert(ssl, "PP2_TYPE_SSL");
  assertEquals(ssl[0], 0x01 | 0x02 | 0x04, "client: SSL, CERT_CONN, CERT_SESS");
  assertEquals(new DataView(ssl.buffer, ssl.byteOffset + 1, 4).getUint32(0), 0, "verified");
  const sub = parseTlvs(ssl.subarray(5));
  assertEquals(decode(sub.get(0x21)!), "TLSv1.3", "PP2_SUBTYPE_SSL_VERSION");
  assertMatch(decode(sub.get(0x23)!), /^TLS_(AES_\d+_GCM|CHACHA20_POLY1305)_SHA\d+$/);
  assertEquals(decode(sub.get(0x22)!), "client", "PP2_SUBTYPE_SSL_CN");
  closeQuietly(tls);
});

e2e("proxyVersion = 2: no client certificate, IPv6 addresses", { extra: EXTRA }, async () => {
  const pki = await makePki();
  const backend = headerBackend();
  const [port] = freePorts(1);
  const conf = GLOBALS + service(`:::${port}`, backend.port, pki)
    .replace("verifyChain = yes\n", "");
  await startProxy(conf, { waitPorts: [] });
  await waitForPortV6(port);
  const tcp = await Deno.connect({ hostname: "::1", port });
  const tls = await Deno.startTls(tcp, { hostname: "localhost", caCerts: [pki.caPem] });
  await withTimeout(tls.handshake(), 10_000, "handshake");
  const header = parseV2(await backend.headers.next(10_000, "the header"));
  const local = tcp.localAddr as Deno.NetAddr;
  assertEquals(header.family, 0x21, "TCP over IPv6");
  assertEquals(header.src, "0:0:0:0:0:0:0:1");
  assertEquals(header.dst, "0:0:0:0:0:0:0:1");
  assertEquals([header.srcPort, header.dstPort], [local.port, port]);
  const ssl = header.tlvs.get(0x20)!;
  assertEquals(ssl[0], 0x01, "client: SSL only");
  assert(new DataView(ssl.buffer, ssl.byteOffset + 1, 4).getUint32(0) !== 0, "not verified");
  assertEquals(parseTlvs(ssl.subarray(5)).has(0x22), false, "no CN");
  closeQuietly(tls);
});

async function waitForPortV6(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      (await Deno.connect({ hostname: "::1", port })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`[::1]:${port} does not listen`);
}

/** HAProxy in the foreground, answering every request with what the PROXY header told it. */
async function haproxy(dir: string): Promise<number> {
  const [port] = freePorts(1);
  const conf = `${dir}/haproxy.cfg`;
  await Deno.writeTextFile(
    conf,
    `global\n  log stdout format raw local0\n\ndefaults\n  mode http\n  timeout connect 5s\n` +
      `  timeout client 5s\n  timeout server 5s\n\nfrontend fe\n` +
      `  bind 127.0.0.1:${port} accept-proxy\n` +
      `  http-request return status 200 content-type text/plain lf-string ` +
      `"src=%[src]:%[src_port] dst=%[dst]:%[dst_port] authority=%[fc_pp_authority] ` +
      `proxied=%[fc_rcvd_proxy]\\n"\n`,
  );
  spawn(["haproxy", "-db", "-f", conf], { stdin: false });
  await waitForPort(port);
  return port;
}

for (const version of [1, 2]) {
  e2e(`protocol = proxy, version ${version}: HAProxy (accept-proxy) sees the client`, {
    extra: EXTRA,
  }, async (scope) => {
    const pki = await makePki();
    const dir = await scope.tempDir("e2e-haproxy-");
    const backend = await haproxy(dir);
    const [port] = freePorts(1);
    const conf = GLOBALS + service(`127.0.0.1:${port}`, backend, pki)
      .replace("proxyVersion = 2\n", version === 2 ? "proxyVersion = 2\n" : "");
    const proxy = await startProxy(conf);
    const r = await curl(port, pki.ca, ["--cert", pki.client.cert, "--key", pki.client.key]);
    assertEquals(r.code, 0, r.stderr);
    const [, peer] = await proxy.waitForLog(/accepted connection from (\S+)/);
    const authority = version === 2 ? "localhost" : "";
    assertEquals(
      r.stdout,
      `src=${peer} dst=127.0.0.1:${port} authority=${authority} proxied=1\n`,
    );
  });
}

e2e("proxyVersion without protocol = proxy is a configuration error", {
  extra: EXTRA,
}, async () => {
  const out = await configError(
    `${GLOBALS}[s]\naccept = 1\nconnect = 2\nproxyVersion = 2\ncert = /dev/null\n`,
  );
  assertMatch(out, /bad\.conf:8: option 'proxyVersion' needs 'protocol = proxy'/);
  const bad = await configError(
    `${GLOBALS}[s]\naccept = 1\nconnect = 2\nprotocol = proxy\nproxyVersion = 3\n`,
  );
  assertMatch(bad, /bad\.conf:9: "proxyVersion = 3": The argument needs to be either '1' or '2'/);
});
