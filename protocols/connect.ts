/** HTTP CONNECT through a proxy (client mode): `connect` names the proxy, protocolHost the target. */
import { type Protocol, ProtocolError } from "./channel.ts";
import { base64, isPrefix } from "./smtp.ts";

export const connect: Protocol = {
  name: "connect",
  client: {
    options: [
      "protocolHost",
      "protocolUsername",
      "protocolPassword",
      "protocolAuthentication",
      "protocolHeader",
    ],
    check(opts) {
      if (opts.protocolHost === undefined) return "protocol 'connect' needs 'protocolHost'";
      if ((opts.protocolAuthentication ?? "basic").toLowerCase() === "ntlm") {
        return "protocolAuthentication 'NTLM' is not supported yet: it needs MD4 and DES, " +
          "which OpenSSL 3 only provides through its legacy provider (not loaded here)";
      }
      return undefined;
    },
    async middle({ remote, opts, log }) {
      const host = opts.protocolHost!;
      await remote!.writeLine(`CONNECT ${host} HTTP/1.1`);
      await remote!.writeLine(`Host: ${host}`);
      const user = opts.protocolUsername, pass = opts.protocolPassword;
      if (user !== undefined && pass !== undefined) {
        await remote!.writeLine(`Proxy-Authorization: basic ${base64(`${user}:${pass}`)}`);
      }
      for (const header of opts.protocolHeader) await remote!.writeLine(header);
      await remote!.writeLine("");
      const status = await remote!.readLine();
      const accepted = isPrefix(status, "HTTP/1.0 2") || isPrefix(status, "HTTP/1.1 2");
      if (!accepted) log(3, "CONNECT request rejected");
      while ((await remote!.readLine()) !== "");
      if (!accepted) throw new ProtocolError("");
      log(6, "CONNECT request accepted");
    },
  },
};
