/**
 * The ClientHello callback, shared by the features that must look at a hello before OpenSSL
 * decides anything: sni.ts (the session ID context of the service the server name selects) and
 * sessiond.ts (the sessions to fetch from the external cache). OpenSSL keeps one such callback
 * per SSL_CTX, so each feature adds a step to the context; every step runs on every call.
 *
 * The callback is one per thread and never closed: an SSL object can outlive its context (a
 * reload frees contexts while connections still use them).
 */
import {
  lib,
  type Ptr,
  SSL_CLIENT_HELLO_ERROR,
  SSL_CLIENT_HELLO_RETRY,
  SSL_CLIENT_HELLO_SUCCESS,
} from "../sys/ffi.ts";
import type { ContextHandle } from "./core.ts";

/** What a step answers: go on, pause the handshake (called again later), or fail it. */
export type HelloVerdict =
  | typeof SSL_CLIENT_HELLO_SUCCESS
  | typeof SSL_CLIENT_HELLO_RETRY
  | typeof SSL_CLIENT_HELLO_ERROR;
export type HelloStep = (ssl: Ptr) => HelloVerdict;

/** The steps of each SSL_CTX of this thread, by its address. */
const steps = new Map<bigint, HelloStep[]>();

const CALLBACK = { parameters: ["pointer", "pointer", "pointer"], result: "i32" } as const;
let callback: Deno.UnsafeCallback<typeof CALLBACK> | undefined;

function keyOf(ctx: Ptr): bigint {
  return BigInt(Deno.UnsafePointer.value(ctx));
}

/** Adds `step` to the ClientHello callback of `context`, after the ones added before. */
export function addHelloStep(context: ContextHandle, step: HelloStep): void {
  const key = keyOf(context.ctx);
  const list = steps.get(key);
  if (list) {
    list.push(step);
    return;
  }
  steps.set(key, [step]);
  context.own({ close: () => steps.delete(key) });
  callback ??= new Deno.UnsafeCallback(CALLBACK, onClientHello);
  lib().ssl.SSL_CTX_set_client_hello_cb(context.ctx, callback.pointer, null);
}

/** Every step runs: a failure fails the hello, else a pause pauses it. */
function onClientHello(ssl: Ptr): number {
  const list = steps.get(keyOf(lib().ssl.SSL_get_SSL_CTX(ssl))) ?? [];
  let verdict: HelloVerdict = SSL_CLIENT_HELLO_SUCCESS;
  for (const step of list) {
    const answer = step(ssl);
    if (answer === SSL_CLIENT_HELLO_ERROR) return answer;
    if (answer === SSL_CLIENT_HELLO_RETRY) verdict = answer;
  }
  return verdict;
}

/** An array OpenSSL hands over: its bytes (copied). */
export function bytesAt(pointer: Ptr, length: number): Uint8Array {
  if (pointer === null || length <= 0) return new Uint8Array(0);
  return new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(pointer, length).slice(0));
}

/** The body of an extension of the ClientHello being processed; undefined if not sent. */
export function helloExtension(ssl: Ptr, type: number): Uint8Array | undefined {
  const data = new BigUint64Array(1);
  const length = new BigUint64Array(1);
  const found = lib().ssl.SSL_client_hello_get0_ext(
    ssl,
    type,
    new Uint8Array(data.buffer),
    new Uint8Array(length.buffer),
  );
  if (found !== 1) return undefined;
  return bytesAt(Deno.UnsafePointer.create(data[0]), Number(length[0]));
}
