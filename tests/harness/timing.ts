/** Waiting, with a time limit on everything. */

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class TimeoutError extends Error {}

/** Rejects with a TimeoutError naming `what` if `promise` has not settled after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` every `intervalMs` until it returns a truthy value; throws after `ms`. */
export async function pollUntil<T>(
  check: () => T | Promise<T>,
  ms: number,
  what: string,
  intervalMs = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  while (true) {
    const v = await check();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new TimeoutError(`timed out after ${ms} ms: ${what}`);
    await sleep(intervalMs);
  }
}
