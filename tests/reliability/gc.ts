/**
 * A full garbage collection in every V8 isolate of the proxy (its main thread and its worker
 * threads), asked through the inspector the proxy was started with (`--inspect=127.0.0.1:0`).
 *
 * Without it the leak check would compare heaps at random points of V8's GC cycle: between
 * two idle moments the committed heap of one isolate varies from 9 to 35 MiB, which is more
 * than 10% of the proxy's RSS; after a full collection only live memory is left.
 */

/** The inspector's WebSocket URL in the proxy's stderr ("Debugger listening on ws://..."). */
export function inspectorUrl(consoleText: string): string | undefined {
  return consoleText.match(/Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/\S+)/)?.[1];
}

/**
 * Collects garbage in the main isolate and in each of the `workers` worker isolates (they are
 * announced after NodeWorker.enable, in no fixed order with its answer); resolves with the
 * number of isolates collected.
 */
export function collectGarbage(url: string, workers: number, timeoutMs = 20_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let next = 0;
    let attached = 0;
    let collected = 0;
    const finish = (result: number | Error) => {
      clearTimeout(timer);
      ws.close();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const timer = setTimeout(
      () => finish(new Error(`the inspector answered for ${collected} of ${workers + 1} isolates`)),
      timeoutMs,
    );
    const send = (method: string, params: object = {}) =>
      ws.send(JSON.stringify({ id: ++next, method, params }));
    const gc = JSON.stringify({ id: 1, method: "HeapProfiler.collectGarbage" });
    let mainGc = 0;
    const done = () => {
      if (++collected === workers + 1) finish(collected);
    };
    ws.onerror = () => finish(new Error(`cannot reach the inspector at ${url}`));
    ws.onopen = () => send("NodeWorker.enable", { waitForDebuggerOnStart: false });
    ws.onmessage = (e) => {
      const m = JSON.parse(String(e.data));
      if (m.method === "NodeWorker.attachedToWorker") {
        if (++attached === workers) {
          send("HeapProfiler.collectGarbage");
          mainGc = next;
        }
        send("NodeWorker.sendMessageToWorker", { sessionId: m.params.sessionId, message: gc });
      } else if (m.method === "NodeWorker.receivedMessageFromWorker") {
        if (JSON.parse(m.params.message).id === 1) done();
      } else if (m.id === 1 && workers === 0) {
        send("HeapProfiler.collectGarbage"); // NodeWorker.enable answered; no worker to wait for
        mainGc = next;
      } else if (m.id !== undefined && m.id === mainGc) done();
    };
  });
}
