/**
 * OCSP-response fuzz through the real proxy: a client-mode service with `OCSP =` pointing at a
 * hostile responder verifies a TLS server's certificate. Each case answers the proxy's query
 * with a correct response, a mutated one, wrong HTTP framing, random bytes, nothing, or
 * silence. The proxy must survive every case, log an OCSP verdict and the end of each
 * connection, and let data through only when it logged "OCSP: Certificate accepted".
 *
 *   deno run -A tests/reliability/ocsp_fuzz.ts [--seed N] [--cases N]
 */
import { freePorts } from "../harness/net.ts";
import { makePki, type Pki } from "../harness/pki.ts";
import { answerWithoutNonce } from "../ocsp_responder.ts";
import { bounded } from "./clients.ts";
import { excerpt, type FuzzSummary, FuzzTally, printSummary } from "./fuzz.ts";
import { BufReader, writeAll } from "./pattern.ts";
import { soakGlobals, startSoakProxy } from "./proxy.ts";
import { fuzzArgs, mutate, Rng } from "./rng.ts";

const enc = (s: string) => new TextEncoder().encode(s);

function join(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const head = (status: string, length: number | string, extra = "") =>
  enc(
    `HTTP/1.0 ${status}\r\nContent-Type: application/ocsp-response\r\n` +
      `Content-Length: ${length}\r\n${extra}\r\n`,
  );

/** What the responder sends for one case (undefined: it never answers). */
function answer(rng: Rng, good: Uint8Array, other: Uint8Array): Uint8Array | undefined {
  const der = rng.chance(0.8) ? good : other;
  const mutated = () => {
    let out: Uint8Array = der;
    for (let i = rng.int(1, 4); i > 0; i--) out = mutate(rng, out);
    return out;
  };
  switch (rng.int(0, 11)) {
    case 0:
      return join(head("200 OK", der.length), der);
    case 1:
    case 2:
    case 3: {
      const body = mutated();
      return join(head("200 OK", body.length), body);
    }
    case 4: // a length that does not match
      return join(head("200 OK", der.length + rng.int(-20, 20)), mutated());
    case 5:
      return join(head("200 OK", 600), rng.bytes(600));
    case 6: // a mutated HTTP head
      return join(
        mutate(rng, head(rng.pick(["200 OK", "500 Oops", "302 Found"]), der.length)),
        der,
      );
    case 7:
      return rng.bytes(rng.int(0, 2000));
    case 8:
      return new Uint8Array(0);
    case 9:
      return undefined;
    case 10: // a huge length, a short body
      return join(head("200 OK", "99999999999"), der.subarray(0, rng.int(0, der.length)));
    default: // chunked
      return join(
        head("200 OK", der.length, "Transfer-Encoding: chunked\r\n").subarray(0),
        enc(`${der.length.toString(16)}\r\n`),
        der,
        enc("\r\n0\r\n\r\n"),
      );
  }
}

/** The hostile responder: each connection gets `current.bytes` (or silence), then a close. */
function responder(current: { bytes: Uint8Array | undefined }): Deno.TcpListener {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        await conn.read(new Uint8Array(64 * 1024)).catch(() => null); // the request
        const bytes = current.bytes;
        if (bytes === undefined) {
          setTimeout(() => conn.close(), 5000); // past the proxy's TIMEOUTbusy
          return;
        }
        await writeAll(conn, bytes).catch(() => {});
        conn.close();
      })().catch(() => {});
    }
  })().catch(() => {});
  return listener;
}

/** The TLS server whose certificate the proxy checks: echoes. */
function tlsServer(pki: Pki): Deno.TlsListener {
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: Deno.readTextFileSync(pki.serverEc.cert),
    key: Deno.readTextFileSync(pki.serverEc.key),
  });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        const buf = new Uint8Array(4096);
        for (let n; (n = await conn.read(buf)) !== null;) await writeAll(conn, buf.subarray(0, n));
      })().catch(() => {}).finally(() => {
        try {
          conn.close();
        } catch {
          // closed already
        }
      });
    }
  })().catch(() => {});
  return listener;
}

/** Per connection of the proxy's log: its OCSP lines and whether it was logged as ended. */
function connections(log: string): { ocsp: string[]; ended: boolean }[] {
  const byId = new Map<string, { ocsp: string[]; ended: boolean }>();
  const order: { ocsp: string[]; ended: boolean }[] = [];
  for (const line of log.split("\n")) {
    const m = /^\S+ \S+ LOG\d\[([^\]]+)\]: (.*)$/.exec(line);
    if (!m || m[1] === "ui") continue;
    const [, id, text] = m;
    if (/accepted connection from/.test(text)) {
      const c = { ocsp: [], ended: false };
      byId.set(id, c);
      order.push(c);
    } else if (/^Connection (closed|reset)/.test(text)) {
      const c = byId.get(id);
      if (c) c.ended = true;
    } else if (/OCSP/.test(text)) byId.get(id)?.ocsp.push(text);
  }
  return order;
}

export async function ocspFuzz(seed: number, cases: number): Promise<FuzzSummary> {
  const tally = new FuzzTally("OCSP fuzz", seed);
  const dir = await Deno.makeTempDir({ prefix: "ocsp-fuzz-" });
  const pki = await makePki(`${dir}/pki`);
  const good = await answerWithoutNonce(pki, dir, pki.serverEc.cert);
  const other = await answerWithoutNonce(pki, dir, pki.client.cert);
  const current: { bytes: Uint8Array | undefined } = { bytes: undefined };
  const ocsp = responder(current);
  const server = tlsServer(pki);
  const [accept] = freePorts(1);
  const config = soakGlobals(dir) +
    `[ocsp]\nclient = yes\naccept = 127.0.0.1:${accept}\n` +
    `connect = 127.0.0.1:${server.addr.port}\nCAfile = ${pki.ca}\nverifyChain = yes\n` +
    `OCSP = http://127.0.0.1:${ocsp.addr.port}/\nTIMEOUTbusy = 2\nsessionResume = no\n`;
  const proxy = await startSoakProxy(dir, config, [accept]);
  const root = new Rng(seed);
  const passed: boolean[] = [];
  try {
    for (let i = 0; i < cases && proxy.status() === undefined; i++) {
      const rng = root.fork();
      current.bytes = answer(rng, good, other);
      // Plain in, TLS out: a line goes through and back only if the proxy accepted the server.
      passed.push(
        await bounded(10_000, async (closer) => {
          const conn = closer.add(await Deno.connect({ hostname: "127.0.0.1", port: accept }));
          await writeAll(conn, enc("ping\n"));
          return (await new BufReader(conn).line().catch(() => null)) === "ping";
        }).catch(() => false),
      );
    }
    const status = proxy.status();
    if (status) tally.fail("the proxy died", `exit code ${status.code}, signal ${status.signal}`);
  } finally {
    await proxy.stop();
    ocsp.close();
    server.close();
  }
  const seen = connections(await Deno.readTextFile(proxy.logPath));
  passed.forEach((through, i) => {
    const c = seen[i];
    const where = `case ${i} of --seed ${seed}`;
    if (!c) return tally.fail("no connection logged", where);
    const accepted = c.ocsp.includes("OCSP: Certificate accepted");
    const verdict = c.ocsp.find((l) => !/Connecting the configured responder/.test(l));
    if (!c.ended) tally.fail("connection not logged as ended", where);
    else if (!verdict) {
      tally.fail("no OCSP verdict logged", `${where}: ${excerpt(c.ocsp.join(" | "))}`);
    } else if (through && !accepted) {
      tally.fail("data passed without an accepted OCSP answer", `${where}: ${verdict}`);
    } else tally.outcome(accepted ? "OCSP: Certificate accepted" : verdict.replace(/\d+/g, "N"));
  });
  tally.note(
    `${seen.length} connections through the proxy, ${passed.filter(Boolean).length} let through`,
  );
  await Deno.remove(dir, { recursive: true });
  return tally.summary;
}

if (import.meta.main) {
  // the harness (process.ts) keeps a rejection from ending the process: end it here, either way.
  const { seed, cases } = fuzzArgs(Deno.args, 300);
  try {
    printSummary(await ocspFuzz(seed, cases));
    Deno.exit(0);
  } catch (e) {
    console.error(e);
    Deno.exit(1);
  }
}
