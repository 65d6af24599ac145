/** The reference stunnel, as a peer of the proxy under test. */
import { splitCommand } from "./command.ts";
import { type Proxy, type ProxyOptions, startProxy } from "./proxy.ts";

/** The reference implementation, used as a peer in interoperability tests. */
export const STUNNEL4: string[] = splitCommand(Deno.env.get("STUNNEL4_CMD") ?? "stunnel4");

/** Starts the reference stunnel (STUNNEL4) on `configText`, e.g. as the peer of the proxy. */
export function startStunnel4(configText: string, opts: ProxyOptions = {}): Promise<Proxy> {
  return startProxy(configText, { ...opts, cmd: STUNNEL4 });
}
