/**
 * Session resumption: the server-side cache and tickets, and the session a client-mode service
 * offers again to the same server.
 *
 * Tickets are protected with keys derived from a per-process random secret (shared by the
 * threads) and the digest of the service's settings, or, with `ticketKeySecret` and
 * `ticketMacSecret`, by stunnel's ticket key callback over those two secrets (AES-CBC with the
 * key secret, HMAC-SHA256 with the MAC secret), so that tickets survive a restart and are
 * accepted by every instance, ours or stunnel's, sharing the secrets.
 *
 * A resumed session skips the client's authentication: it must never be resumed where a full
 * handshake would now check more or otherwise. A reload that changes a service's settings (its
 * options or the contents of its CA and CRL files) changes its ticket keys, and, for a service
 * that authenticates its clients (certificates, PSK), its session ID context, which OpenSSL
 * compares with the one in every session it resumes: a ticket (whatever its keys), a session
 * ID of the cache or one from sessiond. A service that authenticates nobody keeps stunnel's
 * context, its name, so that its sessions are still shared with stunnel instances.
 *
 * The callbacks are one per thread and never closed: an SSL object can outlive the context
 * it was made from (a reload frees contexts while connections still use them). They find their
 * connection, and through it the context, by the SSL object.
 */
import {
  copyTo,
  drainErrors,
  lib,
  type Ptr,
  SSL_CTRL_SET_SESS_CACHE_MODE,
  SSL_CTRL_SET_SESS_CACHE_SIZE,
  SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB,
  SSL_CTRL_SET_TLSEXT_TICKET_KEYS,
  SSL_SESS_CACHE_CLIENT,
  SSL_SESS_CACHE_OFF,
  SSL_SESS_CACHE_SERVER,
  TLS1_3_VERSION,
} from "../sys/ffi.ts";
import {
  check,
  connectionOf,
  type ContextHandle,
  type ContextOptions,
  decodeSession,
  encodeSession,
  type TlsContextLog,
} from "./core.ts";
import { hkdfSha256, sha256 } from "./digest.ts";

export async function configureSessions(
  context: ContextHandle,
  log: TlsContextLog,
): Promise<void> {
  const { ssl } = lib();
  const { ctx, opts } = context;
  if (!opts.client) {
    // Sessions are only resumed by the service, and the settings, that created them.
    const sid = sessionIdContext(context);
    check(
      ssl.SSL_CTX_set_session_id_context(ctx, sid, sid.length) === 1,
      "SSL_CTX_set_session_id_context",
    );
    // No tickets at all in TLS 1.3 either (SSL_OP_NO_TICKET alone leaves stateful ones).
    if (!opts.sessionResume) {
      check(ssl.SSL_CTX_set_num_tickets(ctx, 0n) === 1, "SSL_CTX_set_num_tickets");
    }
  }
  const secrets = ticketSecrets(context);
  if (opts.ticketKeySecret) log(6, "ticketKeySecret configured");
  if (opts.ticketMacSecret) log(6, "ticketMacSecret configured");
  if (opts.client) {
    if (opts.ticketKeySecret) log(5, "ticketKeySecret is ignored in the client mode");
    if (opts.ticketMacSecret) log(5, "ticketMacSecret is ignored in the client mode");
  }
  if (!opts.sessionResume) {
    ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, BigInt(SSL_SESS_CACHE_OFF), null);
    log(6, "Session resumption disabled");
  } else {
    const mode = opts.client ? SSL_SESS_CACHE_CLIENT : SSL_SESS_CACHE_SERVER;
    ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, BigInt(mode), null);
    log(6, "Session resumption enabled");
  }
  // 0 is "no limit" for OpenSSL as for stunnel; the timeout is also the tickets' lifetime.
  ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_SIZE, BigInt(opts.sessionCacheSize), null);
  ssl.SSL_CTX_set_timeout(ctx, BigInt(opts.sessionCacheTimeout));
  if (!opts.sessionResume) return;
  // sessiond: the server's sessions also go to (and come from) the external cache.
  // Loaded only then: its node:dgram costs every start ~50 ms and 6 MiB.
  if (!opts.client && opts.sessiond) {
    (await import("./sessiond.ts")).configureSessiond(context, opts.sessiond, log);
  }
  if (opts.client) {
    ssl.SSL_CTX_sess_set_new_cb(ctx, callbacks().newSession.pointer);
    context.clientSessions.share(opts.name);
  } else if (secrets) {
    const { ticketKey, ticketData } = callbacks();
    ssl.SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, ticketKey.pointer);
    check(
      ssl.SSL_CTX_set_session_ticket_cb(ctx, ticketData.pointer, null, null) === 1,
      "SSL_CTX_set_session_ticket_cb",
    );
  }
}

/**
 * Ticket keys (80 bytes: name, HMAC key, AES key) derived from the per-process secret `keys`
 * and the digest of the service's settings: the same in the contexts of every thread and after
 * a reload that leaves the service as it was; new ones when its settings change, which no
 * ticket issued before then decrypts. A service with ticket secrets uses the key callback
 * instead.
 */
export function setTicketKeys(context: ContextHandle, keys: Uint8Array): void {
  if (ticketSecrets(context)) return;
  const info = new Uint8Array([
    ...new TextEncoder().encode("ticket keys\0"),
    ...settingsDigest(context),
  ]);
  const derived = hkdfSha256(keys, info, 80);
  check(
    Number(
      lib().ssl.SSL_CTX_ctrl_str(context.ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80n, derived),
    ) ===
      1,
    "SSL_CTX_set_tlsext_ticket_keys",
  );
}

/**
 * Every option that builds a context goes into the digest of a service's settings; the type
 * check below fails when core.ts's ContextOptions gains one that is not listed here.
 */
const SETTINGS = [
  "name",
  "client",
  "cert",
  "key",
  "ciphers",
  "ciphersuites",
  "curves",
  "options",
  "securityLevel",
  "sslVersionMin",
  "sslVersionMax",
  "sessionResume",
  "sessionCacheSize",
  "sessionCacheTimeout",
  "sni",
  "CAfile",
  "CApath",
  "verifyChain",
  "checkHost",
  "checkIP",
  "checkEmail",
  "requestCert",
  "requireCert",
  "verifyPeer",
  "CRLfile",
  "CRLpath",
  "redirect",
  "ticketKeySecret",
  "ticketMacSecret",
  "PSKsecrets",
  "PSKidentity",
  "config",
  "renegotiation",
  "OCSP",
  "OCSPaia",
  "OCSPflag",
  "OCSPnonce",
  "verify",
  "TIMEOUTbusy",
  "TIMEOUTconnect",
  "engine",
  "sessiond",
  "CAengine",
  "alpn",
] as const satisfies readonly (keyof ContextOptions)[];
type Unlisted = Exclude<keyof ContextOptions, typeof SETTINGS[number]>;
// A type error here names an option of ContextOptions that SETTINGS lacks.
const _everySetting: [Unlisted] extends [never] ? true : Unlisted = true;

const digests = new WeakMap<ContextHandle, Uint8Array>();

/**
 * SHA-256 over the service's settings: its options, and the contents of the files and
 * directories of trusted CAs and CRLs that they name (a reload reads them again: a CA file
 * replaced, or a CRL that revokes a client, is a change too).
 */
function settingsDigest(context: ContextHandle): Uint8Array {
  let digest = digests.get(context);
  if (digest) return digest;
  const { opts } = context;
  const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const parts: Parts = [JSON.stringify(
    SETTINGS.map((name) => [name, opts[name] ?? null]),
    (_, value) => value instanceof Uint8Array ? hex(value) : value,
  )];
  hashFile(parts, "CAfile", opts.CAfile);
  hashDirectory(parts, "CApath", opts.CApath);
  hashFile(parts, "CRLfile", opts.CRLfile);
  hashDirectory(parts, "CRLpath", opts.CRLpath);
  digest = sha256(...parts);
  digests.set(context, digest);
  return digest;
}

/** What goes into a digest, in order. */
type Parts = (Uint8Array | string)[];

/** A labelled part of a digest, its length first (no two sequences of parts hash alike). */
function hashPart(parts: Parts, label: string, bytes: Uint8Array | string): void {
  const data = typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes;
  parts.push(`\0${label}\0${data.length}\0`, data);
}

function hashFile(parts: Parts, label: string, path: string | undefined): void {
  if (!path) return;
  try {
    hashPart(parts, label, Deno.readFileSync(path));
  } catch (e) {
    // OpenSSL reads it too and says why it cannot: the context is not made.
    hashPart(parts, `${label} unreadable`, (e as Error).name);
  }
}

function hashDirectory(parts: Parts, label: string, path: string | undefined): void {
  if (!path) return;
  let names: string[];
  try {
    names = [...Deno.readDirSync(path)].filter((e) => !e.isDirectory).map((e) => e.name);
  } catch (e) {
    hashPart(parts, `${label} unreadable`, (e as Error).name);
    return;
  }
  for (const name of names.sort()) {
    hashPart(parts, `${label} entry`, name);
    hashFile(parts, `${label} file`, `${path}/${name}`);
  }
}

/** The client is authenticated (a certificate, a pre-shared key) or `config` may ask for it. */
function authenticatesClients(opts: ContextOptions): boolean {
  return opts.requestCert || opts.requireCert || opts.verifyChain || opts.verifyPeer ||
    opts.PSKsecrets !== undefined || opts.config.length > 0;
}

const sidContexts = new WeakMap<ContextHandle, Uint8Array<ArrayBuffer>>();

/**
 * The session ID context of a server-mode service, which every session it creates carries and
 * OpenSSL compares before resuming one: stunnel's, the service's name (at most 32 bytes), for
 * a service that authenticates nobody; the digest of its name and settings for one that does.
 * sni.ts sets it on a connection before OpenSSL looks for a session, for the service the
 * client's server name selects.
 */
export function sessionIdContext(context: ContextHandle): Uint8Array<ArrayBuffer> {
  let sid = sidContexts.get(context);
  if (sid) return sid;
  const { opts } = context;
  sid = authenticatesClients(opts)
    ? sha256("session id context\0", settingsDigest(context))
    : new Uint8Array(new TextEncoder().encode(opts.name || "stunnel").subarray(0, 32));
  sidContexts.set(context, sid);
  return sid;
}

/**
 * The last resumable session a client-mode service negotiated, offered on its next connect.
 * Like stunnel's one per service, it is shared by the threads: each new session is sent to the
 * same service's contexts in the other threads (whichever thread the next client lands on).
 */
export class ClientSessions {
  private session: Ptr = null;
  private closed = false;
  /** The service's name, once it shares its sessions with the other threads. */
  private name: string | undefined;

  /** Shares this service's sessions with its contexts in the other threads. */
  share(name: string): void {
    if (this.closed || this.name !== undefined) return;
    this.name = name;
    let set = sharing.get(name);
    if (!set) sharing.set(name, set = new Set());
    set.add(this);
    sessionChannel();
  }

  offer(ssl: Ptr): void {
    if (this.session !== null) lib().ssl.SSL_set_session(ssl, this.session);
  }

  /** After a handshake: the session, if it can be resumed already (TLS 1.2 and older). */
  remember(ssl: Ptr): void {
    const session = lib().ssl.SSL_get1_session(ssl);
    if (session !== null && !this.keep(session)) lib().ssl.SSL_SESSION_free(session);
  }

  /**
   * Takes over a reference to `session` (true) unless it is of no use (false); a session of
   * this thread (`fromHere`) goes to the other threads too.
   */
  keep(session: Ptr, fromHere = true): boolean {
    const { ssl } = lib();
    if (this.closed || session === null || ssl.SSL_SESSION_is_resumable(session) !== 1) {
      return false;
    }
    if (Deno.UnsafePointer.equals(session, this.session)) return false;
    if (this.session !== null) ssl.SSL_SESSION_free(this.session);
    this.session = session;
    if (fromHere && this.name !== undefined) {
      const der = encodeSession(session);
      if (der) sessionChannel().postMessage({ name: this.name, der } satisfies SharedSession);
    }
    return true;
  }

  close(): void {
    this.closed = true;
    if (this.name !== undefined) sharing.get(this.name)?.delete(this);
    if (this.session !== null) lib().ssl.SSL_SESSION_free(this.session);
    this.session = null;
  }
}

/** A client session on its way to the other threads (DER, as i2d_SSL_SESSION writes it). */
interface SharedSession {
  name: string;
  der: Uint8Array;
}

/** The client-mode services of this thread that share sessions, by service name. */
const sharing = new Map<string, Set<ClientSessions>>();
let channel: BroadcastChannel | undefined;

function sessionChannel(): BroadcastChannel {
  if (!channel) {
    channel = new BroadcastChannel("stunnel-deno/client-sessions");
    channel.onmessage = (e: MessageEvent<SharedSession>) => {
      for (const sessions of sharing.get(e.data.name) ?? []) {
        const session = decodeSession(e.data.der);
        if (session !== null && !sessions.keep(session, false)) {
          lib().ssl.SSL_SESSION_free(session);
        }
      }
    };
  }
  return channel;
}

/** The ticket secrets of a server-mode service and the key name derived from them. */
interface TicketSecrets {
  key: Uint8Array<ArrayBuffer>;
  mac: Uint8Array<ArrayBuffer>;
  /** 16 bytes that identify the secrets in every ticket (stunnel ignores them on decryption). */
  name: Uint8Array<ArrayBuffer>;
}

const secretsOf = new WeakMap<ContextHandle, TicketSecrets | null>();

function ticketSecrets(context: ContextHandle): TicketSecrets | undefined {
  let found = secretsOf.get(context);
  if (found === undefined) {
    const { client, ticketKeySecret: key, ticketMacSecret: mac } = context.opts;
    found = null;
    if (!client && key && mac) {
      const digest = sha256(key, mac);
      found = {
        key: new Uint8Array(key),
        mac: new Uint8Array(mac),
        name: new Uint8Array(digest.subarray(0, 16)),
      };
    }
    secretsOf.set(context, found);
  }
  return found ?? undefined;
}

const TICKET_KEY = {
  parameters: ["pointer", "pointer", "pointer", "pointer", "pointer", "i32"],
  result: "i32",
} as const;
const TICKET_DATA = { parameters: ["pointer", "pointer"], result: "i32" } as const;
const NEW_SESSION = { parameters: ["pointer", "pointer"], result: "i32" } as const;

interface Callbacks {
  ticketKey: Deno.UnsafeCallback<typeof TICKET_KEY>;
  ticketData: Deno.UnsafeCallback<typeof TICKET_DATA>;
  newSession: Deno.UnsafeCallback<typeof NEW_SESSION>;
}

let threadCallbacks: Callbacks | undefined;

function callbacks(): Callbacks {
  threadCallbacks ??= {
    ticketKey: new Deno.UnsafeCallback(TICKET_KEY, onTicketKey),
    ticketData: new Deno.UnsafeCallback(TICKET_DATA, onTicketData),
    newSession: new Deno.UnsafeCallback(NEW_SESSION, onNewSession),
  };
  return threadCallbacks;
}

const IV_LENGTH = 16;

/**
 * stunnel's ssl_tlsext_ticket_key_cb: HMAC-SHA256 keyed with ticketMacSecret, AES-128-CBC or
 * AES-256-CBC (by the length of ticketKeySecret) with a random IV. Returns 1, or 2 in TLS 1.3
 * (a resumed session gets a new ticket); -1 fails the handshake.
 */
function onTicketKey(
  ssl: Ptr,
  keyName: Ptr,
  iv: Ptr,
  cipherCtx: Ptr,
  hmacCtx: Ptr,
  enc: number,
): number {
  const conn = connectionOf(ssl);
  try {
    const secrets = conn && ticketSecrets(conn.context);
    // Not ours to judge: no ticket is issued, and a received one is not decrypted.
    if (!secrets) return 0;
    conn.log(7, "Session ticket processing callback");
    const { ssl: s, crypto } = lib();
    if (
      crypto.HMAC_Init_ex(hmacCtx, secrets.mac, secrets.mac.length, crypto.EVP_sha256(), null) !== 1
    ) {
      conn.log(3, "HMAC_Init_ex failed");
      return -1;
    }
    const cipher = secrets.key.length === 16 ? crypto.EVP_aes_128_cbc() : crypto.EVP_aes_256_cbc();
    if (enc) {
      copyTo(keyName, secrets.name);
      if (crypto.RAND_bytes(iv, IV_LENGTH) !== 1) {
        conn.log(3, "RAND_bytes failed");
        return -1;
      }
      if (crypto.EVP_EncryptInit_ex(cipherCtx, cipher, null, secrets.key, iv) !== 1) {
        conn.log(3, "EVP_EncryptInit_ex failed");
        return -1;
      }
    } else if (crypto.EVP_DecryptInit_ex(cipherCtx, cipher, null, secrets.key, iv) !== 1) {
      conn.log(3, "EVP_DecryptInit_ex failed");
      return -1;
    }
    return s.SSL_version(ssl) === TLS1_3_VERSION ? 2 : 1;
  } catch (e) {
    drainErrors();
    conn?.log(3, `Session ticket processing failed: ${(e as Error).message}`);
    return -1;
  }
}

/**
 * The application data stunnel puts into its tickets (a pointer-sized "authenticated" flag,
 * zero here): without it stunnel does not resume a session from one of our tickets.
 */
const TICKET_APP_DATA = new Uint8Array(8);

function onTicketData(ssl: Ptr): number {
  try {
    const { ssl: s } = lib();
    const session = s.SSL_get1_session(ssl);
    if (session === null) return 0;
    const ok = s.SSL_SESSION_set1_ticket_appdata(
      session,
      TICKET_APP_DATA,
      BigInt(TICKET_APP_DATA.length),
    );
    s.SSL_SESSION_free(session);
    return ok;
  } catch {
    drainErrors();
    return 0;
  }
}

/** A client got a new session (in TLS 1.3 a ticket after the handshake): keep it for reuse. */
function onNewSession(ssl: Ptr, session: Ptr): number {
  try {
    const conn = connectionOf(ssl);
    if (!conn) return 0;
    conn.log(7, "New session callback");
    return conn.context.clientSessions.keep(session) ? 1 : 0;
  } catch {
    drainErrors();
    return 0;
  }
}
