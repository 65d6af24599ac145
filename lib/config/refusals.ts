/**
 * Options a configuration sets that cannot be honoured in this run (Deno's TLS engine, a
 * platform without the C library or socket descriptors): each rule table classifies every
 * option of the table (options.ts), and what it refuses is reported with the line and the
 * reason at start-up, never ignored.
 */
import type { Configuration, GlobalOptions, ServiceOptions, Where } from "./types.ts";

/** The option can be honoured. */
export const HONOURED = "honoured";

/** A reason the option cannot be honoured, or a check of its value (the reason, or nothing). */
export type Rule =
  | typeof HONOURED
  | { refused: string }
  | { service(opts: ServiceOptions): string | undefined }
  | { global(global: GlobalOptions): string | undefined };

/** One refusal: the option, where it was set, why. */
export interface Refusal {
  option: string;
  where?: Where;
  section?: string;
  reason: string;
}

/** Every option `config` sets that `rules` refuse, in file order (`inetd`: why inetd mode is). */
export function refusals(
  config: Configuration,
  rules: Record<string, Rule>,
  inetd: string | undefined,
): Refusal[] {
  const found: Refusal[] = [];
  if (config.inetd && inetd) found.push({ option: "(inetd mode)", reason: inetd });
  for (const [option, where] of Object.entries(config.global.where)) {
    const rule = rules[option];
    const reason = rule === HONOURED || rule === undefined
      ? undefined
      : "refused" in rule
      ? rule.refused
      : "global" in rule
      ? rule.global(config.global)
      : undefined;
    if (reason) found.push({ option, where, reason });
  }
  for (const service of config.services) {
    // Every option the section sets (its own lines and the global section's defaults).
    const names = new Set([...Object.keys(service.where), "client"]);
    for (const option of names) {
      const rule = rules[option];
      if (rule === HONOURED || rule === undefined || "global" in rule) continue;
      const reason = "refused" in rule ? rule.refused : rule.service(service);
      const where = service.where[option];
      // A global line that services inherit is reported once.
      const same = (f: Refusal) =>
        f.option === option && f.where?.file === where?.file && f.where?.line === where?.line;
      if (reason && !found.some(same)) {
        found.push({ option, where, section: service.name, reason });
      }
    }
  }
  return found;
}

/** stunnel-style lines for the refusals (`how`: "with ENGINE", "on this platform"). */
export function refusalLines(found: Refusal[], how: string): string[] {
  return found.map((f) => {
    const at = f.where ? `${f.where.file}:${f.where.line}: ` : "";
    const section = f.section !== undefined && f.section !== "" ? `Service [${f.section}]: ` : "";
    return `${section}${at}option '${f.option}' cannot be used ${how}: ${f.reason}`;
  });
}
