/**
 * Where the repository is and the command under test: `deno run -A main.ts` unless the
 * environment variable `PROXY_CMD` names another command (e.g. `PROXY_CMD=stunnel4`), so that
 * every end-to-end test can be run against the reference implementation to prove that the test
 * itself is faithful.
 */

/** Absolute path of the repository root (no trailing slash). */
export const REPO: string = decodeURIComponent(new URL("../..", import.meta.url).pathname).replace(
  /\/$/,
  "",
);

export function splitCommand(s: string): string[] {
  return s.trim().split(/\s+/).filter((x) => x !== "");
}

/** The command that runs the proxy under test; the config file path is appended to it. */
export const PROXY: string[] = Deno.env.get("PROXY_CMD")?.trim()
  ? splitCommand(Deno.env.get("PROXY_CMD")!)
  : [Deno.execPath(), "run", "-A", `${REPO}/main.ts`];

// The proxy adds threads only under load by default; the tests run it with two threads from the
// start, so that every test also crosses threads (a test may still set its own value).
if (!Deno.env.has("STUNNEL_THREADS")) Deno.env.set("STUNNEL_THREADS", "2");

/** True when the proxy under test is stunnel itself (used to mark stunnel-specific gaps). */
export const PROXY_IS_STUNNEL: boolean = /stunnel[0-9]*$/.test(PROXY[0]);
