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

/** Collects garbage in the main isolate and every worker; resolves with the isolate count. */
export function collectGarbage(url: string, timeoutMs = 20_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let next = 0;
    let workers = 0;
    const pending = new Set<string>();
    const finish = (result: number | Error) => {
      clearTimeout(timer);
      ws.close();
      if (result instanceof Error) reject(result);
      else resolve(result);
    };
    const timer = setTimeout(() => finish(new Error("the inspector did not answer")), timeoutMs);
    const send = (method: string, params: object = {}) => {
      const id = ++next;
      pending.add(`main:${id}`);
      ws.send(JSON.stringify({ id, method, params }));
    };
    const done = (key: string) => {
      pending.delete(key);
      // The main isolate answers its GC after NodeWorker.enable has listed the workers.
      if (pending.size === 0) finish(workers + 1);
    };
    ws.onerror = () => finish(new Error(`cannot reach the inspector at ${url}`));
    ws.onopen = () => {
      send("NodeWorker.enable", { waitForDebuggerOnStart: false });
      send("HeapProfiler.collectGarbage");
    };
    ws.onmessage = (e) => {
      const m = JSON.parse(String(e.data));
      if (m.method === "NodeWorker.attachedToWorker") {
        workers++;
        const sessionId = m.params.sessionId;
        pending.add(`worker:${sessionId}`);
        const message = JSON.stringify({ id: 1, method: "HeapProfiler.collectGarbage" });
        ws.send(JSON.stringify({
          id: ++next,
          method: "NodeWorker.sendMessageToWorker",
          params: { sessionId, message },
        }));
      } else if (m.method === "NodeWorker.receivedMessageFromWorker") {
        if (JSON.parse(m.params.message).id === 1) done(`worker:${m.params.sessionId}`);
      } else if (m.id !== undefined && pending.has(`main:${m.id}`)) done(`main:${m.id}`);
    };
  });
}
