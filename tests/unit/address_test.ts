/** `[HOST:]PORT` and Unix socket addresses (lib/config/address.ts), parsed and printed. */
import assert from "node:assert/strict";
import { formatAddress, lookupTcpService, parseAddress } from "../../lib/config/address.ts";

const lookup = (name: string) => name === "https" ? 443 : undefined;

Deno.test("address: [HOST:]PORT forms, split on the last colon", () => {
  const cases: [string, "accept" | "connect", string][] = [
    ["443", "accept", "0.0.0.0:443"],
    ["443", "connect", "localhost:443"],
    ["127.0.0.1:443", "connect", "127.0.0.1:443"],
    [":::443", "accept", ":::443"],
    ["::1:443", "connect", "::1:443"],
    ["[::1]:443", "connect", "::1:443"],
    ["example.com:https", "connect", "example.com:443"],
    ["0", "accept", "0.0.0.0:0"],
    ["127.0.0.1:", "accept", "127.0.0.1:0"],
    // As in stunnel: connecting to port 0 fails when it is tried, not when the file is read.
    ["127.0.0.1:0", "connect", "127.0.0.1:0"],
    ["65535", "connect", "localhost:65535"],
  ];
  for (const [text, role, expected] of cases) {
    assert.equal(formatAddress(parseAddress(text, role, lookup)), expected, text);
  }
  assert.deepEqual(parseAddress("[::1]:443", "connect", lookup), {
    kind: "tcp",
    host: "::1",
    port: 443,
  });
});

Deno.test("address: a path is a Unix socket, logged as localhost:PATH", () => {
  const address = parseAddress("/run/app.sock", "connect");
  assert.deepEqual(address, { kind: "unix", path: "/run/app.sock" });
  assert.equal(formatAddress(address), "localhost:/run/app.sock");
  // A slash anywhere makes a path, even after a colon.
  assert.deepEqual(parseAddress("host:/x", "accept"), { kind: "unix", path: "host:/x" });
});

Deno.test("address: the reasons of a bad address, for the parser's message", () => {
  const reason = (text: string, role: "accept" | "connect") => {
    try {
      parseAddress(text, role, lookup);
    } catch (e) {
      return e;
    }
    return undefined;
  };
  assert.equal(reason("99999", "accept"), "Port number out of range (1..65535): 99999");
  assert.equal(reason("nope", "accept"), 'Unknown TCP service "nope"');
  assert.equal(reason("host:", "connect"), 'Unknown TCP service ""');
  assert.equal(reason(":443", "connect"), "Empty host name");
  assert.equal(reason("[]:443", "accept"), "Empty host name");
});

Deno.test("address: service names come from /etc/services (tcp only, with aliases)", () => {
  const services = "# comment\nhttp\t\t80/tcp\t\twww\t# WorldWideWeb\nfoo 5/udp\n";
  assert.equal(lookupTcpService("http", services), 80);
  assert.equal(lookupTcpService("www", services), 80);
  assert.equal(lookupTcpService("foo", services), undefined);
  assert.equal(lookupTcpService("WorldWideWeb", services), undefined);
});
