/** Writes docs/options.md from the option table: `deno run -A tools/gen_options_doc.ts`. */

import { optionsMarkdown } from "../lib/config/reference.ts";

const target = new URL("../docs/options.md", import.meta.url).pathname;
await Deno.writeTextFile(target, optionsMarkdown());
// Format it here so that `deno fmt --check` passes on the generated file as written.
const fmt = await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", target] }).output();
if (!fmt.success) throw new Error(new TextDecoder().decode(fmt.stderr));
console.log(`wrote ${target}`);
