/**
 * testssl.sh (Debian's `testssl`) against a plain server-mode service with the TLS settings
 * of the configuration we ship (examples/stunnel.conf: every option at its default but
 * `options = CIPHER_SERVER_PREFERENCE`, without which testssl grades the client's choice of
 * cipher HIGH, as it does for stunnel 5.68's defaults): no finding of severity MEDIUM or above.
 *
 * The certificate is made for the run so that testssl grades the proxy, not a throwaway
 * certificate: a year of validity, its CA given with --add-ca, and CRL and OCSP URIs (testssl
 * does not fetch them without --phone-out). The quick form runs the checks that can find
 * MEDIUM+ issues (protocols, cipher categories, forward secrecy, server preferences and
 * defaults, vulnerabilities); the full form runs them all (each cipher, client simulations).
 *
 *   deno run -A tests/reliability/testssl.ts [--quick]
 */
import { freePorts } from "../harness/net.ts";
import { soakGlobals, startBackend, startSoakProxy } from "./proxy.ts";

export interface Finding {
  id: string;
  severity: string;
  finding: string;
}

export interface TestsslResult {
  /** Findings by severity. */
  counts: Record<string, number>;
  /** Those of severity MEDIUM, HIGH or CRITICAL. */
  serious: Finding[];
  seconds: number;
  /** The lines of testssl's own output that say what was offered. */
  highlights: string[];
}

const SERIOUS = new Set(["MEDIUM", "HIGH", "CRITICAL"]);
/** What testssl says about this run rather than about the server. */
const ABOUT_THE_RUN = new Set(["engine_problem", "scanProblem"]);

async function openssl(args: string[], cwd: string): Promise<void> {
  const out = await new Deno.Command("openssl", { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`openssl ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

/** A CA and a localhost certificate it signed, as a real deployment would have them. */
async function certificates(dir: string): Promise<{ ca: string; cert: string; key: string }> {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  await openssl(
    [
      "req",
      "-x509",
      ...ec,
      "-days",
      "3650",
      "-subj",
      "/CN=testssl run CA",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
    ],
    dir,
  );
  await openssl(
    ["req", "-new", ...ec, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"],
    dir,
  );
  await Deno.writeTextFile(
    `${dir}/ext.cnf`,
    "subjectAltName = DNS:localhost, IP:127.0.0.1\n" +
      "keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n" +
      "crlDistributionPoints = URI:http://127.0.0.1/ca.crl\n" +
      "authorityInfoAccess = OCSP;URI:http://127.0.0.1/ocsp\n",
  );
  await openssl(
    [
      "x509",
      "-req",
      "-in",
      "server.csr",
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "365",
      "-sha256",
      "-extfile",
      "ext.cnf",
      "-out",
      "server.pem",
    ],
    dir,
  );
  return { ca: `${dir}/ca.pem`, cert: `${dir}/server.pem`, key: `${dir}/server.key` };
}

export async function runTestssl(quick: boolean, dir: string): Promise<TestsslResult> {
  const certs = await certificates(dir);
  const backend = await startBackend(0, `${dir}/backend.out`);
  const [port] = freePorts(1);
  const proxy = await startSoakProxy(
    dir,
    soakGlobals(dir) +
      `[https]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:${backend.port}\n` +
      `cert = ${certs.cert}\nkey = ${certs.key}\noptions = CIPHER_SERVER_PREFERENCE\n`,
    [port],
  );
  const json = `${dir}/testssl.json`;
  const checks = quick ? ["-p", "-s", "-f", "-P", "-S", "-U"] : [];
  const t0 = Date.now();
  try {
    const out = await new Deno.Command("testssl", {
      args: [
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--openssl-timeout",
        "10",
        "--add-ca",
        certs.ca,
        "--jsonfile",
        json,
        ...checks,
        `localhost:${port}`,
      ],
      env: { TERM: "dumb" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(quick ? 600_000 : 1_800_000),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    await Deno.writeTextFile(`${dir}/testssl.out`, text + new TextDecoder().decode(out.stderr));
    const findings: Finding[] = JSON.parse(await Deno.readTextFile(json));
    const counts: Record<string, number> = {};
    for (const f of findings) counts[f.severity] = (counts[f.severity] ?? 0) + 1;
    return {
      counts,
      serious: findings.filter((f) => SERIOUS.has(f.severity) && !ABOUT_THE_RUN.has(f.id)),
      seconds: (Date.now() - t0) / 1000,
      highlights: text.split("\n").filter((l) =>
        /^ (SSLv2|SSLv3|TLS 1(\.[123])?|Has server cipher order\?|Session Resumption|Secure .*Renegotiation) /
          .test(l)
      ).map((l) => l.trim().replace(/\s+/g, " ")),
    };
  } finally {
    await proxy.stop();
    await backend.stop();
  }
}

if (import.meta.main) {
  // the harness (process.ts) keeps a rejection from ending the process: end it here, either way.
  const dir = await Deno.makeTempDir({ prefix: "testssl-" });
  try {
    const r = await runTestssl(Deno.args.includes("--quick"), dir);
    console.log(JSON.stringify(r, null, 2));
    console.log(`files in ${dir}`);
    Deno.exit(0);
  } catch (e) {
    console.error(e);
    Deno.exit(1);
  }
}
