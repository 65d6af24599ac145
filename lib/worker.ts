/** A worker thread: one more Daemon on the same configuration, driven by the Supervisor. */
import { Daemon, type Runtime } from "./daemon.ts";
import { workerSink } from "./supervisor.ts";
import type { Configuration } from "./types.ts";

export type ToWorker =
  | { type: "start"; config: Configuration; runtime: Runtime; toStderr: boolean }
  | { type: "reload"; config: Configuration }
  | { type: "reopen" }
  | { type: "list" }
  | { type: "stop" };

export interface WorkerReply {
  id: number;
  ok: boolean;
}

interface Context {
  daemon?: Daemon;
  toStderr: boolean;
}

async function handle(message: ToWorker, context: Context): Promise<boolean> {
  switch (message.type) {
    case "start": {
      context.toStderr = message.toStderr;
      const sink = workerSink(message.config.global, message.toStderr);
      sink.open();
      const daemon = new Daemon(message.config, sink, message.runtime);
      context.daemon = daemon;
      await daemon.start();
      return true;
    }
    case "reload": {
      const sink = workerSink(message.config.global, context.toStderr);
      sink.open();
      const applied = await context.daemon!.apply(message.config, sink);
      if (!applied) sink.close();
      return applied;
    }
    case "reopen":
      context.daemon?.reopenLog();
      return true;
    case "list":
      context.daemon?.listConnections();
      return true;
    case "stop":
      context.daemon?.stop("Worker thread terminated");
      return true;
  }
}

const context: Context = { toStderr: false };
const scope = self as unknown as {
  onmessage: (e: MessageEvent<ToWorker & { id: number }>) => void;
  postMessage(reply: WorkerReply): void;
};
scope.onmessage = (e) => {
  handle(e.data, context).then(
    (ok) => scope.postMessage({ id: e.data.id, ok }),
    () => scope.postMessage({ id: e.data.id, ok: false }),
  );
};
