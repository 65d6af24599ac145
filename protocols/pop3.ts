/** POP3 STLS (RFC 2595), as stunnel 5.68 negotiates it in both modes. */
import { type Protocol, ProtocolError } from "./channel.ts";
import { isPrefix } from "./text.ts";

export const pop3: Protocol = {
  name: "pop3",
  client: {
    async middle({ local, remote }) {
      const greeting = await remote!.readLine();
      if (!isPrefix(greeting, "+OK ")) throw new ProtocolError("Unknown server welcome");
      await local!.writeLine(greeting);
      await remote!.writeLine("STLS");
      if (!isPrefix(await remote!.readLine(), "+OK ")) {
        throw new ProtocolError("Server does not support TLS");
      }
    },
  },
  server: {
    connectBeforeTls: true,
    async middle({ local, remote }) {
      await local!.writeLine(`${await remote!.readLine()} + stunnel`);
      let line = await local!.readLine();
      if (isPrefix(line, "CAPA")) {
        await local!.writeLine("+OK Stunnel capability list follows");
        await local!.writeLine("STLS");
        await local!.writeLine(".");
        line = await local!.readLine();
      }
      if (!isPrefix(line, "STLS")) throw new ProtocolError("Client does not want TLS");
      await local!.writeLine("+OK Stunnel starts TLS negotiation");
    },
  },
};
