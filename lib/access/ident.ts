/**
 * `ident = USERNAME`: the client must be that user according to its IDENT server (RFC 1413),
 * asked before the TLS handshake, as stunnel's auth_user() does: connect to the client's
 * address on the `auth` port, send "PEER-PORT , OUR-PORT", and accept only a USERID answer
 * naming exactly USERNAME. Anything else (no server, a malformed or other answer) refuses the
 * connection.
 */
import type { Logger } from "../sys/log.ts";
import { osErrorText } from "../sys/oserror.ts";
import { withTimeout } from "../sys/timeout.ts";
import type { Conn } from "../net/conn.ts";
import { connect } from "../net/connect.ts";
import { AccessDenied } from "./denied.ts";

const DEFAULT_AUTH_PORT = 113;
/** stunnel's fd_getline() limit. */
const MAX_LINE = 65536;

/** The `auth` port of /etc/services (getservbyname("auth", "tcp")). */
function authPort(): number | undefined {
  try {
    for (const raw of Deno.readTextFileSync("/etc/services").split("\n")) {
      const fields = raw.replace(/#.*/, "").trim().split(/\s+/);
      if (fields.length < 2) continue;
      const [name, portProto, ...aliases] = fields;
      const [port, proto] = portProto.split("/");
      if (proto === "tcp" && (name === "auth" || aliases.includes("auth"))) return Number(port);
    }
  } catch {
    // no services database
  }
  return undefined;
}

/** Fails the connection (with a reset, as stunnel's longjmp) after the lines were logged. */
function refuse(): never {
  throw new AccessDenied("ident");
}

/** Reads one line as fd_getline(): CRs dropped, ends at LF or NUL. */
async function readLine(conn: Conn, log: Logger): Promise<string> {
  const bytes: number[] = [];
  const buf = new Uint8Array(1);
  for (;;) {
    if (bytes.length > MAX_LINE) {
      log(3, "fd_getline: Line too long");
      refuse();
    }
    const n = await conn.read(buf);
    if (n === null) {
      log(3, "s_read: Unexpected socket close");
      refuse();
    }
    if (n === 0) continue;
    const c = buf[0];
    if (c === 0x0d) continue;
    if (c === 0x0a || c === 0) break;
    bytes.push(c);
  }
  return new TextDecoder().decode(new Uint8Array(bytes));
}

export interface IdentCheck {
  /** The required user name (`ident`). */
  username: string;
  /** The client, and our accepting socket (its port is the second number of the query). */
  peer: Deno.Addr;
  local: Deno.Addr;
  /** The service listens on a Unix socket: IDENT cannot apply. */
  unixSocket: boolean;
  TIMEOUTconnect: number;
  TIMEOUTbusy: number;
}

/** Asks the client's IDENT server; logs as stunnel and throws when the user is not accepted. */
export async function identAuth(check: IdentCheck, log: Logger): Promise<void> {
  const { peer, local } = check;
  if (peer.transport !== "tcp" || local.transport !== "tcp") {
    if (check.unixSocket) log(6, "IDENT not supported on Unix sockets");
    return;
  }
  let port = authPort();
  if (port === undefined) {
    log(4, "Unknown service 'auth': using default 113");
    port = DEFAULT_AUTH_PORT;
  }
  const accepted = `${peer.hostname}:${peer.port}`;
  const host = peer.hostname.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
  const conn = await connect(
    { kind: "tcp", host, port },
    { timeoutSeconds: check.TIMEOUTconnect },
    log,
  );
  if (!conn) refuse();
  let line: string;
  try {
    log(7, "IDENT server connected");
    const query = `${peer.port} , ${local.port}`;
    const out = new TextEncoder().encode(`${query}\r\n`);
    for (let off = 0; off < out.length;) off += await conn.write(out.subarray(off));
    log(7, ` -> ${query}`);
    line = await withTimeout(readLine(conn, log), check.TIMEOUTbusy * 1000, () => {
      log(6, "s_read_eof: s_poll_wait: TIMEOUTbusy exceeded: sending reset");
      refuse();
    });
    log(7, ` <- ${line}`);
  } catch (e) {
    if (!(e instanceof AccessDenied)) log(3, osErrorText(e));
    refuse();
  } finally {
    try {
      conn.close();
    } catch {
      // closed already
    }
  }
  // "PORTS : USERID : SYSTEM : USER", parsed as stunnel does (the type field is exact).
  const first = line.indexOf(":");
  const second = first < 0 ? -1 : line.indexOf(":", first + 1);
  if (first < 0 || second < 0) {
    log(3, "Malformed IDENT response");
    refuse();
  }
  if (line.slice(first + 1, second) !== " USERID ") {
    log(3, "Incorrect IDENT response type");
    refuse();
  }
  const third = line.indexOf(":", second + 1);
  if (third < 0) {
    log(3, "Malformed IDENT response");
    refuse();
  }
  const user = line.slice(third + 1).replace(/^ +/, "");
  if (user !== check.username) {
    log(4, `Connection from ${accepted} REFUSED by IDENT (user "${user}")`);
    refuse();
  }
  log(6, "IDENT authentication passed");
}
