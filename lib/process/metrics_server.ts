/**
 * `metrics = [HOST:]PORT`: a minimal HTTP/1.x server for `GET /metrics` and `GET /healthz`.
 * It answers one request per connection and closes it; whatever a client sends, it holds at
 * most a bounded request for a bounded time, and a bounded number of clients at once.
 */
import { formatAddress } from "../config/address.ts";

/** The most of a request (line and headers) read before it is refused. */
const MAX_REQUEST = 8192;
/** The whole exchange, from accept to the last byte written. */
const EXCHANGE_MS = 5000;
/** Clients served at once; more are closed at once. */
const MAX_CLIENTS = 16;

export interface Response {
  status: 200 | 404 | 405 | 400 | 431 | 503;
  type?: string;
  body: string;
}

/** What the server serves: each path's answer, made when asked. */
export type Routes = Record<string, () => Response | Promise<Response>>;

const REASONS: Record<Response["status"], string> = {
  200: "OK",
  400: "Bad Request",
  404: "Not Found",
  405: "Method Not Allowed",
  431: "Request Header Fields Too Large",
  503: "Service Unavailable",
};

export class MetricsServer {
  private clients = 0;
  private closed = false;

  private constructor(private readonly listener: Deno.Listener, private readonly routes: Routes) {
    void this.acceptLoop();
  }

  /** Binds the address; throws the OS error. */
  static listen(address: { host: string; port: number }, routes: Routes): MetricsServer {
    return new MetricsServer(
      Deno.listen({ transport: "tcp", hostname: address.host, port: address.port }),
      routes,
    );
  }

  get address(): string {
    const a = this.listener.addr as Deno.NetAddr;
    return formatAddress({ kind: "tcp", host: a.hostname, port: a.port });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.listener.close();
    } catch {
      // already closed
    }
  }

  private async acceptLoop(): Promise<void> {
    while (!this.closed) {
      let conn: Deno.Conn;
      try {
        conn = await this.listener.accept();
      } catch {
        if (this.closed) return;
        // Out of descriptors, most likely: the proxy's connections come first.
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (this.clients >= MAX_CLIENTS) {
        conn.close();
        continue;
      }
      this.clients++;
      void this.serve(conn).finally(() => this.clients--);
    }
  }

  private async serve(conn: Deno.Conn): Promise<void> {
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      try {
        conn.close();
      } catch {
        // already closed
      }
    };
    // A client that sends or reads slowly is cut off: its reads and writes then fail.
    const deadline = setTimeout(end, EXCHANGE_MS);
    try {
      const request = await readRequest(conn);
      const response = await this.answer(request);
      const body = new TextEncoder().encode(response.body);
      const head = `HTTP/1.1 ${response.status} ${REASONS[response.status]}\r\n` +
        `Content-Type: ${response.type ?? "text/plain; charset=utf-8"}\r\n` +
        `Content-Length: ${body.length}\r\n` +
        (response.status === 405 ? "Allow: GET, HEAD\r\n" : "") +
        "Connection: close\r\n\r\n";
      await writeAll(conn, new TextEncoder().encode(head));
      if (!("head" in request && request.head)) await writeAll(conn, body);
    } catch {
      // the client went away, or took too long
    } finally {
      clearTimeout(deadline);
      end();
    }
  }

  private answer(request: Request | Response): Response | Promise<Response> {
    if ("status" in request) return request;
    const route = this.routes[request.path];
    return route ? route() : { status: 404, body: "Not found\n" };
  }
}

interface Request {
  path: string;
  /** HEAD: the answer goes without its body. */
  head: boolean;
}

/** The request line and headers (bounded), or the error response they deserve. */
async function readRequest(conn: Deno.Conn): Promise<Request | Response> {
  const buffer = new Uint8Array(MAX_REQUEST);
  let length = 0;
  let end = -1;
  while (end < 0) {
    if (length === buffer.length) return { status: 431, body: "Request too large\n" };
    const n = await conn.read(buffer.subarray(length));
    if (n === null) throw new Error("closed before the end of the request");
    end = headerEnd(buffer.subarray(0, length + n), Math.max(0, length - 2));
    length += n;
  }
  const text = new TextDecoder("latin1").decode(buffer.subarray(0, end));
  const match = /^([A-Z]+) (\S+) HTTP\/1\.[01]\r?$/.exec(text.split("\n", 1)[0]);
  if (!match) return { status: 400, body: "Bad request\n" };
  const [, method, target] = match;
  if (method !== "GET" && method !== "HEAD") {
    return { status: 405, body: "Only GET\n" };
  }
  return { path: target.split("?", 1)[0], head: method === "HEAD" };
}

/** Where the headers end (the offset of the blank line), or -1. */
function headerEnd(bytes: Uint8Array, from: number): number {
  for (let i = from; i + 1 < bytes.length; i++) {
    if (bytes[i] !== 10) continue;
    if (bytes[i + 1] === 10) return i;
    if (bytes[i + 1] === 13 && bytes[i + 2] === 10) return i;
  }
  return -1;
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}
