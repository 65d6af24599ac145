/**
 * End-to-end: SNI virtual services in server mode. A primary service accepts; sections with
 * `sni = PRIMARY:PATTERN` (and no `accept`) are chosen by the client's server name: their
 * certificate, their peer verification, their `connect`. Unknown names and no name stay with the
 * primary service. Also the configuration errors of `sni`, and a reload that changes the
 * secondary services.
 *
 * Every backend greets with `BACKEND=<name>`, so each probe sees which service it reached;
 * openssl s_client shows which certificate it was given.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_sni_test.ts
 */

import {
  assert,
  assertEquals,
  assertMatch,
  assertNotEquals,
  escapeRegExp,
} from "./harness/assert.ts";
import { closeQuietly, decode } from "./harness/bytes.ts";
import { PROXY_IS_STUNNEL } from "./harness/command.ts";
import { type Backend, echoServer, freePorts, tcpConnect } from "./harness/net.ts";
import { type CertKey, makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, spawn } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { withTimeout } from "./harness/timing.ts";

// ---------------------------------------------------------------------------------------------
// Certificates for the virtual names, issued by the harness CA

interface SniPki extends Pki {
  a: CertKey;
  starExample: CertKey;
  wild: CertKey;
  secure: CertKey;
}

let sniPki: Promise<SniPki> | undefined;

/** A P-256 key and a certificate CN=`cn`, SAN DNS:`cn`, signed by the harness CA. */
async function issue(pki: Pki, file: string, cn: string): Promise<CertKey> {
  const base = `${pki.dir}/sni-${file}`;
  const ext = `${base}.ext`;
  await Deno.writeTextFile(
    ext,
    "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n" +
      `extendedKeyUsage = serverAuth\nsubjectAltName = DNS:${cn}\n`,
  );
  // File names come from temporary directories: no spaces, so a command line splits on them.
  const openssl = async (line: string) => {
    const r = await run(["openssl", ...line.split(" ")], 30_000, { unscoped: true });
    if (r.code !== 0) throw new Error(`openssl ${line}: ${r.stderr}`);
  };
  await openssl(`genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ${base}.key`);
  await openssl(`req -new -key ${base}.key -subj /CN=${cn} -out ${base}.csr`);
  // A random serial each: no serial file shared with other tests.
  const serial = Array.from(crypto.getRandomValues(new Uint8Array(8)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  await openssl(
    `x509 -req -in ${base}.csr -CA ${pki.ca} -CAkey ${pki.caKey} -set_serial 0x${serial} ` +
      `-days 30 -sha256 -extfile ${ext} -out ${base}.pem`,
  );
  return { cert: `${base}.pem`, key: `${base}.key` };
}

function makeSniPki(): Promise<SniPki> {
  sniPki ??= (async () => {
    const pki = await makePki();
    const [a, starExample, wild, secure] = await Promise.all([
      issue(pki, "a", "a.example.com"),
      issue(pki, "star-example", "*.example.com"),
      issue(pki, "wild", "*.wild.example"),
      issue(pki, "secure", "secure.example.com"),
    ]);
    return { ...pki, a, starExample, wild, secure };
  })();
  return sniPki;
}

// ---------------------------------------------------------------------------------------------
// Configuration pieces

function certLines(ck: CertKey): string {
  return `cert = ${ck.cert}\nkey = ${ck.key}\n`;
}

/** The primary service: accepts, its own certificate (CN=localhost) and backend. */
function primary(name: string, accept: number, backend: Backend, pki: Pki): string {
  return `[${name}]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${backend.port}\n` +
    certLines(pki.serverEc);
}

/** A secondary service: no accept, `sni = PRIMARY:PATTERN`, its own certificate and backend. */
function secondary(
  name: string,
  sni: string,
  backend: Backend,
  ck: CertKey,
  extra = "",
): string {
  return `[${name}]\nsni = ${sni}\nconnect = 127.0.0.1:${backend.port}\n` + certLines(ck) + extra;
}

/** An echo backend that first says which one it is. */
function namedBackend(name: string): Backend {
  return echoServer({ greeting: `BACKEND=${name}\n` });
}

// ---------------------------------------------------------------------------------------------
// Probing with openssl s_client

interface Probe {
  /** Subject of the certificate the server sent (`CN = a.example.com`). */
  subject?: string;
  /** Which backend greeted, if the connection got that far. */
  backend?: string;
  output: string;
}

/**
 * One TLS connection with openssl s_client: SNI `servername` (null: no SNI extension at all),
 * optionally a client certificate. Returns when a backend greeted, or when s_client ended.
 */
async function probe(
  port: number,
  pki: Pki,
  servername: string | null,
  client?: CertKey,
  extra: string[] = [],
): Promise<Probe> {
  const args = ["s_client", "-connect", `127.0.0.1:${port}`, "-CAfile", pki.ca, ...extra];
  args.push(...(servername === null ? ["-noservername"] : ["-servername", servername]));
  if (client) args.push("-cert", client.cert, "-key", client.key);
  const p = spawn(["openssl", ...args]);
  try {
    await p.output.waitFor(() => /BACKEND=\w+/.test(p.output.text()), 10_000, "a backend");
  } catch {
    // s_client ended (the handshake or the connection failed); the output says how far it got
  }
  await p.stop(2000);
  const output = p.output.text();
  return {
    subject: output.match(/^subject=(.*)$/m)?.[1],
    backend: output.match(/BACKEND=(\w+)/)?.[1],
    output,
  };
}

async function expectRoute(
  port: number,
  pki: Pki,
  servername: string | null,
  want: { subject: string; backend: string },
): Promise<void> {
  const got = await probe(port, pki, servername);
  assertEquals(
    { subject: got.subject, backend: got.backend },
    want,
    `SNI ${servername ?? "(none)"}; s_client said:\n${got.output}`,
  );
}

/**
 * Deno's TLS client with SNI `name`, verifying the certificate for that name against the CA;
 * over `tcp` if given (a connection opened earlier), else a new one. Returns the greeting.
 */
async function denoGreeting(
  port: number,
  pki: Pki,
  name: string,
  tcp?: Deno.TcpConn,
): Promise<string> {
  tcp ??= await Deno.connect({ hostname: "127.0.0.1", port });
  const tls = await Deno.startTls(tcp, { hostname: name, caCerts: [pki.caPem] });
  try {
    await withTimeout(tls.handshake(), 10_000, `TLS handshake for ${name}`);
    let text = "";
    const buf = new Uint8Array(64);
    while (!text.includes("\n")) {
      const n = await withTimeout(tls.read(buf), 10_000, `greeting for ${name}`);
      if (n === null) break;
      text += decode(buf.subarray(0, n));
    }
    return text.trim();
  } finally {
    closeQuietly(tls);
  }
}

// ---------------------------------------------------------------------------------------------
// Routing

e2e("SNI: certificate and backend follow the server name; others stay on the primary", {
  timeoutMs: 45_000,
}, async () => {
  const pki = await makeSniPki();
  const [port] = freePorts(1);
  const main = namedBackend("main");
  const a = namedBackend("a");
  const star = namedBackend("star");
  const wild = namedBackend("wild");
  // [a] comes before [star]: for a.example.com, which both match, the first one wins.
  const proxy = await startProxy(
    GLOBALS + primary("main", port, main, pki) +
      secondary("a", "main:a.example.com", a, pki.a) +
      secondary("star", "main:*.example.com", star, pki.starExample) +
      secondary("wild", "main:*.wild.example", wild, pki.wild),
  );
  const localhost = "CN = localhost";

  await expectRoute(port, pki, "a.example.com", { subject: "CN = a.example.com", backend: "a" });
  // Matching ignores case.
  await expectRoute(port, pki, "A.Example.COM", { subject: "CN = a.example.com", backend: "a" });
  await expectRoute(port, pki, "b.example.com", { subject: "CN = *.example.com", backend: "star" });
  // A wildcard matches any prefix, several labels too, but not the bare domain.
  await expectRoute(port, pki, "x.wild.example", {
    subject: "CN = *.wild.example",
    backend: "wild",
  });
  await expectRoute(port, pki, "deep.sub.WILD.example", {
    subject: "CN = *.wild.example",
    backend: "wild",
  });
  await expectRoute(port, pki, "wild.example", { subject: localhost, backend: "main" });
  // Unknown names and no SNI at all: the primary service, with its own certificate.
  await expectRoute(port, pki, "unknown.test", { subject: localhost, backend: "main" });
  await expectRoute(port, pki, null, { subject: localhost, backend: "main" });

  // Deno's client verifies the certificate against the name it asked for. Several connections,
  // so that every thread of a multi-threaded proxy gets some.
  for (let i = 0; i < 6; i++) {
    assertEquals(await denoGreeting(port, pki, "a.example.com"), "BACKEND=a");
    assertEquals(await denoGreeting(port, pki, "z.wild.example"), "BACKEND=wild");
    assertEquals(await denoGreeting(port, pki, "localhost"), "BACKEND=main");
  }
  assertEquals(a.connections, 2 + 6);
  assertEquals(wild.connections, 2 + 6);

  // stunnel's log lines for these decisions.
  const log = proxy.log();
  for (
    const line of [
      "LOG7[ui]: Skipped SNI secondary service [a]",
      "LOG7[ui]: Skipped SNI secondary service [wild]",
      "SNI: requested servername: A.Example.COM",
      "SNI: matched pattern: a.example.com",
      "SNI: switched to service [a]",
      "SNI: matched pattern: *.wild.example",
      "SNI: switched to service [wild]",
      "SNI: no pattern matched servername: unknown.test",
      "SNI: no servername received",
      "Service [a] connected remote server from 127.0.0.1:",
      "Service [a] finished",
    ]
  ) {
    assert(log.includes(line), `log has no line with ${JSON.stringify(line)}:\n${log}`);
  }
  assertMatch(log, /LOG3\[[^\]]+\]: SNI: no pattern matched servername: wild\.example$/m);
  assertMatch(log, /LOG5\[[^\]]+\]: SNI: switched to service \[star\]$/m);
  // Only the primary service listens.
  assertEquals(
    proxy.lines().filter((l) => / bound to /.test(l)).map((l) =>
      l.replace(/.*Service \[(\w+)\].*/, "$1")
    ),
    ["main"],
  );
});

e2e("SNI: a secondary service requires a client certificate, its primary does not", {
  timeoutMs: 40_000,
}, async () => {
  const pki = await makeSniPki();
  const [port] = freePorts(1);
  const main = namedBackend("main");
  const secure = namedBackend("secure");
  const proxy = await startProxy(
    GLOBALS + primary("main", port, main, pki) +
      secondary(
        "secure",
        "main:secure.example.com",
        secure,
        pki.secure,
        `CAfile = ${pki.ca}\nverifyChain = yes\n`,
      ),
  );

  // With a certificate from the CA: through to the secondary backend.
  const ok = await probe(port, pki, "secure.example.com", pki.client);
  assertEquals({ subject: ok.subject, backend: ok.backend }, {
    subject: "CN = secure.example.com",
    backend: "secure",
  }, ok.output);

  // Without one: the secondary's certificate was sent, then the handshake fails; no backend.
  const refused = await probe(port, pki, "secure.example.com");
  assertEquals(refused.subject, "CN = secure.example.com", refused.output);
  assertEquals(refused.backend, undefined, refused.output);
  await proxy.waitForLog(/SSL_accept: .*peer did not return a certificate/);

  // A certificate from another CA is refused too.
  const other = await probe(port, pki, "secure.example.com", pki.otherServer);
  assertEquals(other.backend, undefined, other.output);

  // The primary service asks for nothing, with or without SNI.
  for (const name of ["localhost", null]) {
    const plain = await probe(port, pki, name);
    assertEquals({ subject: plain.subject, backend: plain.backend }, {
      subject: "CN = localhost",
      backend: "main",
    }, plain.output);
  }
  assertEquals(secure.connections, 1);
  assertNotEquals(main.connections, 0);
});

e2e("SNI: a reload relinks the secondary services", { timeoutMs: 40_000 }, async () => {
  const pki = await makeSniPki();
  const [port] = freePorts(1);
  const main = namedBackend("main");
  const first = namedBackend("first");
  const second = namedBackend("second");
  const wild = namedBackend("wild");
  const proxy = await startProxy(
    GLOBALS + primary("main", port, main, pki) +
      secondary("a", "main:a.example.com", first, pki.a),
  );
  await expectRoute(port, pki, "a.example.com", {
    subject: "CN = a.example.com",
    backend: "first",
  });
  await expectRoute(port, pki, "x.wild.example", { subject: "CN = localhost", backend: "main" });

  await proxy.writeConfig(
    GLOBALS + primary("main", port, main, pki) +
      secondary("a", "main:a.example.com", second, pki.a) +
      secondary("wild", "main:*.wild.example", wild, pki.wild),
  );
  proxy.signal("SIGHUP");
  await proxy.waitForLogCount(/Configuration successful/, 2);
  await expectRoute(port, pki, "a.example.com", {
    subject: "CN = a.example.com",
    backend: "second",
  });
  await expectRoute(port, pki, "x.wild.example", {
    subject: "CN = *.wild.example",
    backend: "wild",
  });
  assertEquals(first.connections, 1);
});

e2e("SNI: a connection accepted before a reload, hello after it, keeps the old services", {
  extra: "stunnel 5.68 frees the old primary section during the switch and drops the " +
    "connection without a word",
}, async () => {
  const pki = await makeSniPki();
  const [port] = freePorts(1);
  const main = namedBackend("main");
  const first = namedBackend("first");
  const second = namedBackend("second");
  const config = (backend: Backend) =>
    GLOBALS + primary("main", port, main, pki) +
    secondary("a", "main:a.example.com", backend, pki.a);
  const proxy = await startProxy(config(first));
  const early = await tcpConnect(port);
  await proxy.waitForLog(/Service \[main\] accepted connection/);
  await proxy.writeConfig(config(second));
  proxy.signal("SIGHUP");
  await proxy.waitForLogCount(/Configuration successful/, 2);
  // The old secondary service is gone from the configuration but not from this connection.
  assertEquals(await denoGreeting(port, pki, "a.example.com", early), "BACKEND=first");
  assertEquals(await denoGreeting(port, pki, "a.example.com"), "BACKEND=second");
  assertEquals([first.connections, second.connections], [1, 1]);
});

e2e("SNI: after a HelloRetryRequest the connection stays with the secondary", {}, async () => {
  // The primary accepts only P-256 and the client offers an X25519 key share first: the server
  // asks again, and OpenSSL calls the servername callback for the second hello too, now on the
  // secondary's context (stunnel then logs "no virtual services defined").
  const pki = await makeSniPki();
  const [port] = freePorts(1);
  const main = namedBackend("main");
  const a = namedBackend("a");
  const curves = "curves = P-256\n";
  const proxy = await startProxy(
    GLOBALS + primary("main", port, main, pki) + curves +
      secondary("a", "main:a.example.com", a, pki.a, curves),
  );
  const args = ["-groups", "X25519:P-256", "-msg"];
  const got = await probe(port, pki, "a.example.com", undefined, args);
  assertEquals({ subject: got.subject, backend: got.backend }, {
    subject: "CN = a.example.com",
    backend: "a",
  }, got.output);
  // s_client -msg shows the retry as a second ClientHello.
  assertEquals(got.output.match(/ClientHello/g)?.length, 2, got.output);
  await proxy.waitForLog(/SNI: switched to service \[a\][\s\S]*SNI: no virtual services defined/);
});

// ---------------------------------------------------------------------------------------------
// Configuration errors

/**
 * Runs a configuration that must fail: non-zero exit, `Configuration failed`, the primary's
 * port never listens. stunnel names the service (`Service [x]: REASON`); we also name the
 * `sni` line (`Service [x]: FILE:LINE: "sni = ...": REASON`).
 */
async function expectSniError(
  text: string,
  port: number,
  service: string,
  reason: string,
  sniLine?: string,
): Promise<string> {
  const proxy = await startProxy(text, {
    allowFailure: true,
    waitPorts: [port],
    timeoutMs: 10_000,
  });
  const status = await proxy.process.wait(10_000);
  const log = proxy.log();
  assertNotEquals(status.code, 0, log);
  assert(!proxy.ready, `port ${port} listened:\n${log}`);
  assertMatch(log, /Configuration failed/);
  let at = "";
  if (sniLine !== undefined && !PROXY_IS_STUNNEL) {
    const line = text.split("\n").indexOf(sniLine) + 1;
    assert(line > 0, `no line ${sniLine}`);
    at = `${escapeRegExp(proxy.confPath)}:${line}: "${escapeRegExp(sniLine)}": `;
  }
  assertMatch(
    log,
    new RegExp(`Service \\[${escapeRegExp(service)}\\]: ${at}${escapeRegExp(reason)}`),
  );
  return log;
}

e2e("SNI config errors: unknown, later or client-mode primary; no colon; accept", {
  timeoutMs: 40_000,
}, async () => {
  const pki = await makeSniPki();
  const [port, backendPort] = freePorts(2);
  const backend = { port: backendPort } as Backend;
  const head = GLOBALS + primary("main", port, backend, pki);

  await expectSniError(
    head + secondary("a", "nosuch:a.example.com", backend, pki.a),
    port,
    "a",
    "SNI section name not found",
    "sni = nosuch:a.example.com",
  );
  // Section names are case-sensitive.
  await expectSniError(
    head + secondary("a", "MAIN:a.example.com", backend, pki.a),
    port,
    "a",
    "SNI section name not found",
    "sni = MAIN:a.example.com",
  );
  // The primary service must come first.
  await expectSniError(
    GLOBALS + secondary("a", "main:a.example.com", backend, pki.a) +
      primary("main", port, backend, pki),
    port,
    "a",
    "SNI section name not found",
    "sni = main:a.example.com",
  );
  await expectSniError(
    GLOBALS +
      `[main]\nclient = yes\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backendPort}\n` +
      secondary("a", "main:a.example.com", backend, pki.a),
    port,
    "a",
    "SNI primary service is a TLS client",
    "sni = main:a.example.com",
  );
  await expectSniError(
    head + secondary("a", "a.example.com", backend, pki.a),
    port,
    "a",
    "Invalid SNI parameter format",
    "sni = a.example.com",
  );
  // A secondary service has no accept of its own: three endpoints.
  const [other] = freePorts(1);
  await expectSniError(
    head + secondary("a", "main:a.example.com", backend, pki.a, `accept = 127.0.0.1:${other}\n`),
    port,
    "a",
    "Each service must define two endpoints",
  );
  // A TLS server needs a certificate, secondary or not (checked first, as stunnel does).
  await expectSniError(
    head + `[a]\nsni = nosuch:a.example.com\nconnect = 127.0.0.1:${backendPort}\n`,
    port,
    "a",
    "TLS server needs a certificate",
  );
  // A secondary in client mode has no accept: stunnel counts one endpoint; we refuse the
  // PRIMARY:PATTERN form in client mode first. Refused either way.
  const log = await expectSniError(
    head + `[a]\nclient = yes\nsni = main:a.example.com\nconnect = 127.0.0.1:${backendPort}\n`,
    port,
    "a",
    PROXY_IS_STUNNEL ? "Each service must define two endpoints" : "SERVICE:PATTERN",
    "sni = main:a.example.com",
  );
  assert(!/Configuration successful/.test(log), log);
});
