/**
 * End-to-end: the global crypto options. A TLS server whose private key lives in a SoftHSM2
 * token, loaded through OpenSSL's pkcs11 engine (`engine`, `engineCtrl`, `engineId`,
 * `engineNum`); the engine configuration errors; `fips = yes` without a FIPS provider;
 * `RNDfile`/`RNDbytes`/`RNDoverwrite` and `EGD` (OpenSSL 3 seeds itself: no file is touched).
 *
 * Needs the Debian packages softhsm2 and libengine-pkcs11-openssl (dev.sh installs them).
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_engine_test.ts
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  escapeRegExp,
} from "./harness/assert.ts";
import { sha256Hex } from "./harness/bytes.ts";
import { echoRoundTrip, echoServer, freePorts, tlsConnect } from "./harness/net.ts";
import { sClient } from "./harness/openssl.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, type Scope } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { SOFTHSM_MODULE, softHsmToken } from "./harness/softhsm.ts";

const TOKEN = "stunnelTest";
const PIN = "1234";
const KEY_LABEL = "serverKey";
const CA_LABEL = "testRootCa";

/**
 * A SoftHSM2 token in a temporary directory holding the ECDSA server key and the root CA
 * certificate of the test PKI, and SOFTHSM2_CONF pointing at it (inherited by the proxy).
 * Returns the key's pkcs11 URI.
 */
async function softHsmServerToken(scope: Scope): Promise<string> {
  const pki = await makePki();
  const token = await softHsmToken(scope, TOKEN, PIN);
  await token.importKey(pki.serverEc.key, KEY_LABEL, "01");
  await token.importCert(pki.ca, CA_LABEL, "02");
  return `pkcs11:token=${TOKEN};object=${KEY_LABEL};pin-value=${PIN}`;
}

const ENGINE_LINES = `engine = pkcs11\nengineCtrl = MODULE_PATH:${SOFTHSM_MODULE}\n`;

e2e("engine: a server's private key from a pkcs11 token (engineId, engineNum)", {
  timeoutMs: 40_000,
}, async (scope) => {
  const uri = await softHsmServerToken(scope);
  const pki = await makePki();
  const echo = echoServer();
  const [byId, byNum] = freePorts(2);
  const service = (name: string, port: number, select: string) =>
    `[${name}]\n${select}\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${uri}\n`;
  const proxy = await startProxy(
    GLOBALS + ENGINE_LINES + service("byid", byId, "engineId = pkcs11") +
      service("bynum", byNum, "engineNum = 1"),
  );
  assertMatch(proxy.log(), /Enabling support for engine "pkcs11"/);
  assertMatch(proxy.log(), /Engine #1 \(pkcs11\) initialized/);
  const loaded = new RegExp(`Private key initialized on engine ID: ${escapeRegExp(uri)}`, "g");
  assertEquals(proxy.log().match(loaded)?.length, 2, "both services load the key from the token");
  for (const port of [byId, byNum]) {
    // The handshake is signed by the token's key: verified against the test CA.
    const client = sClient(port, { ca: pki.ca, args: ["-tls1_3"] });
    await client.write("through the token\n");
    await client.stdout.waitFor(
      () => client.stdout.text().includes("through the token\n"),
      10_000,
      "the echo",
    );
    await client.stop();
  }
  // And with TLS 1.2 (an ECDSA signature over the key exchange, by the engine).
  const conn = await Deno.connectTls({
    hostname: "localhost",
    port: byId,
    caCerts: [pki.caPem],
  });
  await echoRoundTrip(conn, "tls via deno");
  conn.close();
});

e2e("engine: a key the token does not hold fails the start with the engine's error", {
  timeoutMs: 30_000,
}, async (scope) => {
  await softHsmServerToken(scope);
  const pki = await makePki();
  const [port] = freePorts(1);
  const missing = `pkcs11:token=${TOKEN};object=noSuchKey;pin-value=${PIN}`;
  const proxy = await startProxy(
    GLOBALS + ENGINE_LINES +
      `[s]\nengineId = pkcs11\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:1\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${missing}\n`,
    { allowFailure: true },
  );
  await proxy.waitForLog(/Configuration failed/);
  assert(!proxy.ready, "the service must not start");
  assertMatch(proxy.log(), /ENGINE_load_private_key: /);
});

e2e("CAengine: client certificates verified against a CA certificate from the token", {
  timeoutMs: 40_000,
}, async (scope) => {
  await softHsmServerToken(scope);
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + ENGINE_LINES +
      `[s]\nengineId = pkcs11\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nverifyChain = yes\n` +
      `CAengine = pkcs11:token=${TOKEN};object=${CA_LABEL};pin-value=${PIN}\n`,
  );
  assertMatch(proxy.log(), /Configured trusted client CA: CN=Test-Root-CA/);
  const cert = await Deno.readTextFile(pki.client.cert);
  const key = await Deno.readTextFile(pki.client.key);
  const trusted = await tlsConnect(port, pki.caPem, { cert, key });
  await echoRoundTrip(trusted, "signed by the token's CA");
  trusted.close();
  // Without a certificate the server refuses the client (an alert, then the connection ends).
  await assertRejects(async () => {
    const anonymous = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(anonymous, "no certificate");
  });
  // A CA the token does not hold: logged, and then there is no trust anchor at all.
  const [other] = freePorts(1);
  const failed = await startProxy(
    GLOBALS + ENGINE_LINES +
      `[t]\nengineId = pkcs11\naccept = 127.0.0.1:${other}\nconnect = 127.0.0.1:1\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nverifyChain = yes\n` +
      `CAengine = pkcs11:token=${TOKEN};object=noSuchCa;pin-value=${PIN}\n`,
    { allowFailure: true },
  );
  await failed.waitForLog(/Configuration failed/);
  assertMatch(failed.log(), /CAengine failed to retrieve "pkcs11:token=[^"]*object=noSuchCa/);
  assertMatch(failed.log(), /No trusted certificates found/);
});

/** Starts the proxy on a configuration that must fail; returns its log. */
async function failingStart(config: string): Promise<string> {
  const proxy = await startProxy(config, { allowFailure: true, waitPorts: [] });
  await proxy.waitForLog(/Configuration failed/);
  await proxy.exited;
  return proxy.log();
}

e2e("engine: configuration errors name the line, with OpenSSL's reason", {
  timeoutMs: 50_000,
}, async (scope) => {
  await softHsmServerToken(scope);
  const pki = await makePki();
  const [port] = freePorts(1);
  const section = (extra: string) =>
    `[s]\n${extra}accept = 127.0.0.1:${port}\nconnect = 127.0.0.1:1\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  const cases: [string, RegExp[]][] = [
    [
      `engine = noSuchEngine\n${section("")}`,
      [
        /ENGINE_by_id: .*error:[0-9A-F]+:/,
        /:5: "engine = noSuchEngine": Failed to open the engine$/m,
      ],
    ],
    [
      `engine = pkcs11\nengineCtrl = NO_SUCH_COMMAND:x\n${section("")}`,
      [
        /ENGINE_ctrl_cmd_string: .*invalid cmd name/,
        /:6: "engineCtrl = NO_SUCH_COMMAND:x": Failed to execute the engine control command$/m,
      ],
    ],
    [
      `engineCtrl = MODULE_PATH:${SOFTHSM_MODULE}\n${section("")}`,
      [/:5: "engineCtrl = MODULE_PATH:[^"]*": No engine was defined$/m],
    ],
    [
      `engine = pkcs11\nengineDefault = RSA,NO_SUCH_TASK\n${section("")}`,
      [
        /ENGINE_set_default_string: .*invalid string/,
        /:6: "engineDefault = RSA,NO_SUCH_TASK": Failed to set engine as default$/m,
      ],
    ],
    [
      `${ENGINE_LINES}${section("engineId = otherEngine\n")}`,
      [/:8: "engineId = otherEngine": Engine ID not found$/m],
    ],
    [
      `${ENGINE_LINES}${section("engineNum = 2\n")}`,
      [/:8: "engineNum = 2": Illegal engine number$/m],
    ],
  ];
  for (const [config, expected] of cases) {
    const log = await failingStart(GLOBALS + config);
    for (const re of expected) assertMatch(log, re, `for:\n${config}`);
  }
});

e2e("fips = yes fails the start with OpenSSL's reason when no FIPS provider is installed", {
  timeoutMs: 20_000,
}, async () => {
  const provider = "/usr/lib/x86_64-linux-gnu/ossl-modules/fips.so";
  const installed = await Deno.stat(provider).then(() => true, () => false);
  const pki = await makePki();
  const [port] = freePorts(1);
  const config = GLOBALS + "fips = yes\n" +
    `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:1\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
  if (installed) {
    const proxy = await startProxy(config);
    assertMatch(proxy.log(), /FIPS mode enabled/);
    return;
  }
  const log = await failingStart(config);
  assertMatch(log, /FIPS PROVIDER: .*error:[0-9A-F]+:/);
  assertMatch(log, /Global options: Failed to initialize TLS/);
});

e2e("RNDfile, RNDbytes, RNDoverwrite and EGD: OpenSSL 3 needs no seeding, no file is touched", {
  timeoutMs: 20_000,
}, async (scope) => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const dir = await scope.tempDir("e2e-rnd-");
  const seed = `${dir}/seed.rnd`;
  const content = crypto.getRandomValues(new Uint8Array(2048));
  await Deno.writeFile(seed, content);
  const proxy = await startProxy(
    GLOBALS +
      `RNDfile = ${seed}\nRNDbytes = 64\nRNDoverwrite = yes\nEGD = ${dir}/no-egd-socket\n` +
      `[s]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`,
  );
  assertMatch(proxy.log(), /FIPS mode disabled/);
  assertMatch(proxy.log(), /LOG7\[ui\]: No PRNG seeding was required/);
  const conn = await Deno.connectTls({ hostname: "localhost", port, caCerts: [pki.caPem] });
  await echoRoundTrip(conn, "random enough");
  conn.close();
  // Seeding was not needed, so the seed file was neither read into the PRNG nor rewritten.
  assertEquals(sha256Hex(await Deno.readFile(seed)), sha256Hex(content));
  assert(!/Snagged|Wrote .* new random bytes/.test(proxy.log()), "no seed file is used");
});
