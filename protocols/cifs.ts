/**
 * `protocol = cifs`: Samba's (pre-3.0) TLS extension of the NetBIOS session service, as
 * stunnel 5.68 negotiates it. The client sends an empty session request and expects a negative
 * response whose one-byte error code is 0x8e ("use TLS"); the server answers a session request
 * with exactly that, and anything else with "access denied" (0x81).
 */
import { type Protocol, ProtocolError } from "./channel.ts";

/** NetBIOS session packet types (RFC 1002). */
const NB_SSN_REQUEST = 0x81;
const NB_SSN_NEGRESP = 0x83;
/** The error codes of a negative session response Samba used. */
const ERR_USE_TLS = 0x8e;
const ERR_ACCESS_DENIED = 0x81;

/** stunnel reads the header and the body into a 128-byte buffer. */
const MAX_BODY = 128 - 4;

export const cifs: Protocol = {
  name: "cifs",
  client: {
    /** Plain, with the server, before the handshake. */
    async middle({ remote }) {
      await remote!.writeBytes(Uint8Array.of(NB_SSN_REQUEST, 0, 0, 0)); // a zero-length request
      const resp = await remote!.readBytes(5);
      if (resp[0] !== NB_SSN_NEGRESP) throw new ProtocolError("Negative response expected");
      if (resp[2] !== 0 || resp[3] !== 1) {
        throw new ProtocolError("Unexpected NetBIOS response size");
      }
      if (resp[4] !== ERR_USE_TLS) throw new ProtocolError("Remote server does not require TLS");
    },
  },
  server: {
    /** Plain, with the client, before the handshake. */
    async early({ local, log }) {
      const header = await local!.readBytes(4);
      const len = (header[2] << 8) | header[3];
      if (len > MAX_BODY) throw new ProtocolError("Received block too long");
      await local!.readBytes(len);
      if (header[0] !== NB_SSN_REQUEST) {
        log(3, "Client did not send session setup");
        await local!.writeBytes(Uint8Array.of(NB_SSN_NEGRESP, 0, 0, 1, ERR_ACCESS_DENIED));
        throw new ProtocolError("");
      }
      await local!.writeBytes(Uint8Array.of(NB_SSN_NEGRESP, 0, 0, 1, ERR_USE_TLS));
    },
  },
};
