/**
 * Session resumption: the server-side cache and tickets, and the session a client-mode service
 * offers again to the same server.
 */
import {
  cstr,
  lib,
  type Ptr,
  SSL_CTRL_SET_SESS_CACHE_MODE,
  SSL_CTRL_SET_SESS_CACHE_SIZE,
  SSL_CTRL_SET_TLSEXT_TICKET_KEYS,
  SSL_SESS_CACHE_CLIENT,
  SSL_SESS_CACHE_OFF,
  SSL_SESS_CACHE_SERVER,
} from "./ffi.ts";
import { SSL_OPTIONS } from "./options.ts";
import { check, type TlsContext, type TlsContextLog } from "./tls.ts";

export function configureSessions(context: TlsContext, log: TlsContextLog): void {
  const { ssl } = lib();
  const { ctx, opts } = context;
  if (!opts.sessionResume) {
    ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, BigInt(SSL_SESS_CACHE_OFF), null);
    ssl.SSL_CTX_set_options(ctx, SSL_OPTIONS.NO_TICKET);
    log(6, "Session resumption disabled");
    return;
  }
  const mode = opts.client ? SSL_SESS_CACHE_CLIENT : SSL_SESS_CACHE_SERVER;
  ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, BigInt(mode), null);
  ssl.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_SIZE, BigInt(opts.sessionCacheSize), null);
  if (!opts.client) {
    // Sessions are only resumed by the service that created them.
    const sid = cstr(opts.name || "stunnel").subarray(0, -1).subarray(0, 32);
    ssl.SSL_CTX_set_session_id_context(ctx, sid, sid.length);
  }
  log(6, "Session resumption enabled");
}

/** Ticket keys (80 bytes: name, HMAC key, AES key) shared by the contexts of all threads. */
export function setTicketKeys(context: TlsContext, keys: Uint8Array): void {
  const copy = new Uint8Array(keys);
  check(
    Number(lib().ssl.SSL_CTX_ctrl_str(context.ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80n, copy)) ===
      1,
    "SSL_CTX_set_tlsext_ticket_keys",
  );
}

/** The last session a client-mode service negotiated, offered again on its next connect. */
export class ClientSessions {
  private session: Ptr = null;

  offer(ssl: Ptr): void {
    if (this.session !== null) lib().ssl.SSL_set_session(ssl, this.session);
  }

  remember(ssl: Ptr): void {
    const { ssl: lssl } = lib();
    const session = lssl.SSL_get1_session(ssl);
    if (session === null) return;
    if (this.session !== null) lssl.SSL_SESSION_free(this.session);
    this.session = session;
  }

  close(): void {
    if (this.session !== null) lib().ssl.SSL_SESSION_free(this.session);
    this.session = null;
  }
}
