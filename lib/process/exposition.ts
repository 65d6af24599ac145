/** The process's figures in the Prometheus text exposition format (version 0.0.4). */
import { HANDSHAKE_RESULTS, type ThreadFigures } from "../proxy/metrics.ts";

/** What only the supervisor knows: reloads, certificates, whether it accepts. */
export interface ProcessFigures {
  accepting: boolean;
  threads: number;
  reloads: { success: number; failure: number };
  /** Unix seconds of the last configuration that was applied (start-up or reload). */
  lastReloadSuccess: number;
  /** `watchFiles` reloads of each service's TLS context. */
  certificateReloads: Record<string, { success: number; failure: number }>;
  certificates: { service: string; file: string; notAfter: number }[];
}

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** A label value with `\`, `"` and newlines escaped, as the format wants. */
function quote(value: string): string {
  return `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`;
}

function labels(pairs: Record<string, string>): string {
  const parts = Object.entries(pairs).map(([k, v]) => `${k}=${quote(v)}`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

class Family {
  private readonly lines: string[];

  constructor(private readonly name: string, type: "counter" | "gauge", help: string) {
    this.lines = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
  }

  add(pairs: Record<string, string>, value: number): this {
    this.lines.push(`${this.name}${labels(pairs)} ${value}`);
    return this;
  }

  text(): string {
    return this.lines.join("\n");
  }
}

export function exposition(services: ThreadFigures, process: ProcessFigures): string {
  const accepted = new Family(
    "stunnel_connections_accepted_total",
    "counter",
    "Connections accepted, by accepting service.",
  );
  const active = new Family("stunnel_connections_active", "gauge", "Connections open now.");
  const closed = new Family("stunnel_connections_closed_total", "counter", "Connections ended.");
  const bytes = new Family(
    "stunnel_transferred_bytes_total",
    "counter",
    "Bytes moved, by direction (to_tls: written to the TLS side; to_socket: to the plain side).",
  );
  const handshakes = new Family(
    "stunnel_handshakes_total",
    "counter",
    "TLS handshakes, by result (ok, or the reason of the failure).",
  );
  const sessions = new Family(
    "stunnel_sessions_total",
    "counter",
    "Completed handshakes, by session (new or resumed).",
  );
  const connectFailures = new Family(
    "stunnel_connect_failures_total",
    "counter",
    "Failed connects, by target address.",
  );
  for (const [name, f] of Object.entries(services)) {
    const service = { service: name };
    accepted.add(service, f.accepted);
    active.add(service, f.active);
    closed.add(service, f.closed);
    bytes.add({ ...service, direction: "to_tls" }, f.bytesToTls);
    bytes.add({ ...service, direction: "to_socket" }, f.bytesToSocket);
    HANDSHAKE_RESULTS.forEach((result, i) =>
      handshakes.add({ ...service, result }, f.handshakes[i])
    );
    sessions.add({ ...service, session: "new" }, f.newSessions);
    sessions.add({ ...service, session: "resumed" }, f.resumedSessions);
    for (const [target, n] of Object.entries(f.connectFailures)) {
      connectFailures.add({ ...service, target }, n);
    }
  }
  const reloads = new Family(
    "stunnel_reloads_total",
    "counter",
    "Configuration reloads (SIGHUP), by result.",
  )
    .add({ result: "success" }, process.reloads.success)
    .add({ result: "failure" }, process.reloads.failure);
  const lastReload = new Family(
    "stunnel_last_reload_success_timestamp_seconds",
    "gauge",
    "When the configuration in force was applied (start-up or last successful reload).",
  ).add({}, process.lastReloadSuccess);
  const certificateReloads = new Family(
    "stunnel_certificate_reloads_total",
    "counter",
    "TLS context reloads of watchFiles, by result (a failure keeps the previous context).",
  );
  for (const [name, r] of Object.entries(process.certificateReloads)) {
    certificateReloads.add({ service: name, result: "success" }, r.success);
    certificateReloads.add({ service: name, result: "failure" }, r.failure);
  }
  const notAfter = new Family(
    "stunnel_certificate_not_after_seconds",
    "gauge",
    "The notAfter of each service's loaded certificate, as a Unix time.",
  );
  for (const c of process.certificates) {
    notAfter.add({ service: c.service, file: c.file }, c.notAfter);
  }
  const up = new Family("stunnel_accepting", "gauge", "1 while accepting connections.")
    .add({}, process.accepting ? 1 : 0);
  const threads = new Family("stunnel_threads", "gauge", "Threads serving connections.")
    .add({}, process.threads);
  return [
    accepted,
    active,
    closed,
    bytes,
    handshakes,
    sessions,
    connectFailures,
    reloads,
    lastReload,
    certificateReloads,
    notAfter,
    up,
    threads,
  ].map((f) => f.text()).join("\n") + "\n";
}
