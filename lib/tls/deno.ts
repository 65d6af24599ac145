/**
 * The TLS engine on Deno's own TLS (`tlsEngine = deno`): a server-mode service listens with
 * Deno.listenTls (Deno cannot start a server handshake on an accepted TCP connection), a
 * client-mode service upgrades its remote TCP connection with Deno.startTls. Only what
 * config/deno_tls.ts lets through reaches here.
 */
import type { ServiceOptions } from "../config/types.ts";
import { TlsError } from "./core.ts";

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;

/** The PEM blocks of `text` whose label matches `label`, joined. */
function pemBlocks(text: string, label: RegExp): string {
  return [...text.matchAll(PEM_BLOCK)].filter((m) => label.test(m[1])).map((m) => m[0])
    .join("\n");
}

function readPem(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (e) {
    throw new TlsError(what, [], `${path}: ${(e as Error).message}`);
  }
}

export class DenoTlsContext {
  private constructor(
    /** Server mode: the certificate chain and key, as PEM. */
    private readonly certified: { cert: string; key: string } | undefined,
    /** Client mode: the CA certificates of `CAfile`. */
    private readonly caCerts: string[],
    /** Client mode: the host name to check (`checkHost`), if any. */
    private readonly checkHost: string | undefined,
    /** `alpn` (extension): offered by a client, chosen from by a server. */
    private readonly alpnProtocols: string[] | undefined,
  ) {}

  /** Reads the service's PEM files; a TlsError names what is wrong. */
  static create(opts: ServiceOptions): DenoTlsContext {
    if (opts.client) {
      const ca = opts.CAfile ? pemBlocks(readPem(opts.CAfile, "CAfile"), /CERTIFICATE$/) : "";
      if (opts.CAfile && ca === "") throw new TlsError("CAfile", [], "no PEM certificate");
      return new DenoTlsContext(undefined, ca ? [ca] : [], opts.checkHost[0], opts.alpn);
    }
    const certText = readPem(opts.cert!, "cert");
    const cert = pemBlocks(certText, /CERTIFICATE$/);
    if (cert === "") throw new TlsError("cert", [], `${opts.cert}: no PEM certificate`);
    const keyPath = opts.key ?? opts.cert!;
    const key = pemBlocks(keyPath === opts.cert ? certText : readPem(keyPath, "key"), /KEY$/);
    if (key === "") throw new TlsError("key", [], `${keyPath}: no PEM private key`);
    return new DenoTlsContext({ cert, key }, [], undefined, opts.alpn);
  }

  /** A server-mode listening socket: every connection it accepts is a TLS server. */
  listen(host: string, port: number, reusePort: boolean): Deno.TlsListener {
    const { cert, key } = this.certified!;
    const { alpnProtocols } = this;
    return Deno.listenTls({ hostname: host, port, reusePort, cert, key, alpnProtocols });
  }

  /**
   * The client side of TLS over `conn` (which it consumes), sending `sni` as the server name.
   * The chain is always verified (against `CAfile` and Deno's root store); the name only with
   * `checkHost`, which is then also what is sent.
   */
  startClient(conn: Deno.TcpConn, sni: string | undefined): Promise<Deno.TlsConn> {
    return Deno.startTls(conn, {
      hostname: this.checkHost ?? sni ?? "localhost",
      caCerts: this.caCerts,
      unsafelyDisableHostnameVerification: this.checkHost === undefined,
      alpnProtocols: this.alpnProtocols,
    });
  }
}
