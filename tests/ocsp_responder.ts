/**
 * A small OCSP responder for the end-to-end tests, on 127.0.0.1 only (`openssl ocsp -port`
 * would listen on every interface). Each POSTed request is answered by running
 * `openssl ocsp -index ... -reqin req.der -respout resp.der`: answers about the certificates of
 * one CA (the harness root CA by default), signed by that CA or by a given signer.
 *
 * Modes: "openssl" (the default: a fresh, correct answer), "fixed" (always the same DER, e.g. a
 * replayed answer without the request's nonce), "http-error" (HTTP 500), "hang" (never answers).
 */

import type { Pki } from "./harness/pki.ts";

export type ResponderMode =
  | { kind: "openssl" }
  | { kind: "fixed"; der: Uint8Array }
  | { kind: "http-error" }
  | { kind: "hang" };

/** One request as received: its DER and `openssl ocsp -req_text` of it. */
export interface OcspRequestRecord {
  der: Uint8Array;
  text: string;
}

export interface OcspResponder {
  port: number;
  /** `http://127.0.0.1:PORT/ocsp` */
  url: string;
  /** Every request received, in order. */
  requests: OcspRequestRecord[];
  mode: ResponderMode;
  /** Replaces the index: from the next request on, these certificates are valid / revoked. */
  setIndex(valid: string[], revoked: string[]): Promise<void>;
  close(): Promise<void>;
}

export interface ResponderOptions {
  pki: Pki;
  /** A scratch directory (index file, request and response files). */
  dir: string;
  /** The CA whose certificates it answers for (default: the harness root CA). */
  ca?: { cert: string; key: string };
  /** Who signs the answers (default: `ca` itself). */
  signer?: { cert: string; key: string };
  /** Certificates listed as valid (V); default: the harness PKI's good ones. */
  valid?: string[];
  /** Certificates listed as revoked (R); default: the harness PKI's revoked one. */
  revoked?: string[];
  /** Listen on this port (default: any free one). */
  port?: number;
  mode?: ResponderMode;
  /** Validity of the answers (nextUpdate = thisUpdate + minutes), default 60. */
  minutes?: number;
}

async function openssl(args: string[], cwd: string): Promise<string> {
  const out = await new Deno.Command("openssl", { args, cwd, stdin: "null" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`openssl ${args.join(" ")} failed:\n${text}`);
  return text;
}

/** serial (hex) and subject (/CN=...) of a PEM certificate. */
async function certFacts(cert: string, dir: string): Promise<{ serial: string; subject: string }> {
  const text = await openssl(
    ["x509", "-in", cert, "-noout", "-serial", "-subject", "-nameopt", "compat"],
    dir,
  );
  const serial = /serial=([0-9A-Fa-f]+)/.exec(text)?.[1];
  const subject = /subject=(.*)/.exec(text)?.[1]?.trim();
  if (!serial || !subject) throw new Error(`cannot read ${cert}: ${text}`);
  return { serial: serial.toUpperCase(), subject };
}

/**
 * An `openssl ca` index (the format `openssl ocsp -index` reads): V for valid, R (revoked
 * yesterday, reason keyCompromise) for revoked certificates.
 */
export async function writeIndex(
  path: string,
  dir: string,
  valid: string[],
  revoked: string[],
): Promise<void> {
  const expiry = "351231235959Z";
  const yesterday = new Date(Date.now() - 86_400_000).toISOString().replace(/[-:T]/g, "")
    .slice(2, 14) + "Z";
  const lines: string[] = [];
  for (const cert of valid) {
    const { serial, subject } = await certFacts(cert, dir);
    lines.push(`V\t${expiry}\t\t${serial}\tunknown\t${subject}`);
  }
  for (const cert of revoked) {
    const { serial, subject } = await certFacts(cert, dir);
    lines.push(`R\t${expiry}\t${yesterday},keyCompromise\t${serial}\tunknown\t${subject}`);
  }
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  await Deno.writeTextFile(`${path}.attr`, "unique_subject = no\n");
}

/** Starts the responder; close() stops it (also call it from the test's scope). */
export async function startOcspResponder(opts: ResponderOptions): Promise<OcspResponder> {
  const { pki } = opts;
  const ca = opts.ca ?? { cert: pki.ca, key: pki.caKey };
  const signer = opts.signer ?? ca;
  const dir = await Deno.makeTempDir({ dir: opts.dir, prefix: "ocsp-" });
  const index = `${dir}/index.txt`;
  await writeIndex(
    index,
    dir,
    opts.valid ?? [pki.serverEc.cert, pki.serverRsa.cert, pki.client.cert],
    opts.revoked ?? [pki.revoked.cert],
  );
  let counter = 0;
  const hanging = new Set<() => void>();
  const requests: OcspRequestRecord[] = [];
  const responder: OcspResponder = {
    port: 0,
    url: "",
    requests,
    mode: opts.mode ?? { kind: "openssl" },
    setIndex: (valid, revoked) => writeIndex(index, dir, valid, revoked),
    close: async () => {
      for (const release of hanging) release();
      await server.shutdown().catch(() => {});
    },
  };
  const answer = async (reqPath: string, n: number): Promise<Uint8Array> => {
    const respPath = `${dir}/resp-${n}.der`;
    await openssl([
      "ocsp",
      "-index",
      index,
      "-CA",
      ca.cert,
      "-rsigner",
      signer.cert,
      "-rkey",
      signer.key,
      "-nmin",
      String(opts.minutes ?? 60),
      "-reqin",
      reqPath,
      "-respout",
      respPath,
    ], dir);
    return await Deno.readFile(respPath);
  };
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: opts.port ?? 0, onListen: () => {} },
    async (req) => {
      const der = new Uint8Array(await req.arrayBuffer());
      const n = ++counter;
      const reqPath = `${dir}/req-${n}.der`;
      await Deno.writeFile(reqPath, der);
      const text = await openssl(["ocsp", "-reqin", reqPath, "-req_text", "-noverify"], dir)
        .catch((e) => String(e));
      requests.push({ der, text });
      const mode = responder.mode;
      if (mode.kind === "hang") {
        await new Promise<void>((resolve) => {
          hanging.add(resolve);
          setTimeout(resolve, 60_000);
        });
        return new Response("gave up", { status: 503 });
      }
      if (mode.kind === "http-error") return new Response("broken", { status: 500 });
      const body = mode.kind === "fixed" ? mode.der : await answer(reqPath, n);
      return new Response(body as Uint8Array<ArrayBuffer>, {
        headers: { "content-type": "application/ocsp-response" },
      });
    },
  );
  responder.port = server.addr.port;
  responder.url = `http://127.0.0.1:${responder.port}/ocsp`;
  return responder;
}

/**
 * A correct answer for `cert` made for a request WITHOUT a nonce: served in "fixed" mode it
 * stands for a replayed answer, which `OCSPnonce = yes` must refuse.
 */
export async function answerWithoutNonce(
  pki: Pki,
  dir: string,
  cert: string,
): Promise<Uint8Array> {
  const index = `${dir}/ocsp-fixed-index.txt`;
  await writeIndex(index, dir, [cert], [pki.revoked.cert]);
  await openssl([
    "ocsp",
    "-issuer",
    pki.ca,
    "-cert",
    cert,
    "-no_nonce",
    "-reqout",
    `${dir}/ocsp-fixed-req.der`,
  ], dir);
  await openssl([
    "ocsp",
    "-index",
    index,
    "-CA",
    pki.ca,
    "-rsigner",
    pki.ca,
    "-rkey",
    pki.caKey,
    "-nmin",
    "60",
    "-reqin",
    `${dir}/ocsp-fixed-req.der`,
    "-respout",
    `${dir}/ocsp-fixed-resp.der`,
  ], dir);
  return await Deno.readFile(`${dir}/ocsp-fixed-resp.der`);
}

/** A certificate's serial number as `openssl ocsp -req_text` prints it (upper-case hex). */
export async function serialOf(cert: string): Promise<string> {
  return (await certFacts(cert, ".")).serial;
}

/** The requests `r` received about the certificate with serial number `serial`. */
export function requestsAbout(r: OcspResponder, serial: string): OcspRequestRecord[] {
  return r.requests.filter((q) => q.text.includes(`Serial Number: ${serial}\n`));
}
