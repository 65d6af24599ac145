/**
 * A repeating timer for the periodic work of a daemon (timeouts, the load check) on a plain
 * runtime timer: Deno 2.9's setInterval and setTimeout are Node's timers, and their first use
 * loads Deno's Node compatibility layer (~20 ms and 4 MiB); an AbortSignal's timeout does not.
 */

/**
 * Calls `tick` every `ms` until the returned function is called. Like setInterval, it keeps the
 * process alive; after the stop, the timer already armed may do so for up to `ms` more (it then
 * calls nothing).
 */
export function every(ms: number, tick: () => void): () => void {
  let running = true;
  const arm = () => {
    AbortSignal.timeout(ms).addEventListener("abort", () => {
      if (!running) return;
      arm();
      tick();
    }, { once: true });
  };
  arm();
  return () => running = false;
}
