/**
 * stunnel's make_sockets(): a connected pair of loopback TCP sockets, for a program that talks
 * through its stdin and stdout. One end is a Deno connection of ours; the other is a bare
 * descriptor to hand to the program (a Deno connection would be shut down under the program's
 * feet when we close our handle of it).
 */
import { lib } from "../sys/ffi.ts";
import { errnoText } from "../sys/oserror.ts";
import { AF_INET, inetSockAddr, socketName } from "../sys/sockfd.ts";

const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;

export async function loopbackPair(): Promise<{ conn: Deno.TcpConn; fd: number }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { libc } = lib();
  const fd = libc.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  try {
    if (fd < 0) throw new Error(`make_sockets: socket: ${errnoText()}`);
    const target = inetSockAddr("127.0.0.1", (listener.addr as Deno.NetAddr).port)!;
    // On loopback the connection is made at once, before it is accepted (the listen backlog).
    if (libc.connect(fd, target.bytes, target.bytes.length) !== 0) {
      throw new Error(`make_sockets: connect: ${errnoText()}`);
    }
    const ours = (socketName(fd) as Deno.NetAddr).port;
    for (;;) {
      const conn = await listener.accept() as Deno.TcpConn;
      if ((conn.remoteAddr as Deno.NetAddr).port === ours) return { conn, fd };
      // Another local process connected first: not our pair.
      conn.close();
    }
  } catch (e) {
    if (fd >= 0) libc.close(fd);
    throw e;
  } finally {
    listener.close();
  }
}
