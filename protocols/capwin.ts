/**
 * `protocol = capwin` and `protocol = capwinctrl` (stunnel 5.62+), as stunnel 5.68 negotiates
 * them. Found from the 5.68 binary and checked against it as a black box:
 *
 * - capwinctrl (client mode only): a control connection on the plain local socket. Its first
 *   bytes, up to 99 or to EOF, become the credentials of the whole process (every service and
 *   every thread), replacing the previous ones; the connection then ends without a remote.
 *   The format is `AUTH` 0x1f USER 0x1f PASSWORD 0x1f ANYTHING 0x1c (a C string: a NUL ends it).
 * - capwin client mode: after the TLS handshake it sends 0x1f USER 0x1f PASSWORD 0x1f 0x1c of
 *   those credentials and expects the five bytes `BINGO`.
 * - capwin server mode: after the TLS handshake it reads (byte by byte) up to a 0x1c or 99 bytes,
 *   takes the second and third 0x1f-separated fields as user and password and checks them with an
 *   LDAP simple bind as `uid=USER,ou=people,O=CAPWIN,C=US` at `protocolHost`. Only the exact
 *   22-byte success response (long-form lengths, as Active Directory writes it) is accepted.
 *   Success: connect the backend, send `BINGO`, transfer. Failure: send `FAILED` and close.
 */
import { parseAddress } from "../lib/config/address.ts";
import type { Logger } from "../lib/sys/log.ts";
import { osErrorText } from "../lib/sys/oserror.ts";
import { withTimeout } from "../lib/sys/timeout.ts";
import type { Address, ServiceOptions } from "../lib/config/types.ts";
import type { Conn } from "../lib/net/conn.ts";
import { connect, resolveAddress } from "../lib/net/connect.ts";
import { type Channel, type Protocol, ProtocolError } from "./channel.ts";

/** Field and record separators of the credentials (ASCII US and FS). */
const US = 0x1f;
const FS = 0x1c;
/** stunnel's credentials buffer: 100 bytes, at most 99 read, always NUL-terminated. */
const CREDENTIALS_MAX = 99;
/** stunnel refuses a BindRequest longer than this (its lengths are single bytes). */
const LDAP_REQUEST_MAX = 120;
/** The only BindResponse stunnel accepts: message 1, resultCode success, empty strings. */
const BIND_SUCCESS = Uint8Array.from(
  "30 84 00 00 00 10 02 01 01 61 84 00 00 00 07 0a 01 00 04 00 04 00".split(" "),
  (h) => parseInt(h, 16),
);
/** DN special characters stunnel escapes with a backslash in the user name. */
const DN_SPECIAL = new Set([...'+;,\\"<>#'].map((c) => c.charCodeAt(0)));

// ---------------------------------------------------------------------- shared credentials

/**
 * The process's credentials: a sequence word (odd while a writer is inside) and the 100-byte
 * buffer, in a SharedArrayBuffer handed to every thread through the daemon's Runtime.
 */
const HEADER = 4;

export function newCapwinCredentials(): Uint8Array {
  return new Uint8Array(new SharedArrayBuffer(HEADER + CREDENTIALS_MAX + 1));
}

let credentials = newCapwinCredentials();

/** This thread uses the process's credentials buffer (set by the thread's Daemon). */
export function useCapwinCredentials(shared: Uint8Array): void {
  credentials = shared;
}

function sequence(): Int32Array {
  return new Int32Array(credentials.buffer, 0, 1);
}

/** One writer at a time (a control connection on another thread may be writing too). */
function storeCredentials(value: Uint8Array): void {
  const seq = sequence();
  let was = Atomics.load(seq, 0);
  while (was % 2 !== 0 || Atomics.compareExchange(seq, 0, was, was + 1) !== was) {
    was = Atomics.load(seq, 0);
  }
  const body = credentials.subarray(HEADER);
  body.fill(0);
  body.set(value.subarray(0, CREDENTIALS_MAX));
  Atomics.store(seq, 0, was + 2);
}

/** The credentials as a C string (up to the first NUL); a torn read is retried. */
function loadCredentials(): Uint8Array {
  const seq = sequence();
  for (;;) {
    const before = Atomics.load(seq, 0);
    const body = credentials.slice(HEADER);
    if (before % 2 === 0 && Atomics.load(seq, 0) === before) {
      const nul = body.indexOf(0);
      return nul < 0 ? body : body.subarray(0, nul);
    }
  }
}

// ---------------------------------------------------------------------------- credentials

interface Credentials {
  first: Uint8Array;
  user: Uint8Array;
  password: Uint8Array;
}

/**
 * FIRST 0x1f USER 0x1f PASSWORD 0x1f REST 0x1c; anything after the 0x1c is ignored. A missing
 * separator is stunnel's "Malformed credentials (N)", N the separator that was not found.
 */
function parseCredentials(text: Uint8Array): Credentials {
  const at = (byte: number, from: number, n: number) => {
    const i = text.indexOf(byte, from);
    if (i < 0) throw new ProtocolError(`CapWIN: Malformed credentials (${n})`);
    return i;
  };
  const p1 = at(US, 0, 1);
  const p2 = at(US, p1 + 1, 2);
  const p3 = at(US, p2 + 1, 3);
  at(FS, p3 + 1, 4);
  return {
    first: text.subarray(0, p1),
    user: text.subarray(p1 + 1, p2),
    password: text.subarray(p2 + 1, p3),
  };
}

function bytes(text: string): Uint8Array<ArrayBuffer> {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}

function concat(...parts: (Uint8Array | number[])[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Reads `n` bytes after the TLS handshake, with stunnel's words for a close (s_ssl_read). */
async function sslRead(tls: Channel, n: number): Promise<Uint8Array> {
  try {
    return await tls.readBytes(n);
  } catch (e) {
    if (e instanceof ProtocolError) throw new ProtocolError("s_ssl_read: Unexpected socket close");
    throw e;
  }
}

// ----------------------------------------------------------------------------------- LDAP

/** The BindRequest stunnel sends: message 1, LDAPv3, simple authentication. */
function bindRequest(dn: Uint8Array, password: Uint8Array): Uint8Array<ArrayBuffer> {
  const total = dn.length + password.length + 14;
  return concat(
    [0x30, total - 2, 0x02, 0x01, 0x01, 0x60, total - 7, 0x02, 0x01, 0x03, 0x04, dn.length],
    dn,
    [0x80, password.length],
    password,
  );
}

/** Exactly `n` bytes (stunnel's s_read). */
async function readExact(conn: Conn, n: number, log: Logger): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  for (let got = 0; got < n;) {
    let r: number | null;
    try {
      r = await conn.read(out.subarray(got));
    } catch (e) {
      throw new ProtocolError(`s_read_eof: readsocket: ${osErrorText(e)}`);
    }
    if (r === null) {
      log(7, "s_read_eof: EOF");
      throw new ProtocolError("s_read: Unexpected socket close");
    }
    got += r;
  }
  return out;
}

/**
 * A simple bind of `dn` at protocolHost: true only for stunnel's exact success response. A
 * refusal is false; a server that closes or stalls mid-response ends the connection (throws).
 */
async function ldapBind(
  opts: ServiceOptions,
  log: Logger,
  dn: Uint8Array,
  password: Uint8Array,
): Promise<boolean> {
  if (dn.length + password.length + 14 > LDAP_REQUEST_MAX) {
    log(3, "LDAP: Request too long");
    return false;
  }
  let address: Address;
  try {
    address = parseAddress(opts.protocolHost ?? "", "connect");
  } catch {
    log(3, "LDAP: Failed to resolve protocolHost");
    return false;
  }
  let target: Address;
  try {
    [target] = await resolveAddress(address);
  } catch (e) {
    log(3, (e as Error).message);
    log(3, "LDAP: Failed to resolve protocolHost");
    return false;
  }
  log(7, "LDAP: Connecting the server");
  const conn = await connect(target, { timeoutSeconds: opts.TIMEOUTconnect }, log);
  if (!conn) return false;
  try {
    log(7, "LDAP: Sending BindRequest");
    const request = bindRequest(dn, password);
    for (let at = 0; at < request.length;) at += await conn.write(request.subarray(at));
    log(7, "LDAP: Waiting for BindResponse");
    const response = await withTimeout(
      readExact(conn, BIND_SUCCESS.length, log),
      opts.TIMEOUTbusy * 1000,
      () => {
        log(6, "s_read_eof: s_poll_wait: TIMEOUTbusy exceeded: sending reset");
        throw new ProtocolError("");
      },
    );
    return equal(response, BIND_SUCCESS);
  } finally {
    try {
      conn.close();
    } catch {
      // closed already
    }
  }
}

/** `uid=USER,ou=people,O=CAPWIN,C=US`, the user's DN special characters escaped. */
function userDn(user: Uint8Array): Uint8Array {
  const escaped: number[] = [];
  for (const b of user) {
    if (DN_SPECIAL.has(b)) escaped.push(0x5c);
    escaped.push(b);
  }
  return concat(bytes("uid="), escaped, bytes(",ou=people,O=CAPWIN,C=US"));
}

// ------------------------------------------------------------------------------ protocols

const BINGO = bytes("BINGO");
const FAILED = bytes("FAILED");

export const capwin: Protocol = {
  name: "capwin",
  client: {
    /** After the handshake: the process's credentials to the server, then its verdict. */
    async late({ tls, log }) {
      const stored = loadCredentials();
      if (stored.length === 0) throw new ProtocolError("CapWIN: No credentials set");
      const { first, user, password } = parseCredentials(stored);
      if (!equal(first, bytes("AUTH"))) {
        throw new ProtocolError("CapWIN: Invalid authentication request");
      }
      log(7, "CapWIN: Sending credentials");
      await tls!.writeBytes(concat([US], user, [US], password, [US, FS]));
      log(7, "CapWIN: Waiting for response");
      const answer = await sslRead(tls!, BINGO.length);
      if (!equal(answer, BINGO)) throw new ProtocolError("CapWIN: Authentication failed");
      log(5, "CapWIN: Authentication succeeded");
    },
  },
  server: {
    /** After the handshake, before the backend: the client's credentials, checked by LDAP. */
    async middle({ tls, opts, log }) {
      const received: number[] = [];
      while (received.length < CREDENTIALS_MAX) {
        const [b] = await sslRead(tls!, 1);
        received.push(b);
        if (b === FS) break;
      }
      const text = Uint8Array.from(received);
      const nul = text.indexOf(0);
      const { user, password } = parseCredentials(nul < 0 ? text : text.subarray(0, nul));
      if (!(await ldapBind(opts, log, userDn(user), password))) {
        log(3, "CapWIN: Authentication failed");
        await tls!.writeBytes(FAILED);
        throw new ProtocolError("", false);
      }
      log(5, "CapWIN: Authentication succeeded");
    },
    /** The backend is connected: tell the client. */
    async late({ tls }) {
      await tls!.writeBytes(BINGO);
    },
  },
};

export const capwinctrl: Protocol = {
  name: "capwinctrl",
  client: {
    /** Up to 99 bytes (or EOF) become the credentials; the connection then ends. */
    async early({ local, log }) {
      log(7, "CapWIN: Setting credentials");
      // As stunnel: the buffer is cleared first and holds what arrived even if the read fails.
      storeCredentials(new Uint8Array(0));
      const received: number[] = [];
      try {
        while (received.length < CREDENTIALS_MAX) {
          const chunk = await local!.readBytes(1).catch((e) => {
            if (e instanceof ProtocolError) return null;
            throw e;
          });
          if (!chunk) {
            log(7, "s_read_eof: EOF");
            break;
          }
          received.push(chunk[0]);
        }
      } finally {
        storeCredentials(Uint8Array.from(received));
      }
      log(5, "CapWIN: Credentials set");
      throw new ProtocolError("", false);
    },
  },
};
