/** Waits bounded in time (stunnel's TIMEOUTbusy and friends). */

/**
 * `work`, or, if `ms` pass first, what `onTimeout` returns (or throws): it is the place to log
 * the timeout and to close what `work` waits on. The timer is cleared either way; a `work` that
 * settles after the timeout is ignored, and its failure never goes unhandled.
 */
export function withTimeout<T, U>(
  work: Promise<T>,
  ms: number,
  onTimeout: () => U,
): Promise<T | U> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<U>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(onTimeout());
      } catch (e) {
        reject(e);
      }
    }, ms);
  });
  work.catch(() => {});
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}
