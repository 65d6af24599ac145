/**
 * Where OpenSSL 3 may be, per platform: the files `libssl`/`libcrypto` name, then those of the
 * environment (STUNNEL_LIBSSL/STUNNEL_LIBCRYPTO), then the usual places of each platform. ffi.ts
 * tries them in order.
 */

/** Library files named by the configuration; unset ones come from the environment or a search. */
export interface OpenSslFiles {
  libssl?: string;
  libcrypto?: string;
}

/** One pair to try; `where` says how it was chosen, for the message when none loads. */
export interface OpenSslCandidate {
  libssl: string;
  libcrypto: string;
  where: string;
}

export const LIBSSL_ENV = "STUNNEL_LIBSSL";
export const LIBCRYPTO_ENV = "STUNNEL_LIBCRYPTO";

interface Platform {
  libssl: string;
  libcrypto: string;
  /** Directories searched before the loader's own search by bare name. */
  dirs: string[];
  separator: string;
}

function platform(os: typeof Deno.build.os, arch: typeof Deno.build.arch): Platform {
  if (os === "darwin") {
    return {
      libssl: "libssl.3.dylib",
      libcrypto: "libcrypto.3.dylib",
      // Homebrew (Apple silicon, Intel), MacPorts, a source build.
      dirs: [
        "/opt/homebrew/opt/openssl@3/lib",
        "/usr/local/opt/openssl@3/lib",
        "/opt/local/lib",
        "/usr/local/lib",
      ],
      separator: "/",
    };
  }
  if (os === "windows") {
    const suffix = arch === "aarch64" ? "arm64" : "x64";
    return {
      libssl: `libssl-3-${suffix}.dll`,
      libcrypto: `libcrypto-3-${suffix}.dll`,
      // Beside the executable; then LoadLibrary's search (which includes PATH).
      dirs: [dirname(Deno.execPath())],
      separator: "\\",
    };
  }
  const triplet = `${arch}-linux-gnu`;
  return {
    libssl: "libssl.so.3",
    libcrypto: "libcrypto.so.3",
    // After the loader's search (ld.so.cache, LD_LIBRARY_PATH): where distributions put it.
    dirs: [
      `/usr/lib/${triplet}`,
      `/lib/${triplet}`,
      "/usr/lib64",
      "/lib64",
      "/usr/lib",
      "/lib",
      "/usr/local/lib64",
      "/usr/local/lib",
    ],
    separator: "/",
  };
}

function dirname(path: string): string {
  const cut = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return cut > 0 ? path.slice(0, cut) : ".";
}

/**
 * The pairs to try, in order. A file named by the configuration or the environment is the only
 * choice for its library (its partner, if unnamed, is looked for beside it, then searched).
 */
export function openSslCandidates(
  configured: OpenSslFiles,
  os: typeof Deno.build.os,
  arch: typeof Deno.build.arch,
): OpenSslCandidate[] {
  const p = platform(os, arch);
  const named = {
    libssl: configured.libssl ?? Deno.env.get(LIBSSL_ENV) ?? undefined,
    libcrypto: configured.libcrypto ?? Deno.env.get(LIBCRYPTO_ENV) ?? undefined,
  };
  const from = configured.libssl || configured.libcrypto
    ? " (named by the configuration)"
    : named.libssl || named.libcrypto
    ? ` (named by ${LIBSSL_ENV}/${LIBCRYPTO_ENV})`
    : "";
  const searchedDirs = p.dirs.map((dir) => `${dir}${p.separator}`);
  if (named.libssl || named.libcrypto) {
    const beside = dirname(named.libssl ?? named.libcrypto!);
    const partners = [`${beside}${p.separator}`, ...(os === "linux" ? [""] : searchedDirs)];
    return partners.map((dir) => ({
      libssl: named.libssl ?? `${dir}${p.libssl}`,
      libcrypto: named.libcrypto ?? `${dir}${p.libcrypto}`,
      where: from,
    }));
  }
  const loaderFirst = os === "linux";
  const dirs = loaderFirst ? ["", ...searchedDirs] : [...searchedDirs, ""];
  return dirs.map((dir) => ({
    libssl: `${dir}${p.libssl}`,
    libcrypto: `${dir}${p.libcrypto}`,
    where: dir === "" ? " (the dynamic loader's search path)" : "",
  }));
}
