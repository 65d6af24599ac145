/**
 * LDAP StartTLS (RFC 2830), client mode, as stunnel 5.68 negotiates it: the ExtendedRequest
 * with messageID 1 and the StartTLS OID, then the ExtendedResponse must carry resultCode 0.
 * As stunnel, only short BER lengths and WinLDAP's 4-byte form (0x84) are understood, and a
 * response longer than 128 bytes is refused.
 */
import { type Protocol, ProtocolError } from "./channel.ts";

const OID = "1.3.6.1.4.1.1466.20037";

/** LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0] OID } }. */
function startTlsRequest(): Uint8Array<ArrayBuffer> {
  const oid = Array.from(OID, (c) => c.charCodeAt(0));
  const extended = [0x80, oid.length, ...oid];
  const body = [0x02, 0x01, 0x01, 0x77, extended.length, ...extended];
  return Uint8Array.from([0x30, body.length, ...body]);
}

const MAX_RESPONSE = 128;
const WINLDAP_FOUR_BYTE_LEN = 0x84;

export const ldap: Protocol = {
  name: "ldap",
  client: {
    async middle({ remote, log }) {
      const ch = remote!;
      log(7, "Sending LDAP Start TLS request");
      await ch.writeBytes(startTlsRequest());
      log(7, "Receiving LDAP response tag");
      if ((await ch.readBytes(1))[0] !== 0x30) {
        throw new ProtocolError("LDAP response is not UNIVERSAL SEQUENCE");
      }
      log(7, "Receiving LDAP response length");
      let len = (await ch.readBytes(1))[0];
      if (len === WINLDAP_FOUR_BYTE_LEN) {
        len = new DataView((await ch.readBytes(4)).buffer).getUint32(0);
      }
      if (len > MAX_RESPONSE) throw new ProtocolError(`LDAP response too long (${len} byte(s))`);
      log(7, `Receiving LDAP response value (${len} byte(s))`);
      // Bytes past the response read as zeros, as in stunnel's zeroed buffer.
      const resp = new Uint8Array(MAX_RESPONSE + 8);
      resp.set(await ch.readBytes(len));
      log(7, "Decoding LDAP response value");
      let i = 0;
      const expect = (value: number, problem: string) => {
        if (resp[i++] !== value) throw new ProtocolError(problem);
      };
      expect(0x02, "LDAP response has an incorrect message ID type");
      expect(0x01, "LDAP response has an unexpected message ID length");
      expect(0x01, "LDAP response has an unexpected message ID value");
      expect(0x78, "LDAP response protocol op is not ExtendedResponse");
      // The length of the protocol op is not checked.
      if (resp[i++] === WINLDAP_FOUR_BYTE_LEN) i += 4;
      expect(0x0a, "LDAP response has an unexpected result code type");
      expect(0x01, "LDAP response has an unexpected result code length");
      if (resp[i] !== 0) {
        throw new ProtocolError(`LDAP response has indicated an error (${resp[i]})`);
      }
      // Anything after the result code is ignored.
      log(6, "LDAP Start TLS successfully negotiated");
    },
  },
};
