/** The layer check (tools/layers.ts) as part of the suite, so that CI runs it too. */
import assert from "node:assert/strict";

Deno.test("layers: no import cycle, no import pointing up a layer", async () => {
  const tool = new URL("../tools/layers.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", tool],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, text);
  assert.match(text, /, 0 problems/);
});
