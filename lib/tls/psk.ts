/**
 * Pre-shared keys: `PSKsecrets` (a file of IDENTITY:KEY lines, read with the configuration by
 * lib/config/psk_secrets.ts) and
 * `PSKidentity` (the identity a client presents; the first one of the file by default).
 *
 * As in stunnel, OpenSSL's PSK callbacks serve TLS 1.2 (the PSK cipher suites) and TLS 1.3 (an
 * external PSK with TLS_AES_128_GCM_SHA256, combined with an (EC)DHE key exchange). A server
 * with PSK secrets needs no certificate.
 *
 * The callbacks are one per thread and never closed (an SSL object can outlive its context
 * across a reload); they find the connection, and through it the keys, by the SSL object.
 */
import { copyTo, lib, type Ptr, readCString } from "../sys/ffi.ts";
import { connectionOf, type ContextHandle, type TlsContextLog, TlsError } from "./core.ts";

/** What the callbacks of one context need. */
interface PskTable {
  byIdentity: Map<string, Uint8Array<ArrayBuffer>>;
  /** Client mode: the identity presented and its key. */
  selected?: { identity: Uint8Array<ArrayBuffer>; text: string; key: Uint8Array<ArrayBuffer> };
}

const tables = new WeakMap<ContextHandle, PskTable>();

/** Installs the client or server PSK callback of a service with `PSKsecrets`. */
export function configurePsk(context: ContextHandle, log: TlsContextLog): void {
  const { ssl } = lib();
  const { ctx, opts } = context;
  const secrets = opts.PSKsecrets;
  if (!secrets) return;
  for (const note of secrets.notes) log(note.level, note.text);
  log(6, `PSK identities: ${secrets.keys.length} retrieved`);
  const table: PskTable = { byIdentity: new Map() };
  for (const { identity, key } of secrets.keys) {
    if (!table.byIdentity.has(identity)) table.byIdentity.set(identity, new Uint8Array(key));
  }
  if (opts.client) {
    const text = opts.PSKidentity ?? secrets.keys[0].identity;
    const key = table.byIdentity.get(text);
    if (!key) {
      throw new TlsError("PSKidentity", [], "No key found for the specified PSK identity");
    }
    table.selected = { identity: nulTerminated(text), text, key };
    ssl.SSL_CTX_set_psk_client_callback(ctx, callbacks().client.pointer);
  } else {
    if (opts.PSKidentity !== undefined) log(5, "PSK identity is ignored in the server mode");
    ssl.SSL_CTX_set_psk_server_callback(ctx, callbacks().server.pointer);
  }
  tables.set(context, table);
}

function nulTerminated(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

const CLIENT = {
  parameters: ["pointer", "pointer", "pointer", "u32", "pointer", "u32"],
  result: "u32",
} as const;
const SERVER = { parameters: ["pointer", "pointer", "pointer", "u32"], result: "u32" } as const;

interface Callbacks {
  client: Deno.UnsafeCallback<typeof CLIENT>;
  server: Deno.UnsafeCallback<typeof SERVER>;
}

let threadCallbacks: Callbacks | undefined;

function callbacks(): Callbacks {
  threadCallbacks ??= {
    client: new Deno.UnsafeCallback(CLIENT, onClient),
    server: new Deno.UnsafeCallback(SERVER, onServer),
  };
  return threadCallbacks;
}

/** stunnel's psk_client_callback: the selected identity and its key; 0 fails the handshake. */
function onClient(
  ssl: Ptr,
  _hint: Ptr,
  identity: Ptr,
  maxIdentity: number,
  psk: Ptr,
  maxPsk: number,
): number {
  const conn = connectionOf(ssl);
  try {
    const selected = conn && tables.get(conn.context)?.selected;
    if (!selected) {
      conn?.log(3, "INTERNAL ERROR: No PSK identity selected");
      return 0;
    }
    // With its NUL, as stunnel plays it safe; its message shows the key limit, as stunnel's.
    if (selected.identity.length > maxIdentity) {
      conn.log(3, `PSK identity too long (${selected.identity.length}>${maxPsk} bytes)`);
      return 0;
    }
    if (selected.key.length > maxPsk) {
      conn.log(3, `PSK too long (${selected.key.length}>${maxPsk} bytes)`);
      return 0;
    }
    copyTo(identity, selected.identity);
    copyTo(psk, selected.key);
    conn.psk = true;
    conn.log(6, `PSK client configured for identity "${selected.text}"`);
    return selected.key.length;
  } catch (e) {
    conn?.log(3, `PSK client callback failed: ${(e as Error).message}`);
    return 0;
  }
}

/** stunnel's psk_server_callback: the key of the client's identity; 0 when there is none. */
function onServer(ssl: Ptr, identity: Ptr, psk: Ptr, maxPsk: number): number {
  const conn = connectionOf(ssl);
  try {
    const table = conn && tables.get(conn.context);
    if (!table) return 0;
    const name = readCString(identity);
    const key = table.byIdentity.get(name);
    if (!key) {
      // A TLS 1.3 ticket arrives here too, as an identity; stunnel 5.68 names neither.
      conn.log(6, "PSK identity not found (session resumption?)");
      return 0;
    }
    if (key.length > maxPsk) {
      conn.log(3, `PSK too long (${key.length}>${maxPsk})`);
      return 0;
    }
    copyTo(psk, key);
    conn.psk = true;
    conn.log(5, `Key configured for PSK identity "${name}"`);
    return key.length;
  } catch (e) {
    conn?.log(3, `PSK server callback failed: ${(e as Error).message}`);
    return 0;
  }
}
