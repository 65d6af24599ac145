/**
 * Reads a proxy log (stunnel's format) and matches every `accepted connection` line with the
 * `Connection closed` or `Connection reset` line of the same connection id.
 */

export interface LogCounts {
  accepted: number;
  closed: number;
  reset: number;
  /** Ids accepted but never logged as ended. */
  unended: Set<string>;
  /** Error lines (LOG3 and below) by their text with numbers taken out. */
  errors: Map<string, number>;
  /** Lines saying the configuration was (re)loaded, or failed to. */
  reloads: number;
  reloadFailures: number;
}

const LINE = /^\S+ \S+ LOG(\d)\[([^\]]+)\]: (.*)$/;

/** Counts the log at `path`, streaming it (a long run writes hundreds of megabytes). */
export async function countLog(path: string): Promise<LogCounts> {
  const counts: LogCounts = {
    accepted: 0,
    closed: 0,
    reset: 0,
    unended: new Set(),
    errors: new Map(),
    reloads: 0,
    reloadFailures: 0,
  };
  const open = counts.unended;
  const onLine = (line: string) => {
    const m = LINE.exec(line);
    if (!m) return;
    const [, level, id, text] = m;
    if (/^Service \[[^\]]*\] accepted connection from /.test(text)) {
      counts.accepted++;
      open.add(id);
    } else if (text.startsWith("Connection closed")) {
      counts.closed++;
      open.delete(id);
    } else if (text.startsWith("Connection reset")) {
      counts.reset++;
      open.delete(id);
    } else if (id === "ui" && text === "Configuration successful") counts.reloads++;
    else if (id === "ui" && text === "Failed to reload the configuration file") {
      counts.reloadFailures++;
    }
    if (Number(level) <= 3) {
      const key = text.replace(/\d+/g, "N");
      counts.errors.set(key, (counts.errors.get(key) ?? 0) + 1);
    }
  };
  await eachLine(path, onLine);
  return counts;
}

/** Of `ids`, those whose `Connection closed|reset` line is in the file at `path`. */
export async function endedIn(path: string, ids: Set<string>): Promise<Set<string>> {
  const found = new Set<string>();
  await eachLine(path, (line) => {
    const m = LINE.exec(line);
    if (m && ids.has(m[2]) && /^Connection (closed|reset)/.test(m[3])) found.add(m[2]);
  });
  return found;
}

/** A summary of a set of unended connection ids. */
export function describeIds(ids: Set<string>): string {
  const some = [...ids].slice(0, 5);
  return some.length ? ` (ids ${some.join(", ")}${ids.size > 5 ? ", ..." : ""})` : "";
}

/** The most frequent error lines, for the report. */
export function topErrors(errors: Map<string, number>, n = 8): string[] {
  return [...errors].sort((a, b) => b[1] - a[1]).slice(0, n).map(([t, c]) => `${c} x ${t}`);
}

async function eachLine(path: string, onLine: (line: string) => void): Promise<void> {
  const file = await Deno.open(path);
  const decoder = new TextDecoder();
  let rest = "";
  for await (const chunk of file.readable) {
    const text = rest + decoder.decode(chunk, { stream: true });
    const lines = text.split("\n");
    rest = lines.pop()!;
    for (const line of lines) onLine(line);
  }
  if (rest) onLine(rest);
}
