/** The NTLM (v1) messages of protocols/ntlm.ts, against the MS-NLMP specification's example. */
import assert from "node:assert/strict";
import { ntlmType1, ntlmType3 } from "../../protocols/ntlm.ts";
import { bytes, latin1 } from "./memory_peer.ts";

const decode = (text: string) => bytes(atob(text));
const encode = (message: Uint8Array) => btoa(latin1(message));

/** A security buffer of an NTLM message (length and offset, little-endian): its bytes. */
function field(message: Uint8Array, at: number): Uint8Array {
  const view = new DataView(message.buffer);
  const length = view.getUint16(at, true), offset = view.getUint32(at + 4, true);
  return message.subarray(offset, offset + length);
}

/** A type-2 (challenge) message of `length` bytes carrying `nonce`. */
function type2(nonce: number[], length = 32): string {
  const message = new Uint8Array(length);
  message.set(bytes("NTLMSSP\0"));
  message[8] = 2;
  message.set(nonce.slice(0, Math.max(0, length - 24)), 24);
  return encode(message);
}

const hex = (data: Uint8Array) => [...data].map((b) => b.toString(16).padStart(2, "0")).join("");

Deno.test("ntlm: the type-1 message is stunnel's fixed one (OEM and NTLM flags)", () => {
  const message = decode(ntlmType1());
  assert.equal(message.length, 32);
  assert.equal(latin1(message.subarray(0, 8)), "NTLMSSP\0");
  assert.deepEqual([...message.subarray(8)], [1, 0, 0, 0, 2, 2, ...Array(18).fill(0)]);
});

Deno.test("ntlm: the type-3 NT response is MS-NLMP's NTLMv1 example (4.2.2)", () => {
  // User "User", domain "Domain", password "Password", server challenge 0123456789abcdef.
  const challenge = type2([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
  const message = decode(ntlmType3("Domain", "User", "Password", challenge)!);
  assert.equal(latin1(message.subarray(0, 8)), "NTLMSSP\0");
  assert.equal(message[8], 3);
  assert.equal(hex(field(message, 20)), "67c43011f30298a2ad35ece64f16331c44bdbed927841f94");
  assert.equal(latin1(field(message, 28)), "Domain");
  assert.equal(latin1(field(message, 36)), "User");
  // LM response, workstation and session key: empty, at the end of the message.
  for (const at of [12, 44, 52]) assert.equal(field(message, at).length, 0);
  assert.equal(new DataView(message.buffer).getUint32(16, true), message.length);
  assert.deepEqual([...message.subarray(60, 62)], [2, 2]);
});

Deno.test("ntlm: a short challenge gives a zero-padded nonce, as stunnel decodes it", () => {
  const short = decode(ntlmType3("D", "u", "p", type2([0xff, 0xff, 0xff, 0xff], 28))!);
  const full = decode(ntlmType3("D", "u", "p", type2([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]))!);
  assert.equal(hex(field(short, 20)), hex(field(full, 20)));
});

Deno.test("ntlm: no type-3 message for names over 146 bytes or a challenge not Base64", () => {
  const challenge = type2([1, 2, 3, 4, 5, 6, 7, 8]);
  assert.notEqual(ntlmType3("D".repeat(29), "u".repeat(29), "p", challenge), undefined);
  assert.equal(ntlmType3("D".repeat(29), "u".repeat(30), "p", challenge), undefined);
  assert.equal(ntlmType3("D", "u", "p", "not base64 at all!"), undefined);
});
