/** The suite's verdicts and figures, printed at the end with a closing `N passed, N failed`. */

export interface Check {
  part: string;
  name: string;
  ok: boolean;
  detail: string;
}

export class Report {
  readonly checks: Check[] = [];
  readonly figures = new Map<string, string[]>();

  check(part: string, name: string, ok: boolean, detail = ""): boolean {
    this.checks.push({ part, name, ok, detail });
    progress(`${ok ? "ok  " : "FAIL"} [${part}] ${name}${detail ? `: ${detail}` : ""}`);
    return ok;
  }

  figure(part: string, line: string): void {
    const lines = this.figures.get(part) ?? [];
    lines.push(line);
    this.figures.set(part, lines);
  }

  get failed(): number {
    return this.checks.filter((c) => !c.ok).length;
  }

  print(): void {
    const out: string[] = ["", "==================== reliability summary ===================="];
    const parts = [...new Set([...this.figures.keys(), ...this.checks.map((c) => c.part)])];
    for (const part of parts) {
      out.push(`--- ${part}`);
      for (const line of this.figures.get(part) ?? []) out.push(`    ${line}`);
      for (const c of this.checks.filter((c) => c.part === part)) {
        out.push(`  ${c.ok ? "ok  " : "FAIL"} ${c.name}${c.detail ? `: ${c.detail}` : ""}`);
      }
    }
    const passed = this.checks.length - this.failed;
    out.push("", `${passed} passed, ${this.failed} failed`);
    console.log(out.join("\n"));
  }
}

/** A progress line on stderr, with the time since the suite started. */
const t0 = Date.now();
export function progress(text: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(1).padStart(6);
  console.error(`[${s}s] ${text}`);
}

export const MiB = 1024 * 1024;

export function mib(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}
