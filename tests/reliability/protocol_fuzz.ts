/**
 * Protocol-parser fuzz: every `protocol =` negotiation (protocols/mod.ts), in each mode, runs
 * in-process against scripted hostile peers over protocols/channel.ts Channel: a valid
 * transcript, mutated, cut short, split at random, or random bytes. Each case must end, within
 * a time limit, by completing or by throwing a ProtocolError (the connection logs its line);
 * an I/O error of the peer may pass through. Any other exception, an unhandled rejection, a
 * hang or a runaway amount of output fails the case.
 *
 *   deno run -A tests/reliability/protocol_fuzz.ts [--seed N] [--cases N]
 *
 * Names in SOCKS requests would reach the name service: the program runs itself again in a
 * network namespace of its own (`unshare -rn`) with only the loopback interface, up.
 */
import {
  type ByteStream,
  Channel,
  type Negotiation,
  type NegotiationContext,
  type Phase,
  ProtocolError,
} from "../../protocols/channel.ts";
import { negotiationFor } from "../../protocols/mod.ts";
import { parseConfigText } from "../../lib/config/parser.ts";
import type { ServiceOptions } from "../../lib/config/types.ts";
import type { Logger } from "../../lib/sys/log.ts";
import { memoryEnv } from "./config_fuzz.ts";
import { excerpt, type FuzzSummary, FuzzTally, printSummary } from "./fuzz.ts";
import { fuzzArgs, mutate, Rng } from "./rng.ts";

type Side = "local" | "remote" | "tls";
type Script = Partial<Record<Side, Uint8Array>>;

/** A peer that sends its script in random pieces, then EOF (or a reset); records output. */
class ScriptedStream implements ByteStream {
  #pieces: Uint8Array<ArrayBuffer>[] = [];
  #unread: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  written = 0;

  constructor(
    data: Uint8Array,
    rng: Rng,
    private delayFirstMs: number,
    private readonly reset: boolean,
  ) {
    for (let at = 0; at < data.length;) {
      const n = rng.chance(0.5) ? data.length - at : rng.int(1, data.length - at);
      this.#pieces.push(data.slice(at, at + n));
      at += n;
    }
  }

  async read(): Promise<Uint8Array<ArrayBuffer> | null> {
    if (this.#unread.length) {
      const u = this.#unread;
      this.#unread = new Uint8Array(0);
      return u;
    }
    if (this.delayFirstMs) {
      await new Promise((r) => setTimeout(r, this.delayFirstMs));
      this.delayFirstMs = 0;
    }
    const piece = this.#pieces.shift();
    if (piece) return piece;
    if (this.reset) {
      throw new Deno.errors.ConnectionReset("Connection reset by peer (os error 104)");
    }
    return null;
  }

  write(data: Uint8Array<ArrayBuffer>): Promise<void> {
    this.written += data.length;
    return Promise.resolve();
  }

  unread(data: Uint8Array<ArrayBuffer>): void {
    const joined = new Uint8Array(data.length + this.#unread.length);
    joined.set(data);
    joined.set(this.#unread, data.length);
    this.#unread = joined;
  }
}

const enc = (s: string) => new TextEncoder().encode(s);
const bytes = (...parts: (string | number[])[]) => {
  const out: number[] = [];
  for (const p of parts) out.push(...(typeof p === "string" ? Array.from(enc(p)) : p));
  return Uint8Array.from(out);
};

/** A type-2 NTLM message (challenge) in Base64. */
function ntlmChallenge(rng: Rng): string {
  const msg = new Uint8Array(48);
  msg.set(enc("NTLMSSP\0"));
  msg[8] = 2;
  msg.set(rng.bytes(8), 24);
  return btoa(String.fromCharCode(...msg));
}

/** One negotiation to fuzz: its section, and the transcript its peers send when all is well. */
interface Target {
  name: string;
  section: string;
  valid(rng: Rng): Script;
  /** The server-mode protocols that detect a client speaking first wait 200 ms for it. */
  quietLocal?: boolean;
}

const SERVER = "accept = 127.0.0.1:1\ncert = /certs/server.pem\n";
const CLIENT = "client = yes\naccept = 127.0.0.1:1\n";

function targets(ldapPort: number): Target[] {
  return [
    {
      name: "smtp client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = smtp\n`,
      valid: () => ({
        remote: bytes(
          "220-mail.example ESMTP\r\n220 ok\r\n250-mail\r\n250 STARTTLS\r\n220 go ahead\r\n",
        ),
      }),
    },
    {
      name: "smtp client with AUTH LOGIN",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = smtp\nprotocolUsername = u\n` +
        "protocolPassword = p\nprotocolAuthentication = LOGIN\n",
      valid: () => ({
        remote: bytes("220 mail ESMTP\r\n250 STARTTLS\r\n220 go\r\n"),
        tls: bytes("250 hi\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n"),
      }),
    },
    {
      name: "smtp client with AUTH PLAIN",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = smtp\nprotocolUsername = u\n` +
        "protocolPassword = p\n",
      valid: () => ({
        remote: bytes("220 mail ESMTP\r\n250 STARTTLS\r\n220 go\r\n"),
        tls: bytes("250 hi\r\n235 ok\r\n"),
      }),
    },
    {
      name: "smtp server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = smtp\n`,
      quietLocal: true,
      valid: () => ({
        remote: bytes("220-mail.example ESMTP Postfix\r\n220 more\r\n"),
        local: bytes("EHLO client.example\r\nSTARTTLS\r\n"),
      }),
    },
    {
      name: "imap client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = imap\n`,
      valid: () => ({ remote: bytes("* OK IMAP4rev1 ready\r\nstunnel OK Begin TLS\r\n") }),
    },
    {
      name: "imap server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = imap\n`,
      quietLocal: true,
      valid: () => ({
        remote: bytes(
          "* OK [CAPABILITY IMAP4rev1] ready\r\n* CAPABILITY IMAP4rev1\r\na OK done\r\n" +
            "* BYE\r\nstunnel OK\r\n",
        ),
        local: bytes("a CAPABILITY\r\nb STARTTLS\r\n"),
      }),
    },
    {
      name: "pop3 client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = pop3\n`,
      valid: () => ({ remote: bytes("+OK POP3 ready\r\n+OK Begin TLS\r\n") }),
    },
    {
      name: "pop3 server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = pop3\n`,
      valid: () => ({ remote: bytes("+OK POP3 ready\r\n"), local: bytes("CAPA\r\nSTLS\r\n") }),
    },
    {
      name: "nntp client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = nntp\n`,
      valid: () => ({ remote: bytes("200 news ready\r\n382 go ahead\r\n") }),
    },
    {
      name: "ldap client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = ldap\n`,
      valid: () => ({
        remote: bytes([
          0x30,
          0x0c,
          0x02,
          0x01,
          0x01,
          0x78,
          0x07,
          0x0a,
          0x01,
          0x00,
          0x04,
          0,
          0x04,
          0,
        ]),
      }),
    },
    {
      name: "pgsql client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = pgsql\n`,
      valid: () => ({ remote: bytes("S") }),
    },
    {
      name: "pgsql server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = pgsql\n`,
      valid: () => ({ local: bytes([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]) }),
    },
    {
      name: "cifs client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = cifs\n`,
      valid: () => ({ remote: bytes([0x83, 0, 0, 1, 0x8e]) }),
    },
    {
      name: "cifs server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = cifs\n`,
      valid: () => ({ local: bytes([0x81, 0, 0, 4, 1, 2, 3, 4]) }),
    },
    {
      name: "connect client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = connect\nprotocolHost = t.example:443\n`,
      valid: () => ({ remote: bytes("HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n") }),
    },
    {
      name: "connect client with Basic",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = connect\nprotocolHost = t:443\n` +
        "protocolUsername = u\nprotocolPassword = p\nprotocolHeader = X-A: b\n",
      valid: () => ({ remote: bytes("HTTP/1.0 200 OK\r\n\r\n") }),
    },
    {
      name: "connect client with NTLM",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = connect\nprotocolHost = t:443\n` +
        "protocolUsername = u\nprotocolPassword = p\nprotocolAuthentication = NTLM\n" +
        "protocolDomain = D\n",
      valid: (rng) => ({
        remote: bytes(
          "HTTP/1.1 407 Proxy Authentication Required\r\n" +
            `Proxy-Authenticate: NTLM ${ntlmChallenge(rng)}\r\nContent-Length: 5\r\n\r\nhello` +
            "HTTP/1.1 200 Connection established\r\n\r\n",
        ),
      }),
    },
    {
      name: "socks server",
      section: `${SERVER}protocol = socks\n`,
      valid: (rng) => ({
        tls: rng.pick([
          bytes([5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80]),
          bytes([5, 2, 1, 0, 5, 1, 0, 4, ...new Array(15).fill(0), 2, 1, 187]),
          bytes([5, 1, 0, 5, 1, 0, 3, 9], "localhost", [0, 80]),
          bytes([5, 1, 0, 5, 0xf0, 0, 3, 9], "localhost", [0, 0]),
          bytes([4, 1, 0, 80, 10, 0, 0, 1], "user\0"),
          bytes([4, 1, 0, 80, 0, 0, 0, 1], "user\0example.invalid\0"),
          bytes([4, 0xf0, 0, 0, 0, 0, 0, 1], "\0localhost\0"),
        ]),
      }),
    },
    {
      name: "socks client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = socks\n`,
      valid: () => ({ tls: bytes([5, 0, 5, 0, 0, 1, 0, 0, 0, 0, 0, 0]) }),
    },
    {
      name: "capwinctrl client",
      section: `${CLIENT}protocol = capwinctrl\n`,
      valid: () => ({ local: bytes("AUTH\x1fuser\x1fpass\x1fx\x1c") }),
    },
    {
      name: "capwin client",
      section: `${CLIENT}connect = 127.0.0.1:2\nprotocol = capwin\n`,
      valid: () => ({ tls: bytes("BINGO") }),
    },
    {
      name: "capwin server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = capwin\n` +
        `protocolHost = 127.0.0.1:${ldapPort}\nTIMEOUTbusy = 1\nTIMEOUTconnect = 1\n`,
      valid: () => ({ tls: bytes("AUTH\x1fuser\x1fpass\x1f\x1c") }),
    },
    {
      name: "proxy server",
      section: `${SERVER}connect = 127.0.0.1:2\nprotocol = proxy\n`,
      valid: () => ({}),
    },
  ];
}

/** The answer capwin's LDAP bind gets: stunnel's one success response, mutated or not. */
const BIND_SUCCESS: Uint8Array = Uint8Array.from(
  "30 84 00 00 00 10 02 01 01 61 84 00 00 00 07 0a 01 00 04 00 04 00".split(" "),
  (h) => parseInt(h, 16),
);

/** A hostile LDAP server for capwin: each connection gets `answer.bytes`, then a close. */
function ldapServer(answer: { bytes: Uint8Array; stall: boolean }): Deno.TcpListener {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  (async () => {
    for await (const conn of listener) {
      (async () => {
        await conn.read(new Uint8Array(256)).catch(() => null);
        if (!answer.stall) {
          await conn.write(answer.bytes).catch(() => 0);
          conn.close();
        } else setTimeout(() => conn.close(), 3000);
      })().catch(() => {});
    }
  })().catch(() => {});
  return listener;
}

/** Which channels each phase gets (lib/proxy/connection.ts establish()). */
function channelsOf(opts: ServiceOptions, n: Negotiation, phase: Phase): Side[] {
  if (phase === "early") return ["local"];
  if (opts.client) return phase === "middle" ? ["local", "remote"] : ["local", "tls"];
  if (n.connectBeforeTls) return phase === "middle" ? ["local", "remote"] : ["tls", "remote"];
  return phase === "middle" ? ["tls"] : ["tls", "remote"];
}

/** The hostile version of a valid transcript. */
function hostile(rng: Rng, valid: Uint8Array | undefined): Uint8Array {
  const base = valid ?? new Uint8Array(0);
  switch (rng.int(0, 5)) {
    case 0:
      return base; // as it should be (still split at random)
    case 1:
      return base.slice(0, rng.int(0, base.length)); // cut short
    case 2:
      return rng.bytes(rng.int(0, 300));
    case 3: // a line longer than any negotiation accepts
      return Uint8Array.from([
        ...base.subarray(0, rng.int(0, base.length)),
        ...new Uint8Array(9000).fill(65),
      ]);
    default: {
      let out: Uint8Array = base;
      for (let i = rng.int(1, 4); i > 0; i--) out = mutate(rng, out);
      return out;
    }
  }
}

const CASE_LIMIT_MS = 10_000;
const MAX_OUTPUT = 1 << 20;

export async function protocolFuzz(seed: number, cases: number): Promise<FuzzSummary> {
  const tally = new FuzzTally("protocol fuzz", seed);
  const errorLines = new Set<string>();
  const unhandled: unknown[] = [];
  const onUnhandled = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    unhandled.push(e.reason);
  };
  globalThis.addEventListener("unhandledrejection", onUnhandled);
  const answer = { bytes: BIND_SUCCESS as Uint8Array, stall: false };
  const ldap = ldapServer(answer);
  const all = targets(ldap.addr.port);
  const env = memoryEnv({ "/certs/server.pem": "-----BEGIN CERTIFICATE-----" }, "/nonexistent");
  const prepared = await Promise.all(all.map(async (t) => {
    const opts = parseConfigText(`[p]\n${t.section}`, "/fuzz.conf", env).services[0];
    return { t, opts, negotiation: (await negotiationFor(opts))! };
  }));
  const root = new Rng(seed);
  try {
    // capwin's client mode sends the process's credentials: set them first, as capwinctrl
    // does (which ends its connection with a ProtocolError, by design).
    const control = prepared.find((p) => p.t.name === "capwinctrl client")!;
    await runCase(control, { local: bytes("AUTH\x1fuser\x1fpass\x1fx\x1c") }, new Rng(0), () => {})
      .catch((e) => {
        if (!(e instanceof ProtocolError)) throw e;
      });
    for (let i = 0; i < cases; i++) {
      const rng = root.fork();
      const p = prepared[i % prepared.length];
      const valid = p.t.valid(rng);
      const script: Script = {};
      for (const side of ["local", "remote", "tls"] as const) {
        script[side] = hostile(rng, valid[side]);
      }
      answer.bytes = rng.chance(0.5) ? BIND_SUCCESS : hostile(rng, BIND_SUCCESS);
      answer.stall = rng.chance(0.05);
      const where = `${p.t.name}, case ${i} of --seed ${seed}`;
      const lines: string[] = [];
      const before = unhandled.length;
      try {
        const written = await runCase(p, script, rng, (level, m) => {
          if (level <= 3) lines.push(m);
        });
        if (written > MAX_OUTPUT) {
          tally.fail("runaway output", `${written} bytes written; ${where}`);
        } else tally.outcome("completed");
      } catch (e) {
        if (e instanceof ProtocolError) {
          const said = e.line || lines.at(-1);
          tally.outcome(said ? "ProtocolError, its line logged" : "ended after answering the peer");
          if (said) errorLines.add(`${p.t.name}: ${said.replace(/\d+/g, "N").slice(0, 100)}`);
        } else if (e instanceof Deno.errors.ConnectionReset) {
          tally.outcome("the peer's reset passed through");
        } else {
          tally.fail(
            `${(e as Error)?.name ?? typeof e} escaped (${p.t.name})`,
            `${String(e)}; ${where}; peers sent ${
              Object.entries(script).map(([k, v]) =>
                `${k} ${excerpt(new TextDecoder().decode(v), 120)}`
              ).join(", ")
            }`,
          );
        }
      }
      await new Promise((r) => setTimeout(r, 0));
      if (unhandled.length > before) {
        tally.fail("unhandled rejection", `${String(unhandled.at(-1))}; ${where}`);
      }
    }
  } finally {
    ldap.close();
    globalThis.removeEventListener("unhandledrejection", onUnhandled);
  }
  tally.note(`${all.length} negotiations; ${errorLines.size} distinct error lines logged`);
  return tally.summary;
}

/** Runs the phases of one negotiation against the script; the bytes it wrote. */
async function runCase(
  p: { t: Target; opts: ServiceOptions; negotiation: Negotiation },
  script: Script,
  rng: Rng,
  onLog: (level: number, message: string) => void,
): Promise<number> {
  const log: Logger = Object.assign(onLog, { level: 7 });
  const reset = rng.chance(0.1);
  const streams = {
    local: new ScriptedStream(
      script.local ?? new Uint8Array(0),
      rng,
      p.t.quietLocal && rng.chance(0.7) ? 250 : 0,
      reset,
    ),
    remote: new ScriptedStream(script.remote ?? new Uint8Array(0), rng, 0, reset),
    tls: new ScriptedStream(script.tls ?? new Uint8Array(0), rng, 0, reset),
  };
  const localConn = {
    localAddr: { transport: "tcp", hostname: "127.0.0.1", port: 8443 },
    remoteAddr: { transport: "tcp", hostname: "127.0.0.1", port: 50000 },
  } as unknown as Deno.Conn;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`hung: not done after ${CASE_LIMIT_MS} ms`)),
      CASE_LIMIT_MS,
    );
  });
  try {
    for (const phase of ["early", "middle", "late"] as const) {
      const run = p.negotiation[phase];
      if (!run) continue;
      const sides = channelsOf(p.opts, p.negotiation, phase);
      const channel = (side: Side) =>
        sides.includes(side) ? new Channel(streams[side], log, () => {}) : undefined;
      const ctx: NegotiationContext = {
        opts: p.opts,
        log,
        local: channel("local"),
        remote: channel("remote"),
        tls: channel("tls"),
        localConn,
        setTargets: () => {},
      };
      await Promise.race([run.call(p.negotiation, ctx), limit]);
      ctx.local?.release();
      ctx.remote?.release();
      ctx.tls?.release();
    }
  } finally {
    clearTimeout(timer);
  }
  return streams.local.written + streams.remote.written + streams.tls.written;
}

if (import.meta.main) {
  const { seed, cases } = fuzzArgs(Deno.args, 3000);
  if (Deno.env.get("PROTOCOL_FUZZ_NETNS") !== "1") {
    // Again, in a network namespace with only the loopback interface.
    const self = new URL(import.meta.url).pathname;
    const out = await new Deno.Command("unshare", {
      args: [
        "-rn",
        "sh",
        "-c",
        'ip link set lo up && exec "$@"',
        "sh",
        Deno.execPath(),
        "run",
        "-A",
        self,
        "--seed",
        String(seed),
        "--cases",
        String(cases),
      ],
      env: { PROTOCOL_FUZZ_NETNS: "1" },
    }).spawn().status;
    Deno.exit(out.code);
  }
  printSummary(await protocolFuzz(seed, cases));
}
