/**
 * The name tables of lib/sys/names.ts against their sources: OpenSSL's and the C library's
 * headers (libssl-dev, libc6-dev) and the names `stunnel4 -options` lists.
 */
import assert from "node:assert/strict";
import {
  DEFAULT_SSL_OPTIONS,
  OCSP_FLAGS,
  SSL_OPTIONS,
  sslOptionName,
  SYSLOG_FACILITIES,
  SYSLOG_LEVELS,
} from "../../lib/sys/names.ts";

/** The `#define NAME VALUE` lines of a C header (continuation lines joined, comments dropped). */
function defines(path: string): Map<string, string> {
  const text = Deno.readTextFileSync(path).replace(/\\\n/g, " ").replace(/\/\*.*?\*\//g, "");
  const found = new Map<string, string>();
  for (const m of text.matchAll(/^#\s*define\s+(\w+)[ \t]+(.+)$/gm)) found.set(m[1], m[2].trim());
  return found;
}

/**
 * The value of macro `name`: numbers, other macros, `(..)`, `<<`, `|` and SSL_OP_BIT(n), which
 * is all these headers use for these names.
 */
function macroValue(table: Map<string, string>, name: string): bigint {
  const text = table.get(name);
  assert.ok(text !== undefined, `${name} is not defined`);
  const tokens = text.match(/0x[0-9a-fA-F]+|\d+|\w+|<<|[|()]/g)!;
  let at = 0;
  const atom = (): bigint => {
    const token = tokens[at++];
    if (token === "(") {
      const value = or();
      assert.equal(tokens[at++], ")", `${name}: ${text}`);
      return value;
    }
    if (/^\d|^0x/.test(token)) return BigInt(token);
    if (token === "SSL_OP_BIT") return 1n << atom();
    return macroValue(table, token);
  };
  const shift = (): bigint => {
    const value = atom();
    return tokens[at] === "<<" ? (at++, value << atom()) : value;
  };
  const or = (): bigint => {
    let value = shift();
    while (tokens[at] === "|") at++, value |= shift();
    return value;
  };
  const value = or();
  assert.equal(at, tokens.length, `${name}: cannot read ${text}`);
  return value;
}

/** The directory of the C library's own headers (sys/syslog.h) on this architecture. */
const SYS_INCLUDE = `/usr/include/${Deno.build.arch}-linux-gnu`;

Deno.test("names: SSL_OPTIONS are OpenSSL's SSL_OP_* values (openssl/ssl.h)", () => {
  const ssl = defines("/usr/include/openssl/ssl.h");
  for (const [name, value] of Object.entries(SSL_OPTIONS)) {
    assert.equal(value, macroValue(ssl, `SSL_OP_${name}`), name);
  }
});

Deno.test("names: SSL_OPTIONS are the names stunnel4 -options lists, in its order", async () => {
  const out = await new Deno.Command("stunnel4", {
    args: ["-options"],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(10_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const listed = [...text.matchAll(/^options = (\S+)$/gm)].map((m) => m[1]);
  assert.deepEqual(Object.keys(SSL_OPTIONS), listed);
});

Deno.test("names: option names are found case-insensitively; the defaults are known", () => {
  assert.equal(sslOptionName("no_tlsv1_1"), "NO_TLSv1_1");
  assert.equal(sslOptionName("All"), "ALL");
  assert.equal(sslOptionName("NO_TLSv1_4"), undefined);
  for (const name of DEFAULT_SSL_OPTIONS) assert.equal(sslOptionName(name), name);
});

Deno.test("names: syslog levels and facilities are the C library's (sys/syslog.h)", () => {
  const syslog = defines(`${SYS_INCLUDE}/sys/syslog.h`);
  SYSLOG_LEVELS.forEach((level, n) => {
    assert.equal(macroValue(syslog, `LOG_${level.toUpperCase()}`), BigInt(n), level);
  });
  for (const [facility, value] of Object.entries(SYSLOG_FACILITIES)) {
    assert.equal(BigInt(value), macroValue(syslog, `LOG_${facility.toUpperCase()}`), facility);
  }
});

Deno.test("names: OCSPflag values are OpenSSL's OCSP_* flags (openssl/ocsp.h)", () => {
  const ocsp = defines("/usr/include/openssl/ocsp.h");
  for (const [name, value] of Object.entries(OCSP_FLAGS)) {
    assert.equal(BigInt(value), macroValue(ocsp, `OCSP_${name}`), name);
  }
});
