/**
 * End-to-end: the two TLS engines (`tlsEngine = openssl|deno`), finding OpenSSL, and running
 * without the C library (STUNNEL_LIBC=none: what a platform without one, Windows, leaves). The
 * basics (server mode, client mode verifying the server, the SNI a client sends, failover, bulk
 * integrity) run under both engines and without the C library; with the OpenSSL libraries
 * hidden (a mount namespace that masks them with an empty file), `auto` falls back to Deno's TLS
 * and `openssl` refuses to start; Deno's TLS and a platform without the C library refuse the
 * options they cannot honour, naming file, line and reason.
 *
 * These are extensions: skipped with PROXY_CMD=stunnel4.
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { closeQuietly, decode, encode, MiB, readExactly, writeAll } from "./harness/bytes.ts";
import {
  echoServer,
  isListening,
  Queue,
  streamServer,
  tcpConnect,
  tcpServer,
  tcpTransfer,
  tlsConnect,
  waitForPort,
} from "./harness/net.ts";
import { freePorts } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, run } from "./harness/process.ts";
import { GLOBALS, type ProxyOptions, startProxy } from "./harness/proxy.ts";
import { sClient, sServer } from "./harness/openssl.ts";
import { PROXY } from "./harness/command.ts";
import { OPTIONS } from "../lib/config/options.ts";
import { DENO_TLS_RULES } from "../lib/config/deno_tls.ts";
import { PLATFORM_NEEDS } from "../lib/config/platform.ts";

const EXTRA = "tlsEngine, libssl and libcrypto are extensions of this implementation";
/** The basics run under each engine, and with OpenSSL but no C library. */
const PROFILES: { label: string; tlsEngine: "openssl" | "deno"; options: ProxyOptions }[] = [
  { label: "openssl engine", tlsEngine: "openssl", options: {} },
  { label: "deno engine", tlsEngine: "deno", options: {} },
  {
    label: "no C library",
    tlsEngine: "openssl",
    options: { cmd: ["env", "STUNNEL_LIBC=none", ...PROXY] },
  },
];
const LIBDIR = `/usr/lib/${Deno.build.arch}-linux-gnu`;

/** The proxy command run in a mount namespace where libssl.so.3 and libcrypto.so.3 are empty. */
async function withoutOpenSsl(): Promise<ProxyOptions> {
  const dir = await Deno.makeTempDir({ prefix: "e2e-noossl-" });
  const empty = `${dir}/empty`;
  await Deno.writeFile(empty, new Uint8Array(0));
  const mask = ["libssl.so.3", "libcrypto.so.3"]
    .map((f) => `mount --bind ${empty} ${LIBDIR}/${f}`).join(" && ");
  // unshare and sh exec: the proxy keeps the pid the harness signals.
  return { cmd: ["unshare", "-m", "sh", "-c", `${mask} && exec "$@"`, "sh", ...PROXY] };
}

Deno.test("deno tls: every option of the table is classified", () => {
  const names = OPTIONS.map((o) => o.name).sort();
  assertEquals(Object.keys(DENO_TLS_RULES).sort(), names);
});

Deno.test("platform: every option of the table is classified", () => {
  const names = OPTIONS.map((o) => o.name).sort();
  assertEquals(Object.keys(PLATFORM_NEEDS).sort(), names);
});

for (const { label, tlsEngine: engine, options } of PROFILES) {
  const globals = `${GLOBALS}tlsEngine = ${engine}\n`;

  e2e(`${label}: server mode, verified by s_client; the banner names the engine`, {
    extra: EXTRA,
  }, async () => {
    const pki = await makePki();
    const backend = echoServer();
    const [port] = freePorts(1);
    const proxy = await startProxy(
      `${globals}[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
        `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
      options,
    );
    assertMatch(
      proxy.log(),
      engine === "deno"
        ? /TLS engine: Deno's own TLS \(rustls\), tlsEngine = deno/
        : /OpenSSL loaded from \/\S*libssl\.so\.3 and \/\S*libcrypto\.so\.3/,
    );
    assertMatch(
      proxy.log(),
      "cmd" in options
        ? /C library: none \(STUNNEL_LIBC=none\): no syslog, daemon mode/
        : /C library loaded from \/\S*libc\.so\.6/,
    );
    const client = sClient(port, { ca: pki.ca });
    await client.write("hello engine\n");
    await client.stdout.waitFor(
      () => client.stdout.text().includes("hello engine"),
      10_000,
      "echo",
    );
    await client.stop(2000);
    await proxy.waitForLog(/Connection (closed|reset): \d+ byte\(s\) sent to TLS/);
    assertMatch(proxy.log(), /Service \[s\] accepted connection from 127\.0\.0\.1/);
  });

  e2e(`${label}: client mode verifies the server (CAfile, checkHost)`, {
    extra: EXTRA,
  }, async () => {
    const pki = await makePki();
    const [good, bad, portGood, portBad] = freePorts(4);
    const server = sServer(good, pki.serverEc);
    const other = sServer(bad, pki.otherServer);
    await waitForPort(good);
    await waitForPort(bad);
    const section = (name: string, accept: number, connect: number) =>
      `[${name}]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
      `verifyChain = yes\nCAfile = ${pki.ca}\ncheckHost = localhost\n`;
    const proxy = await startProxy(
      globals + section("good", portGood, good) + section("bad", portBad, bad),
      options,
    );
    const conn = await tcpConnect(portGood);
    await writeAll(conn, encode("to the server\n"));
    await server.stdout.waitFor(
      () => server.stdout.text().includes("to the server"),
      10_000,
      "data at s_server",
    );
    closeQuietly(conn);
    // A server whose certificate another CA signed: refused, nothing reaches it.
    const refused = await tcpConnect(portBad);
    await writeAll(refused, encode("must not arrive\n")).catch(() => {});
    const failure = engine === "deno"
      ? /LOG3\[\d+\]: .*(invalid peer certificate|UnknownIssuer)/
      : /LOG\d\[\d+\]: .*(certificate verify failed|Verification error)/;
    await proxy.waitForLog(failure);
    await proxy.waitForLog(/Connection reset|Connection closed: 0 byte\(s\) sent to TLS/);
    assertNotMatch(other.stdout.text(), /must not arrive/);
    closeQuietly(refused);
  });

  e2e(`${label}: client mode sends the sni name`, { extra: EXTRA }, async () => {
    const hellos = new Queue<string>();
    // Reads the ClientHello and reports its server_name; the handshake goes no further.
    const backend = tcpServer(async (conn) => {
      hellos.push(serverName(
        await readExactly(conn, 5 + 4, 10_000).then(async (head) => {
          const length = (head[3] << 8 | head[4]) - 4;
          return new Uint8Array([...head, ...await readExactly(conn, length, 10_000)]);
        }),
      ));
    });
    const pki = await makePki();
    const [port] = freePorts(1);
    await startProxy(
      `${globals}[c]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
        `connect = 127.0.0.1:${backend.port}\nsni = sni.example.test\n` +
        `verifyChain = yes\nCAfile = ${pki.ca}\n`,
      options,
    );
    const conn = await tcpConnect(port);
    assertEquals(await hellos.next(10_000, "ClientHello"), "sni.example.test");
    closeQuietly(conn);
  });

  e2e(`${label}: failover to the next connect address`, {
    extra: EXTRA,
  }, async () => {
    const pki = await makePki();
    const backend = echoServer();
    // Nothing listens there: refused at once.
    const [port, dead] = freePorts(2);
    const proxy = await startProxy(
      `${globals}[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${dead}\n` +
        `connect = 127.0.0.1:${backend.port}\nfailover = prio\n` +
        `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
      options,
    );
    const tls = await tlsConnect(port, pki.caPem);
    await writeAll(tls, encode("ping"));
    assertEquals(decode(await readExactly(tls, 4)), "ping");
    closeQuietly(tls);
    assertMatch(proxy.log(), new RegExp(`s_connect: connecting 127\\.0\\.0\\.1:${dead}`));
    assertMatch(proxy.log(), new RegExp(`s_connect: connected 127\\.0\\.0\\.1:${backend.port}`));
  });

  e2e(`${label}: 32 MiB each way through client and server mode, sha256 checked`, {
    extra: EXTRA,
    timeoutMs: 90_000,
  }, async () => {
    const pki = await makePki();
    const sink = streamServer({ send: 32 * MiB, seed: 7 });
    const [server, client] = freePorts(2);
    await startProxy(
      `${globals}[s]\naccept = 127.0.0.1:${server}\nconnect = 127.0.0.1:${sink.port}\n` +
        `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
        `[c]\nclient = yes\naccept = 127.0.0.1:${client}\nconnect = 127.0.0.1:${server}\n` +
        `verifyChain = yes\nCAfile = ${pki.ca}\ncheckHost = localhost\n`,
      options,
    );
    const result = await tcpTransfer(client, { send: 32 * MiB, seed: 3, timeoutMs: 80_000 });
    const far = await sink.results.next(20_000, "the backend's digests");
    assertEquals(far.received, result.sent);
    assertEquals(result.received, far.sent);
    assertEquals(result.received.bytes, 32 * MiB);
  });
}

e2e("OpenSSL hidden: auto falls back to Deno's TLS, openssl refuses to start", {
  extra: EXTRA,
}, async () => {
  const hidden = await withoutOpenSsl();
  const pki = await makePki();
  const backend = echoServer();
  const [port] = freePorts(1);
  const service = `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const proxy = await startProxy(`${GLOBALS}${service}`, hidden);
  assertMatch(proxy.log(), /tlsEngine = auto, OpenSSL 3 not found/);
  assertMatch(proxy.log(), /OpenSSL 3 not found \(tried .*libcrypto\.so\.3.*: file too short/);
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("fallback"));
  assertEquals(decode(await readExactly(tls, 8)), "fallback");
  closeQuietly(tls);
  await proxy.stop();

  const refused = await startProxy(`${GLOBALS}tlsEngine = openssl\n${service}`, {
    ...hidden,
    allowFailure: true,
  });
  await refused.exited;
  assert(!refused.ready, "started without OpenSSL");
  assertMatch(refused.log(), /OpenSSL 3 not found \(tried libcrypto\.so\.3 and libssl\.so\.3/);
  assertMatch(refused.log(), /Configuration failed/);
  assert(!(await isListening(port)), "listening after a failed start");
});

e2e("OpenSSL hidden: auto refuses what Deno's TLS cannot do, with the reason", {
  extra: EXTRA,
}, async () => {
  const hidden = await withoutOpenSsl();
  const pki = await makePki();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    `${GLOBALS}[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
      `verifyPeer = yes\nCAfile = ${pki.ca}\n`,
    { ...hidden, allowFailure: true },
  );
  await proxy.exited;
  assertMatch(
    proxy.log(),
    /Service \[s\]: \S+stunnel\.conf:10: option 'verifyPeer' cannot be used with Deno's TLS \(tlsEngine = auto, OpenSSL 3 not found\): Deno's TLS verifies a chain/,
  );
  assertMatch(proxy.log(), /stunnel\.conf:11: option 'CAfile' .*cannot verify client certificates/);
  assertMatch(proxy.log(), /Configuration failed/);
});

e2e("tlsEngine = deno: each option it cannot honour is refused with file, line and reason", {
  extra: EXTRA,
}, async () => {
  const pki = await makePki();
  const [port, port2] = freePorts(2);
  const proxy = await startProxy(
    `${GLOBALS}tlsEngine = deno\nRNDfile = /dev/urandom\n` +
      `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\n` +
      `cert = ${pki.serverEc.cert}\nciphers = HIGH\nsessionCacheTimeout = 60\nprotocol = smtp\n` +
      `[c]\nclient = yes\naccept = 127.0.0.1:${port2}\nconnect = 127.0.0.1:9\n` +
      `sslVersionMin = TLSv1.3\n`,
    { allowFailure: true },
  );
  await proxy.exited;
  const log = proxy.log();
  const how = "cannot be used with tlsEngine = deno";
  assertMatch(log, new RegExp(`conf:6: option 'RNDfile' ${how}: OpenSSL's random generator`));
  assertMatch(log, new RegExp(`Service \\[s\\]: \\S+conf:11: option 'ciphers' ${how}: .*rustls`));
  assertMatch(log, new RegExp(`conf:12: option 'sessionCacheTimeout' ${how}: .*sessions`));
  assertMatch(log, new RegExp(`conf:13: option 'protocol' ${how}: protocol 'smtp' in server mode`));
  assertMatch(
    log,
    new RegExp(`Service \\[c\\]: \\S+conf:15: option 'client' ${how}: .*verifyChain`),
  );
  assertMatch(log, new RegExp(`conf:18: option 'sslVersionMin' ${how}: .*limited to TLS 1\\.3`));
  assertMatch(log, /Configuration failed/);
  assert(!(await isListening(port)), "listening after a refused configuration");
});

e2e("libssl/libcrypto: files that do not load are named in the error", {
  extra: EXTRA,
}, async () => {
  const [port] = freePorts(1);
  const proxy = await startProxy(
    `${GLOBALS}libssl = /nonexistent/libssl.so.3\n[c]\nclient = yes\n` +
      `accept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\n`,
    { allowFailure: true },
  );
  await proxy.exited;
  assertMatch(
    proxy.log(),
    /OpenSSL 3 not found \(tried \/nonexistent\/libcrypto\.so\.3 and \/nonexistent\/libssl\.so\.3 \(named by the configuration\)/,
  );
  const version = await run([...PROXY, "-version"], 20_000, {
    env: { STUNNEL_LIBCRYPTO: "/nonexistent/libcrypto.so.3" },
  });
  assertMatch(version.stderr, /STUNNEL_LIBSSL\/STUNNEL_LIBCRYPTO/);
});

/** The server_name of a ClientHello record (TLS 1.2/1.3), or "" when it has none. */
function serverName(record: Uint8Array): string {
  let i = 5 + 4 + 2 + 32;
  i += 1 + record[i];
  i += 2 + (record[i] << 8 | record[i + 1]);
  i += 1 + record[i];
  const end = i + 2 + (record[i] << 8 | record[i + 1]);
  i += 2;
  while (i + 4 <= end) {
    const type = record[i] << 8 | record[i + 1];
    const length = record[i + 2] << 8 | record[i + 3];
    if (type === 0) {
      const nameLength = record[i + 7] << 8 | record[i + 8];
      return decode(record.subarray(i + 9, i + 9 + nameLength));
    }
    i += 4 + length;
  }
  return "";
}

e2e("no C library: the options that need it are refused with file, line and reason", {
  extra: "STUNNEL_LIBC is an extension of this implementation",
}, async () => {
  const pki = await makePki();
  const [port, port2] = freePorts(2);
  const proxy = await startProxy(
    `${GLOBALS}setuid = nobody\n` +
      `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
      `socket = l:SO_KEEPALIVE=1\nreset = yes\n` +
      `[e]\naccept = 127.0.0.1:${port2}\nexec = /bin/cat\npty = yes\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
    { cmd: ["env", "STUNNEL_LIBC=none", ...PROXY], allowFailure: true },
  );
  await proxy.exited;
  assert(!proxy.ready, "started with options it cannot honour");
  const noLibc = "it needs the C library: no C library \\(STUNNEL_LIBC=none\\)";
  const line = (at: string, option: string) =>
    new RegExp(
      `${at}stunnel\\.conf:\\d+: option '${option}' cannot be used on this platform: ${noLibc}`,
    );
  // A global line the services inherit is named once.
  assertEquals(proxy.log().match(/option 'setuid'/g)?.length, 1);
  assertMatch(proxy.log(), line("\\S+", "setuid"));
  assertMatch(proxy.log(), line("Service \\[s\\]: \\S+", "socket"));
  assertMatch(proxy.log(), line("Service \\[s\\]: \\S+", "reset"));
  assertMatch(proxy.log(), line("Service \\[e\\]: \\S+", "exec"));
  assertMatch(proxy.log(), line("Service \\[e\\]: \\S+", "pty"));
  assertMatch(proxy.log(), /Configuration failed/);
  assert(!(await isListening(port)), "listening after a failed start");
});

e2e("STUNNEL_LIBC: a file that loads is used and named; one that does not stops the start", {
  extra: "STUNNEL_LIBC is an extension of this implementation",
}, async () => {
  const named = `${LIBDIR}/libc.so.6`;
  const version = await run(["env", `STUNNEL_LIBC=${named}`, ...PROXY, "-version"]);
  assertMatch(version.stdout + version.stderr, new RegExp(`C library loaded from ${named}`));
  const pki = await makePki();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    `${GLOBALS}[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
    { cmd: ["env", "STUNNEL_LIBC=/nonexistent/libc.so", ...PROXY], allowFailure: true },
  );
  await proxy.exited;
  assert(!proxy.ready, "started without the C library it was told to load");
  assertMatch(
    proxy.log(),
    /STUNNEL_LIBC: the C library \/nonexistent\/libc\.so did not load: .*No such file/,
  );
});
