/** The first steps of a run, daemon or inetd mode: the log opened, the banner logged. */
import { describeSource } from "../config/parser.ts";
import { early, type Logger, LogSink } from "../sys/log.ts";
import type { Configuration } from "../config/types.ts";

export interface StartupLog {
  sink: LogSink;
  /** stunnel's `ui` id: the lines of start-up and reload. */
  ui: Logger;
}

/**
 * Opens the log of `config` (with `foreground = yes`, everything also goes to stderr) and logs
 * `banner` and where the configuration came from. Undefined after reporting, as stunnel does,
 * that the log file cannot be opened.
 */
export function openStartupLog(config: Configuration, banner: string[]): StartupLog | undefined {
  const sink = new LogSink(config.global, config.global.foreground === "yes" ? 7 : -1);
  try {
    sink.open();
  } catch (e) {
    early(3, `Cannot open log file: ${config.global.output}: ${(e as Error).message}`);
    early(3, "Configuration failed");
    return undefined;
  }
  const ui = sink.bind("ui", config.global.debugLevel);
  for (const line of banner) ui(5, line);
  ui(5, `Reading configuration from ${describeSource(config.source)}`);
  return { sink, ui };
}
