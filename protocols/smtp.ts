/** SMTP STARTTLS (RFC 3207), as stunnel 5.68 negotiates it in both modes. */
import { type Channel, type Protocol, ProtocolError } from "./channel.ts";
import { base64, isPrefix } from "./text.ts";

/** Reads lines while they start with `prefix` (a multi-line reply); returns the last one. */
async function lastLine(ch: Channel, prefix: string): Promise<string> {
  let line: string;
  do line = await ch.readLine(); while (isPrefix(line, prefix));
  return line;
}

export const smtp: Protocol = {
  name: "smtp",
  client: {
    /** Relays the greeting to the client, then EHLO and STARTTLS with the server. */
    async middle({ local, remote, opts }) {
      let line: string;
      do {
        line = await remote!.readLine();
        await local!.writeLine(line);
      } while (isPrefix(line, "220-"));
      await remote!.writeLine(`EHLO ${opts.protocolHost ?? "localhost"}`);
      if (!isPrefix(await lastLine(remote!, "250-"), "250 ")) {
        throw new ProtocolError("Remote server is not RFC 1425 compliant");
      }
      await remote!.writeLine("STARTTLS");
      if (!isPrefix(await lastLine(remote!, "220-"), "220 ")) {
        throw new ProtocolError("Remote server is not RFC 2487 compliant");
      }
    },
    /** With protocolUsername and protocolPassword: HELO and AUTH inside TLS. */
    async late({ tls, opts }) {
      const user = opts.protocolUsername, pass = opts.protocolPassword;
      if (user === undefined || pass === undefined) return;
      await tls!.writeLine(`HELO ${opts.protocolHost ?? "localhost"}`);
      await tls!.readLine(); // the reply is ignored, as by stunnel
      if ((opts.protocolAuthentication ?? "").toLowerCase() === "login") {
        await tls!.writeLine("AUTH LOGIN");
        if (!isPrefix(await tls!.readLine(), "334 ")) {
          throw new ProtocolError("Remote server does not support LOGIN authentication");
        }
        await tls!.writeLine(base64(user));
        if (!isPrefix(await tls!.readLine(), "334 ")) {
          throw new ProtocolError("LOGIN authentication failed");
        }
        await tls!.writeLine(base64(pass));
        if (!isPrefix(await tls!.readLine(), "235 ")) {
          throw new ProtocolError("LOGIN authentication failed");
        }
      } else {
        await tls!.writeLine(`AUTH PLAIN ${base64(`\0${user}\0${pass}`)}`);
        if (!isPrefix(await tls!.readLine(), "235 ")) {
          throw new ProtocolError("PLAIN Authentication Failed");
        }
      }
    },
  },
  server: {
    connectBeforeTls: true,
    /**
     * A client that speaks first is taken for an SMTPS client (TLS at once); otherwise the
     * server's greeting is relayed and EHLO and STARTTLS are answered here.
     */
    async middle({ local, remote, log }) {
      if (await local!.dataWithin(200)) {
        log(7, "RFC 2487 not detected");
        return;
      }
      log(7, "RFC 2487 detected");
      let line = await remote!.readLine();
      if (!(isPrefix(line, "220 ") || isPrefix(line, "220-"))) {
        throw new ProtocolError("Unknown server welcome");
      }
      const sep = line.slice(0, 4);
      const rest = line.slice(4);
      const space = rest.indexOf(" ");
      const domain = space < 0 ? rest : rest.slice(0, space);
      await local!.writeLine(
        space < 0
          ? `${sep}${domain} stunnel`
          : `${sep}${domain} stunnel for ${rest.slice(space + 1)}`,
      );
      while (isPrefix(line, "220-")) {
        line = await remote!.readLine();
        await local!.writeLine(line);
      }
      if (!isPrefix(await local!.readLine(), "EHLO ")) {
        throw new ProtocolError("Unknown client EHLO");
      }
      await local!.writeLine(`250-${domain}`);
      await local!.writeLine("250 STARTTLS");
      if (!isPrefix(await local!.readLine(), "STARTTLS")) {
        throw new ProtocolError("STARTTLS expected");
      }
      await local!.writeLine("220 Go ahead");
    },
  },
};
