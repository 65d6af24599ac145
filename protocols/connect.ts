/**
 * HTTP CONNECT through a proxy (client mode): `connect` names the proxy, protocolHost the target.
 * With protocolUsername and protocolPassword the proxy gets Basic credentials, or with
 * `protocolAuthentication = NTLM` the NTLM type 1/2/3 exchange (protocols/ntlm.ts) on the same
 * connection, as stunnel 5.68 does it.
 */
import { type Channel, type Protocol, ProtocolError } from "./channel.ts";
import { ntlmAvailable, ntlmType1, ntlmType3, NtlmUnavailable } from "./ntlm.ts";
import { base64, isPrefix } from "./text.ts";
import type { Logger } from "../lib/sys/log.ts";
import type { ServiceOptions } from "../lib/config/types.ts";

/** Reads header lines up to the empty line. */
async function skipHeaders(ch: Channel): Promise<void> {
  while ((await ch.readLine()) !== "");
}

const isStatus = (line: string, code: string) =>
  isPrefix(line, `HTTP/1.0 ${code}`) || isPrefix(line, `HTTP/1.1 ${code}`);

/** stunnel's Content-Length: digits (strtol), then nothing but white space. */
function contentLength(value: string): number | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?\d+)[ \t\n\v\f\r]*$/.exec(value);
  if (!m) return undefined;
  const n = Number(m[1]);
  return n < 0 ? undefined : n;
}

/**
 * The NTLM exchange (stunnel's ntlm()): the type-1 message ends the first request, the proxy's
 * 407 carries the type-2 challenge, and the second CONNECT request gets the type-3 header; the
 * caller finishes that request.
 */
async function ntlm(remote: Channel, opts: ServiceOptions, log: Logger): Promise<void> {
  try {
    ntlmAvailable();
  } catch (e) {
    if (e instanceof NtlmUnavailable) throw new ProtocolError(e.message);
    throw e;
  }
  const host = opts.protocolHost!;
  await remote.writeLine("Proxy-Connection: keep-alive");
  await remote.writeLine(`Proxy-Authorization: NTLM ${ntlmType1()}`);
  await remote.writeLine("");
  let line = await remote.readLine();
  if (!isStatus(line, "407")) {
    log(3, "Proxy-Authenticate: NTLM authorization request rejected");
    await skipHeaders(remote);
    throw new ProtocolError("");
  }
  let challenge: string | undefined;
  let length = 0;
  do {
    line = await remote.readLine();
    if (isPrefix(line, "Proxy-Authenticate: NTLM ")) challenge = line.slice(25);
    else if (isPrefix(line, "Content-Length: ")) {
      const n = contentLength(line.slice(16));
      if (n === undefined) throw new ProtocolError("Proxy-Authenticate: Invalid Content-Length");
      length = n;
    }
  } while (line !== "");
  if (challenge === undefined) throw new ProtocolError("Proxy-Authenticate: NTLM header not found");
  if (length > 0) await remote.readBytes(length); // the 407's body, ignored
  await remote.writeLine(`CONNECT ${host} HTTP/1.1`);
  await remote.writeLine(`Host: ${host}`);
  let type3: string | undefined;
  try {
    type3 = ntlmType3(
      opts.protocolDomain ?? "",
      opts.protocolUsername!,
      opts.protocolPassword!,
      challenge,
    );
  } catch (e) {
    if (e instanceof NtlmUnavailable) throw new ProtocolError(e.message);
    throw e;
  }
  if (type3 === undefined) {
    throw new ProtocolError("Proxy-Authenticate: Failed to build NTLM response");
  }
  await remote.writeLine(`Proxy-Authorization: NTLM ${type3}`);
}

export const connect: Protocol = {
  name: "connect",
  client: {
    async middle({ remote, opts, log }) {
      const host = opts.protocolHost!;
      await remote!.writeLine(`CONNECT ${host} HTTP/1.1`);
      await remote!.writeLine(`Host: ${host}`);
      const user = opts.protocolUsername, pass = opts.protocolPassword;
      if (user !== undefined && pass !== undefined) {
        if ((opts.protocolAuthentication ?? "basic").toLowerCase() === "ntlm") {
          await ntlm(remote!, opts, log);
        } else {
          await remote!.writeLine(`Proxy-Authorization: basic ${base64(`${user}:${pass}`)}`);
        }
      }
      for (const header of opts.protocolHeader) await remote!.writeLine(header);
      await remote!.writeLine("");
      const status = await remote!.readLine();
      const accepted = isStatus(status, "2");
      if (!accepted) log(3, "CONNECT request rejected");
      await skipHeaders(remote!);
      if (!accepted) throw new ProtocolError("");
      log(6, "CONNECT request accepted");
    },
  },
};
