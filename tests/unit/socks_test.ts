/** SOCKS 4, 4a and 5 requests in server mode (protocols/socks.ts) from a scripted client. */
import assert from "node:assert/strict";
import { ProtocolError } from "../../protocols/channel.ts";
import { socks } from "../../protocols/socks.ts";
import { bytes, channelTo, MemoryPeer, negotiation, recordingLog } from "./memory_peer.ts";

/** The server side of one SOCKS request `request`: what the client got back, and the result. */
async function serve(request: number[]) {
  const client = new MemoryPeer();
  client.send(Uint8Array.from(request));
  const log = recordingLog();
  const ctx = negotiation({ tls: channelTo(client, log), log });
  const error = await socks.server!.middle!(ctx).then(() => undefined, (e) => e);
  return { reply: [...bytes(client.written)], targets: ctx.targets, log: log.lines, error };
}

/** A request that was answered and then ended: logged already, no reset (stunnel's "2"). */
function assertAnswered(error: unknown): void {
  assert.ok(error instanceof ProtocolError, `expected a ProtocolError, got ${error}`);
  assert.equal(error.line, "");
  assert.equal(error.reset, false);
}

Deno.test("socks4: CONNECT to an IPv4 address, the USERID ignored", async () => {
  const r = await serve([4, 1, 0x01, 0xbb, 10, 1, 2, 3, ...bytes("someone"), 0]);
  assert.equal(r.error, undefined);
  assert.deepEqual(r.reply, [0, 90, 0x01, 0xbb, 10, 1, 2, 3]);
  assert.deepEqual(r.targets, [{ kind: "tcp", host: "10.1.2.3", port: 443 }]);
  assert.ok(r.log.includes("LOG6: SOCKS4 address received"), r.log.join("\n"));
});

Deno.test("socks4: a loopback target or an unknown command is rejected (91)", async () => {
  const loopback = await serve([4, 1, 0, 80, 127, 0, 0, 1, 0]);
  assert.deepEqual(loopback.reply, [0, 91, 0, 80, 127, 0, 0, 1]);
  assert.deepEqual(loopback.targets, []);
  assert.ok(loopback.log.includes("LOG3: SOCKS connection to the IPv4 loopback rejected"));
  assertAnswered(loopback.error);

  const bind = await serve([4, 2, 0, 80, 10, 0, 0, 1, 0]);
  assert.deepEqual(bind.reply, [0, 91, 0, 80, 10, 0, 0, 1]);
  assert.ok(bind.log.includes("LOG3: Unsupported SOCKS4/SOCKS4a command 0x02"));
  assertAnswered(bind.error);
});

Deno.test("socks5: no authentication, then CONNECT to IPv4 and IPv6 addresses", async () => {
  const v4 = await serve([5, 1, 0, 5, 1, 0, 1, 192, 0, 2, 7, 0x1f, 0x90]);
  assert.equal(v4.error, undefined);
  assert.deepEqual(v4.reply, [5, 0, 5, 0, 0, 1, 192, 0, 2, 7, 0x1f, 0x90]);
  assert.deepEqual(v4.targets, [{ kind: "tcp", host: "192.0.2.7", port: 8080 }]);

  const address = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
  const v6 = await serve([5, 2, 2, 0, 5, 1, 0, 4, ...address, 0, 80]);
  assert.equal(v6.error, undefined);
  assert.deepEqual(v6.reply, [5, 0, 5, 0, 0, 4, ...address, 0, 80]);
  assert.deepEqual(v6.targets, [{ kind: "tcp", host: "2001:db8::1", port: 80 }]);
  assert.ok(v6.log.includes("LOG6: SOCKS5 IPv6 address received"));
});

Deno.test("socks5: refusals keep stunnel's reply codes", async () => {
  // Only "no authentication" is offered by the server.
  const method = await serve([5, 1, 2]);
  assert.deepEqual(method.reply, [5, 0xff]);
  assertAnswered(method.error);
  // BIND: command not supported.
  const bind = await serve([5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 80]);
  assert.deepEqual(bind.reply, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
  assert.ok(bind.log.includes("LOG3: Unsupported SOCKS5 command 0x02"));
  assertAnswered(bind.error);
  // A host name that resolves to the loopback: not allowed by the ruleset.
  const local = await serve([5, 1, 0, 5, 1, 0, 3, 9, ...bytes("localhost"), 0, 80]);
  assert.deepEqual(local.reply.slice(0, 4), [5, 0, 5, 2]);
  assert.deepEqual(local.targets, []);
  assertAnswered(local.error);
  // An unknown address type.
  const atyp = await serve([5, 1, 0, 5, 1, 0, 9]);
  assert.deepEqual(atyp.reply, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
  assert.ok(atyp.log.includes("LOG3: Unsupported SOCKS5 address type 0x09"));
});

Deno.test("socks: an unknown version ends the connection without an answer", async () => {
  const r = await serve([6, 1, 0]);
  assert.deepEqual(r.reply, []);
  assert.ok(r.error instanceof ProtocolError);
  assert.equal(r.error.line, "Unsupported SOCKS version 0x06");
  assert.equal(r.error.reset, true);
});
