/**
 * `watchFiles = yes`: which services' TLS files changed on disk. Polled (a stat per file each
 * second) rather than watched with inotify (Deno.watchFs): a watch follows the inode it was
 * set on, and a Kubernetes Secret update swaps a `..data` symlink to a new directory, so the
 * watched file itself never changes; stat follows the symlinks every time and sees the new one.
 * Polling also needs no inotify instances, whatever the directories and their permissions.
 */
import type { Configuration, ServiceOptions } from "../config/types.ts";

const WATCHED = ["cert", "key", "CAfile", "CRLfile"] as const;

/** A change of the files of a service, stable since the last look. */
export interface FileChange {
  service: string;
  /** The options whose files changed, e.g. `cert = /etc/tls/tls.crt`. */
  files: string[];
}

interface Watched {
  files: { option: string; path: string }[];
  /** The signatures the context in force was built from. */
  loaded: string[];
  /** The signatures of the last look. */
  seen: string[];
}

/** What identifies a file's version: device, inode, size and times, through symlinks. */
function signature(path: string): string {
  try {
    const s = Deno.statSync(path);
    return `${s.dev}:${s.ino}:${s.size}:${s.mtime?.getTime()}:${s.ctime?.getTime()}`;
  } catch (e) {
    return `missing: ${(e as Error).name}`;
  }
}

function filesOf(opts: ServiceOptions): { option: string; path: string }[] {
  return WATCHED.flatMap((option) => {
    const path = opts[option];
    // `key` defaults to `cert`; an engine object (`pkcs11:...`) is no file.
    return path === undefined || (option === "key" && path === opts.cert) ? [] : [{ option, path }];
  });
}

export class FileWatch {
  private readonly services: Map<string, Watched>;

  /**
   * The files as they are now are those of the contexts about to be built (start-up, reload):
   * taken before they are built, so that a change while they are built is seen, not missed.
   */
  constructor(config: Configuration) {
    this.services = new Map(config.services.flatMap((opts) => {
      const files = filesOf(opts);
      if (files.length === 0) return [];
      const now = files.map((f) => signature(f.path));
      return [[opts.name, { files, loaded: now, seen: now }]];
    }));
  }

  /**
   * The services whose files differ from those their context was built from, and have not
   * changed since the last look (a cert and its key are seldom written at the same instant).
   * Each change is reported once, whether the context then builds or not.
   */
  poll(): FileChange[] {
    const due: FileChange[] = [];
    for (const [service, w] of this.services) {
      const now = w.files.map((f) => signature(f.path));
      const stable = now.every((s, i) => s === w.seen[i]);
      const changed = w.files.filter((_, i) => now[i] !== w.loaded[i]);
      w.seen = now;
      if (!stable || changed.length === 0) continue;
      w.loaded = now;
      due.push({ service, files: changed.map((f) => `${f.option} = ${f.path}`) });
    }
    return due;
  }
}
