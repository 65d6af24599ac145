/**
 * ALPN (extension `alpn = h2,http/1.1`). A server-mode context selects the first of its
 * protocols that the client offers, or none (the handshake goes on without ALPN, as HAProxy
 * does); a client-mode context offers its list.
 */
import { copyTo, lib, type Ptr } from "../sys/ffi.ts";
import { check, type ContextHandle, type TlsContextLog } from "./core.ts";

const SSL_TLSEXT_ERR_OK = 0;
const SSL_TLSEXT_ERR_NOACK = 3;

/** int (*)(SSL *, const unsigned char **out, unsigned char *outlen, in, inlen, void *arg) */
const SELECT = {
  parameters: ["pointer", "pointer", "pointer", "pointer", "u32", "pointer"],
  result: "i32",
} as const;

/** The callback of this thread (the context's list comes in its `arg`); never closed. */
let selectCallback: Deno.UnsafeCallback<typeof SELECT> | undefined;

/** The wire format: each protocol prefixed by its length. */
function wireFormat(protocols: readonly string[]): Uint8Array<ArrayBuffer> {
  const encoded = protocols.map((p) => new TextEncoder().encode(p));
  const out = new Uint8Array(encoded.reduce((n, p) => n + 1 + p.length, 0));
  let at = 0;
  for (const p of encoded) {
    out[at++] = p.length;
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function configureAlpn(context: ContextHandle, log: TlsContextLog): void {
  const protocols = context.opts.alpn;
  if (!protocols || protocols.length === 0) return;
  const { ssl } = lib();
  const wire = wireFormat(protocols);
  if (context.opts.client) {
    check(
      ssl.SSL_CTX_set_alpn_protos(context.ctx, wire, wire.length) === 0,
      "SSL_CTX_set_alpn_protos",
    );
  } else {
    // The callback finds the list through `arg`: a length, then the wire format.
    const arg = new Uint8Array(2 + wire.length);
    new DataView(arg.buffer).setUint16(0, wire.length, true);
    arg.set(wire, 2);
    context.own({ close: () => void arg });
    selectCallback ??= new Deno.UnsafeCallback(SELECT, select);
    ssl.SSL_CTX_set_alpn_select_cb(
      context.ctx,
      selectCallback.pointer,
      Deno.UnsafePointer.of(arg),
    );
  }
  log(7, `ALPN protocols: ${protocols.join(", ")}`);
}

/** Server preference: our first protocol that the client offered. */
function select(
  _ssl: Ptr,
  out: Ptr,
  outlen: Ptr,
  offered: Ptr,
  offeredLength: number,
  arg: Ptr,
): number {
  if (out === null || outlen === null || offered === null || arg === null) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  const view = new Deno.UnsafePointerView(arg);
  const ours = new Uint8Array(view.getArrayBuffer(view.getUint16(0), 2));
  const theirs = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(offered, offeredLength));
  for (let i = 0; i < ours.length; i += 1 + ours[i]) {
    const want = ours.subarray(i + 1, i + 1 + ours[i]);
    for (let j = 0; j < theirs.length; j += 1 + theirs[j]) {
      const offer = theirs.subarray(j + 1, j + 1 + theirs[j]);
      if (offer.length !== want.length || !offer.every((b, k) => b === want[k])) continue;
      // *out points into the client's list, which outlives the callback.
      const chosen = Deno.UnsafePointer.offset(offered, j + 1);
      const address = new BigUint64Array([BigInt(Deno.UnsafePointer.value(chosen))]);
      copyTo(out, new Uint8Array(address.buffer));
      copyTo(outlen, new Uint8Array([offer.length]));
      return SSL_TLSEXT_ERR_OK;
    }
  }
  return SSL_TLSEXT_ERR_NOACK;
}
