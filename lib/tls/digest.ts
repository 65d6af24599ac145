/**
 * SHA-256 and HKDF-SHA256 (RFC 5869) through libcrypto, for the digests of services' settings
 * and the keys derived from them (session.ts): node:crypto would cost every start ~50 ms and
 * 6 MiB for loading Node's compatibility layer.
 */
import { lib } from "../sys/ffi.ts";
import { check } from "./core.ts";

const SHA256_LENGTH = 32;
const encoder = new TextEncoder();

function concat(parts: readonly (Uint8Array | string)[]): Uint8Array<ArrayBuffer> {
  const bytes = parts.map((p) => typeof p === "string" ? encoder.encode(p) : p);
  const out = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
  let offset = 0;
  for (const b of bytes) {
    out.set(b, offset);
    offset += b.length;
  }
  return out;
}

/** SHA-256 of the concatenation of `parts` (strings as UTF-8). */
export function sha256(...parts: (Uint8Array | string)[]): Uint8Array<ArrayBuffer> {
  const { crypto } = lib();
  const data = concat(parts);
  const out = new Uint8Array(SHA256_LENGTH);
  const ok = crypto.EVP_Digest(data, BigInt(data.length), out, null, crypto.EVP_sha256(), null);
  check(ok === 1, "EVP_Digest");
  return out;
}

function hmacSha256(key: Uint8Array<ArrayBuffer>, data: Uint8Array<ArrayBuffer>) {
  const { crypto } = lib();
  const out = new Uint8Array(SHA256_LENGTH);
  const md = crypto.EVP_sha256();
  check(crypto.HMAC(md, key, key.length, data, BigInt(data.length), out, null) !== null, "HMAC");
  return out;
}

/** HKDF-SHA256 with an empty salt: `length` bytes of keying material from `ikm` and `info`. */
export function hkdfSha256(
  ikm: Uint8Array,
  info: Uint8Array,
  length: number,
): Uint8Array<ArrayBuffer> {
  const prk = hmacSha256(new Uint8Array(SHA256_LENGTH), concat([ikm]));
  const out = new Uint8Array(length);
  let block = new Uint8Array(0);
  for (let i = 1, offset = 0; offset < length; i++, offset += SHA256_LENGTH) {
    block = hmacSha256(prk, concat([block, info, new Uint8Array([i])]));
    out.set(block.subarray(0, Math.min(SHA256_LENGTH, length - offset)), offset);
  }
  return out;
}
