/**
 * SNI virtual services (server mode): a section with `sni = MASTER:PATTERN` and no `accept` of
 * its own is a secondary service of MASTER. When a client's server name matches PATTERN during
 * MASTER's handshake, the connection switches to the secondary service's TLS context (its
 * certificate, its peer verification) and from then on belongs to that service (its connect
 * targets, its checks, its name in the log). Unknown names and no name stay with MASTER.
 *
 * OpenSSL asks for the decision in the servername callback, synchronously inside
 * SSL_do_handshake. One callback per thread serves every server-mode context of that thread; it
 * finds the connection by its SSL object.
 *
 * That callback comes after OpenSSL has decided to resume a session (a TLS 1.3 ticket above
 * all), which it does only for a session of the connection's session ID context: that of the
 * primary service, had nothing come before. So the client hello callback, before that decision,
 * reads the server name the client sent and sets the session ID context of the service it
 * selects: a session of the primary service is not resumed into a secondary one (which may
 * verify its clients, when the primary does not), nor the other way round.
 */
import {
  drainErrors,
  lib,
  type Ptr,
  readCString,
  SSL_CLIENT_HELLO_ERROR,
  SSL_CLIENT_HELLO_SUCCESS,
  SSL_CTRL_SET_TLSEXT_SERVERNAME_CB,
  SSL_TLSEXT_ERR_ALERT_FATAL,
  SSL_TLSEXT_ERR_NOACK,
  SSL_TLSEXT_ERR_OK,
  TLSEXT_NAMETYPE_host_name,
  TLSEXT_TYPE_server_name,
  X509_VP_FLAG_OVERWRITE,
  X509_VP_FLAG_RESET_FLAGS,
} from "../sys/ffi.ts";
import type { Logger } from "../sys/log.ts";
import type { ServiceOptions } from "../config/types.ts";
import { sessionIdContext } from "./session.ts";
import { addHelloStep, helloExtension, type HelloVerdict } from "./hello.ts";
import { check, type ContextHandle, type TlsConnection, TlsError } from "./core.ts";

const encoder = new TextEncoder();

/** ASCII-only case folding, as strcasecmp() in the C locale. */
function foldCase(bytes: Uint8Array): Uint8Array {
  return bytes.map((b) => b >= 0x41 && b <= 0x5a ? b + 0x20 : b);
}

/**
 * stunnel's rule: a pattern starting with `*` matches every name that ends with the rest of it
 * (`*.example.com` matches `a.example.com` and `a.b.example.com`); any other pattern matches
 * the whole name. Both ignore ASCII case.
 */
export function matchesPattern(servername: string, pattern: string): boolean {
  let name = foldCase(encoder.encode(servername));
  let want = foldCase(encoder.encode(pattern));
  if (want[0] === 0x2a) {
    want = want.subarray(1);
    if (name.length < want.length) return false;
    name = name.subarray(name.length - want.length);
  }
  return name.length === want.length && name.every((b, i) => b === want[i]);
}

/** What SNI routing sees of a service. */
export interface VirtualService {
  readonly name: string;
  readonly opts: Pick<ServiceOptions, "client" | "sniVirtual" | "accept">;
  readonly tls: ContextHandle;
}

/** A secondary service and the pattern that selects it. */
interface Route {
  pattern: string;
  service: VirtualService;
}

/** The secondary services of each primary service of this thread, in configuration order. */
const routes = new WeakMap<VirtualService, Route[]>();

/**
 * Links every secondary service to its primary one. Called each time a thread builds its
 * services (start and reload); the configuration has already checked that every MASTER names
 * a server-mode section at or before the secondary one.
 */
export function linkVirtualServices(services: readonly VirtualService[]): void {
  services.forEach((service, index) => {
    const virtual = service.opts.sniVirtual;
    if (!virtual || service.opts.client) return;
    const master = services.slice(0, index + 1).find((s) => s.name === virtual.master);
    if (!master) return;
    const list = routes.get(master) ?? [];
    list.push({ pattern: virtual.pattern, service });
    routes.set(master, list);
  });
}

/** A secondary service with no `accept` of its own is reached only through its primary one. */
export function isSecondaryOnly(service: VirtualService): boolean {
  return !service.opts.client && service.opts.sniVirtual !== undefined &&
    service.opts.accept.length === 0;
}

/** The connection side of a server-mode handshake. */
export interface SniPeer {
  /** The service the connection belongs to now. */
  readonly service: VirtualService;
  readonly log: Logger;
  /** Called when the client's server name selected a secondary service. */
  switchService(to: VirtualService): void;
}

/** Connections of this thread in a server-mode handshake, by the address of their SSL. */
const peers = new Map<bigint, SniPeer>();

function addressOf(p: Ptr): bigint {
  return BigInt(Deno.UnsafePointer.value(p));
}

/** Every secondary service `service` can switch to, directly or through another secondary. */
function reachable(service: VirtualService): VirtualService[] {
  const found: VirtualService[] = [];
  const walk = (s: VirtualService) => {
    for (const { service: next } of routes.get(s) ?? []) {
      if (found.includes(next)) continue;
      found.push(next);
      walk(next);
    }
  };
  walk(service);
  return found;
}

/**
 * Makes `peer` the owner of `conn` for the servername callback; returns the function that
 * undoes it, to be called before the SSL object is freed.
 *
 * The contexts the connection may switch to are referenced until then: a reload frees the old
 * services while their connections may still be waiting for the client's hello.
 */
export function attachSni(conn: TlsConnection, peer: SniPeer): () => void {
  const { ssl } = lib();
  const key = addressOf(conn.ssl);
  const held = reachable(peer.service).map((s) => s.tls.ctx);
  for (const ctx of held) ssl.SSL_CTX_up_ref(ctx);
  peers.set(key, peer);
  return () => {
    if (peers.get(key) === peer) {
      peers.delete(key);
      expected.delete(key);
    }
    for (const ctx of held.splice(0)) ssl.SSL_CTX_free(ctx);
  };
}

/**
 * The service the client hello callback chose for each connection, whose session ID context a
 * resumed session matched.
 */
const expected = new Map<bigint, VirtualService>();

const CALLBACK = { parameters: ["pointer", "pointer", "pointer"], result: "i32" } as const;

/**
 * The servername callback of this thread. It is never closed: an SSL object can outlive the
 * context it was made from (a reload frees contexts while connections still use them), and a
 * second ClientHello or a renegotiation calls it again.
 */
let callback: Deno.UnsafeCallback<typeof CALLBACK> | undefined;

/** Called by TlsContext for every server-mode context, as stunnel does. */
export function installServernameCallback(context: ContextHandle): void {
  callback ??= new Deno.UnsafeCallback(CALLBACK, (ssl) => onServername(ssl));
  lib().ssl.SSL_CTX_callback_ctrl(context.ctx, SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, callback.pointer);
  addHelloStep(context, onClientHello);
}

/** The secondary service of `service` that `servername` selects, if any. */
function routeFor(service: VirtualService, servername: string): Route | undefined {
  return routes.get(service)?.find((r) => matchesPattern(servername, r.pattern));
}

/**
 * The host name of the server_name extension of the ClientHello being processed (OpenSSL's
 * rule: the first name of the list, of type host_name), or undefined.
 */
function helloServername(ssl: Ptr): string | undefined {
  const ext = helloExtension(ssl, TLSEXT_TYPE_server_name);
  if (ext === undefined || ext.length < 5) return undefined;
  // ServerNameList: its length (2 bytes), then name type (1), name length (2), name.
  const nameLength = (ext[3] << 8) | ext[4];
  if (ext[2] !== TLSEXT_NAMETYPE_host_name || 5 + nameLength > ext.length) return undefined;
  return new TextDecoder().decode(ext.subarray(5, 5 + nameLength));
}

/**
 * Before OpenSSL looks for a session to resume: the session ID context of the service the
 * client's server name selects (what the servername callback will switch to), so that only a
 * session of that service, under its current settings, is resumed.
 */
function onClientHello(ssl: Ptr): HelloVerdict {
  const key = addressOf(ssl);
  const peer = peers.get(key);
  try {
    // No secondary services: the connection keeps its context's session ID context.
    if (!peer || !routes.get(peer.service)?.length) return SSL_CLIENT_HELLO_SUCCESS;
    const servername = helloServername(ssl);
    const service = (servername !== undefined && routeFor(peer.service, servername)?.service) ||
      peer.service;
    const sid = sessionIdContext(service.tls);
    check(
      lib().ssl.SSL_set_session_id_context(ssl, sid, sid.length) === 1,
      "SSL_set_session_id_context",
    );
    expected.set(key, service);
    return SSL_CLIENT_HELLO_SUCCESS;
  } catch (e) {
    logFailure(peer, e);
    return SSL_CLIENT_HELLO_ERROR;
  }
}

/** A failure inside an OpenSSL callback: logged, and the error queue left empty. */
function logFailure(peer: SniPeer | undefined, e: unknown): void {
  try {
    const lines = e instanceof TlsError ? e.logLines() : [String(e)];
    for (const line of lines) peer?.log(3, line);
    drainErrors();
  } catch {
    // nothing more to be done from inside OpenSSL
  }
}

/** stunnel's servername_cb: its decisions, its return values and its log lines. */
function onServername(ssl: Ptr): number {
  let peer: SniPeer | undefined;
  try {
    peer = peers.get(addressOf(ssl));
    if (!peer) return SSL_TLSEXT_ERR_OK;
    const list = routes.get(peer.service) ?? [];
    if (list.length === 0) {
      peer.log(7, "SNI: no virtual services defined");
      return resumedElsewhere(ssl, peer, peer.service)
        ? SSL_TLSEXT_ERR_ALERT_FATAL
        : SSL_TLSEXT_ERR_OK;
    }
    const name = lib().ssl.SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name === null) {
      peer.log(5, "SNI: no servername received");
      return resumedElsewhere(ssl, peer, peer.service)
        ? SSL_TLSEXT_ERR_ALERT_FATAL
        : SSL_TLSEXT_ERR_NOACK;
    }
    const servername = readCString(name);
    peer.log(6, `SNI: requested servername: ${servername}`);
    const route = list.find((r) => matchesPattern(servername, r.pattern));
    if (!route) {
      peer.log(3, `SNI: no pattern matched servername: ${servername}`);
      return resumedElsewhere(ssl, peer, peer.service)
        ? SSL_TLSEXT_ERR_ALERT_FATAL
        : SSL_TLSEXT_ERR_OK;
    }
    peer.log(7, `SNI: matched pattern: ${route.pattern}`);
    if (resumedElsewhere(ssl, peer, route.service)) return SSL_TLSEXT_ERR_ALERT_FATAL;
    switchContext(ssl, route.service.tls);
    peer.switchService(route.service);
    peer.log(5, `SNI: switched to service [${route.service.name}]`);
    return SSL_TLSEXT_ERR_OK;
  } catch (e) {
    // Half switched is no state to go on from: the handshake ends with an alert.
    logFailure(peer, e);
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
}

/**
 * A resumed session belongs to the service whose session ID context it matched: the one the
 * client hello callback chose. Should the server name lead elsewhere (in TLS 1.2 OpenSSL gives
 * the name of the session's first handshake), the session would skip that service's checks.
 */
function resumedElsewhere(ssl: Ptr, peer: SniPeer, service: VirtualService): boolean {
  const chosen = expected.get(addressOf(ssl));
  if (!chosen || chosen === service || lib().ssl.SSL_session_reused(ssl) !== 1) return false;
  peer.log(3, `SNI: session of service [${chosen.name}] not resumed by service [${service.name}]`);
  return true;
}

/**
 * SSL_set_SSL_CTX brings the certificate, key, trust store and CA list of the new context, but
 * not what SSL_new copied into the SSL: the verify mode and callback, and the verification
 * parameters (depth, flags, purpose). Those are set again from the new context.
 */
function switchContext(ssl: Ptr, context: ContextHandle): void {
  const { ssl: s, crypto } = lib();
  const ctx = context.ctx;
  check(s.SSL_set_SSL_CTX(ssl, ctx) !== null, "SSL_set_SSL_CTX");
  s.SSL_set_verify(ssl, s.SSL_CTX_get_verify_mode(ctx), s.SSL_CTX_get_verify_callback(ctx));
  const param = s.SSL_get0_param(ssl);
  const saved = crypto.X509_VERIFY_PARAM_get_inh_flags(param);
  crypto.X509_VERIFY_PARAM_set_inh_flags(param, X509_VP_FLAG_OVERWRITE | X509_VP_FLAG_RESET_FLAGS);
  const copied = crypto.X509_VERIFY_PARAM_inherit(param, s.SSL_CTX_get0_param(ctx));
  crypto.X509_VERIFY_PARAM_set_inh_flags(param, saved);
  check(copied === 1, "X509_VERIFY_PARAM_inherit");
}
