/**
 * HAProxy's PROXY protocol: the client's real address, sent to the backend before any data.
 * Version 1 (stunnel's) is one text line; version 2 (`proxyVersion = 2`, extension) is the
 * binary header with TLVs that describe the TLS session (HAProxy's proxy-protocol.txt, 2.2).
 */
import type { Protocol } from "./channel.ts";
import type { Conn } from "../lib/net/conn.ts";
import type { TlsConnection } from "../lib/tls/core.ts";
import { peerCertificate } from "../lib/tls/verify.ts";

export const proxy: Protocol = {
  name: "proxy",
  server: {
    async late({ remote, localConn, opts, tlsConnection }) {
      if (opts.proxyVersion === 2) {
        await remote!.writeBytes(proxyV2Header(localConn, tlsConnection));
        return;
      }
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

const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
/** Version 2, command PROXY. */
const V2_PROXY = 0x21;
const AF_UNSPEC = 0x00;
const TCP_OVER_IPV4 = 0x11;
const TCP_OVER_IPV6 = 0x21;

const PP2_TYPE_ALPN = 0x01;
const PP2_TYPE_AUTHORITY = 0x02;
const PP2_TYPE_SSL = 0x20;
const PP2_SUBTYPE_SSL_VERSION = 0x21;
const PP2_SUBTYPE_SSL_CN = 0x22;
const PP2_SUBTYPE_SSL_CIPHER = 0x23;

const PP2_CLIENT_SSL = 0x01;
const PP2_CLIENT_CERT_CONN = 0x02;
const PP2_CLIENT_CERT_SESS = 0x04;

const encoder = new TextEncoder();

function tlv(type: number, value: Uint8Array): number[] {
  return [type, value.length >> 8, value.length & 0xff, ...value];
}

function u16(n: number): number[] {
  return [n >> 8, n & 0xff];
}

/** The header for the accepted connection `local`, with what its TLS session says. */
export function proxyV2Header(
  local: Conn,
  tls: TlsConnection | undefined,
): Uint8Array<ArrayBuffer> {
  const peer = local.remoteAddr, self = local.localAddr;
  let family = AF_UNSPEC;
  let addresses: number[] = [];
  if (peer.transport === "tcp" && self.transport === "tcp") {
    const v6 = self.hostname.includes(":");
    family = v6 ? TCP_OVER_IPV6 : TCP_OVER_IPV4;
    const ip = v6 ? ipv6Bytes : ipv4Bytes;
    addresses = [
      ...ip(peer.hostname),
      ...ip(self.hostname),
      ...u16(peer.port),
      ...u16(self.port),
    ];
  }
  const tlvs = tls ? tlsTlvs(tls) : [];
  const body = [...addresses, ...tlvs];
  return new Uint8Array([...SIGNATURE, V2_PROXY, family, ...u16(body.length), ...body]);
}

/** PP2_TYPE_AUTHORITY (SNI), PP2_TYPE_ALPN and PP2_TYPE_SSL with its sub-TLVs. */
function tlsTlvs(tls: TlsConnection): number[] {
  const out: number[] = [];
  const sni = tls.servername;
  if (sni) out.push(...tlv(PP2_TYPE_AUTHORITY, encoder.encode(sni)));
  const alpn = tls.alpn;
  if (alpn) out.push(...tlv(PP2_TYPE_ALPN, encoder.encode(alpn)));
  const cert = peerCertificate(tls);
  let client = PP2_CLIENT_SSL;
  if (cert) {
    client |= PP2_CLIENT_CERT_SESS;
    // A resumed session's certificate was sent on an earlier connection.
    if (!tls.sessionReused) client |= PP2_CLIENT_CERT_CONN;
  }
  // Zero only for a client certificate that was presented and verified.
  const verify = cert ? cert.verify : 1;
  const sub = [
    ...tlv(PP2_SUBTYPE_SSL_VERSION, encoder.encode(tls.version)),
    ...tlv(PP2_SUBTYPE_SSL_CIPHER, encoder.encode(tls.cipher.name)),
    ...(cert?.cn !== undefined ? tlv(PP2_SUBTYPE_SSL_CN, encoder.encode(cert.cn)) : []),
  ];
  const ssl = [client, verify >>> 24, (verify >>> 16) & 0xff, (verify >>> 8) & 0xff, verify & 0xff];
  out.push(...tlv(PP2_TYPE_SSL, new Uint8Array([...ssl, ...sub])));
  return out;
}

function ipv4Bytes(host: string): number[] {
  return host.split(".").map(Number);
}

/** An IPv6 address in its 16 bytes (`::` expanded, an embedded IPv4 tail converted). */
function ipv6Bytes(host: string): number[] {
  let text = host.replace(/%.*$/, "");
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = ipv4Bytes(v4[1]);
    text = text.slice(0, -v4[1].length) + `${((a << 8) | b).toString(16)}:` +
      ((c << 8) | d).toString(16);
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const headGroups = head ? head.split(":") : [];
  const tailGroups = tail ? tail.split(":") : [];
  const zeros = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array(zeros).fill("0"), ...tailGroups];
  return groups.flatMap((g) => u16(parseInt(g, 16)));
}
