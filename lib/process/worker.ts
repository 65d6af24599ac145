/** A worker thread: one more Daemon on the same configuration, driven by the Supervisor. */
import { Daemon } from "../proxy/daemon.ts";
import { type ToWorker, type WorkerReply, workerSink } from "./messages.ts";
import type { ThreadFigures } from "../proxy/metrics.ts";

interface Context {
  daemon?: Daemon;
  stderrLevel: number;
}

async function handle(
  message: ToWorker,
  context: Context,
): Promise<boolean | string[] | ThreadFigures> {
  switch (message.type) {
    case "start": {
      context.stderrLevel = message.stderrLevel;
      const sink = workerSink(message.config.global, message.stderrLevel);
      sink.open();
      const daemon = new Daemon(message.config, sink, message.runtime);
      context.daemon = daemon;
      await daemon.start();
      return true;
    }
    case "reload": {
      const sink = workerSink(message.config.global, context.stderrLevel);
      sink.open();
      const applied = await context.daemon!.apply(message.config, sink);
      if (!applied) sink.close();
      return applied;
    }
    case "reopen":
      context.daemon?.reopenLog();
      return true;
    case "list":
      return context.daemon?.connectionSummaries() ?? [];
    case "figures":
      return context.daemon?.figures() ?? {};
    case "renewTls":
      // The failures are logged by this thread; the main thread counts them once.
      return (await context.daemon?.renewTls(message.names) ?? []).length === 0;
    case "stop":
      context.daemon?.stop("Worker thread terminated");
      return true;
  }
}

const context: Context = { stderrLevel: -1 };
const scope = self as unknown as {
  onmessage: (e: MessageEvent<ToWorker & { id: number }>) => void;
  postMessage(reply: WorkerReply): void;
};
/**
 * Messages are handled one at a time, in order: a reload never overlaps another, nor the stop,
 * even when the supervisor has stopped waiting for an answer.
 */
let turn = Promise.resolve();
scope.onmessage = (e) => {
  turn = turn.then(() =>
    handle(e.data, context).then(
      (result) =>
        scope.postMessage(
          Array.isArray(result)
            ? { id: e.data.id, ok: true, lines: result }
            : typeof result === "object"
            ? { id: e.data.id, ok: true, figures: result }
            : { id: e.data.id, ok: result },
        ),
      () => scope.postMessage({ id: e.data.id, ok: false }),
    )
  );
};
