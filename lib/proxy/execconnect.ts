/**
 * connect+exec sections (`exec` and `connect`, no `accept`): the program is the local side of a
 * connection to `connect`. As stunnel's exec_connect_start() and client_main(): it starts once
 * the daemon runs (and at each reload), and with `retry = yes` again a second after each
 * connection, as long as the section is configured; each round logs as `ID_ROUND`.
 */
import { execEnvironment, spawnExecConnect } from "../local/exec.ts";
import type { Logger, LogSink } from "../sys/log.ts";
import { NOT_A_SOCKET } from "../net/conn.ts";
import type { Service } from "./service.ts";

/** What a section's loop needs of the daemon that runs it. */
export interface ExecConnectHost {
  /** Whether the section still runs: a reload and the daemon's stop end its retries. */
  running(service: Service): boolean;
  /** Runs one connection of the section to its end. */
  handle(service: Service, local: Deno.Conn, log: Logger): Promise<void>;
}

/** stunnel's pause before the program of a `retry = yes` section starts again. */
const RETRY_DELAY_MS = 1000;

export async function runExecConnect(
  service: Service,
  id: string,
  sink: LogSink,
  host: ExecConnectHost,
): Promise<void> {
  const level = service.opts.debugLevel;
  sink.bind(id, level)(7, `Service [${service.name}] started`);
  // The program's socket comes from no listener: every local option is set on it.
  service.localPerConnection = [...service.sockets.local];
  for (let round = 0;; round++) {
    const log = sink.bind(`${id}_${round}`, level);
    // The program has no network peer to learn about (stunnel: none either).
    const env = execEnvironment(NOT_A_SOCKET, undefined);
    await host.handle(service, await spawnExecConnect(service.opts, env, log), log);
    if (!service.opts.retry || !host.running(service)) return;
    log(6, "Retrying an exec+connect section");
    await new Promise((r) => setTimeout(r, RETRY_DELAY_MS));
    if (!host.running(service)) return;
  }
}
