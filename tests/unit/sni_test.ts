/** SNI routing's pattern rule (lib/tls/sni.ts), stunnel's matches_wildcard. */
import assert from "node:assert/strict";
import { matchesPattern } from "../../lib/tls/sni.ts";

Deno.test("SNI patterns: stunnel's matches_wildcard", () => {
  const cases: [string, string, boolean][] = [
    ["a.example.com", "a.example.com", true],
    ["A.Example.COM", "a.example.com", true],
    ["a.example.com", "b.example.com", false],
    ["a.example.com", "example.com", false],
    // `*` stands for any prefix: several labels, or none at all.
    ["a.example.com", "*.example.com", true],
    ["a.b.EXAMPLE.com", "*.example.com", true],
    [".example.com", "*.example.com", true],
    ["example.com", "*.example.com", false],
    ["anything", "*", true],
    // Only a leading `*` is special.
    ["a.example.com", "a.*.com", false],
    ["a.*.com", "a.*.com", true],
    // strcasecmp in the C locale folds ASCII only.
    ["É.example", "é.example", false],
  ];
  for (const [name, pattern, want] of cases) {
    assert.equal(matchesPattern(name, pattern), want, `${name} vs ${pattern}`);
  }
});
