/**
 * NTLM (v1) proxy authentication messages, as stunnel 5.68 builds them for `protocol = connect`
 * with `protocolAuthentication = NTLM`: a fixed type-1 message, and a type-3 message with the
 * 24-byte NT response to the proxy's challenge (DES of the challenge under the MD4 hash of the
 * UTF-16 password), the domain and the user name.
 *
 * MD4 and DES come from OpenSSL 3's legacy provider, loaded into a library context of its own
 * (the default context, used by TLS, is unchanged). When that provider cannot be loaded the
 * messages cannot be built; `NtlmUnavailable` says why.
 */
import { cstr, drainErrors, lib, type Ptr } from "../lib/sys/ffi.ts";

/** MD4 and DES are not available; `message` is the reason, for the log. */
export class NtlmUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NtlmUnavailable";
  }
}

interface Legacy {
  md4: Ptr;
  des: Ptr;
}

let legacy: Legacy | NtlmUnavailable | undefined;

/** The MD4 and DES-ECB implementations of the legacy provider (fetched once per thread). */
function algorithms(): Legacy {
  if (!legacy) {
    const { crypto } = lib();
    const fail = (what: string) => {
      const errors = drainErrors().map((e) => e.text);
      return new NtlmUnavailable(
        `NTLM authentication is not available: ${what}` +
          (errors.length ? ` (${errors.join("; ")})` : ""),
      );
    };
    const ctx = crypto.OSSL_LIB_CTX_new();
    if (ctx === null) legacy = fail("OSSL_LIB_CTX_new failed");
    else if (crypto.OSSL_PROVIDER_load(ctx, cstr("legacy")) === null) {
      legacy = fail("the OpenSSL legacy provider could not be loaded");
      crypto.OSSL_LIB_CTX_free(ctx);
    } else {
      const md4 = crypto.EVP_MD_fetch(ctx, cstr("MD4"), null);
      const des = crypto.EVP_CIPHER_fetch(ctx, cstr("DES-ECB"), null);
      if (md4 === null || des === null) {
        legacy = fail("MD4 or DES-ECB not found in the OpenSSL legacy provider");
      } else legacy = { md4, des };
      // The context stays: the fetched algorithms belong to it (one per thread, for good).
    }
  }
  if (legacy instanceof NtlmUnavailable) throw legacy;
  return legacy;
}

/** Throws NtlmUnavailable unless MD4 and DES can be used. */
export function ntlmAvailable(): void {
  algorithms();
}

function md4(data: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
  const { crypto } = lib();
  const out = new Uint8Array(16);
  const size = new Uint32Array(1);
  const ok = crypto.EVP_Digest(
    data,
    BigInt(data.length),
    out,
    new Uint8Array(size.buffer),
    algorithms().md4,
    null,
  );
  if (ok !== 1) {
    drainErrors();
    throw new NtlmUnavailable("NTLM authentication failed: MD4 failed");
  }
  return out;
}

/** DES-ECB of one 8-byte block under the 56-bit key `key7` (spread over 8 bytes, odd parity). */
function des(key7: Uint8Array, block: Uint8Array): Uint8Array<ArrayBuffer> {
  const { crypto } = lib();
  const key = new Uint8Array(8);
  key[0] = key7[0];
  for (let i = 1; i < 7; i++) key[i] = ((key7[i - 1] << (8 - i)) | (key7[i] >> i)) & 0xff;
  key[7] = (key7[6] << 1) & 0xff;
  for (let i = 0; i < 8; i++) { // odd parity in the low bit (DES_set_odd_parity)
    let bits = 0;
    for (let b = 1; b < 8; b++) bits += (key[i] >> b) & 1;
    key[i] = (key[i] & 0xfe) | (bits % 2 === 0 ? 1 : 0);
  }
  const ctx = crypto.EVP_CIPHER_CTX_new();
  if (ctx === null) {
    drainErrors();
    throw new NtlmUnavailable("NTLM authentication failed: EVP_CIPHER_CTX_new failed");
  }
  try {
    const out = new Uint8Array(16);
    const outl = new Int32Array(1);
    const ok = crypto.EVP_EncryptInit_ex(ctx, algorithms().des, null, key, null) === 1 &&
      crypto.EVP_CIPHER_CTX_set_padding(ctx, 0) === 1 &&
      crypto.EVP_EncryptUpdate(
          ctx,
          out,
          new Uint8Array(outl.buffer),
          Uint8Array.from(block.subarray(0, 8)),
          8,
        ) === 1 &&
      outl[0] === 8;
    if (!ok) {
      drainErrors();
      throw new NtlmUnavailable("NTLM authentication failed: DES failed");
    }
    return out.slice(0, 8);
  } finally {
    crypto.EVP_CIPHER_CTX_free(ctx);
  }
}

function toBase64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** Lenient Base64 (OpenSSL's BIO): undefined when it is not Base64 at all. */
function fromBase64(text: string): Uint8Array | undefined {
  try {
    const s = atob(text.trim());
    return Uint8Array.from(s, (c) => c.charCodeAt(0));
  } catch {
    return undefined;
  }
}

const SIGNATURE = [..."NTLMSSP"].map((c) => c.charCodeAt(0));
const FLAGS_OEM_NTLM = [0x02, 0x02]; // bytes 12 and 13: negotiate OEM, negotiate NTLM

/** The type-1 (negotiate) message, Base64. */
export function ntlmType1(): string {
  const msg = new Uint8Array(32);
  msg.set(SIGNATURE);
  msg[8] = 1;
  msg.set(FLAGS_OEM_NTLM, 12);
  return toBase64(msg);
}

/**
 * The type-3 (authenticate) message answering the Base64 type-2 message `challenge`, Base64;
 * undefined when it cannot be built (stunnel's "Failed to build NTLM response"): names too long
 * for its 146 bytes, or a challenge that is not Base64.
 */
export function ntlmType3(
  domain: string,
  user: string,
  password: string,
  challenge: string,
): string | undefined {
  const enc = new TextEncoder();
  const domainBytes = enc.encode(domain), userBytes = enc.encode(user);
  const ntOff = 64, ntLen = 24;
  const domainOff = ntOff + ntLen;
  const userOff = domainOff + domainBytes.length;
  const end = userOff + userBytes.length;
  if (end > 146) return undefined;
  const decoded = fromBase64(challenge);
  if (!decoded) return undefined;
  // stunnel decodes into at least 32 zeroed bytes: a short message gives a zero-padded nonce.
  const padded = new Uint8Array(Math.max(32, decoded.length));
  padded.set(decoded);
  const nonce = padded.subarray(24, 32);
  const msg = new Uint8Array(end);
  msg.set(SIGNATURE);
  msg[8] = 3;
  msg[16] = end; // LM response: empty, at the end
  msg[20] = ntLen;
  msg[22] = ntLen;
  msg[24] = ntOff;
  msg[28] = domainBytes.length;
  msg[30] = domainBytes.length;
  msg[32] = domainOff;
  msg[36] = userBytes.length;
  msg[38] = userBytes.length;
  msg[40] = userOff;
  msg[48] = end; // workstation: empty
  msg[56] = end; // session key: empty
  msg.set(FLAGS_OEM_NTLM, 60);
  // MD4 of the password as UTF-16LE (each byte followed by a zero byte, as stunnel does).
  const pass = enc.encode(password);
  const utf16 = new Uint8Array(pass.length * 2);
  pass.forEach((b, i) => utf16[2 * i] = b);
  const hash = new Uint8Array(21);
  hash.set(md4(utf16));
  for (let i = 0; i < 3; i++) msg.set(des(hash.subarray(7 * i, 7 * i + 7), nonce), ntOff + 8 * i);
  msg.set(domainBytes, domainOff);
  msg.set(userBytes, userOff);
  return toBase64(msg);
}
