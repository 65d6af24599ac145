/** NNTP STARTTLS (RFC 4642), client mode, as stunnel 5.68 negotiates it. */
import { type Protocol, ProtocolError } from "./channel.ts";
import { isPrefix } from "./text.ts";

export const nntp: Protocol = {
  name: "nntp",
  client: {
    /** Relays the 200/201 greeting to the client, then STARTTLS; the server must answer 382. */
    async middle({ local, remote }) {
      const greeting = await remote!.readLine();
      if (!isPrefix(greeting, "200 ") && !isPrefix(greeting, "201 ")) {
        throw new ProtocolError("Unknown server welcome");
      }
      await local!.writeLine(greeting);
      await remote!.writeLine("STARTTLS");
      if (!isPrefix(await remote!.readLine(), "382 ")) {
        throw new ProtocolError("Server does not support TLS");
      }
    },
  },
};
