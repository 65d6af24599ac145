/** The STARTTLS negotiations (protocols/smtp, imap, pop3, nntp) against scripted peers. */
import assert from "node:assert/strict";
import { ProtocolError } from "../../protocols/channel.ts";
import { imap } from "../../protocols/imap.ts";
import { nntp } from "../../protocols/nntp.ts";
import { pop3 } from "../../protocols/pop3.ts";
import { smtp } from "../../protocols/smtp.ts";
import { base64, isPrefix } from "../../protocols/text.ts";
import { channelTo, MemoryPeer, negotiation, recordingLog } from "./memory_peer.ts";

/** Runs `phase` and returns the ProtocolError it must end with. */
async function refusal(phase: Promise<void>): Promise<ProtocolError> {
  const e = await phase.then(() => undefined, (e) => e);
  assert.ok(e instanceof ProtocolError, `expected a ProtocolError, got ${e}`);
  return e;
}

// ------------------------------------------------------------------------------------ text

Deno.test("text: isPrefix ignores case (stunnel's is_prefix); base64 of Latin-1 bytes", () => {
  assert.ok(isPrefix("250 STARTTLS", "250 "));
  assert.ok(isPrefix("ehlo client.example", "EHLO "));
  assert.ok(!isPrefix("EHL", "EHLO "));
  assert.ok(!isPrefix("HELO client", "EHLO "));
  assert.equal(base64("\0user\0secret"), "AHVzZXIAc2VjcmV0");
  assert.equal(base64("\xe9"), "6Q==");
});

// ------------------------------------------------------------------------------------ smtp

Deno.test("smtp client: relays the greeting, then EHLO and STARTTLS with the server", async () => {
  const local = new MemoryPeer();
  const remote = new MemoryPeer("220-mail.example ESMTP\r\n220 ready\r\n", (line) => {
    if (line.startsWith("EHLO ")) return "250-mail.example\r\n250 STARTTLS\r\n";
    if (line === "STARTTLS") return "220 go ahead\r\n\x16\x03\x01";
  });
  const remoteChannel = channelTo(remote);
  await smtp.client!.middle!(negotiation({
    local: channelTo(local),
    remote: remoteChannel,
    opts: { protocolHost: "me.example" },
  }));
  assert.deepEqual(local.lines(), ["220-mail.example ESMTP", "220 ready"]);
  assert.deepEqual(remote.lines(), ["EHLO me.example", "STARTTLS"]);
  // The start of the server's handshake, read ahead, goes back to the stream for TLS.
  remoteChannel.release();
  assert.equal(remote.handedBack, "\x16\x03\x01");
});

Deno.test("smtp client: a server without EHLO or STARTTLS is refused", async () => {
  const noEhlo = new MemoryPeer("220 ready\r\n", () => "502 what\r\n");
  const e1 = await refusal(smtp.client!.middle!(negotiation({
    local: channelTo(new MemoryPeer()),
    remote: channelTo(noEhlo),
  })));
  assert.equal(e1.line, "Remote server is not RFC 1425 compliant");
  assert.deepEqual(noEhlo.lines(), ["EHLO localhost"]);

  const noStarttls = new MemoryPeer(
    "220 ready\r\n",
    (line) => line.startsWith("EHLO") ? "250 mail.example\r\n" : "454 TLS not available\r\n",
  );
  const e2 = await refusal(smtp.client!.middle!(negotiation({
    local: channelTo(new MemoryPeer()),
    remote: channelTo(noStarttls),
  })));
  assert.equal(e2.line, "Remote server is not RFC 2487 compliant");
});

Deno.test("smtp client: AUTH PLAIN and AUTH LOGIN inside TLS", async () => {
  const plain = new MemoryPeer("", (line) => line.startsWith("HELO") ? "250 hi\r\n" : "235 ok\r\n");
  await smtp.client!.late!(negotiation({
    tls: channelTo(plain),
    opts: { protocolUsername: "user", protocolPassword: "secret" },
  }));
  assert.deepEqual(plain.lines(), ["HELO localhost", `AUTH PLAIN ${btoa("\0user\0secret")}`]);

  const login = new MemoryPeer("", (line) => {
    if (line.startsWith("HELO")) return "250 hi\r\n";
    if (line === "AUTH LOGIN" || line === btoa("user")) return "334 next\r\n";
    return line === btoa("secret") ? "235 ok\r\n" : "535 no\r\n";
  });
  await smtp.client!.late!(negotiation({
    tls: channelTo(login),
    opts: { protocolUsername: "user", protocolPassword: "secret", protocolAuthentication: "LOGIN" },
  }));
  assert.deepEqual(login.lines(), ["HELO localhost", "AUTH LOGIN", btoa("user"), btoa("secret")]);

  const refused = new MemoryPeer(
    "",
    (line) => line.startsWith("HELO") ? "250 hi\r\n" : "535 no\r\n",
  );
  const e = await refusal(smtp.client!.late!(negotiation({
    tls: channelTo(refused),
    opts: { protocolUsername: "user", protocolPassword: "wrong" },
  })));
  assert.equal(e.line, "PLAIN Authentication Failed");
});

Deno.test("smtp server: a silent client gets the greeting, EHLO and STARTTLS answered", async () => {
  const log = recordingLog();
  const remote = new MemoryPeer("220 mail.example ESMTP Postfix\r\n");
  const local = new MemoryPeer("", (line) => {
    if (line.startsWith("220 mail.example")) return "ehlo client.example\r\n";
    if (line === "250 STARTTLS") return "starttls\r\n";
  });
  await smtp.server!.middle!(negotiation({
    local: channelTo(local),
    remote: channelTo(remote),
    log,
  }));
  assert.deepEqual(local.lines(), [
    "220 mail.example stunnel for ESMTP Postfix",
    "250-mail.example",
    "250 STARTTLS",
    "220 Go ahead",
  ]);
  assert.ok(log.lines.includes("LOG7: RFC 2487 detected"), log.lines.join("\n"));
  assert.equal(remote.written, "");
});

Deno.test("smtp server: a client that speaks first is an SMTPS client", async () => {
  const log = recordingLog();
  const remote = new MemoryPeer("220 mail.example ESMTP\r\n");
  const local = new MemoryPeer("\x16\x03\x01");
  await smtp.server!.middle!(negotiation({
    local: channelTo(local),
    remote: channelTo(remote),
    log,
  }));
  assert.deepEqual(log.lines, ["LOG7: RFC 2487 not detected"]);
  assert.equal(local.written, "");
});

Deno.test("smtp server: an unknown greeting or a client without EHLO is refused", async () => {
  const e1 = await refusal(smtp.server!.middle!(negotiation({
    local: channelTo(new MemoryPeer()),
    remote: channelTo(new MemoryPeer("554 go away\r\n")),
  })));
  assert.equal(e1.line, "Unknown server welcome");
  const e2 = await refusal(smtp.server!.middle!(negotiation({
    local: channelTo(new MemoryPeer("", () => "HELO old.example\r\n")),
    remote: channelTo(new MemoryPeer("220 mail.example\r\n")),
  })));
  assert.equal(e2.line, "Unknown client EHLO");
});

// ------------------------------------------------------------------------------------ imap

Deno.test("imap client: STARTTLS after the server's welcome", async () => {
  const local = new MemoryPeer();
  const remote = new MemoryPeer("* OK IMAP4rev1 ready\r\n", () => "stunnel OK Begin TLS\r\n");
  await imap.client!.middle!(negotiation({ local: channelTo(local), remote: channelTo(remote) }));
  assert.deepEqual(local.lines(), ["* OK Connected."]);
  assert.deepEqual(remote.lines(), ["stunnel STARTTLS"]);
});

Deno.test("imap client: a server without STARTTLS: BYE to the client, no reset", async () => {
  const local = new MemoryPeer();
  const remote = new MemoryPeer("* OK ready\r\n", () => "stunnel BAD unknown command\r\n");
  const e = await refusal(
    imap.client!.middle!(negotiation({ local: channelTo(local), remote: channelTo(remote) })),
  );
  assert.equal(e.line, "Server does not support TLS");
  assert.equal(e.reset, false);
  assert.deepEqual(local.lines(), [
    "* OK Connected.",
    "* BYE stunnel: Server does not support TLS",
  ]);
});

Deno.test("imap server: the greeting's capabilities hidden, CAPABILITY gets STARTTLS", async () => {
  const remote = new MemoryPeer("* OK [CAPABILITY IMAP4rev1 LOGIN] ready\r\n", (line) => {
    if (line === "a1 CAPABILITY") return "* CAPABILITY IMAP4rev1 LOGIN\r\na1 OK done\r\n";
  });
  const local = new MemoryPeer("", (line) => {
    if (line.endsWith("(stunnel)")) return "a1 CAPABILITY\r\n";
    if (line === "a1 OK done") return "a2 STARTTLS\r\n";
  });
  await imap.server!.middle!(negotiation({ local: channelTo(local), remote: channelTo(remote) }));
  assert.deepEqual(local.lines(), [
    "* OK [KAPABILITY IMAP4rev1 LOGIN] ready (stunnel)",
    "* CAPABILITY IMAP4rev1 LOGIN STARTTLS",
    "a1 OK done",
    "a2 OK Begin TLS negotiation now",
  ]);
  assert.deepEqual(remote.lines(), ["a1 CAPABILITY"]);
});

Deno.test("imap server: another command is refused and the server logged out", async () => {
  const remote = new MemoryPeer("* OK ready\r\n", (line) => {
    if (line === "stunnel LOGOUT") return "* BYE logging out\r\nstunnel OK LOGOUT\r\n";
  });
  const local = new MemoryPeer("", () => "a1 LOGIN user secret\r\n");
  const e = await refusal(
    imap.server!.middle!(negotiation({ local: channelTo(local), remote: channelTo(remote) })),
  );
  assert.equal(e.line, "Unexpected client command LOGIN user secret");
  assert.deepEqual(local.lines(), [
    "* OK ready (stunnel)",
    "* BYE stunnel: unexpected command",
    "a1 BAD LOGIN user secret unexpected",
  ]);
  assert.deepEqual(remote.lines(), ["stunnel LOGOUT"]);
});

// ------------------------------------------------------------------------------------ pop3

Deno.test("pop3 client: STLS after the greeting, which the client gets", async () => {
  const local = new MemoryPeer();
  const remote = new MemoryPeer("+OK POP3 ready\r\n", () => "+OK begin TLS\r\n");
  await pop3.client!.middle!(negotiation({ local: channelTo(local), remote: channelTo(remote) }));
  assert.deepEqual(local.lines(), ["+OK POP3 ready"]);
  assert.deepEqual(remote.lines(), ["STLS"]);

  const e = await refusal(pop3.client!.middle!(negotiation({
    local: channelTo(new MemoryPeer()),
    remote: channelTo(new MemoryPeer("+OK ready\r\n", () => "-ERR no\r\n")),
  })));
  assert.equal(e.line, "Server does not support TLS");
});

Deno.test("pop3 server: CAPA lists STLS, STLS starts TLS, anything else is refused", async () => {
  const local = new MemoryPeer("", (line) => {
    if (line.endsWith("+ stunnel")) return "CAPA\r\n";
    if (line === ".") return "STLS\r\n";
  });
  await pop3.server!.middle!(negotiation({
    local: channelTo(local),
    remote: channelTo(new MemoryPeer("+OK hello\r\n")),
  }));
  assert.deepEqual(local.lines(), [
    "+OK hello + stunnel",
    "+OK Stunnel capability list follows",
    "STLS",
    ".",
    "+OK Stunnel starts TLS negotiation",
  ]);

  const e = await refusal(pop3.server!.middle!(negotiation({
    local: channelTo(new MemoryPeer("", () => "USER someone\r\n")),
    remote: channelTo(new MemoryPeer("+OK hello\r\n")),
  })));
  assert.equal(e.line, "Client does not want TLS");
});

// ------------------------------------------------------------------------------------ nntp

Deno.test("nntp client: a 200 or 201 greeting, then STARTTLS answered by 382", async () => {
  for (const greeting of ["200 news ready", "201 news ready (no posting)"]) {
    const local = new MemoryPeer();
    const remote = new MemoryPeer(`${greeting}\r\n`, () => "382 continue\r\n");
    await nntp.client!.middle!(negotiation({ local: channelTo(local), remote: channelTo(remote) }));
    assert.deepEqual(local.lines(), [greeting]);
    assert.deepEqual(remote.lines(), ["STARTTLS"]);
  }
  const e1 = await refusal(nntp.client!.middle!(negotiation({
    local: channelTo(new MemoryPeer()),
    remote: channelTo(new MemoryPeer("400 go away\r\n")),
  })));
  assert.equal(e1.line, "Unknown server welcome");
  const e2 = await refusal(nntp.client!.middle!(negotiation({
    local: channelTo(new MemoryPeer()),
    remote: channelTo(new MemoryPeer("200 ready\r\n", () => "580 no TLS\r\n")),
  })));
  assert.equal(e2.line, "Server does not support TLS");
});

// --------------------------------------------------------------------------------- Channel

Deno.test("channel: a peer that closes mid-line, or sends a line too long", async () => {
  const closing = new MemoryPeer("220 half a line");
  closing.end();
  const e1 = await refusal(channelTo(closing).readLine().then(() => {}));
  assert.equal(e1.line, "fd_getline: Unexpected socket close");
  const e2 = await refusal(channelTo(new MemoryPeer("x".repeat(9000))).readLine().then(() => {}));
  assert.equal(e2.line, "fd_getline: Line too long");
});
