/**
 * The layer check (`deno task check`, CI): the product's modules form no import cycle, and every
 * import points to the same layer or a lower one. Layers, lowest first, are folders: a module
 * belongs to the first prefix that matches its path.
 */
const LAYERS: readonly (readonly string[])[] = [
  ["lib/sys/"],
  ["lib/config/"],
  ["lib/net/"],
  ["lib/tls/"],
  ["lib/local/", "lib/access/"],
  ["protocols/"],
  ["lib/proxy/"],
  ["lib/process/"],
  ["mod.ts"],
  ["main.ts"],
];
const ENTRIES = ["main.ts", "mod.ts", "lib/process/worker.ts"];

const root = new URL("..", import.meta.url);

function layerOf(file: string): number {
  const i = LAYERS.findIndex((prefixes) => prefixes.some((p) => file.startsWith(p)));
  if (i < 0) throw new Error(`${file} is in no layer (add its folder to tools/layers.ts)`);
  return i;
}

interface InfoModule {
  specifier: string;
  dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
}

async function graph(): Promise<Map<string, Set<string>>> {
  const edges = new Map<string, Set<string>>();
  for (const entry of ENTRIES) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", entry],
      cwd: root,
      stdout: "piped",
    }).output();
    if (!out.success) throw new Error(`deno info ${entry} failed`);
    const info = JSON.parse(new TextDecoder().decode(out.stdout)) as { modules: InfoModule[] };
    for (const m of info.modules) {
      if (!m.specifier.startsWith(root.href)) continue;
      const from = m.specifier.slice(root.href.length);
      const set = edges.get(from) ?? new Set<string>();
      edges.set(from, set);
      for (const d of m.dependencies ?? []) {
        for (const s of [d.code?.specifier, d.type?.specifier]) {
          if (s?.startsWith(root.href)) set.add(s.slice(root.href.length));
        }
      }
    }
  }
  return edges;
}

function cycles(edges: Map<string, Set<string>>): string[][] {
  const found: string[][] = [];
  const state = new Map<string, "open" | "done">();
  const stack: string[] = [];
  const visit = (node: string) => {
    state.set(node, "open");
    stack.push(node);
    for (const next of edges.get(node) ?? []) {
      if (state.get(next) === "open") found.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(node, "done");
  };
  for (const node of [...edges.keys()].sort()) if (!state.has(node)) visit(node);
  return found;
}

const edges = await graph();
const problems: string[] = [];
for (const cycle of cycles(edges)) problems.push(`import cycle: ${cycle.join(" -> ")}`);
for (const [from, tos] of edges) {
  for (const to of tos) {
    if (layerOf(to) > layerOf(from)) problems.push(`upward import: ${from} -> ${to}`);
  }
}
for (const p of problems) console.error(p);
console.log(
  `layers: ${edges.size} modules, ${problems.length} problem${problems.length === 1 ? "" : "s"}`,
);
if (problems.length > 0) Deno.exit(1);
