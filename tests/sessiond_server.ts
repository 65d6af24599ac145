/**
 * A small session cache server speaking stunnel's sessiond protocol, for the tests:
 * `deno run -A tests/sessiond_server.ts PORT` listens on 127.0.0.1:PORT (UDP) and prints one
 * line per request on stdout: `listening PORT` first, then `new ID LENGTH`, `get ID hit|miss`,
 * `remove ID`.
 *
 * A datagram: version (1), type (0 new, 1 get, 2 remove), 16-bit big-endian timeout (seconds),
 * a 32-byte session id, then (new) the DER session. A get is answered with the same header,
 * type 0x81 and the session, or type 0x80 and nothing after the id. Entries expire after their
 * timeout, as in stunnel's sessiond.
 */
import dgram from "node:dgram";
import { Buffer } from "node:buffer";

const HEADER = 4 + 32;
const port = Number(Deno.args[0] ?? "0");
const entries = new Map<string, { value: Uint8Array; expires: number }>();
const socket = dgram.createSocket("udp4");

function say(line: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(`${line}\n`));
}

socket.on("message", (msg: Buffer, from: { address: string; port: number }) => {
  if (msg.length < HEADER || msg[0] !== 1) return;
  const type = msg[1];
  const timeout = msg.readUInt16BE(2);
  const keyBytes = msg.subarray(4, HEADER);
  const key = keyBytes.toString("hex").toUpperCase();
  const now = Date.now();
  if (type === 0) {
    entries.set(key, {
      value: new Uint8Array(msg.subarray(HEADER)),
      expires: now + timeout * 1000,
    });
    say(`new ${key} ${msg.length - HEADER}`);
  } else if (type === 1) {
    const entry = entries.get(key);
    const hit = entry !== undefined && entry.expires > now;
    if (!hit) entries.delete(key);
    const answer = Buffer.alloc(HEADER + (hit ? entry.value.length : 0));
    answer[0] = 1;
    answer[1] = hit ? 0x81 : 0x80;
    answer.writeUInt16BE(timeout, 2);
    keyBytes.copy(answer, 4);
    if (hit) Buffer.from(entry.value).copy(answer, HEADER);
    socket.send(answer, from.port, from.address);
    say(`get ${key} ${hit ? "hit" : "miss"}`);
  } else if (type === 2) {
    entries.delete(key);
    say(`remove ${key}`);
  }
});

socket.bind(port, "127.0.0.1", () => say(`listening ${socket.address().port}`));
