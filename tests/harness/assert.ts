/** Assertions (no @std: JSR is not reachable). */

export class AssertionError extends Error {}

export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new AssertionError(msg);
}

function show(v: unknown): string {
  return typeof v === "string"
    ? JSON.stringify(v.length > 2000 ? v.slice(0, 2000) + "…" : v)
    : Deno.inspect(v, { depth: 5 });
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (a instanceof Uint8Array && b instanceof Uint8Array) {
    return a.length === b.length && a.every((x, i) => x === b[i]);
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  if (ka.length !== kb.length) return false;
  return ka.every((k) =>
    deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])
  );
}

export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  if (!deepEqual(actual, expected)) {
    throw new AssertionError(
      `${msg ? msg + "\n" : ""}values differ:\n  actual:   ${show(actual)}\n  expected: ${
        show(expected)
      }`,
    );
  }
}

export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  if (deepEqual(actual, expected)) {
    throw new AssertionError(`${msg ? msg + "\n" : ""}value should differ: ${show(actual)}`);
  }
}

export function assertMatch(actual: string, re: RegExp, msg?: string): void {
  if (!re.test(actual)) {
    throw new AssertionError(`${msg ? msg + "\n" : ""}${show(actual)} does not match ${re}`);
  }
}

export function assertNotMatch(actual: string, re: RegExp, msg?: string): void {
  if (re.test(actual)) {
    throw new AssertionError(`${msg ? msg + "\n" : ""}${show(actual)} matches ${re}`);
  }
}

/** Runs `fn` and returns the error it throws (or rejects with); fails if it does not. */
export async function assertRejects(fn: () => unknown, msg?: string): Promise<unknown> {
  try {
    await fn();
  } catch (e) {
    return e;
  }
  throw new AssertionError(msg ?? "expected an error");
}

/** Escapes `s` for use inside a RegExp. */
export function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
}
