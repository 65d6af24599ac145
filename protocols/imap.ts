/** IMAP STARTTLS (RFC 2595), as stunnel 5.68 negotiates it in both modes. */
import { type Protocol, ProtocolError } from "./channel.ts";
import { isPrefix } from "./text.ts";

export const imap: Protocol = {
  name: "imap",
  client: {
    async middle({ local, remote }) {
      if (!isPrefix(await remote!.readLine(), "* OK")) {
        throw new ProtocolError("Unknown server welcome");
      }
      await local!.writeLine("* OK Connected.");
      await remote!.writeLine("stunnel STARTTLS");
      if (!isPrefix(await remote!.readLine(), "stunnel OK")) {
        await local!.writeLine("* BYE stunnel: Server does not support TLS");
        throw new ProtocolError("Server does not support TLS", false);
      }
    },
  },
  server: {
    connectBeforeTls: true,
    /**
     * A client that speaks first is taken for an IMAPS client; otherwise the server's greeting
     * is relayed (without its CAPABILITY) and commands are answered until STARTTLS.
     */
    async middle({ local, remote, log }) {
      if (await local!.dataWithin(200)) {
        log(7, "RFC 2595 not detected");
        return;
      }
      log(7, "RFC 2595 detected");
      let line = await remote!.readLine();
      if (!isPrefix(line, "* OK")) throw new ProtocolError("Unknown server welcome");
      // The greeting's capabilities are the server's, without STARTTLS: hide them.
      let capa = line.indexOf("CAPABILITY");
      if (capa < 0) capa = line.indexOf("capability");
      if (capa >= 0) line = `${line.slice(0, capa)}K${line.slice(capa + 1)}`;
      await local!.writeLine(`${line} (stunnel)`);
      let failure: ProtocolError | undefined;
      for (;;) {
        line = await local!.readLine();
        const space = line.indexOf(" ");
        if (space < 0) break;
        const id = line.slice(0, space), tail = line.slice(space + 1);
        if (isPrefix(tail, "STARTTLS")) {
          await local!.writeLine(`${id} OK Begin TLS negotiation now`);
          return;
        } else if (isPrefix(tail, "CAPABILITY")) {
          await remote!.writeLine(line);
          let reply = await remote!.readLine();
          if (reply.startsWith("*")) {
            await local!.writeLine(`${reply} STARTTLS`);
            reply = await remote!.readLine();
          }
          await local!.writeLine(reply);
          const sp = reply.indexOf(" ");
          if (sp < 0 || !isPrefix(reply.slice(sp + 1), "OK")) {
            await local!.writeLine("* BYE unexpected server response");
            log(3, `Unexpected server response: ${reply}`);
            break;
          }
        } else if (isPrefix(tail, "LOGOUT")) {
          await local!.writeLine("* BYE server terminating");
          await local!.writeLine(`${id} OK LOGOUT completed`);
          break;
        } else {
          await local!.writeLine("* BYE stunnel: unexpected command");
          await local!.writeLine(`${id} BAD ${tail} unexpected`);
          failure = new ProtocolError(`Unexpected client command ${tail}`, false);
          break;
        }
      }
      // A clean logout from the server before the connection ends.
      await remote!.writeLine("stunnel LOGOUT");
      if ((await remote!.readLine()).startsWith("*")) await remote!.readLine();
      throw failure ?? new ProtocolError("", false);
    },
  },
};
