/**
 * HTTP CONNECT (protocols/connect.ts) through a scripted proxy, with Basic and NTLM credentials;
 * and the PROXY v1 line (protocols/proxy.ts) for IPv4, IPv6 and Unix sockets.
 */
import assert from "node:assert/strict";
import { ProtocolError } from "../../protocols/channel.ts";
import { connect } from "../../protocols/connect.ts";
import { proxy } from "../../protocols/proxy.ts";
import { channelTo, MemoryPeer, negotiation, recordingLog } from "./memory_peer.ts";

/** A proxy that answers the request ending in an empty line with `answers`, in turn. */
function httpProxy(...answers: string[]): MemoryPeer {
  return new MemoryPeer("", (line) => line === "" ? answers.shift() : undefined);
}

Deno.test("connect: the CONNECT request, its headers, and any 2xx answer", async () => {
  for (const status of ["HTTP/1.1 200 Connection established", "HTTP/1.0 204 No Content"]) {
    const remote = httpProxy(`${status}\r\nVia: test\r\n\r\n`);
    const log = recordingLog();
    await connect.client!.middle!(negotiation({
      remote: channelTo(remote),
      log,
      opts: { protocolHost: "target.example:443", protocolHeader: ["X-One: 1", "X-Two: 2"] },
    }));
    assert.deepEqual(remote.lines(), [
      "CONNECT target.example:443 HTTP/1.1",
      "Host: target.example:443",
      "X-One: 1",
      "X-Two: 2",
      "",
    ]);
    assert.ok(log.lines.includes("LOG6: CONNECT request accepted"), log.lines.join("\n"));
  }
});

Deno.test("connect: Basic credentials; any answer but 2xx is a rejection", async () => {
  const remote = httpProxy("HTTP/1.0 407 Proxy Authentication Required\r\n\r\n");
  const log = recordingLog();
  const error = await connect.client!.middle!(negotiation({
    remote: channelTo(remote),
    log,
    opts: { protocolHost: "t:1", protocolUsername: "alice", protocolPassword: "pw" },
  })).then(() => undefined, (e) => e);
  assert.deepEqual(remote.lines(), [
    "CONNECT t:1 HTTP/1.1",
    "Host: t:1",
    `Proxy-Authorization: basic ${btoa("alice:pw")}`,
    "",
  ]);
  assert.ok(error instanceof ProtocolError);
  assert.equal(error.line, "");
  assert.ok(log.lines.includes("LOG3: CONNECT request rejected"));
});

Deno.test("connect: NTLM, type 1 in the first request, type 3 after the 407 challenge", async () => {
  const challenge = btoa("NTLMSSP\0\x02" + "\0".repeat(23));
  const remote = httpProxy(
    `HTTP/1.1 407 Auth\r\nProxy-Authenticate: NTLM ${challenge}\r\nContent-Length: 4\r\n\r\nbody`,
    "HTTP/1.1 200 OK\r\n\r\n",
  );
  await connect.client!.middle!(negotiation({
    remote: channelTo(remote),
    opts: {
      protocolHost: "t:1",
      protocolUsername: "alice",
      protocolPassword: "pw",
      protocolAuthentication: "NTLM",
      protocolDomain: "EXAMPLE",
    },
  }));
  const lines = remote.lines();
  assert.deepEqual(lines.slice(0, 5), [
    "CONNECT t:1 HTTP/1.1",
    "Host: t:1",
    "Proxy-Connection: keep-alive",
    `Proxy-Authorization: NTLM ${btoa("NTLMSSP\0\x01\0\0\0\x02\x02" + "\0".repeat(18))}`,
    "",
  ]);
  assert.deepEqual(lines.slice(5, 7), ["CONNECT t:1 HTTP/1.1", "Host: t:1"]);
  assert.match(lines[7], /^Proxy-Authorization: NTLM TlRMTVNTUAADAAAA[A-Za-z0-9+/=]+$/);
  assert.deepEqual(lines.slice(8), [""]);
});

Deno.test("connect: an NTLM challenge missing or with a bad Content-Length", async () => {
  const ntlm = {
    protocolHost: "t:1",
    protocolUsername: "u",
    protocolPassword: "p",
    protocolAuthentication: "ntlm",
    protocolDomain: "D",
  };
  for (
    const [answer, reason] of [
      ["HTTP/1.1 407 Auth\r\n\r\n", "Proxy-Authenticate: NTLM header not found"],
      [
        "HTTP/1.1 407 Auth\r\nProxy-Authenticate: NTLM x\r\nContent-Length: x1\r\n\r\n",
        "Proxy-Authenticate: Invalid Content-Length",
      ],
    ]
  ) {
    const error = await connect.client!.middle!(negotiation({
      remote: channelTo(httpProxy(answer)),
      opts: ntlm,
    })).then(() => undefined, (e) => e);
    assert.ok(error instanceof ProtocolError);
    assert.equal(error.line, reason);
  }
});

/** The accepted connection of a PROXY line: only its addresses are read. */
function accepted(remoteAddr: Deno.Addr, localAddr: Deno.Addr): Deno.Conn {
  return { remoteAddr, localAddr } as Deno.Conn;
}

Deno.test("proxy: the PROXY v1 line names the client and our accepting address", async () => {
  const tcp = (hostname: string, port: number): Deno.NetAddr => ({
    transport: "tcp",
    hostname,
    port,
  });
  const unix: Deno.UnixAddr = { transport: "unix", path: "/run/s.sock" };
  const cases: [Deno.Conn, string][] = [
    [
      accepted(tcp("192.0.2.1", 5000), tcp("198.51.100.2", 443)),
      "PROXY TCP4 192.0.2.1 198.51.100.2 5000 443",
    ],
    [
      accepted(tcp("2001:db8::1", 5000), tcp("2001:db8::2", 443)),
      "PROXY TCP6 2001:db8::1 2001:db8::2 5000 443",
    ],
    [accepted(unix, unix), "PROXY UNKNOWN"],
  ];
  for (const [localConn, line] of cases) {
    const remote = new MemoryPeer();
    await proxy.server!.late!(negotiation({ remote: channelTo(remote), localConn }));
    assert.deepEqual(remote.lines(), [line]);
  }
});
