/** A seeded random source (mulberry32), so that every fuzz case and load schedule replays. */
export class Rng {
  #state: number;

  constructor(readonly seed: number) {
    this.#state = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#state = (this.#state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)];
  }

  bytes(n: number): Uint8Array<ArrayBuffer> {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = Math.floor(this.next() * 256);
    return out;
  }

  /** A new generator whose sequence depends on this one's (one per case or worker). */
  fork(): Rng {
    return new Rng(Math.floor(this.next() * 4294967296));
  }
}

/** A fresh seed when none is given on the command line. */
export function randomSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/** Applies one random mutation to `data`: flip, insert, delete, duplicate, truncate, splice. */
export function mutate(rng: Rng, data: Uint8Array): Uint8Array<ArrayBuffer> {
  const at = rng.int(0, data.length);
  const join = (...parts: Uint8Array[]) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let off = 0;
    for (const p of parts) {
      out.set(p, off);
      off += p.length;
    }
    return out;
  };
  switch (rng.int(0, 6)) {
    case 0: { // flip bits of one byte
      const out = Uint8Array.from(data);
      if (out.length) out[Math.min(at, out.length - 1)] ^= 1 << rng.int(0, 7);
      return out;
    }
    case 1: // insert random bytes
      return join(data.subarray(0, at), rng.bytes(rng.int(1, 16)), data.subarray(at));
    case 2: // delete a run
      return join(data.subarray(0, at), data.subarray(Math.min(data.length, at + rng.int(1, 32))));
    case 3: { // duplicate a run
      const end = Math.min(data.length, at + rng.int(1, 64));
      return join(data.subarray(0, end), data.subarray(at, end), data.subarray(end));
    }
    case 4: // truncate
      return data.slice(0, at);
    case 5: // an interesting byte (NUL, CR, LF, 0xff, '=' , '[')
      return join(
        data.subarray(0, at),
        Uint8Array.of(rng.pick([0, 13, 10, 0xff, 0x3d, 0x5b, 0x5d, 0x3a, 0x20])),
        data.subarray(at),
      );
    default: { // a long run of one byte
      const run = new Uint8Array(rng.int(100, 20_000)).fill(rng.int(0, 255));
      return join(data.subarray(0, at), run, data.subarray(at));
    }
  }
}

/** Reads `--name VALUE` from the command line. */
export function argValue(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** `--seed N` (or a fresh one) and `--cases N` (or `defaultCases`). */
export function fuzzArgs(args: string[], defaultCases: number): { seed: number; cases: number } {
  const seed = Number(argValue(args, "--seed") ?? randomSeed()) >>> 0;
  const cases = Number(argValue(args, "--cases") ?? defaultCases);
  return { seed, cases };
}
