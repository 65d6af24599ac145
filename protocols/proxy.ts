/** HAProxy's PROXY protocol version 1: the client's real address, sent to the backend. */
import type { Protocol } from "./channel.ts";

export const proxy: Protocol = {
  name: "proxy",
  server: {
    /** One line to the backend before any data: the TLS client's and our accepting address. */
    async late({ remote, localConn }) {
      const peer = localConn.remoteAddr, self = localConn.localAddr;
      if (peer.transport !== "tcp" || self.transport !== "tcp") {
        // A Unix socket has no address to report: the spec's form for unknown families.
        await remote!.writeLine("PROXY UNKNOWN");
        return;
      }
      const family = self.hostname.includes(":") ? "TCP6" : "TCP4";
      await remote!.writeLine(
        `PROXY ${family} ${peer.hostname} ${self.hostname} ${peer.port} ${self.port}`,
      );
    },
  },
};
