/** A scripted protocol peer over a node socket, for the protocol negotiation tests. */
import { Buffer } from "node:buffer";
import { createServer, type Socket } from "node:net";
import { TLSSocket } from "node:tls";
import { assertEquals } from "./harness/assert.ts";
import type { Pki } from "./harness/pki.ts";
import type { Scope } from "./harness/process.ts";

/** A node socket read by lines or bytes, until it is upgraded to TLS (then it echoes). */
export class ScriptedPeer {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private ended = false;
  private readonly onData = (d: Buffer) => {
    this.buf = Buffer.concat([this.buf, d]);
    this.wake();
  };

  constructor(readonly sock: Socket) {
    sock.on("data", this.onData);
    for (const ev of ["end", "error"]) {
      sock.on(ev, () => {
        this.ended = true;
        this.wake();
      });
    }
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  private async need(pred: () => boolean): Promise<void> {
    while (!pred()) {
      if (this.ended) throw new Error("peer closed");
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  async line(): Promise<string> {
    await this.need(() => this.buf.includes(10));
    const i = this.buf.indexOf(10);
    const line = this.buf.subarray(0, i).toString("latin1").replace(/\r$/, "");
    this.buf = this.buf.subarray(i + 1);
    return line;
  }

  async bytes(n: number): Promise<number[]> {
    await this.need(() => this.buf.length >= n);
    const out = [...this.buf.subarray(0, n)];
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** A string is sent as a CRLF-terminated line; bytes as they are. */
  write(data: string | Uint8Array | number[]): void {
    this.sock.write(typeof data === "string" ? `${data}\r\n` : Uint8Array.from(data));
  }

  /** TLS server on this socket (nothing may be buffered); echoes until the client closes. */
  upgradeEcho(pki: Pki): Promise<void> {
    assertEquals(this.buf.length, 0, "bytes before the TLS handshake");
    this.sock.off("data", this.onData);
    this.sock.pause();
    const tls = new TLSSocket(this.sock, {
      isServer: true,
      cert: Deno.readTextFileSync(pki.serverEc.cert),
      key: Deno.readTextFileSync(pki.serverEc.key),
    });
    tls.on("data", (d) => tls.write(d));
    return new Promise((resolve) => {
      tls.on("close", () => resolve());
      tls.on("error", () => resolve());
      tls.on("end", () => tls.end());
    });
  }
}

/** A scripted server on loopback: `script` runs per connection; closed with the test. */
export async function peerServer(
  scope: Pick<Scope, "defer">,
  script: (peer: ScriptedPeer) => Promise<void>,
): Promise<{ port: number; failures: unknown[] }> {
  const failures: unknown[] = [];
  const server = createServer((sock: Socket) => {
    script(new ScriptedPeer(sock)).catch((e) => failures.push(e)).finally(() => sock.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  scope.defer(() => server.close());
  const addr = server.address();
  return { port: typeof addr === "object" && addr ? addr.port : 0, failures };
}
