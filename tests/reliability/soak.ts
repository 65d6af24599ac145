/**
 * The reliability suite (`./dev.sh soak [--quick]`): many concurrent connections held and
 * used (hold.ts), then a mixed load with faults and a leak check (mixed.ts) while the config,
 * protocol and OCSP fuzzers and testssl.sh run beside it. Prints the figures and a closing
 * `N passed, N failed`; exits 1 if any check failed.
 *
 *   deno run -A tests/reliability/soak.ts [--quick] [--seed N] [--only PART,...]
 *     [--hold N] [--seconds N]
 *
 * PARTs: hold, mixed, config-fuzz, protocol-fuzz, ocsp-fuzz, testssl. Every part is bounded in
 * time; the fuzzers print how to replay them alone with the same seed.
 */
import { REPO } from "../harness/command.ts";
import { makePki } from "../harness/pki.ts";
import { type FuzzSummary, SUMMARY_MARK } from "./fuzz.ts";
import { holdPart } from "./hold.ts";
import { mixedPart } from "./mixed.ts";
import { raiseNofile } from "./proc.ts";
import { progress, Report } from "./report.ts";
import { argValue, randomSeed } from "./rng.ts";
import { runTestssl } from "./testssl.ts";

const args = Deno.args;
const quick = args.includes("--quick");
const seed = Number(argValue(args, "--seed") ?? randomSeed()) >>> 0;
const only = argValue(args, "--only")?.split(",");
const wanted = (part: string) => !only || only.includes(part);
const holdCount = Number(argValue(args, "--hold") ?? (quick ? 2000 : 10_000));
const seconds = Number(argValue(args, "--seconds") ?? (quick ? 120 : 600));

/** Cases per fuzzer, quick and full. */
const FUZZERS = [
  { part: "config-fuzz", file: "config_fuzz.ts", cases: quick ? 3000 : 20_000 },
  { part: "protocol-fuzz", file: "protocol_fuzz.ts", cases: quick ? 1500 : 10_000 },
  { part: "ocsp-fuzz", file: "ocsp_fuzz.ts", cases: quick ? 150 : 1000 },
];

const report = new Report();
progress(`reliability suite, ${quick ? "quick" : "full"} form, seed ${seed}`);
report.figure("suite", `${quick ? "quick" : "full"} form, seed ${seed} (--seed ${seed} replays)`);

/** Runs one fuzzer as a process of its own (bounded in time) and reports its summary. */
async function fuzzer(f: typeof FUZZERS[number], work: string): Promise<void> {
  const file = `${REPO}/tests/reliability/${f.file}`;
  const replay = `deno run -A tests/reliability/${f.file} --seed ${seed} --cases ${f.cases}`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", file, "--seed", String(seed), "--cases", String(f.cases)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(quick ? 600_000 : 1_800_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  await Deno.writeTextFile(`${work}/${f.part}.out`, text);
  const line = text.split("\n").find((l) => l.startsWith(SUMMARY_MARK));
  if (!line) {
    report.check(f.part, "ran to its end", false, `exit ${out.code}; see ${work}/${f.part}.out`);
    return;
  }
  const s: FuzzSummary = JSON.parse(line.slice(SUMMARY_MARK.length));
  report.figure(f.part, `${s.cases} cases, seed ${s.seed} (replay: ${replay})`);
  for (const note of s.notes) report.figure(f.part, note);
  const outcomes = Object.entries(s.outcomes).sort((a, b) => b[1] - a[1]);
  for (const [what, n] of outcomes.slice(0, 12)) report.figure(f.part, `${n} x ${what}`);
  if (outcomes.length > 12) report.figure(f.part, `... ${outcomes.length - 12} more classes`);
  report.check(
    f.part,
    "no exception escaped, every bad input got a clear error",
    out.code === 0 && s.failureCount === 0,
    `${s.failureCount} of ${s.cases} failed` + s.failures.map((x) => `; ${x}`).join(""),
  );
}

async function testssl(work: string): Promise<void> {
  const dir = `${work}/testssl`;
  await Deno.mkdir(dir);
  const r = await runTestssl(quick, dir);
  report.figure(
    "testssl",
    `testssl.sh ${
      quick ? "(protocols, ciphers, FS, preferences, defaults, vulnerabilities)" : "(all checks)"
    } ` +
      `in ${r.seconds.toFixed(0)} s; findings by severity: ` +
      Object.entries(r.counts).map(([s, n]) => `${s} ${n}`).join(", "),
  );
  for (const h of r.highlights) report.figure("testssl", h);
  report.check(
    "testssl",
    "no finding of severity MEDIUM or above with the default server configuration",
    r.serious.length === 0,
    r.serious.map((f) => `${f.severity} ${f.id}: ${f.finding}`).join("; "),
  );
}

const work = await Deno.makeTempDir({ prefix: "soak-" });
try {
  // The proxy needs two descriptors per held connection (the client's and the backend's).
  const { limit, why } = await raiseNofile(holdCount * 2 + 1024);
  const holdable = Math.min(holdCount, Math.floor((limit - 128) / 2));
  const pki = await makePki(`${work}/pki`);
  if (wanted("hold")) {
    if (holdable < holdCount) {
      report.figure(
        "hold",
        `${holdCount} asked, but the descriptor limit cannot go above ${limit} here ` +
          `(${why}; raising it needs CAP_SYS_RESOURCE): the proxy can hold ${holdable}`,
      );
    }
    const dir = `${work}/hold`;
    await Deno.mkdir(dir);
    await holdPart({ count: holdable, pki, seed, report, dir });
  }
  // The fuzzers and testssl run beside the mixed load (each is its own process).
  const beside: Promise<void>[] = FUZZERS.filter((f) => wanted(f.part)).map((f) =>
    fuzzer(f, work).catch((e) => void report.check(f.part, "ran to its end", false, String(e)))
  );
  if (wanted("testssl")) {
    beside.push(
      testssl(work).catch((e) => void report.check("testssl", "ran to its end", false, String(e))),
    );
  }
  if (wanted("mixed")) {
    const dir = `${work}/mixed`;
    await Deno.mkdir(dir);
    await mixedPart({
      seconds,
      warmupSeconds: quick ? 10 : 30,
      killEverySeconds: quick ? 20 : 30,
      pki,
      seed,
      report,
      dir,
    });
  }
  await Promise.all(beside);
} catch (e) {
  report.check("suite", "ran to its end", false, String((e as Error).stack ?? e));
}
report.print();
if (report.failed === 0) await Deno.remove(work, { recursive: true });
else console.log(`(the proxies' logs and the parts' output are kept in ${work})`);
Deno.exit(report.failed === 0 ? 0 : 1);
