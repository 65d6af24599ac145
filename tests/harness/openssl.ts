/** openssl s_client and s_server as TLS peers. */
import { spawn, type Spawned } from "./process.ts";

export interface SClientOptions {
  /** CA file to verify the server with; verification errors are then fatal. */
  ca?: string;
  cert?: string;
  key?: string;
  servername?: string;
  args?: string[];
}

/**
 * `openssl s_client -quiet` to 127.0.0.1:port: stdin goes to the server, server data to stdout.
 * (-quiet implies -ign_eof: closing stdin does not close the connection.)
 */
export function sClient(port: number, opts: SClientOptions = {}): Spawned {
  const args = [
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    opts.servername ?? "localhost",
    "-quiet",
  ];
  if (opts.ca) {
    args.push("-CAfile", opts.ca, "-verify_return_error", "-verify_hostname", "localhost");
  }
  if (opts.cert) args.push("-cert", opts.cert);
  if (opts.key) args.push("-key", opts.key);
  return spawn(["openssl", ...args, ...(opts.args ?? [])]);
}

export interface SServerOptions {
  cert: string;
  key: string;
  /** Require and verify a client certificate against this CA. */
  verifyCa?: string;
  args?: string[];
}

/**
 * `openssl s_server -quiet` on 127.0.0.1:port: client data to stdout, stdin to the client.
 * Use waitForPort (it does not connect) before connecting.
 */
export function sServer(port: number, opts: SServerOptions): Spawned {
  const args = [
    "s_server",
    "-accept",
    `127.0.0.1:${port}`,
    "-cert",
    opts.cert,
    "-key",
    opts.key,
    "-quiet",
  ];
  if (opts.verifyCa) args.push("-Verify", "2", "-CAfile", opts.verifyCa, "-verify_return_error");
  return spawn(["openssl", ...args, ...(opts.args ?? [])]);
}

/**
 * One openssl s_client connection through an echo backend: `line` goes there and back (which,
 * in TLS 1.3, also means the tickets sent before it have arrived), then s_client closes.
 * Returns its output ("New, ..." or "Reused, ..."), or what it said when the handshake failed.
 */
export async function sClientEcho(port: number, args: string[], line: string): Promise<string> {
  const p = spawn([
    "openssl",
    "s_client",
    "-connect",
    `127.0.0.1:${port}`,
    "-servername",
    "localhost",
    ...args,
  ]);
  await p.write(`${line}\n`);
  // Anywhere in the output: s_client prints the session tickets it gets amid other lines.
  await p.stdout.waitFor(() => p.stdout.text().includes(line), 10_000, "the echo")
    .catch(() => {});
  await p.closeStdin();
  await p.wait(10_000);
  return p.output.text();
}
