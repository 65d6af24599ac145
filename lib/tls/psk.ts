/**
 * Pre-shared keys: `PSKsecrets` (a file of IDENTITY:KEY lines, read with the configuration) and
 * `PSKidentity` (the identity a client presents; the first one of the file by default).
 *
 * As in stunnel, OpenSSL's PSK callbacks serve TLS 1.2 (the PSK cipher suites) and TLS 1.3 (an
 * external PSK with TLS_AES_128_GCM_SHA256, combined with an (EC)DHE key exchange). A server
 * with PSK secrets needs no certificate.
 *
 * The callbacks are one per thread and never closed (an SSL object can outlive its TlsContext
 * across a reload); they find the connection, and through it the keys, by the SSL object.
 */
import { osError } from "../sys/oserror.ts";
import { lib, PSK_MAX_IDENTITY_LEN, PSK_MAX_PSK_LEN, type Ptr, readCString } from "../sys/ffi.ts";
import { opensslHex, OptionError } from "../config/options.ts";
import { connectionOf, type TlsContext, type TlsContextLog, TlsError } from "./context.ts";
import type { PskSecrets } from "../config/types.ts";

const FAILED = "Failed to read PSK secrets";
/** Shorter keys are unlikely to have enough entropy (stunnel's rule). */
const MIN_KEY_LENGTH = 16;

/**
 * Reads a PSKsecrets file as stunnel's psk_read does: one IDENTITY:KEY per line, empty lines
 * skipped, CR ignored; a KEY that is hexadecimal (colons allowed between bytes) is converted to
 * binary, anything else is taken as it is. Throws an OptionError with stunnel's lines.
 */
export function readPskSecrets(path: string): PskSecrets {
  const notes: PskSecrets["notes"] = [];
  let mode: number | null;
  try {
    mode = Deno.statSync(path).mode;
  } catch (e) {
    const { text, errno } = osError(e);
    throw new OptionError(FAILED, [`${path}: ${text} (${errno})`]);
  }
  // Only a warning in stunnel too: the file should be neither world-readable nor -writable.
  if (mode !== null && (mode & 0o7) !== 0) {
    notes.push({ level: 4, text: `Insecure file permissions on ${path}` });
  }
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch {
    throw new OptionError(FAILED, ["Cannot open PSKsecrets file"]);
  }
  const keys: PskSecrets["keys"] = [];
  const decoder = new TextDecoder();
  splitLines(bytes).forEach((line, index) => {
    const at = `PSKsecrets line ${index + 1}`;
    if (line.length === 0) return;
    const colon = line.indexOf(0x3a);
    if (colon < 0) throw new OptionError(FAILED, [`${at}: Not in identity:key format`]);
    const identityBytes = line.subarray(0, colon);
    if (identityBytes.length + 1 > PSK_MAX_IDENTITY_LEN) {
      throw new OptionError(FAILED, [
        `${at}: Identity longer than ${PSK_MAX_IDENTITY_LEN} characters`,
      ]);
    }
    const identity = decoder.decode(identityBytes);
    const keyText = line.subarray(colon + 1);
    const hex = opensslHex(decoder.decode(keyText));
    const key = hex ?? new Uint8Array(keyText);
    notes.push({
      level: 6,
      text: `${at}: ${key.length}-byte ${hex ? "hexadecimal" : "ASCII"} key configured for ` +
        `identity "${identity}"`,
    });
    if (key.length > PSK_MAX_PSK_LEN) {
      throw new OptionError(FAILED, [`${at}: Key longer than ${PSK_MAX_PSK_LEN} bytes`]);
    }
    if (key.length < MIN_KEY_LENGTH) {
      throw new OptionError(FAILED, [`${at}: Key shorter than ${MIN_KEY_LENGTH} bytes`]);
    }
    keys.push({ identity, key });
  });
  if (keys.length === 0) throw new OptionError(FAILED, []);
  return { path, keys, notes };
}

/** stunnel's file_getline: lines end at LF, every CR is dropped, a last unterminated line counts. */
function splitLines(bytes: Uint8Array): Uint8Array[] {
  const lines: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i < bytes.length && bytes[i] !== 0x0a) continue;
    if (i < bytes.length || i > start) {
      lines.push(bytes.subarray(start, i).filter((b) => b !== 0x0d));
    }
    start = i + 1;
  }
  return lines;
}

/** What the callbacks of one context need. */
interface PskTable {
  byIdentity: Map<string, Uint8Array<ArrayBuffer>>;
  /** Client mode: the identity presented and its key. */
  selected?: { identity: Uint8Array<ArrayBuffer>; text: string; key: Uint8Array<ArrayBuffer> };
}

const tables = new WeakMap<TlsContext, PskTable>();

/** Installs the client or server PSK callback of a service with `PSKsecrets`. */
export function configurePsk(context: TlsContext, log: TlsContextLog): void {
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
    const { libc } = lib();
    libc.memcpy(identity, selected.identity, BigInt(selected.identity.length));
    libc.memcpy(psk, selected.key, BigInt(selected.key.length));
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
    lib().libc.memcpy(psk, key, BigInt(key.length));
    conn.psk = true;
    conn.log(5, `Key configured for PSK identity "${name}"`);
    return key.length;
  } catch (e) {
    conn?.log(3, `PSK server callback failed: ${(e as Error).message}`);
    return 0;
  }
}
