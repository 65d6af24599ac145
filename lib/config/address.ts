/** `[HOST:]PORT` and Unix socket addresses, parsed and printed the way stunnel does. */

import type { Address } from "./types.ts";

/**
 * Which option the address belongs to: it decides the default host and whether an empty port
 * means port 0 ("any free port"). Port 0 itself is accepted everywhere, as in stunnel: in
 * `connect` or `redirect` it fails only when used.
 */
export type AddressRole = "accept" | "connect";

/** Resolves a TCP service name (e.g. "https") to a port, or undefined if unknown. */
export type ServiceLookup = (name: string) => number | undefined;

/** Host used when `accept` has no host part (the manual: "all IPv4 addresses"). */
export const ACCEPT_ANY_HOST = "0.0.0.0";
/** Host used when `connect`/`redirect` has no host part. */
export const CONNECT_DEFAULT_HOST = "localhost";

/**
 * Parses `[HOST:]PORT`, `[IPv6]:PORT` or a Unix socket path.
 * stunnel splits on the LAST colon, so `:::443` and `::1:443` are IPv6 forms.
 * Throws a reason string (the config parser adds file, line and option).
 */
export function parseAddress(
  text: string,
  role: AddressRole,
  lookup: ServiceLookup = lookupTcpService,
): Address {
  if (text.includes("/")) return { kind: "unix", path: text };
  const { host, port } = splitHostPort(text);
  return {
    kind: "tcp",
    host: host ?? (role === "accept" ? ACCEPT_ANY_HOST : CONNECT_DEFAULT_HOST),
    port: parsePort(port, role, lookup),
  };
}

/** The form stunnel uses in its logs: "127.0.0.1:443", "::1:443" (no brackets), or the path. */
/** As stunnel logs addresses: `127.0.0.1:443`, `::1:443`, `localhost:/run/sock`. */
export function formatAddress(address: Address): string {
  return address.kind === "unix" ? `localhost:${address.path}` : `${address.host}:${address.port}`;
}

function splitHostPort(text: string): { host?: string; port: string } {
  const bracketed = /^\[([^\]]*)\]:(.*)$/.exec(text);
  if (bracketed) return nonEmptyHost(bracketed[1], bracketed[2]);
  const colon = text.lastIndexOf(":");
  if (colon < 0) return { port: text };
  return nonEmptyHost(text.slice(0, colon), text.slice(colon + 1));
}

function nonEmptyHost(host: string, port: string): { host: string; port: string } {
  // stunnel fails with 'Error resolving ""' here; an empty host is always a typo.
  if (host === "") throw "Empty host name";
  return { host, port };
}

function parsePort(text: string, role: AddressRole, lookup: ServiceLookup): number {
  // An empty port binds to any free port in stunnel, just like port 0.
  if (text === "" && role === "accept") return 0;
  let port: number | undefined;
  if (/^[0-9]+$/.test(text)) port = Number(text);
  else port = lookup(text);
  if (port === undefined) throw `Unknown TCP service "${text}"`;
  if (port > 65535) throw `Port number out of range (1..65535): ${text}`;
  return port;
}

/** Looks a TCP service name up in /etc/services (names and aliases). */
export function lookupTcpService(name: string, services = readServicesFile()): number | undefined {
  for (const line of services.split("\n")) {
    const fields = line.replace(/#.*/, "").trim().split(/\s+/);
    if (fields.length < 2) continue;
    const [portText, proto] = fields[1].split("/");
    if (proto !== "tcp") continue;
    if (fields[0] === name || fields.slice(2).includes(name)) return Number(portText);
  }
  return undefined;
}

function readServicesFile(): string {
  try {
    return Deno.readTextFileSync("/etc/services");
  } catch {
    return "";
  }
}
