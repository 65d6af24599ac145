/** PostgreSQL's SSLRequest, before the TLS handshake, in both modes. */
import { type Protocol, ProtocolError } from "./channel.ts";

/** SSLRequest: length 8, code 80877103. */
const SSL_REQUEST = new Uint8Array([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
/** GSSENCRequest: length 8, code 80877104. */
const GSS_REQUEST = new Uint8Array([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]);
/** The ErrorResponse stunnel sends to a GSSENCRequest. */
const GSS_RESPONSE = (() => {
  const body = "SERROR\0CXX000\0MSSL expected but not requested by client\0\0";
  const out = new Uint8Array(1 + 4 + body.length - 0);
  out[0] = 0x45; // 'E'
  new DataView(out.buffer).setUint32(1, 4 + body.length);
  for (let i = 0; i < body.length; i++) out[5 + i] = body.charCodeAt(i);
  return out;
})();

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export const pgsql: Protocol = {
  name: "pgsql",
  client: {
    async middle({ remote }) {
      await remote!.writeBytes(SSL_REQUEST.slice());
      const [answer] = await remote!.readBytes(1);
      // 'S': go ahead with TLS; 'N': the server prefers no TLS.
      if (answer !== 0x53) throw new ProtocolError("PostgreSQL server rejected TLS");
    },
  },
  server: {
    async early({ local, log }) {
      log(7, "Started server-side psql protcol negotiation");
      const request = await local!.readBytes(8);
      if (same(request, GSS_REQUEST)) {
        log(6, "GSSAPI encryption requested, rejecting gracefully");
        await local!.writeBytes(GSS_RESPONSE.slice());
        throw new ProtocolError("", false);
      }
      if (!same(request, SSL_REQUEST)) {
        // There is no way to send an error before the startup message: the client is dropped.
        throw new ProtocolError("PostgreSQL client did not request TLS, rejecting");
      }
      log(7, "SSLRequest received");
      await local!.writeBytes(new Uint8Array([0x53]));
    },
  },
};
