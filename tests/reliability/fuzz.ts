/**
 * What every fuzzer of the suite reports: its seed, the outcome of each case by class, and
 * the cases that failed (with what replays them). Each fuzzer is also a program of its own:
 *
 *   deno run -A tests/reliability/<name>_fuzz.ts [--seed N] [--cases N]
 *
 * which prints its summary and, last, one `FUZZ-SUMMARY {json}` line for the suite.
 */
export interface FuzzSummary {
  name: string;
  seed: number;
  cases: number;
  /** Cases by outcome class (e.g. "accepted", "ConfigError with file:line"). */
  outcomes: Record<string, number>;
  failureCount: number;
  /** The first failures, each naming the case that replays it. */
  failures: string[];
  /** Figures worth printing (what was covered). */
  notes: string[];
}

export class FuzzTally {
  readonly summary: FuzzSummary;

  constructor(name: string, seed: number) {
    this.summary = { name, seed, cases: 0, outcomes: {}, failureCount: 0, failures: [], notes: [] };
  }

  note(text: string): void {
    this.summary.notes.push(text);
  }

  outcome(what: string): void {
    this.summary.cases++;
    this.summary.outcomes[what] = (this.summary.outcomes[what] ?? 0) + 1;
  }

  /** A case that broke a rule; `detail` must say enough to reproduce it. */
  fail(what: string, detail: string): void {
    this.outcome(`FAILED: ${what}`);
    this.summary.failureCount++;
    if (this.summary.failures.length < 10) this.summary.failures.push(`${what}: ${detail}`);
  }
}

export const SUMMARY_MARK = "FUZZ-SUMMARY ";

export function printSummary(s: FuzzSummary): void {
  console.log(`${s.name}: ${s.cases} cases, seed ${s.seed}, ${s.failureCount} failed`);
  for (const note of s.notes) console.log(`  ${note}`);
  for (const [what, n] of Object.entries(s.outcomes).sort((a, b) => b[1] - a[1])) {
    console.log(`  ${String(n).padStart(6)} x ${what}`);
  }
  for (const f of s.failures) console.log(`  FAILURE ${f}`);
  console.log(SUMMARY_MARK + JSON.stringify(s));
}

/** A short, printable excerpt of fuzzed text for a failure report. */
export function excerpt(text: string, n = 300): string {
  return JSON.stringify(text.length > n ? `${text.slice(0, n)}...` : text);
}
