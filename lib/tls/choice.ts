/** `tlsEngine = auto|openssl|deno`: which TLS engine this process runs, decided at start. */
import { chooseOpenSsl, loadOpenSsl, type OpenSslLoaded, OpenSslMissing } from "../sys/ffi.ts";
import type { GlobalOptions } from "../config/types.ts";

export type TlsEngineName = "openssl" | "deno";

export interface TlsEngineChoice {
  engine: TlsEngineName;
  /** The OpenSSL loaded (engine "openssl"). */
  openssl?: OpenSslLoaded;
  /** `auto` fell back to Deno's TLS: why OpenSSL could not be used. */
  fallback?: string;
  /** How the engine was chosen, for the refusal messages. */
  how: string;
}

/**
 * Names the configured OpenSSL files (before anything loads OpenSSL), then decides: `openssl`
 * must load (else OpenSslMissing), `deno` loads nothing, `auto` uses OpenSSL when it loads,
 * unless the configuration named its files (then they must load).
 */
export function chooseTlsEngine(
  global: Pick<GlobalOptions, "tlsEngine" | "libssl" | "libcrypto">,
): TlsEngineChoice {
  if (!chooseOpenSsl({ libssl: global.libssl, libcrypto: global.libcrypto })) {
    throw new OpenSslMissing(
      "`libssl`/`libcrypto` take effect at start only: restart to load other OpenSSL files",
    );
  }
  return decide(global);
}

function decide(
  global: Pick<GlobalOptions, "tlsEngine" | "libssl" | "libcrypto">,
): TlsEngineChoice {
  if (global.tlsEngine === "deno") return { engine: "deno", how: "tlsEngine = deno" };
  if (global.tlsEngine === "openssl" || global.libssl || global.libcrypto) {
    return { engine: "openssl", openssl: loadOpenSsl(), how: "tlsEngine = openssl" };
  }
  try {
    return { engine: "openssl", openssl: loadOpenSsl(), how: "tlsEngine = auto" };
  } catch (e) {
    if (!(e instanceof OpenSslMissing)) throw e;
    return {
      engine: "deno",
      fallback: e.message,
      how: "Deno's TLS (tlsEngine = auto, OpenSSL 3 not found)",
    };
  }
}
