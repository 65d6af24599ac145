/**
 * `deno task compile [--target TARGET]...`: one self-contained executable per target
 * (`dist/stunnel-deno-TARGET[.exe]`), default all of TARGETS. `deno compile` needs the compile
 * runtime (denort) of each target, downloaded from dl.deno.land unless DENORT_BIN names one;
 * a target that cannot be built fails with one line saying why, not a stack trace.
 */

const TARGETS = [
  "x86_64-unknown-linux-gnu",
  "aarch64-unknown-linux-gnu",
  "x86_64-apple-darwin",
  "aarch64-apple-darwin",
  "x86_64-pc-windows-msvc",
] as const;

function targetsOf(args: string[]): string[] {
  const chosen: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--target") chosen.push(args[++i] ?? "");
    else if (arg.startsWith("--target=")) chosen.push(arg.slice("--target=".length));
    else throw new Error(`unknown argument ${arg} (usage: --target TARGET ...)`);
  }
  for (const t of chosen) {
    if (!(TARGETS as readonly string[]).includes(t)) {
      throw new Error(`unknown target ${t} (one of ${TARGETS.join(", ")})`);
    }
  }
  return chosen.length > 0 ? chosen : [...TARGETS];
}

/** deno's colour codes (ESC [ ... m). */
const ESC = new RegExp(String.fromCharCode(27) + "\\[[0-9;]*m", "g");

/** The reason of a failed `deno compile`: its error line and the innermost cause. */
function reason(stderr: string): string {
  // deno colours its output; the message is what matters.
  const lines = stderr.replaceAll(ESC, "").split("\n").map((l) => l.trim());
  const error = lines.find((l) => l.startsWith("error:")) ?? "deno compile failed";
  const causes = lines.filter((l) => /^\d+: /.test(l) && !l.includes("<unknown>"));
  const cause = causes.at(-1)?.replace(/^\d+: /, "");
  return cause ? `${error} (${cause})` : error;
}

async function compile(target: string): Promise<boolean> {
  const suffix = target.includes("windows") ? ".exe" : "";
  const output = `dist/stunnel-deno-${target}${suffix}`;
  const args = [
    "compile",
    "-A",
    "--target",
    target,
    "--include",
    "lib/process/worker.ts",
    "--output",
    output,
    "main.ts",
  ];
  const r = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .output();
  if (r.success) {
    console.log(`${target}: ${output}`);
    return true;
  }
  const stderr = new TextDecoder().decode(r.stderr);
  const why = reason(stderr);
  const url = `https://dl.deno.land/release/v${Deno.version.deno}/denort-${target}.zip`;
  const runtime = /denort|Setting up base binary/.test(stderr)
    ? ` The compile runtime could not be downloaded (${url}): build where it is reachable, ` +
      "or fetch that file elsewhere, unpack it and set DENORT_BIN=/path/to/denort (README, " +
      "Portable binaries)."
    : "";
  console.error(`${target}: cannot build: ${why}.${runtime}`);
  return false;
}

let targets: string[];
try {
  targets = targetsOf(Deno.args);
} catch (e) {
  console.error((e as Error).message);
  Deno.exit(2);
}
let failed = 0;
for (const target of targets) if (!await compile(target)) failed++;
Deno.exit(failed === 0 ? 0 : 1);
