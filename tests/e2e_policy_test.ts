/**
 * End-to-end: TLS policy options, seen in what openssl s_client negotiates. sslVersion,
 * sslVersionMin/Max, ciphers, ciphersuites, curves, options (and `-NAME`), securityLevel,
 * `config = COMMAND:PARAMETER`, `renegotiation`, and DH parameters from the certificate file.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_policy_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { echoServer, freePorts } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";

function service(name: string, accept: number, backend: number, extra: string): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backend}\n${extra}`;
}

function ecCert(pki: Pki): string {
  return `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
}

interface Handshake {
  /** A line went through the echo backend and came back. */
  ok: boolean;
  protocol?: string;
  cipher?: string;
  /** s_client's "Server Temp Key: ..." value. */
  tempKey?: string;
  out: string;
}

/** One openssl s_client connection (extra `args`): a line through the echo backend and back. */
async function handshake(port: number, args: string[] = []): Promise<Handshake> {
  const p = spawn([
    "openssl",
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    "localhost",
    ...args,
  ]);
  await p.write("policy line\n");
  const ok = await p.stdout.waitFor(() => /^policy line$/m.test(p.stdout.text()), 8000, "echo")
    .then(() => true, () => false);
  await p.closeStdin();
  await p.wait(10_000).catch(() => p.stop());
  const out = p.output.text();
  const session = out.match(/^(?:New|Reused), (TLSv1\.[23]), Cipher is (\S+)$/m);
  return {
    ok,
    protocol: session?.[1],
    cipher: session?.[2],
    tempKey: out.match(/^Server Temp Key: (.*)$/m)?.[1],
    out,
  };
}

e2e("sslVersion, sslVersionMin and sslVersionMax decide the protocol", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [v13, v12, max12, min13] = freePorts(4);
  await startProxy(
    GLOBALS + ecCert(pki) +
      service("tls13", v13, echo.port, "sslVersion = TLSv1.3\n") +
      service("tls12", v12, echo.port, "sslVersion = TLSv1.2\n") +
      service("max12", max12, echo.port, "sslVersionMax = TLSv1.2\n") +
      service("min13", min13, echo.port, "sslVersionMin = TLSv1.3\n"),
  );
  const expect = async (port: number, args: string[], protocol: string | undefined) => {
    const h = await handshake(port, args);
    assertEquals(h.ok ? h.protocol : undefined, protocol, `${port} ${args}:\n${h.out}`);
  };
  await expect(v13, ["-tls1_3"], "TLSv1.3");
  await expect(v13, ["-tls1_2"], undefined);
  await expect(v12, ["-tls1_2"], "TLSv1.2");
  await expect(v12, ["-tls1_3"], undefined);
  await expect(max12, [], "TLSv1.2");
  await expect(min13, [], "TLSv1.3");
  await expect(min13, ["-tls1_2"], undefined);
});

e2e("ciphers, ciphersuites and curves are what s_client gets", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [ciphers, suites, curves] = freePorts(3);
  await startProxy(
    GLOBALS + ecCert(pki) +
      service(
        "ciphers",
        ciphers,
        echo.port,
        "ciphers = ECDHE-ECDSA-AES128-GCM-SHA256\nsslVersionMax = TLSv1.2\n",
      ) +
      service("suites", suites, echo.port, "ciphersuites = TLS_CHACHA20_POLY1305_SHA256\n") +
      service("curves", curves, echo.port, "curves = P-384\n"),
  );
  const c = await handshake(ciphers);
  assert(c.ok, c.out);
  assertEquals(c.cipher, "ECDHE-ECDSA-AES128-GCM-SHA256");
  const refused = await handshake(ciphers, ["-cipher", "ECDHE-ECDSA-AES256-GCM-SHA384"]);
  assert(!refused.ok, refused.out);
  const s = await handshake(suites);
  assert(s.ok, s.out);
  assertEquals([s.protocol, s.cipher], ["TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256"]);
  const k = await handshake(curves);
  assert(k.ok, k.out);
  assertEquals(k.tempKey, "ECDH, secp384r1, 384 bits");
  assert(!(await handshake(curves, ["-groups", "X25519"])).ok);
});

e2e("options: NO_TLSv1_3, and -NO_TLSv1_3 clears it whatever the order", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [inherits, cleared, clearedFirst] = freePorts(3);
  // The global section's options are every service's defaults.
  await startProxy(
    GLOBALS + "options = NO_TLSv1_3\n" + ecCert(pki) +
      service("inherits", inherits, echo.port, "") +
      service("cleared", cleared, echo.port, "options = -NO_TLSv1_3\n") +
      service(
        "cleared-first",
        clearedFirst,
        echo.port,
        "options = -NO_TLSv1_3\noptions = NO_TLSv1_3\n",
      ),
  );
  assertEquals((await handshake(inherits)).protocol, "TLSv1.2");
  assertEquals((await handshake(cleared)).protocol, "TLSv1.3");
  // stunnel keeps a set and a cleared mask: a cleared option stays cleared.
  assertEquals((await handshake(clearedFirst)).protocol, "TLSv1.3");
});

e2e("securityLevel: level 3 refuses a 2048-bit RSA key, not a P-256 one", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [rsa, ec] = freePorts(2);
  const failed = await startProxy(
    GLOBALS + "securityLevel = 3\n" +
      service("rsa", rsa, echo.port, `cert = ${pki.serverRsa.cert}\nkey = ${pki.serverRsa.key}\n`),
    { allowFailure: true },
  );
  assertEquals((await failed.process.wait(10_000)).success, false);
  assertMatch(failed.log(), /ee key too small/);
  assertMatch(failed.log(), /Service \[rsa\]: Failed to initialize TLS context/);
  await startProxy(
    GLOBALS + "securityLevel = 3\n" + ecCert(pki) + service("ec", ec, echo.port, ""),
  );
  assert((await handshake(ec)).ok);
});

e2e("config: OpenSSL configuration commands, applied after stunnel's options", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [min, suites] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS + ecCert(pki) +
      service("min", min, echo.port, "config = MinProtocol:TLSv1.3\n") +
      service(
        "suites",
        suites,
        echo.port,
        "ciphersuites = TLS_AES_256_GCM_SHA384\nconfig = Ciphersuites:TLS_AES_128_GCM_SHA256\n",
      ),
  );
  assert(!(await handshake(min, ["-tls1_2"])).ok);
  assertEquals((await handshake(min)).protocol, "TLSv1.3");
  assertEquals((await handshake(suites)).cipher, "TLS_AES_128_GCM_SHA256");
  assertMatch(proxy.log(), /OpenSSL config "MinProtocol" set to "TLSv1\.3"/);
  await proxy.stop();
  for (
    const [line, message] of [
      ["config = NoSuchCommand:x", 'OpenSSL config command "NoSuchCommand" was not recognised'],
      ["config = MinProtocol", 'OpenSSL config command "MinProtocol" requires a parameter'],
    ]
  ) {
    const bad = await startProxy(GLOBALS + ecCert(pki) + service("bad", min, echo.port, line), {
      allowFailure: true,
    });
    assertEquals((await bad.process.wait(10_000)).success, false);
    assertMatch(bad.log(), new RegExp(message));
    assertMatch(bad.log(), /Service \[bad\]: Failed to initialize TLS context/);
  }
});

/**
 * s_client (TLS 1.2, commands on): a line, then "R" (a client-initiated renegotiation), then
 * another line. Returns whether the second line came back.
 */
async function renegotiate(port: number): Promise<boolean> {
  const p = spawn([
    "openssl",
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    "localhost",
    "-tls1_2",
  ]);
  const echoed = (line: string) =>
    p.stdout.waitFor(() => p.stdout.text().includes(`${line}\n`), 4000, line)
      .then(() => true, () => false);
  await p.write("before\n");
  assert(await echoed("before"), p.output.text());
  await p.write("R\n");
  await p.output.waitFor(() => p.output.text().includes("RENEGOTIATING"), 4000, "R");
  await p.write("after\n").catch(() => {});
  const after = await echoed("after");
  await p.stop();
  return after;
}

e2e("renegotiation = no ends a connection whose client renegotiates", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [allowed, refused, defaults] = freePorts(3);
  // OpenSSL 3 refuses client renegotiation unless ALLOW_CLIENT_RENEGOTIATION is set.
  const allow = "options = ALLOW_CLIENT_RENEGOTIATION\n";
  const proxy = await startProxy(
    GLOBALS + ecCert(pki) +
      service("allowed", allowed, echo.port, allow) +
      service("refused", refused, echo.port, `${allow}renegotiation = no\n`) +
      service("defaults", defaults, echo.port, "renegotiation = no\n"),
  );
  assertEquals(await renegotiate(allowed), true);
  assertEquals(await renegotiate(refused), false);
  await proxy.waitForLogCount(/Aborting due to renegotiation request/, 1);
  // Without ALLOW_CLIENT_RENEGOTIATION the client gives up on its own (after OpenSSL's
  // no_renegotiation warning), possibly before stunnel notices: only the outcome is certain.
  assertEquals(await renegotiate(defaults), false);
});

e2e("DH parameters from the certificate file for DHE cipher suites", {}, async (scope: Scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const dir = await scope.tempDir("e2e-dh-");
  const params = await run([
    "openssl",
    "genpkey",
    "-genparam",
    "-algorithm",
    "DH",
    "-pkeyopt",
    "group:ffdhe3072",
  ]);
  assertEquals(params.code, 0, params.stderr);
  const key = await Deno.readTextFile(pki.serverRsa.key);
  const cert = await Deno.readTextFile(pki.serverRsa.cert);
  await Deno.writeTextFile(`${dir}/with-dh.pem`, key + cert + params.stdout, { mode: 0o600 });
  await Deno.writeTextFile(`${dir}/without.pem`, key + cert, { mode: 0o600 });
  const dhe = "ciphers = DHE-RSA-AES128-GCM-SHA256\nsslVersionMax = TLSv1.2\n";
  const [withDh, without] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS +
      service("with-dh", withDh, echo.port, `cert = ${dir}/with-dh.pem\n${dhe}`) +
      service("without", without, echo.port, `cert = ${dir}/without.pem\n${dhe}`),
  );
  const a = await handshake(withDh);
  assertEquals([a.ok, a.cipher, a.tempKey], [true, "DHE-RSA-AES128-GCM-SHA256", "DH, 3072 bits"]);
  const b = await handshake(without);
  assertEquals([b.ok, b.cipher, b.tempKey], [true, "DHE-RSA-AES128-GCM-SHA256", "DH, 2048 bits"]);
  assertMatch(proxy.log(), /3072-bit DH parameters loaded/);
  assertMatch(proxy.log(), /Using dynamic DH parameters/);
});
