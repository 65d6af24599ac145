/** The peer's temporary (key exchange) key of a handshake, in stunnel's print_tmp_key() words. */
import { cstr, lib, readCString, SSL_CTRL_GET_PEER_TMP_KEY } from "../sys/ffi.ts";
import type { TlsConnection } from "./core.ts";

const EVP_PKEY_RSA = 6;
const EVP_PKEY_DH = 28;
const EVP_PKEY_EC = 408;

/** "X25519, 253 bits", "ECDH, P-256, 256 bits" ...; undefined when the peer sent none. */
export function peerTmpKey(conn: TlsConnection): string | undefined {
  const { ssl, crypto } = lib();
  const out = new BigUint64Array(1);
  if (ssl.SSL_ctrl_str(conn.ssl, SSL_CTRL_GET_PEER_TMP_KEY, 0n, new Uint8Array(out.buffer)) <= 0) {
    return undefined;
  }
  const key = Deno.UnsafePointer.create(out[0]);
  if (key === null) return undefined;
  try {
    const id = crypto.EVP_PKEY_get_id(key);
    const bits = crypto.EVP_PKEY_get_bits(key);
    switch (id) {
      case EVP_PKEY_RSA:
        return `RSA, ${bits} bits`;
      case EVP_PKEY_DH:
        return `DH, ${bits} bits`;
      case EVP_PKEY_EC:
        return `ECDH, ${curveName(key)}, ${bits} bits`;
      default:
        return `${readCString(crypto.OBJ_nid2sn(id))}, ${bits} bits`;
    }
  } finally {
    crypto.EVP_PKEY_free(key);
  }
}

/** The NIST name of an EC key's curve ("P-256"), else OpenSSL's short name. */
function curveName(key: Deno.PointerObject): string {
  const { crypto } = lib();
  const name = new Uint8Array(80);
  const length = new BigUint64Array(1);
  if (
    crypto.EVP_PKEY_get_group_name(
      key,
      name,
      BigInt(name.length),
      new Uint8Array(length.buffer),
    ) !== 1
  ) {
    return "unknown";
  }
  const group = new TextDecoder().decode(name.subarray(0, Number(length[0])));
  const nist = crypto.EC_curve_nid2nist(crypto.OBJ_txt2nid(cstr(group)));
  return nist === null ? group : readCString(nist);
}
