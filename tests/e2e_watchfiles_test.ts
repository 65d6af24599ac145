/**
 * End-to-end: `watchFiles = yes` (an extension). A service's TLS context is built again when
 * its cert, key or CAfile change on disk, also through a Kubernetes Secret-style `..data`
 * symlink swap; open connections keep working, new handshakes see the new files (openssl
 * s_client), a file that does not load keeps the old context, and the metrics say so.
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { echoRoundTrip, echoServer, freePorts, tlsConnect } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, run } from "./harness/process.ts";
import { GLOBALS, type Proxy, startProxy } from "./harness/proxy.ts";
import { sClientEcho } from "./harness/openssl.ts";

const EXTRA = "watchFiles = is an extension of this implementation";

/** A new localhost server certificate of the test CA, valid `days` days, and its key. */
async function issue(pki: Pki, dir: string, name: string, days: number) {
  const cert = `${dir}/${name}.pem`;
  const key = `${dir}/${name}.key`;
  const ext = `${dir}/${name}.ext`;
  await Deno.writeTextFile(ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  const steps = [
    ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
    ["req", "-new", "-key", key, "-subj", "/CN=localhost", "-out", `${dir}/${name}.csr`],
    [
      "x509",
      "-req",
      "-in",
      `${dir}/${name}.csr`,
      "-CA",
      pki.ca,
      "-CAkey",
      pki.caKey,
      "-set_serial",
      String(Date.now() * 1000 + Math.floor(Math.random() * 1000)),
      "-days",
      String(days),
      "-extfile",
      ext,
      "-out",
      cert,
    ],
  ];
  for (const args of steps) {
    const r = await run(["openssl", ...args]);
    assertEquals(r.code, 0, r.stderr);
  }
  await Deno.chmod(key, 0o600);
  return { cert, key };
}

/** The serial of a certificate file. */
async function serialOf(cert: string): Promise<string> {
  const r = await run(["openssl", "x509", "-in", cert, "-noout", "-serial"]);
  return r.stdout.trim();
}

/** The serial of the certificate a new handshake on `port` gets (openssl s_client). */
async function servedSerial(port: number): Promise<string> {
  const r = await run([
    "sh",
    "-c",
    `openssl s_client -connect 127.0.0.1:${port} -servername localhost </dev/null 2>/dev/null` +
    " | openssl x509 -noout -serial",
  ]);
  return r.stdout.trim();
}

/** The serials `count` new handshakes get (with two threads, both are asked, most likely). */
async function servedSerials(port: number, count = 8): Promise<string[]> {
  const serials = [];
  for (let i = 0; i < count; i++) serials.push(await servedSerial(port));
  return [...new Set(serials)];
}

/** A sample's value in /metrics (0 when absent). */
async function metric(port: number, sample: string): Promise<number> {
  const r = await run(["curl", "-sS", "--max-time", "10", `http://127.0.0.1:${port}/metrics`]);
  const line = r.stdout.split("\n").find((l) => l.startsWith(`${sample} `));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

function unix(date: string): number {
  return Date.parse(date.replace(" GMT", "Z").replace(/ +/g, " ")) / 1000;
}

async function notAfter(cert: string): Promise<number> {
  const r = await run(["openssl", "x509", "-in", cert, "-noout", "-enddate"]);
  return unix(r.stdout.trim().replace("notAfter=", ""));
}

interface Setup {
  proxy: Proxy;
  port: number;
  metrics: number;
}

/** A server-mode service on an echo backend, reading `cert`/`key` (and more) with watchFiles. */
async function watched(files: string): Promise<Setup> {
  const echo = echoServer();
  const [port, metrics] = freePorts(2);
  const proxy = await startProxy(
    GLOBALS + `watchFiles = yes\nmetrics = 127.0.0.1:${metrics}\n` +
      `[tls]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${echo.port}\n${files}`,
  );
  // Every thread has loaded the files by then.
  await proxy.waitForLog(/Accepting new connections/);
  return { proxy, port, metrics };
}

/**
 * Two certificates of one CA (serials 10 and 20), the first copied to DIR/cert.pem and
 * DIR/key.pem, which a watched service serves.
 */
async function watchedPair() {
  const pki = await makePki();
  const dir = await Deno.makeTempDir();
  const first = await issue(pki, dir, "first", 10);
  const second = await issue(pki, dir, "second", 20);
  await Deno.copyFile(first.cert, `${dir}/cert.pem`);
  await Deno.copyFile(first.key, `${dir}/key.pem`);
  const setup = await watched(`cert = ${dir}/cert.pem\nkey = ${dir}/key.pem\n`);
  return { pki, dir, first, second, ...setup };
}

e2e(
  "watchFiles: a replaced certificate serves new handshakes; an open connection keeps working",
  { extra: EXTRA, timeoutMs: 60_000 },
  async () => {
    const { pki, dir, first, second, proxy, port, metrics } = await watchedPair();
    const open = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(open, "before\n");
    assertEquals(await servedSerial(port), await serialOf(first.cert));
    const loaded = `stunnel_certificate_not_after_seconds{service="tls",file="${dir}/cert.pem"}`;
    assertEquals(await metric(metrics, loaded), await notAfter(first.cert));

    // Rewritten in place, the key first: the pair is inconsistent for a moment.
    await Deno.writeFile(`${dir}/key.pem`, await Deno.readFile(second.key));
    await Deno.writeFile(`${dir}/cert.pem`, await Deno.readFile(second.cert));
    await proxy.waitForLog(/Service \[tls\]: TLS context reloaded/);
    await echoRoundTrip(open, "after\n");
    assertEquals(await servedSerials(port), [await serialOf(second.cert)]);
    const fresh = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(fresh, "new\n");
    open.close();
    fresh.close();
    assertEquals(await metric(metrics, loaded), await notAfter(second.cert));
    const reloads = 'stunnel_certificate_reloads_total{service="tls",result=';
    assertEquals(await metric(metrics, `${reloads}"success"}`), 1);
    assertEquals(await metric(metrics, `${reloads}"failure"}`), 0);
    assertNotMatch(proxy.log(), /TLS context not reloaded/);
    // The listener was not touched.
    assertNotMatch(proxy.log(), /Unbinding service|Binding service \[tls\].*\n[^]*Binding service/);
    await proxy.stop();
  },
);

e2e(
  "watchFiles: a Kubernetes Secret-style ..data symlink swap is caught",
  { extra: EXTRA, timeoutMs: 60_000 },
  async () => {
    const pki = await makePki();
    const dir = await Deno.makeTempDir();
    const first = await issue(pki, dir, "first", 10);
    const second = await issue(pki, dir, "second", 20);
    const secret = `${dir}/secret`;
    const version = async (name: string, pair: { cert: string; key: string }) => {
      await Deno.mkdir(`${secret}/${name}`, { recursive: true });
      await Deno.copyFile(pair.cert, `${secret}/${name}/tls.crt`);
      await Deno.copyFile(pair.key, `${secret}/${name}/tls.key`);
    };
    await version("..2026_01_01_00_00_00.1", first);
    await Deno.symlink("..2026_01_01_00_00_00.1", `${secret}/..data`);
    await Deno.symlink("..data/tls.crt", `${secret}/tls.crt`);
    await Deno.symlink("..data/tls.key", `${secret}/tls.key`);
    const { proxy, port, metrics } = await watched(
      `cert = ${secret}/tls.crt\nkey = ${secret}/tls.key\n`,
    );
    assertEquals(await servedSerial(port), await serialOf(first.cert));
    // As the kubelet does it: a new directory, a new symlink renamed over ..data, the old gone.
    await version("..2026_01_02_00_00_00.2", second);
    await Deno.symlink("..2026_01_02_00_00_00.2", `${secret}/..data_tmp`);
    await Deno.rename(`${secret}/..data_tmp`, `${secret}/..data`);
    await Deno.remove(`${secret}/..2026_01_01_00_00_00.1`, { recursive: true });
    await proxy.waitForLog(/Service \[tls\]: TLS context reloaded/);
    assertEquals(await servedSerial(port), await serialOf(second.cert));
    assertEquals(
      await metric(
        metrics,
        `stunnel_certificate_not_after_seconds{service="tls",file="${secret}/tls.crt"}`,
      ),
      await notAfter(second.cert),
    );
    await proxy.stop();
  },
);

e2e(
  "watchFiles: a key that does not load keeps the old context, logged with its files and counted",
  { extra: EXTRA, timeoutMs: 60_000 },
  async () => {
    const { pki, dir, first, second, proxy, port, metrics } = await watchedPair();
    await Deno.writeTextFile(
      `${dir}/key.pem`,
      "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    const failed = await proxy.waitForLog(/Service \[tls\]: TLS context not reloaded \((.*)\)/);
    assertEquals(failed[1], `cert = ${dir}/cert.pem, key = ${dir}/key.pem`);
    assertMatch(proxy.log(), /key = [^\n]*key\.pem changed; reloading the TLS context/);
    assertMatch(proxy.log(), /SSL_CTX_use_PrivateKey_file/);
    assertEquals(await servedSerials(port), [await serialOf(first.cert)]);
    const conn = await tlsConnect(port, pki.caPem);
    await echoRoundTrip(conn, "old context\n");
    conn.close();
    const reloads = 'stunnel_certificate_reloads_total{service="tls",result=';
    assertEquals(await metric(metrics, `${reloads}"failure"}`), 1);
    assertEquals(await metric(metrics, `${reloads}"success"}`), 0);
    assertEquals(
      await metric(
        metrics,
        `stunnel_certificate_not_after_seconds{service="tls",file="${dir}/cert.pem"}`,
      ),
      await notAfter(first.cert),
    );
    // A good pair later is taken.
    await Deno.writeFile(`${dir}/cert.pem`, await Deno.readFile(second.cert));
    await Deno.writeFile(`${dir}/key.pem`, await Deno.readFile(second.key));
    await proxy.waitForLog(/Service \[tls\]: TLS context reloaded/);
    assertEquals(await servedSerials(port), [await serialOf(second.cert)]);
    assertEquals(await metric(metrics, `${reloads}"success"}`), 1);
    await proxy.stop();
  },
);

e2e(
  "watchFiles: a changed CAfile takes effect for verifyPeer, and old sessions do not skip it",
  { extra: EXTRA, timeoutMs: 60_000 },
  async () => {
    const pki = await makePki();
    const dir = await Deno.makeTempDir();
    const trusted = `${dir}/trusted.pem`;
    await Deno.copyFile(pki.client.cert, trusted);
    const { proxy, port } = await watched(
      `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n` +
        `CAfile = ${trusted}\nverifyPeer = yes\n`,
    );
    const client = ["-cert", pki.client.cert, "-key", pki.client.key];
    for (const version of ["-tls1_3", "-tls1_2"]) {
      const session = `${dir}/session${version}`;
      const out = await sClientEcho(port, [version, ...client, "-sess_out", session], "hello");
      assertMatch(out, /^New, /m);
      assertMatch(out, /hello/);
      assertMatch(
        await sClientEcho(port, [version, ...client, "-sess_in", session], "again"),
        /^Reused, [^]*again/m,
      );
    }
    // The client's certificate is no longer trusted.
    await Deno.copyFile(pki.revoked.cert, trusted);
    await proxy.waitForLog(/Service \[tls\]: TLS context reloaded/);
    const refusedBefore = proxy.log().match(/certificate verify failed|peer did not return/g)
      ?.length ?? 0;
    const fresh = await sClientEcho(port, ["-tls1_3", ...client], "hello");
    assertNotMatch(fresh, /hello/);
    for (const version of ["-tls1_3", "-tls1_2"]) {
      const file = `${dir}/session${version}`;
      const resumed = await sClientEcho(port, [version, ...client, "-sess_in", file], "again");
      assertNotMatch(resumed, /^Reused, /m);
      assertNotMatch(resumed, /again/);
    }
    const refused = proxy.log().match(/certificate verify failed|peer did not return/g)?.length ??
      0;
    assert(refused >= refusedBefore + 3, `${refused - refusedBefore} refusals logged`);
    await proxy.stop();
  },
);
