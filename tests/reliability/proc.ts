/** What /proc tells about a process and the machine's sockets, and raising descriptor limits. */

/** Descriptors the proxy may keep beyond its baseline once idle (caches, a log reopen). */
export const FD_SLACK = 8;

export interface ProcStats {
  rssKiB: number;
  fds: number;
  threads: number;
}

/** VmRSS and Threads from /proc/PID/status, descriptors from /proc/PID/fd. */
export function procStats(pid: number): ProcStats {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const field = (name: string) => Number(status.match(new RegExp(`^${name}:\\s*(\\d+)`, "m"))?.[1]);
  let fds = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) fds++;
  return { rssKiB: field("VmRSS"), fds, threads: field("Threads") };
}

export function formatStats(s: ProcStats): string {
  return `RSS ${(s.rssKiB / 1024).toFixed(1)} MiB, ${s.fds} descriptors, ${s.threads} threads`;
}

/** Sockets in state LISTEN on TCP `port` (any address, IPv4 and IPv6). */
export function listeningSockets(port: number): number {
  let n = 0;
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(file).split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4 || f[3] !== "0A") continue;
      if (parseInt(f[1].slice(f[1].lastIndexOf(":") + 1), 16) === port) n++;
    }
  }
  return n;
}

/** This process's hard limit on descriptors (/proc/self/limits). */
function nofileHardLimit(): number {
  const limits = Deno.readTextFileSync("/proc/self/limits");
  const hard = limits.match(/^Max open files\s+\S+\s+(\S+)/m)?.[1];
  return hard === "unlimited" ? Infinity : Number(hard);
}

async function setOwnNofile(n: number): Promise<string | undefined> {
  const out = await new Deno.Command("prlimit", {
    args: ["--pid", String(Deno.pid), `--nofile=${n}:${n}`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return out.success ? undefined : new TextDecoder().decode(out.stderr).trim();
}

/**
 * Raises this process's descriptor limit (soft and hard) to `want`, which the processes it
 * starts inherit; above the hard limit that needs CAP_SYS_RESOURCE. Without it the limit is
 * raised to the hard limit. Returns the limit in force and why it is below `want`.
 */
export async function raiseNofile(want: number): Promise<{ limit: number; why?: string }> {
  const refused = await setOwnNofile(want);
  if (!refused) return { limit: want };
  const hard = nofileHardLimit();
  const failed = await setOwnNofile(hard);
  if (failed) throw new Error(`cannot set the descriptor limit to ${hard}: ${failed}`);
  return { limit: hard, why: refused };
}

const TCP_STATES: Record<string, string> = {
  "01": "ESTABLISHED",
  "06": "TIME_WAIT",
  "07": "CLOSE",
  "08": "CLOSE_WAIT",
  "0A": "LISTEN",
};

/**
 * What the process's descriptors are, counted by kind: a file's path, a TCP socket's state and
 * local port (from /proc/net/tcp), "pipe", "socket" (not TCP), an anon_inode's name.
 */
export function descriptorKinds(pid: number): Map<string, number> {
  const tcp = new Map<string, string>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    for (const line of Deno.readTextFileSync(file).split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const port = parseInt(f[1].slice(f[1].lastIndexOf(":") + 1), 16);
      tcp.set(f[9], `TCP ${TCP_STATES[f[3]] ?? f[3]} (local port ${port})`);
    }
  }
  const kinds = new Map<string, number>();
  for (const entry of Deno.readDirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = Deno.readLinkSync(`/proc/${pid}/fd/${entry.name}`);
    } catch {
      continue; // closed meanwhile
    }
    const inode = target.match(/^socket:\[(\d+)\]$/)?.[1];
    const kind = inode ? tcp.get(inode) ?? "socket" : target.replace(/^pipe:\[\d+\]$/, "pipe");
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return kinds;
}

/** The kinds whose count differs between two descriptorKinds(), as "+N kind" items. */
export function descriptorDiff(before: Map<string, number>, after: Map<string, number>): string[] {
  const out: string[] = [];
  for (const kind of new Set([...before.keys(), ...after.keys()])) {
    const d = (after.get(kind) ?? 0) - (before.get(kind) ?? 0);
    if (d !== 0) out.push(`${d > 0 ? "+" : ""}${d} ${kind}`);
  }
  return out;
}
