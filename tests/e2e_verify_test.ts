/**
 * End-to-end: peer authentication. verifyChain, verifyPeer (pinning), the legacy `verify`
 * levels, requireCert, CRLfile and CRLpath, checkHost/checkIP/checkEmail, and `redirect`, in
 * server mode (client certificates, openssl s_client as the client) and client mode (server
 * certificates, openssl s_server as the server), with the reasons in the log.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_verify_test.ts
 */

import { assertEquals, assertMatch } from "./harness/assert.ts";
import { encode, waitClosed, writeAll } from "./harness/bytes.ts";
import { type Backend, echoServer, freePorts, tcpConnect, waitForPort } from "./harness/net.ts";
import { sClient, sServer } from "./harness/openssl.ts";
import { type CertKey, makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, type Scope, type Spawned } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { TimeoutError, withTimeout } from "./harness/timing.ts";
import { parseConfigText, systemEnv } from "../lib/config/parser.ts";

// ---------------------------------------------------------------------------------------------
// Helpers

/** Two plain backends that greet with their name, so a test sees which one a client reached. */
function backends(): { a: Backend; b: Backend } {
  return { a: echoServer({ greeting: "backend-A\n" }), b: echoServer({ greeting: "backend-B\n" }) };
}

/** A server-mode service with the ECDSA server certificate. */
function serverService(pki: Pki, name: string, accept: number, connect: number, extra: string) {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n${extra}\n`;
}

/** A client-mode service: plain on `accept`, TLS to `connect`. */
function clientService(name: string, accept: number, connect: number, extra: string): string {
  return `[${name}]\nclient = yes\naccept = 127.0.0.1:${accept}\n` +
    `connect = 127.0.0.1:${connect}\n${extra}\n`;
}

/** The log from `from` on matches `re` (waits for it). */
async function logAfter(proxy: Proxy, from: number, re: RegExp): Promise<void> {
  const out = proxy.process.output;
  try {
    await out.waitFor(() => re.test(out.text().slice(from)), 10_000, `log to match ${re}`);
  } catch (e) {
    throw new Error(
      `${(e as Error).message}\nlog since the connection:\n${out.text().slice(from)}`,
    );
  }
}

type Outcome = "backend-A" | "backend-B" | "refused";

/**
 * openssl s_client (with `who`'s certificate, or none) to a server-mode port: which backend
 * greeted it, or "refused" when the proxy ended the connection first. When `reason` is given,
 * the proxy's log for this connection must match it.
 */
async function connectAs(
  proxy: Proxy,
  port: number,
  who: CertKey | undefined,
  reason?: RegExp,
  args: string[] = [],
): Promise<Outcome> {
  const from = proxy.log().length;
  const client = sClient(port, { cert: who?.cert, key: who?.key, args });
  let outcome: Outcome;
  try {
    const m = await client.waitForOutput(/backend-[AB]/, 10_000);
    outcome = m[0] as Outcome;
  } catch (e) {
    if (e instanceof TimeoutError) throw e;
    outcome = "refused"; // s_client exited without a greeting
  } finally {
    await client.stop(2000);
  }
  if (reason) await logAfter(proxy, from, reason);
  return outcome;
}

/**
 * A plain connection to a client-mode port whose TLS server is `server` (openssl s_server -quiet,
 * which prints what it receives): "accepted" when the data arrived there, "refused" when the
 * proxy closed the connection instead.
 */
async function relayTo(
  proxy: Proxy,
  port: number,
  server: Spawned,
  reason?: RegExp,
): Promise<"accepted" | "refused"> {
  const from = proxy.log().length;
  const token = `token-${crypto.randomUUID()}\n`;
  const conn = await tcpConnect(port);
  try {
    await writeAll(conn, encode(token));
    const arrived = server.stdout.waitFor(
      () => server.stdout.text().includes(token),
      10_000,
      "data at s_server",
    ).then(() => "accepted" as const);
    const closed = waitClosed(conn, 10_000).then(() => "refused" as const);
    const outcome = await Promise.race([arrived, closed]);
    arrived.catch(() => {});
    closed.catch(() => {});
    if (reason) await logAfter(proxy, from, reason);
    return outcome;
  } finally {
    conn.close();
  }
}

/** s_server with `who`'s certificate on a free port, listening. */
async function tlsServer(who: CertKey): Promise<{ port: number; server: Spawned }> {
  const [port] = freePorts(1);
  const server = sServer(port, { cert: who.cert, key: who.key });
  await waitForPort(port);
  return { port, server };
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const r = await run(["openssl", ...args], 20_000, { cwd });
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")}: ${r.stderr}`);
}

/** A client certificate with an email address in its subjectAltName, from the test CA. */
async function emailCertificate(scope: Scope, pki: Pki, email: string): Promise<CertKey> {
  const dir = await scope.tempDir("e2e-verify-");
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    "[mail]\nbasicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n" +
      `extendedKeyUsage = clientAuth\nsubjectAltName = email:${email}\n`,
  );
  await openssl(
    ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "mail.key"],
    dir,
  );
  await openssl(
    ["req", "-new", "-key", "mail.key", "-subj", "/CN=mailer", "-out", "mail.csr"],
    dir,
  );
  const serial = `0x${
    crypto.getRandomValues(new Uint8Array(8)).reduce((s, b) =>
      s + b.toString(16).padStart(2, "0"), "")
  }`;
  await openssl([
    "x509",
    "-req",
    "-in",
    "mail.csr",
    "-CA",
    pki.ca,
    "-CAkey",
    pki.caKey,
    "-set_serial",
    serial,
    "-days",
    "30",
    "-sha256",
    "-extfile",
    "ext.cnf",
    "-extensions",
    "mail",
    "-out",
    "mail.pem",
  ], dir);
  return { cert: `${dir}/mail.pem`, key: `${dir}/mail.key` };
}

/** A file holding the given PEM files one after the other. */
async function pemBundle(scope: Scope, files: string[]): Promise<string> {
  const dir = await scope.tempDir("e2e-verify-");
  const texts = await Promise.all(files.map((f) => Deno.readTextFile(f)));
  await Deno.writeTextFile(`${dir}/bundle.pem`, texts.join(""));
  return `${dir}/bundle.pem`;
}

const VERIFY_FAILED = /SSL_accept: .*certificate verify failed/;
const NO_CERTIFICATE = /SSL_accept: .*peer did not return a certificate/;

// ---------------------------------------------------------------------------------------------
// The switches behind verify, verifyChain, verifyPeer and requireCert (parser only)

Deno.test("verify options set stunnel's switches in file order", () => {
  const env = {
    readFile: () => "",
    readDir: () => [],
    isFile: () => true,
    unreadable: () => undefined,
    userExists: () => true,
    groupExists: () => true,
    tcpService: () => undefined,
    resolveHost: systemEnv().resolveHost,
    libwrapMissing: systemEnv().libwrapMissing,
    readPskSecrets: systemEnv().readPskSecrets,
  };
  const switches = (lines: string) => {
    const text = `[s]\naccept = 4433\nconnect = 8080\ncert = /c.pem\nCAfile = /ca.pem\n${lines}\n`;
    const s = parseConfigText(text, "/t.conf", env).services[0];
    return [s.requestCert, s.requireCert, s.verifyChain, s.verifyPeer].map(Number).join("");
  };
  // request, require, chain, peer
  assertEquals(switches(""), "0000");
  assertEquals(switches("verify = 0"), "1000");
  assertEquals(switches("verify = 1"), "1010");
  assertEquals(switches("verify = 2"), "1110");
  assertEquals(switches("verify = 3"), "1111");
  assertEquals(switches("verify = 4"), "1101");
  assertEquals(switches("verifyChain = yes"), "1110");
  assertEquals(switches("verifyPeer = yes"), "1101");
  assertEquals(switches("requireCert = yes"), "1100");
  assertEquals(switches("verifyChain = yes\nrequireCert = no"), "1010");
  assertEquals(switches("requireCert = no\nverifyChain = yes"), "1110");
  assertEquals(switches("verify = 2\nverifyChain = no"), "1100");
  assertEquals(switches("verify = 4\nverifyChain = yes"), "1111");
  assertEquals(switches("verifyChain = yes\nverify = 0"), "1000");
});

// ---------------------------------------------------------------------------------------------
// Server mode: client certificates

e2e("server verifyChain: the CA's client in; other CA, expired, none refused", {}, async () => {
  const pki = await makePki();
  const { a } = backends();
  const [port] = freePorts(1);
  const proxy = await startProxy(
    GLOBALS + serverService(pki, "chain", port, a.port, `CAfile = ${pki.ca}\nverifyChain = yes`),
  );
  await proxy.waitForLog(/Configured trusted client CA: CN=Test-Root-CA/);
  assertEquals(
    await connectAs(
      proxy,
      port,
      pki.client,
      /Peer certificate required[^]*Verification started at depth=1: CN=Test-Root-CA[^]*Certificate accepted at depth=0: CN=client/,
    ),
    "backend-A",
  );
  assertEquals(
    await connectAs(
      proxy,
      port,
      pki.otherServer,
      /CERT: Pre-verification error: unable to get local issuer certificate\n.*Rejected by CERT at depth=0: CN=localhost\n[^]*certificate verify failed/,
    ),
    "refused",
  );
  assertEquals(
    await connectAs(
      proxy,
      port,
      pki.expired,
      /CERT: Pre-verification error: certificate has expired\n.*Rejected by CERT at depth=0: CN=localhost/,
    ),
    "refused",
  );
  assertEquals(await connectAs(proxy, port, undefined, NO_CERTIFICATE), "refused");
  assertEquals(a.connections, 1);
});

e2e(
  "server requireCert = no after verifyChain: no certificate is fine, a bad one is not",
  {},
  async () => {
    const pki = await makePki();
    const { a } = backends();
    const [port] = freePorts(1);
    const proxy = await startProxy(
      GLOBALS +
        serverService(
          pki,
          "optional",
          port,
          a.port,
          `CAfile = ${pki.ca}\nverifyChain = yes\nrequireCert = no`,
        ),
    );
    assertEquals(
      await connectAs(proxy, port, undefined, /Peer certificate not required/),
      "backend-A",
    );
    assertEquals(await connectAs(proxy, port, pki.client), "backend-A");
    assertEquals(await connectAs(proxy, port, pki.otherServer, VERIFY_FAILED), "refused");
  },
);

e2e(
  "server CRLfile and CRLpath: the revoked certificate refused, the good one in",
  {},
  async (scope) => {
    const pki = await makePki();
    const { a } = backends();
    const dir = await scope.tempDir("e2e-crl-");
    await Deno.copyFile(pki.crl, `${dir}/root.crl.pem`);
    await openssl(["rehash", dir], dir);
    const [filePort, pathPort] = freePorts(2);
    const common = `CAfile = ${pki.ca}\nverifyChain = yes\n`;
    const proxy = await startProxy(
      GLOBALS +
        serverService(pki, "crlfile", filePort, a.port, `${common}CRLfile = ${pki.crl}`) +
        serverService(pki, "crlpath", pathPort, a.port, `${common}CRLpath = ${dir}`),
    );
    for (const port of [filePort, pathPort]) {
      assertEquals(await connectAs(proxy, port, pki.client), "backend-A");
      assertEquals(
        await connectAs(
          proxy,
          port,
          pki.revoked,
          /CERT: Pre-verification error: certificate revoked\n.*Rejected by CERT at depth=0: CN=revoked\n[^]*certificate verify failed/,
        ),
        "refused",
      );
    }
    // Without the CRL the same certificate is fine.
    const [plainPort] = freePorts(1);
    const plain = await startProxy(
      GLOBALS + serverService(pki, "nocrl", plainPort, a.port, common),
    );
    assertEquals(await connectAs(plain, plainPort, pki.revoked), "backend-A");
  },
);

e2e("server verifyPeer: only a certificate installed in CAfile gets in", {}, async (scope) => {
  const pki = await makePki();
  const { a } = backends();
  const [pinned, caOnly] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS +
      // The client's own certificate, no CA: the chain is not needed.
      serverService(
        pki,
        "pinned",
        pinned,
        a.port,
        `CAfile = ${pki.client.cert}\nverifyPeer = yes`,
      ) +
      // The CA only: a good chain, but the certificate itself is not installed.
      serverService(pki, "ca-only", caOnly, a.port, `CAfile = ${pki.ca}\nverifyPeer = yes`),
  );
  assertEquals(
    await connectAs(
      proxy,
      pinned,
      pki.client,
      /CERT: Pre-verification error ignored: unable to get local issuer certificate[^]*CERT: Locally installed certificate matched\n.*Certificate accepted at depth=0: CN=client/,
    ),
    "backend-A",
  );
  // Signed by the same CA, but not in CAfile.
  assertEquals(
    await connectAs(
      proxy,
      pinned,
      pki.revoked,
      /CERT: Certificate not found in local repository\n.*Rejected by CERT at depth=0: CN=revoked/,
    ),
    "refused",
  );
  assertEquals(
    await connectAs(
      proxy,
      caOnly,
      pki.client,
      /CERT: Certificate not found in local repository\n.*Rejected by CERT at depth=0: CN=client/,
    ),
    "refused",
  );
  assertEquals(await connectAs(proxy, caOnly, undefined, NO_CERTIFICATE), "refused");
  // CA and client certificate: chain and pinning both pass (what verify = 3 means).
  const both = await pemBundle(scope, [pki.ca, pki.client.cert]);
  const [bothPort] = freePorts(1);
  const proxy2 = await startProxy(
    GLOBALS + serverService(pki, "both", bothPort, a.port, `CAfile = ${both}\nverifyPeer = yes`),
  );
  assertEquals(await connectAs(proxy2, bothPort, pki.client), "backend-A");
});

e2e("server verify levels 0..4", {}, async (scope) => {
  const pki = await makePki();
  const { a } = backends();
  const bundle = await pemBundle(scope, [pki.ca, pki.client.cert]);
  const ports = freePorts(5);
  const levels = [
    `verify = 0`,
    `verify = 1\nCAfile = ${pki.ca}`,
    `verify = 2\nCAfile = ${pki.ca}`,
    `verify = 3\nCAfile = ${bundle}`,
    `verify = 4\nCAfile = ${pki.client.cert}`,
  ];
  const proxy = await startProxy(
    GLOBALS + levels.map((l, i) => serverService(pki, `level${i}`, ports[i], a.port, l)).join(""),
  );
  const expected: [number, CertKey | undefined, Outcome, RegExp?][] = [
    // 0: a certificate is asked for, and anything goes.
    [0, pki.otherServer, "backend-A", /Certificate verification disabled/],
    [0, undefined, "backend-A", /Peer certificate not required/],
    // 1: a certificate is checked when there is one.
    [1, undefined, "backend-A"],
    [1, pki.client, "backend-A"],
    [1, pki.otherServer, "refused", VERIFY_FAILED],
    // 2: a good certificate is required.
    [2, undefined, "refused", NO_CERTIFICATE],
    [2, pki.client, "backend-A"],
    [2, pki.expired, "refused", /certificate has expired/],
    // 3: chain and locally installed.
    [3, pki.client, "backend-A", /CERT: Locally installed certificate matched/],
    [3, pki.revoked, "refused", /CERT: Certificate not found in local repository/],
    // 4: locally installed only, no chain.
    [4, pki.client, "backend-A", /CERT: Pre-verification error ignored/],
    [4, pki.otherServer, "refused", /CERT: Certificate not found in local repository/],
    [4, undefined, "refused", NO_CERTIFICATE],
  ];
  for (const [level, who, outcome, reason] of expected) {
    assertEquals(
      await connectAs(proxy, ports[level], who, reason),
      outcome,
      `verify = ${level} with ${who?.cert ?? "no certificate"}`,
    );
  }
});

e2e("server checkHost/checkEmail/checkIP on client certificates", {}, async (scope) => {
  const pki = await makePki();
  const { a } = backends();
  const mail = await emailCertificate(scope, pki, "alice@example.com");
  const [email, host, wrong] = freePorts(3);
  const common = `CAfile = ${pki.ca}\nverifyChain = yes\n`;
  const proxy = await startProxy(
    GLOBALS +
      serverService(pki, "email", email, a.port, `${common}checkEmail = alice@example.com`) +
      // Any one of several checks accepts.
      serverService(pki, "host", host, a.port, `${common}checkHost = nobody\ncheckHost = client`) +
      serverService(
        pki,
        "wrong",
        wrong,
        a.port,
        `${common}checkEmail = bob@example.com\ncheckIP = 192.0.2.1`,
      ),
  );
  assertEquals(
    await connectAs(proxy, email, mail, /CERT: Email address "alice@example\.com" matched/),
    "backend-A",
  );
  assertEquals(
    await connectAs(
      proxy,
      email,
      pki.client,
      /CERT: Subject checks failed\n.*Rejected by CERT at depth=0: CN=client/,
    ),
    "refused",
  );
  assertEquals(
    await connectAs(proxy, host, pki.client, /CERT: Host name "client" matched with "client"/),
    "backend-A",
  );
  assertEquals(await connectAs(proxy, wrong, mail, /CERT: Subject checks failed/), "refused");
});

e2e(
  "server redirect: unauthenticated clients reach the other backend, also when resumed",
  {},
  async (scope) => {
    const pki = await makePki();
    const { a, b } = backends();
    const [port] = freePorts(1);
    const proxy = await startProxy(
      GLOBALS +
        serverService(
          pki,
          "redirect",
          port,
          a.port,
          `CAfile = ${pki.ca}\nverifyChain = yes\nredirect = 127.0.0.1:${b.port}`,
        ),
    );
    assertEquals(await connectAs(proxy, port, pki.client), "backend-A");
    assertEquals(
      await connectAs(
        proxy,
        port,
        pki.otherServer,
        /Rejected by CERT at depth=0: CN=localhost[^]*Redirecting connection\n.*s_connect: connecting 127\.0\.0\.1:\d+/,
      ),
      "backend-B",
    );
    assertEquals(
      await connectAs(
        proxy,
        port,
        pki.expired,
        /certificate has expired[^]*Redirecting connection/,
      ),
      "backend-B",
    );
    // Without a certificate the handshake succeeds too (requireCert yields to redirect).
    assertEquals(await connectAs(proxy, port, undefined, /Redirecting connection/), "backend-B");

    // A resumed session keeps its verdict: no verification happens the second time.
    const dir = await scope.tempDir("e2e-sess-");
    for (const [who, backend] of [[pki.expired, "backend-B"], [pki.client, "backend-A"]] as const) {
      const session = `${dir}/${backend}.pem`;
      assertEquals(await connectAs(proxy, port, who, undefined, ["-sess_out", session]), backend);
      assertEquals(
        await connectAs(
          proxy,
          port,
          who,
          /TLS accepted: previous session reused/,
          ["-sess_in", session],
        ),
        backend,
      );
    }
    assertEquals(a.connections, 3);
    assertEquals(b.connections, 5);
  },
);

e2e(
  "server redirect with verifyPeer: errors of a pinned certificate's chain do not count",
  {},
  async (scope) => {
    const pki = await makePki();
    const { a, b } = backends();
    const [port] = freePorts(1);
    const proxy = await startProxy(
      GLOBALS +
        serverService(
          pki,
          "pinned",
          port,
          a.port,
          `CAfile = ${pki.client.cert}\nverifyPeer = yes\nredirect = 127.0.0.1:${b.port}`,
        ),
    );
    // No CA: "unable to get local issuer certificate" is ignored, the client is authenticated.
    assertEquals(
      await connectAs(proxy, port, pki.client, /CERT: Pre-verification error ignored/),
      "backend-A",
    );
    assertEquals(
      await connectAs(proxy, port, pki.revoked, /CERT: Certificate not found in local repository/),
      "backend-B",
    );
    // A CRL whose issuer is not in CAfile cannot be checked: that failure counts, even though
    // the chain errors that come after it do not.
    const pins = await pemBundle(scope, [pki.client.cert, pki.revoked.cert]);
    const [crlPort] = freePorts(1);
    const crlProxy = await startProxy(
      GLOBALS +
        serverService(
          pki,
          "pinned-crl",
          crlPort,
          a.port,
          `CAfile = ${pins}\nverifyPeer = yes\nCRLfile = ${pki.crl}\nredirect = 127.0.0.1:${b.port}`,
        ),
    );
    for (const who of [pki.client, pki.revoked]) {
      assertEquals(
        await connectAs(
          crlProxy,
          crlPort,
          who,
          /CERT: Pre-verification error: CRL signature failure[^]*Redirecting connection/,
        ),
        "backend-B",
      );
    }
    const session = `${await scope.tempDir("e2e-sess-")}/pinned.pem`;
    assertEquals(
      await connectAs(proxy, port, pki.client, undefined, ["-sess_out", session]),
      "backend-A",
    );
    assertEquals(
      await connectAs(proxy, port, pki.client, /previous session reused/, ["-sess_in", session]),
      "backend-A",
    );
  },
);

// ---------------------------------------------------------------------------------------------
// Client mode: server certificates

e2e("client verifyChain + checkHost/checkIP: the right server only", {}, async () => {
  const pki = await makePki();
  const good = await tlsServer(pki.serverEc);
  const other = await tlsServer(pki.otherServer);
  const expired = await tlsServer(pki.expired);
  const revoked = await tlsServer(pki.revoked);
  const ports = freePorts(7);
  const chain = `CAfile = ${pki.ca}\nverifyChain = yes`;
  const proxy = await startProxy(
    GLOBALS +
      clientService("good", ports[0], good.port, `${chain}\ncheckHost = localhost`) +
      clientService("other", ports[1], other.port, `${chain}\ncheckHost = localhost`) +
      clientService("expired", ports[2], expired.port, `${chain}\ncheckHost = localhost`) +
      clientService("revoked", ports[3], revoked.port, `${chain}\nCRLfile = ${pki.crl}`) +
      clientService("ip", ports[4], good.port, `${chain}\ncheckIP = 127.0.0.1`) +
      clientService("wrong-host", ports[5], good.port, `${chain}\ncheckHost = example.com`) +
      clientService("no-crl", ports[6], revoked.port, chain),
  );
  await proxy.waitForLog(/Configured trusted server CA: CN=Test-Root-CA/);
  await proxy.waitForLog(/Service \[no-crl\] uses "verifyChain" without subject checks/);
  assertEquals(
    await relayTo(
      proxy,
      ports[0],
      good.server,
      /Peer certificate required[^]*CERT: Host name "localhost" matched with "localhost"\n.*Certificate accepted at depth=0: CN=localhost/,
    ),
    "accepted",
  );
  assertEquals(
    await relayTo(
      proxy,
      ports[1],
      other.server,
      /CERT: Pre-verification error: unable to get local issuer certificate[^]*SSL_connect: .*certificate verify failed/,
    ),
    "refused",
  );
  assertEquals(
    await relayTo(proxy, ports[2], expired.server, /certificate has expired/),
    "refused",
  );
  assertEquals(
    await relayTo(proxy, ports[3], revoked.server, /certificate revoked\n.*Rejected by CERT/),
    "refused",
  );
  assertEquals(
    await relayTo(proxy, ports[4], good.server, /CERT: IP address "127\.0\.0\.1" matched/),
    "accepted",
  );
  assertEquals(
    await relayTo(proxy, ports[5], good.server, /CERT: Subject checks failed/),
    "refused",
  );
  assertEquals(await relayTo(proxy, ports[6], revoked.server), "accepted");
});

e2e("client verifyPeer: the pinned server certificate only", {}, async () => {
  const pki = await makePki();
  const ec = await tlsServer(pki.serverEc);
  // Same CA, same subject (CN=localhost), another key.
  const rsa = await tlsServer(pki.serverRsa);
  const [toEc, toRsa] = freePorts(2);
  const pin = `CAfile = ${pki.serverEc.cert}\nverifyPeer = yes`;
  const proxy = await startProxy(
    GLOBALS + clientService("ec", toEc, ec.port, pin) + clientService("rsa", toRsa, rsa.port, pin),
  );
  assertEquals(
    await relayTo(proxy, toEc, ec.server, /CERT: Locally installed certificate matched/),
    "accepted",
  );
  assertEquals(
    await relayTo(
      proxy,
      toRsa,
      rsa.server,
      /CERT: Certificate not found in local repository\n.*Rejected by CERT at depth=0: CN=localhost/,
    ),
    "refused",
  );
});

// ---------------------------------------------------------------------------------------------
// Configuration errors

e2e("configuration errors of the verification options", {}, async () => {
  const pki = await makePki();
  const [port, backend] = freePorts(2);
  const cases: [string, string][] = [
    ["verifyChain = yes", 'Either "CAengine", "CAfile" or "CApath" has to be configured'],
    ["verify = 3", 'Either "CAengine", "CAfile" or "CApath" has to be configured'],
    ["checkHost = localhost", 'Either "verifyChain" or "verifyPeer" has to be enabled'],
    [
      `requireCert = yes\nredirect = 127.0.0.1:${backend}`,
      'Either "verifyChain" or "verifyPeer" has to be enabled for "redirect" to work',
    ],
    [
      `client = yes\nCAfile = ${pki.ca}\nverifyChain = yes\nredirect = 127.0.0.1:${backend}`,
      '"redirect" is unsupported in client sections',
    ],
  ];
  for (const [lines, message] of cases) {
    const proxy = await startProxy(GLOBALS + serverService(pki, "bad", port, backend, lines), {
      allowFailure: true,
    });
    const status = await withTimeout(proxy.exited, 10_000, "proxy to exit");
    assertEquals(proxy.ready, false, lines);
    assertEquals(status.success, false, lines);
    assertMatch(proxy.log(), new RegExp(`Service \\[bad\\]: ${escape(message)}`), lines);
  }
  // A CRL file that is no CRL: the TLS context fails.
  const proxy = await startProxy(
    GLOBALS +
      serverService(
        pki,
        "bad",
        port,
        backend,
        `CAfile = ${pki.ca}\nverifyChain = yes\nCRLfile = ${pki.caKey}`,
      ),
    { allowFailure: true },
  );
  await withTimeout(proxy.exited, 10_000, "proxy to exit");
  assertMatch(
    proxy.log(),
    new RegExp(
      `Failed to load ${escape(pki.caKey)} revocation lookup file\n(.*error queue: .*\n)*` +
        `.*X509_load_crl_file: .*\n.*Service \\[bad\\]: Failed to initialize TLS context`,
    ),
  );
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
