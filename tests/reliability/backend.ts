/**
 * The plain backend behind the proxy in the reliability suite: answers the requests of
 * pattern.ts on each connection until the client closes. Run as a process of its own so that
 * the suite can kill it (SIGKILL) and start it again on the same port:
 *
 *   deno run -A tests/reliability/backend.ts PORT      prints "listening PORT" once ready
 */
import {
  BufReader,
  parseRequest,
  sendStream,
  StreamCheck,
  trailerLine,
  writeAll,
} from "./pattern.ts";

const encoder = new TextEncoder();

async function serve(conn: Deno.TcpConn): Promise<void> {
  conn.setNoDelay(true);
  const r = new BufReader(conn);
  for (;;) {
    const line = await r.line();
    if (line === null) break;
    const q = parseRequest(line);
    if (!q) {
      await writeAll(conn, encoder.encode(`ERR bad request ${JSON.stringify(line)}\n`));
      break;
    }
    const check = new StreamCheck(q.upStart);
    const [sentSha, received] = await Promise.all([
      sendStream(conn, q.downStart, q.down),
      r.bytes(q.up, (chunk) => check.update(chunk)),
    ]);
    if (received < q.up) break; // the client went away mid-request
    const trailer = trailerLine({
      id: q.id,
      receivedSha: check.digest(),
      received,
      firstBad: check.firstBad,
      sentSha,
    });
    await writeAll(conn, encoder.encode(trailer));
  }
  await conn.closeWrite();
}

if (import.meta.main) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: Number(Deno.args[0] ?? 0) });
  console.log(`listening ${listener.addr.port}`);
  for (;;) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (e) {
      // Out of descriptors for a moment: the kernel keeps the connection queued.
      console.error(`accept: ${e}`);
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    serve(conn).catch(() => {}).finally(() => {
      try {
        conn.close();
      } catch {
        // closed already
      }
    });
  }
}
