/** What the supervisor and its worker threads say to each other. */
import { LogSink } from "../sys/log.ts";
import type { Configuration, GlobalOptions } from "../config/types.ts";
import type { Runtime } from "../proxy/daemon.ts";
import type { ThreadFigures } from "../proxy/metrics.ts";

export type ToWorker =
  | { type: "start"; config: Configuration; runtime: Runtime; stderrLevel: number }
  | { type: "reload"; config: Configuration }
  | { type: "reopen" }
  | { type: "list" }
  | { type: "figures" }
  | { type: "renewTls"; names: string[] }
  | { type: "stop" };

export interface WorkerReply {
  id: number;
  ok: boolean;
  /** The answer to "list": one summary per open connection. */
  lines?: string[];
  /** The answer to "figures": the thread's counters (`metrics =`). */
  figures?: ThreadFigures;
}

/** The log sink of a worker thread: the same destinations, never truncating the file. */
export function workerSink(global: GlobalOptions, stderrLevel: number): LogSink {
  return new LogSink({ ...global, log: "append" }, stderrLevel);
}
