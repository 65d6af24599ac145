/** stunnel's log: `2026.11.22 01:05:49 LOG5[0]: message` to stderr, a file and/or syslog. */
import { cstr, lib } from "./ffi.ts";
import { SYSLOG_FACILITIES, SYSLOG_LEVELS } from "./names.ts";

/** The global options that decide where log lines go. */
export interface LogSettings {
  /** syslog facility name, lower case. */
  debugFacility: string;
  log: "append" | "overwrite";
  output?: string;
  /** syslog's ident. */
  service: string;
  syslog: boolean;
  /** `logFormat = json` (extension): one JSON object per line instead of stunnel's text. */
  logFormat?: "text" | "json";
}

/** What a JSON log line says about the connection a logger belongs to (set as it is learnt). */
export interface LogContext {
  service?: string;
  connection?: number;
  peer?: string;
}

/** Values a JSON log line carries beside the message (ignored by the text format). */
export type LogFields = Record<string, string | number>;

/** Writes one log line (stunnel's level, 0-7). */
export type Log = (level: number, message: string) => void;

/** A log function bound to a connection or component id; drops messages above `level`. */
export interface Logger {
  (level: number, message: string, fields?: LogFields): void;
  readonly level: number;
  /** The connection this logger belongs to, for JSON lines. */
  readonly context?: LogContext;
}

const LOG_PID = 0x01;
const LOG_NDELAY = 0x08;
const encoder = new TextEncoder();

function pad(n: number): string {
  return n < 10 ? `0${n}` : `${n}`;
}

/** Where log lines go; one per daemon, reopened on SIGUSR1 and switched on reload. */
export class LogSink {
  private file: Deno.FsFile | undefined;
  private syslogIdent: Uint8Array | undefined;
  private stampSecond = -1;
  private stamp = "";

  /**
   * Errors (level 3 and below) kept back while a detached daemon starts: its launcher shows
   * them only if the start fails, as stunnel shows nothing when it succeeds.
   */
  heldBack: Uint8Array[] | undefined;

  /** Lines up to `stderrLevel` also go to stderr (-1: none; `foreground = yes`: all). */
  constructor(private global: LogSettings, public stderrLevel: number) {}

  /** Opens the output file and syslog; throws with the reason if the file cannot be opened. */
  open(): void {
    this.openFile();
    if (this.global.syslog) {
      this.syslogIdent = cstr(this.global.service);
      const facility = SYSLOG_FACILITIES[this.global.debugFacility] ?? SYSLOG_FACILITIES.daemon;
      lib().libc.openlog(this.syslogIdent, LOG_PID | LOG_NDELAY, facility);
    }
  }

  /** SIGUSR1: a rotated log file is replaced by a new one at the configured path. */
  reopen(): void {
    this.file?.close();
    this.file = undefined;
    this.openFile();
  }

  private openFile(): void {
    if (!this.global.output) return;
    this.file = Deno.openSync(this.global.output, {
      write: true,
      create: true,
      append: this.global.log === "append",
      truncate: this.global.log === "overwrite",
    });
  }

  /**
   * A reload: from now on this sink writes where `next` (opened) does, and `next` is spent. So
   * every logger bound to this sink follows, those of connections that outlive the reload too.
   */
  switchTo(next: LogSink): void {
    this.file?.close();
    // next.open() has already replaced our syslog ident; closelog() would undo that.
    if (this.syslogIdent && !next.syslogIdent) lib().libc.closelog();
    this.global = next.global;
    this.stderrLevel = next.stderrLevel;
    this.file = next.file;
    this.syslogIdent = next.syslogIdent;
    next.file = undefined;
    next.syslogIdent = undefined;
  }

  close(): void {
    this.file?.close();
    this.file = undefined;
    if (this.syslogIdent) lib().libc.closelog();
    this.syslogIdent = undefined;
  }

  private timestamp(): string {
    const now = Date.now();
    const second = Math.floor(now / 1000);
    if (second !== this.stampSecond) {
      const d = new Date(now);
      this.stampSecond = second;
      this.stamp = `${d.getFullYear()}.${pad(d.getMonth() + 1)}.${pad(d.getDate())} ` +
        `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    }
    return this.stamp;
  }

  write(
    level: number,
    id: string,
    message: string,
    context?: LogContext,
    fields?: LogFields,
  ): void {
    const json = this.global.logFormat === "json";
    const body = json
      ? jsonLine(level, id, message, context, fields)
      : `LOG${level}[${id}]: ${message}`;
    if (this.syslogIdent) {
      const facility = SYSLOG_FACILITIES[this.global.debugFacility] ?? SYSLOG_FACILITIES.daemon;
      lib().libc.syslog(facility | level, cstr("%s"), cstr(body));
    }
    const toStderr = level <= this.stderrLevel;
    const holdBack = this.heldBack !== undefined && level <= 3;
    if (!this.file && !toStderr && !holdBack) return;
    const line = encoder.encode(json ? `${body}\n` : `${this.timestamp()} ${body}\n`);
    if (this.file) writeAllSync(this.file, line);
    if (toStderr) writeAllSync(Deno.stderr, line);
    if (holdBack) this.heldBack!.push(line);
  }

  /** A logger for one id that drops messages above `threshold`. */
  bind(id: string, threshold: number, context?: LogContext): Logger {
    const log = (level: number, message: string, fields?: LogFields) => {
      if (level <= threshold) this.write(level, id, message, context, fields);
    };
    return Object.assign(log, { level: threshold, context });
  }
}

/** `logFormat = json`: one object per line, the fields that are known and the message. */
function jsonLine(
  level: number,
  id: string,
  message: string,
  context: LogContext | undefined,
  fields: LogFields | undefined,
): string {
  return JSON.stringify({
    time: new Date().toISOString(),
    level,
    levelName: SYSLOG_LEVELS[level],
    id,
    ...context,
    message,
    ...fields,
  });
}

function writeAllSync(w: { writeSync(p: Uint8Array): number }, data: Uint8Array): void {
  let offset = 0;
  while (offset < data.length) offset += w.writeSync(data.subarray(offset));
}

/** Messages before logging is configured, in stunnel's `[!] message` form on stderr. */
export function early(level: number, message: string): void {
  const mark = level <= 3 ? "!" : level <= 5 ? "." : " ";
  writeAllSync(Deno.stderr, encoder.encode(`[${mark}] ${message}\n`));
}
