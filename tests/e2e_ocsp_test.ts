/**
 * End-to-end: OCSP (`OCSP`, `OCSPaia`, `OCSPflag`, `OCSPnonce`) against a loopback responder
 * (tests/ocsp_responder.ts, which runs `openssl ocsp` per request). Peers' certificates are
 * checked in server mode (client certificates) and in client mode (the server's chain, every
 * certificate of it); a revoked certificate, an unknown one, a responder that is down, hangs or
 * fails, a bad signature or a missing nonce all refuse the connection, as in stunnel 5.68.
 * Stapling of the server's own certificate is an addition (stunnel 5.68 does not staple).
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_ocsp_test.ts
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { closeQuietly, decode, encode, readExactly, writeAll } from "./harness/bytes.ts";
import { echoServer, freePorts, tcpConnect, tlsConnect, unansweredPort } from "./harness/net.ts";
import { type CertKey, makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, type Scope } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { pollUntil } from "./harness/timing.ts";
import {
  answerWithoutNonce,
  type OcspResponder,
  requestsAbout,
  type ResponderOptions,
  serialOf,
  startOcspResponder,
} from "./ocsp_responder.ts";

type Outcome = "accepted" | "refused";

async function responder(
  scope: Scope,
  pki: Pki,
  opts: Partial<ResponderOptions> = {},
): Promise<OcspResponder> {
  const dir = opts.dir ?? await scope.tempDir("e2e-ocsp-");
  const r = await startOcspResponder({ pki, ...opts, dir });
  scope.defer(() => r.close());
  return r;
}

/** A server-mode service that requires and verifies client certificates, plus `extra` lines. */
function serverService(name: string, port: number, backend: number, pki: Pki, extra: string) {
  return `[${name}]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nCAfile = ${pki.ca}\n` +
    `verifyChain = yes\n${extra}\n`;
}

/** A client-mode service verifying the server's chain against the root CA, plus `extra`. */
function clientService(name: string, port: number, server: number, pki: Pki, extra: string) {
  return `[${name}]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
    `connect = 127.0.0.1:${server}\nCAfile = ${pki.ca}\nverifyChain = yes\n${extra}\n`;
}

/** A TLS client (with `cert`, if given) through a server-mode service to the echo backend. */
async function tlsOutcome(port: number, pki: Pki, cert?: CertKey): Promise<Outcome> {
  let conn: Deno.TlsConn | undefined;
  try {
    conn = await tlsConnect(
      port,
      pki.caPem,
      cert
        ? { cert: await Deno.readTextFile(cert.cert), key: await Deno.readTextFile(cert.key) }
        : {},
    );
    await writeAll(conn, encode("ping\n"));
    return decode(await readExactly(conn, 5, 15_000)) === "ping\n" ? "accepted" : "refused";
  } catch {
    return "refused";
  } finally {
    closeQuietly(conn);
  }
}

/** A plain client through a client-mode service to a TLS echo server. */
async function plainOutcome(port: number): Promise<Outcome> {
  const conn = await tcpConnect(port);
  try {
    await writeAll(conn, encode("ping\n"));
    return decode(await readExactly(conn, 5, 15_000)) === "ping\n" ? "accepted" : "refused";
  } catch {
    return "refused";
  } finally {
    closeQuietly(conn);
  }
}

/** A TLS echo server (Deno) on 127.0.0.1 presenting `cert` (PEM, chain allowed). */
async function tlsEchoServer(scope: Scope, cert: CertKey): Promise<number> {
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: await Deno.readTextFile(cert.cert),
    key: await Deno.readTextFile(cert.key),
  });
  const conns = new Set<Deno.Conn>();
  scope.defer(() => {
    closeQuietly(listener);
    for (const c of conns) closeQuietly(c);
  });
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const buf = new Uint8Array(16 * 1024);
        for (;;) {
          const n = await conn.read(buf);
          if (n === null) break;
          await writeAll(conn, buf.subarray(0, n));
        }
      })().catch(() => {}).finally(() => {
        conns.delete(conn);
        closeQuietly(conn);
      });
    }
  })().catch(() => {});
  return (listener.addr as Deno.NetAddr).port;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await run(["openssl", ...args], 30_000, { cwd });
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

/**
 * A certificate signed by `issuer` (default: the harness root CA): EC key, SAN localhost and
 * 127.0.0.1, server and client usage, and an AIA OCSP URL if given. `ca: true` makes a CA.
 */
async function issue(
  dir: string,
  pki: Pki,
  name: string,
  opts: { cn: string; aia?: string; issuer?: CertKey; ca?: boolean },
): Promise<CertKey> {
  const issuer = opts.issuer ?? { cert: pki.ca, key: pki.caKey };
  const ext = opts.ca
    ? ["basicConstraints = critical, CA:TRUE", "keyUsage = critical, keyCertSign, cRLSign"]
    : [
      "basicConstraints = CA:FALSE",
      "keyUsage = critical, digitalSignature, keyEncipherment",
      "extendedKeyUsage = serverAuth, clientAuth",
      "subjectAltName = DNS:localhost, IP:127.0.0.1",
    ];
  if (opts.aia) ext.push(`authorityInfoAccess = OCSP;URI:${opts.aia}`);
  ext.push("subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid");
  await Deno.writeTextFile(`${dir}/${name}.ext`, `[ext]\n${ext.join("\n")}\n`);
  const serial = "0x" +
    Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0"))
      .join("");
  await openssl(
    ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", `${name}.key`],
    dir,
  );
  await openssl(
    ["req", "-new", "-key", `${name}.key`, "-subj", `/CN=${opts.cn}`, "-out", `${name}.csr`],
    dir,
  );
  await openssl([
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    issuer.cert,
    "-CAkey",
    issuer.key,
    "-set_serial",
    serial,
    "-days",
    "30",
    "-sha256",
    "-extfile",
    `${name}.ext`,
    "-extensions",
    "ext",
    "-out",
    `${name}.pem`,
  ], dir);
  return { cert: `${dir}/${name}.pem`, key: `${dir}/${name}.key` };
}

// ---------------------------------------------------------------------------------------------
// Server mode: client certificates checked with the configured responder

e2e("server mode: OCSP = URL accepts a good client certificate, refuses a revoked one", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki);
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + serverService("ocsp", port, echo.port, pki, `OCSP = ${r.url}`),
  );

  assertEquals(await tlsOutcome(port, pki, pki.client), "accepted");
  await proxy.waitForLog(/OCSP: Certificate accepted/);
  assertMatch(
    proxy.log(),
    /OCSP: Connecting the configured responder "http:\/\/127\.0\.0\.1:\d+\/ocsp"/,
  );
  assertMatch(proxy.log(), /LOG6\[[^\]]*\]: OCSP: Status: good/);
  const asked = requestsAbout(r, await serialOf(pki.client.cert));
  assertEquals(asked.length, 1);
  // OCSPnonce defaults to no: the request carries no nonce.
  assertNotMatch(asked[0].text, /OCSP Nonce/);

  const connectionsBefore = echo.connections;
  assertEquals(await tlsOutcome(port, pki, pki.revoked), "refused");
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=revoked/);
  assertMatch(proxy.log(), /LOG3\[[^\]]*\]: OCSP: Certificate revoked: 1: keyCompromise/);
  assertMatch(proxy.log(), /OCSP: Revoked at: /);
  // Refused before the remote side was ever connected.
  assertEquals(echo.connections, connectionsBefore);
});

e2e("server mode: with redirect, a client refused by OCSP goes to the redirect target", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki);
  const echo = echoServer();
  const elsewhere = echoServer({ greeting: "elsewhere\n" });
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS +
      serverService(
        "redirect",
        port,
        echo.port,
        pki,
        `OCSP = ${r.url}\nredirect = 127.0.0.1:${elsewhere.port}`,
      ),
  );
  assertEquals(await tlsOutcome(port, pki, pki.client), "accepted");
  assertEquals(elsewhere.connections, 0);

  const conn = await tlsConnect(port, pki.caPem, {
    cert: await Deno.readTextFile(pki.revoked.cert),
    key: await Deno.readTextFile(pki.revoked.key),
  });
  assertEquals(decode(await readExactly(conn, 10)), "elsewhere\n");
  closeQuietly(conn);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=revoked/);
  await proxy.waitForLog(/Redirecting connection/);
  assertEquals(echo.connections, 1);
});

e2e("server mode: without verification OCSP is not consulted", {}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki);
  const echo = echoServer();
  const [port] = freePorts(1);
  // The client has to send its certificate, which nobody verifies.
  const conf = `[plain]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nCAfile = ${pki.ca}\n` +
    `requireCert = yes\nOCSP = ${r.url}\n`;
  await startProxy(GLOBALS + conf);
  assertEquals(await tlsOutcome(port, pki, pki.revoked), "accepted");
  assertEquals(requestsAbout(r, await serialOf(pki.revoked.cert)).length, 0);
});

e2e("server mode: no answer is a refusal (down, HTTP error, hanging, unknown certificate)", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-ocsp-");
  const failing = await responder(scope, pki, { mode: { kind: "http-error" } });
  const hanging = await responder(scope, pki, { mode: { kind: "hang" } });
  const good = await responder(scope, pki);
  const unlisted = await issue(dir, pki, "unlisted", { cn: "unlisted" });
  const [down, p1, p2, p3, p4] = freePorts(5);
  const echo = echoServer();
  const proxy = await startProxy(
    GLOBALS +
      serverService("down", p1, echo.port, pki, `OCSP = http://127.0.0.1:${down}/ocsp`) +
      serverService("failing", p2, echo.port, pki, `OCSP = ${failing.url}`) +
      serverService("hanging", p3, echo.port, pki, `OCSP = ${hanging.url}\nTIMEOUTbusy = 2`) +
      serverService("unknown", p4, echo.port, pki, `OCSP = ${good.url}`),
  );

  assertEquals(await tlsOutcome(p1, pki, pki.client), "refused");
  await proxy.waitForLog(/s_connect: connect 127\.0\.0\.1:\d+: Connection refused \(111\)/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=client/);

  assertEquals(await tlsOutcome(p2, pki, pki.client), "refused");
  await proxy.waitForLog(/OCSP: OCSP_sendreq_nbio: .*HTTP routines::received error/);

  const start = Date.now();
  assertEquals(await tlsOutcome(p3, pki, pki.client), "refused");
  await proxy.waitForLog(/OCSP: s_poll_wait: TIMEOUTbusy exceeded/);
  const waited = Date.now() - start;
  assert(waited >= 1500 && waited < 10_000, `TIMEOUTbusy = 2 took ${waited} ms`);

  assertEquals(await tlsOutcome(p4, pki, unlisted), "refused");
  await proxy.waitForLog(/OCSP: Status: unknown/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=unlisted/);
  assertEquals(echo.connections, 0);
});

e2e("server mode: a responder that does not answer the connect: TIMEOUTconnect", {}, async () => {
  const pki = await makePki();
  const silent = await unansweredPort();
  const [port] = freePorts(1);
  const echo = echoServer();
  const proxy = await startProxy(
    GLOBALS +
      serverService(
        "silent",
        port,
        echo.port,
        pki,
        `OCSP = http://127.0.0.1:${silent}/ocsp\nTIMEOUTconnect = 1`,
      ),
  );
  assertEquals(await tlsOutcome(port, pki, pki.client), "refused");
  await proxy.waitForLog(
    new RegExp(`s_connect: s_poll_wait 127\\.0\\.0\\.1:${silent}: TIMEOUTconnect exceeded`),
  );
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=client/);
  assertEquals(echo.connections, 0);
});

// ---------------------------------------------------------------------------------------------
// OCSPnonce and OCSPflag

e2e("OCSPnonce: sent and checked; a replayed answer without it is refused", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-ocsp-");
  const fresh = await responder(scope, pki);
  const replay = await responder(scope, pki, {
    mode: { kind: "fixed", der: await answerWithoutNonce(pki, dir, pki.client.cert) },
  });
  const echo = echoServer();
  const [p1, p2, p3] = freePorts(3);
  const proxy = await startProxy(
    GLOBALS +
      serverService("nonce", p1, echo.port, pki, `OCSP = ${fresh.url}\nOCSPnonce = yes`) +
      serverService("replay", p2, echo.port, pki, `OCSP = ${replay.url}\nOCSPnonce = yes`) +
      serverService("trusting", p3, echo.port, pki, `OCSP = ${replay.url}\nOCSPnonce = no`),
  );

  const serial = await serialOf(pki.client.cert);
  assertEquals(await tlsOutcome(p1, pki, pki.client), "accepted");
  const asked = requestsAbout(fresh, serial);
  assertEquals(asked.length, 1);
  assertMatch(asked[0].text, /OCSP Nonce/);

  assertEquals(await tlsOutcome(p2, pki, pki.client), "refused");
  await proxy.waitForLog(/LOG3\[[^\]]*\]: OCSP: Invalid or unsupported nonce/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=client/);

  assertEquals(await tlsOutcome(p3, pki, pki.client), "accepted");
  assertNotMatch(requestsAbout(replay, serial).at(-1)!.text, /OCSP Nonce/);
});

e2e("OCSPflag: an answer signed by an untrusted key is refused unless NOVERIFY", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki, { signer: { cert: pki.otherCa, key: pki.otherCaKey } });
  const echo = echoServer();
  const [p1, p2] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS +
      serverService("strict", p1, echo.port, pki, `OCSP = ${r.url}`) +
      serverService("lenient", p2, echo.port, pki, `OCSP = ${r.url}\nOCSPflag = NOVERIFY`),
  );
  assertEquals(await tlsOutcome(p1, pki, pki.client), "refused");
  await proxy.waitForLog(/OCSP: OCSP_basic_verify: .*OCSP routines::/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=client/);
  assertEquals(await tlsOutcome(p2, pki, pki.client), "accepted");
  await proxy.waitForLog(/OCSP: Certificate accepted/);
});

// ---------------------------------------------------------------------------------------------
// OCSPaia

e2e("OCSPaia: the responder named in the client certificate decides", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-ocsp-");
  const [rport, port] = freePorts(2);
  const aia = `http://127.0.0.1:${rport}/ocsp`;
  const good = await issue(dir, pki, "aia-good", { cn: "aia-good", aia });
  const bad = await issue(dir, pki, "aia-revoked", { cn: "aia-revoked", aia });
  const r = await responder(scope, pki, { port: rport, valid: [good.cert], revoked: [bad.cert] });
  const echo = echoServer();
  const proxy = await startProxy(
    GLOBALS + serverService("aia", port, echo.port, pki, "OCSPaia = yes"),
  );

  assertEquals(await tlsOutcome(port, pki, good), "accepted");
  await proxy.waitForLog(/OCSP: Connecting the AIA responder "http:\/\/127\.0\.0\.1:\d+\/ocsp"/);
  assertEquals(requestsAbout(r, await serialOf(good.cert)).length, 1);

  assertEquals(await tlsOutcome(port, pki, bad), "refused");
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=aia-revoked/);
  assertEquals(requestsAbout(r, await serialOf(bad.cert)).length, 1);

  // A certificate without an AIA responder has nothing to ask: it passes.
  assertEquals(await tlsOutcome(port, pki, pki.client), "accepted");
  assertEquals(r.requests.length, 2);
});

// ---------------------------------------------------------------------------------------------
// Client mode: the server's chain

e2e("client mode: OCSP = URL refuses a server with a revoked certificate", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki);
  const goodServer = await tlsEchoServer(scope, pki.serverEc);
  const revokedServer = await tlsEchoServer(scope, pki.revoked);
  const [p1, p2] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS +
      clientService("good", p1, goodServer, pki, `OCSP = ${r.url}`) +
      clientService("revoked", p2, revokedServer, pki, `OCSP = ${r.url}`),
  );
  assertEquals(await plainOutcome(p1), "accepted");
  await proxy.waitForLog(/OCSP: Certificate accepted/);
  assertEquals(await plainOutcome(p2), "refused");
  await proxy.waitForLog(/OCSP: Certificate revoked: 1: keyCompromise/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=revoked/);
});

e2e("client mode: OCSPaia checks every certificate of the chain (a revoked intermediate)", {
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-ocsp-");
  const [rootPort, interPort, port, port2] = freePorts(4);
  const intermediate = await issue(dir, pki, "inter", {
    cn: "Test-Intermediate-CA",
    ca: true,
    aia: `http://127.0.0.1:${rootPort}/ocsp`,
  });
  const leaf = await issue(dir, pki, "leaf", {
    cn: "localhost",
    issuer: intermediate,
    aia: `http://127.0.0.1:${interPort}/ocsp`,
  });
  // The server sends its chain: leaf, then the intermediate CA.
  const chainPem = `${dir}/leaf-chain.pem`;
  await Deno.writeTextFile(
    chainPem,
    (await Deno.readTextFile(leaf.cert)) + (await Deno.readTextFile(intermediate.cert)),
  );
  const rootResponder = await responder(scope, pki, {
    port: rootPort,
    valid: [intermediate.cert],
    revoked: [],
  });
  const interResponder = await responder(scope, pki, {
    port: interPort,
    ca: intermediate,
    valid: [leaf.cert],
    revoked: [],
  });
  const server = await tlsEchoServer(scope, { cert: chainPem, key: leaf.key });
  // Two services: a client-mode service resumes its last session, which is not checked again.
  const proxy = await startProxy(
    GLOBALS + clientService("chain", port, server, pki, "OCSPaia = yes") +
      clientService("again", port2, server, pki, "OCSPaia = yes"),
  );

  assertEquals(await plainOutcome(port), "accepted");
  assertEquals(rootResponder.requests.length, 1);
  assertEquals(interResponder.requests.length, 1);
  await proxy.waitForLog(/OCSP: Certificate accepted[\s\S]*OCSP: Certificate accepted/);

  await rootResponder.setIndex([], [intermediate.cert]);
  assertEquals(await plainOutcome(port2), "refused");
  await proxy.waitForLog(/Rejected by OCSP at depth=1: CN=Test-Intermediate-CA/);
  // Checked from the top down: the leaf was never asked about.
  assertEquals(interResponder.requests.length, 1);
});

// ---------------------------------------------------------------------------------------------
// Our additions

e2e("a revoked client cannot resume the session of its refused handshake", {
  extra: "stunnel refuses inside the handshake, so it never issues a session to resume",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-ocsp-");
  const r = await responder(scope, pki);
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + serverService("resume", port, echo.port, pki, `OCSP = ${r.url}`),
  );
  const sess = `${dir}/session.pem`;
  const client = (more: string[]) =>
    run(
      [
        "openssl",
        "s_client",
        "-connect",
        `127.0.0.1:${port}`,
        "-CAfile",
        pki.ca,
        "-cert",
        pki.revoked.cert,
        "-key",
        pki.revoked.key,
        "-ign_eof",
        ...more,
      ],
      15_000,
      { stdin: false },
    );
  const first = await client(["-sess_out", sess]);
  assertNotMatch(first.stdout, /ping/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=revoked/);
  const second = await client(["-sess_in", sess]);
  assertMatch(second.stdout, /Reused, TLSv1\.3/);
  await proxy.waitForLog(/OCSP: Checking the certificate of the resumed session/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=revoked[\s\S]*Rejected by OCSP/);
  assertEquals(echo.connections, 0);
});

e2e("client mode: a resumed session is checked again", {
  extra: "stunnel does not check a resumed session (its verify callback is not called)",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki);
  const server = await tlsEchoServer(scope, pki.serverEc);
  const [port] = freePorts(1);
  // One thread: the second connection offers the session the first one got (per thread).
  const threads = Deno.env.get("STUNNEL_THREADS");
  Deno.env.set("STUNNEL_THREADS", "1");
  let proxy;
  try {
    proxy = await startProxy(
      GLOBALS + clientService("resumed", port, server, pki, `OCSP = ${r.url}`),
    );
  } finally {
    if (threads === undefined) Deno.env.delete("STUNNEL_THREADS");
    else Deno.env.set("STUNNEL_THREADS", threads);
  }
  assertEquals(await plainOutcome(port), "accepted");
  await r.setIndex([], [pki.serverEc.cert]);
  assertEquals(await plainOutcome(port), "refused");
  await proxy.waitForLog(/OCSP: Checking the certificate of the resumed session/);
  await proxy.waitForLog(/Rejected by OCSP at depth=0: CN=localhost/);
});

e2e("stapling: openssl s_client -status gets the server certificate's OCSP response", {
  extra: "stunnel 5.68 does not staple (later versions do)",
  timeoutMs: 40_000,
}, async (scope) => {
  const pki = await makePki();
  const r = await responder(scope, pki);
  const echo = echoServer();
  const [port] = freePorts(1);
  await startProxy(
    GLOBALS + serverService("staple", port, echo.port, pki, `OCSP = ${r.url}`),
  );
  const status = () =>
    run(
      [
        "openssl",
        "s_client",
        "-connect",
        `127.0.0.1:${port}`,
        "-CAfile",
        pki.ca,
        "-cert",
        pki.client.cert,
        "-key",
        pki.client.key,
        "-status",
      ],
      15_000,
      { stdin: false },
    );
  // Every thread fetches its staple in the background right after start-up.
  const out = await pollUntil(
    async () => {
      const res = await status();
      return /OCSP Response Status: successful/.test(res.stdout) ? res.stdout : undefined;
    },
    10_000,
    "a stapled OCSP response",
  );
  assertMatch(out, /Cert Status: good/);
  assertMatch(out, /Response Type: Basic OCSP Response/);
});
