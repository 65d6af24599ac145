/**
 * SOCKS inside TLS, as stunnel 5.68 does it.
 *
 * Client mode (socks_client): after the handshake, a SOCKS 5 CONNECT (no authentication) to the
 * original destination of the accepted connection, i.e. the address a netfilter REDIRECT/DNAT
 * rule sent elsewhere (getsockopt SO_ORIGINAL_DST), so that redirected plain connections travel
 * through a remote socks service.
 *
 * Server mode (socks_server): SOCKS 4, 4a and 5 CONNECT to the
 * address the client asks for, which replaces `connect` (a socks section has no `connect`). As in
 * stunnel: the reply goes out before the target is connected (a refused connect closes the
 * connection after a success reply), BIND is not supported, the SOCKS 4 USERID and the SOCKS 5
 * reply's BND.ADDR are not used, targets on this host itself are refused, and the TOR RESOLVE
 * extension (command 0xf0) is answered. stunnel refuses only 127.0.0.0/8 and ::1; 0.0.0.0, ::
 * and the IPv4-mapped forms reach the loopback as well, and are refused too.
 */
import { isIPv4 } from "node:net";
import { lib } from "../lib/sys/ffi.ts";
import { errnoText } from "../lib/sys/oserror.ts";
import { getaddrinfo } from "../lib/sys/resolve.ts";
import { findConnFd } from "../lib/sys/sockfd.ts";
import type { Address } from "../lib/config/types.ts";
import type { Conn } from "../lib/net/conn.ts";
import { type Channel, type NegotiationContext, type Protocol, ProtocolError } from "./channel.ts";

const hex2 = (n: number) => `0x${n.toString(16).padStart(2, "0")}`;

/** The answered-but-failed end of a request: logged already, no reset (stunnel's "2"). */
const answered = () => new ProtocolError("", false);

/** Text of a 4-byte IPv4 address. */
function ipv4(b: Uint8Array): string {
  return Array.from(b.subarray(0, 4)).join(".");
}

/** Text of a 16-byte IPv6 address (full form; parsed by the resolver as it is). */
function ipv6(b: Uint8Array): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i] << 8) | b[i + 1]).toString(16));
  return new URL(`http://[${groups.join(":")}]/`).hostname.slice(1, -1); // compressed
}

function ipv4Bytes(text: string): number[] {
  return text.split(".").map(Number);
}

function ipv6Bytes(text: string): number[] {
  // Expands "::" and an embedded IPv4 tail.
  let tail: number[] = [];
  let t = text;
  const lastColon = t.lastIndexOf(":");
  if (isIPv4(t.slice(lastColon + 1))) {
    tail = ipv4Bytes(t.slice(lastColon + 1));
    t = `${t.slice(0, lastColon + 1)}0:0`;
  }
  const [head, rest] = t.includes("::") ? t.split("::") : [t, undefined];
  const h = head ? head.split(":") : [];
  const r = rest ? rest.split(":") : [];
  const groups = rest === undefined ? h : [...h, ...Array(8 - h.length - r.length).fill("0"), ...r];
  const out: number[] = [];
  for (const g of groups) {
    const v = parseInt(g, 16);
    out.push(v >> 8, v & 0xff);
  }
  if (tail.length) out.splice(12, 4, ...tail);
  return out;
}

/** All the addresses of `host` (stunnel's hostport2addrlist); empty when it does not resolve. */
async function resolveAll(host: string): Promise<{ address: string; family: number }[]> {
  try {
    const hosts = await getaddrinfo(host);
    return hosts.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }));
  } catch {
    return [];
  }
}

/** 0.0.0.0/8 ("this host") and 127.0.0.0/8, by the first byte of an IPv4 address. */
const thisHostV4 = (first: number) => first === 0 || first === 127;

/** Which loopback a resolved target reaches, if it is this host itself. */
function loopbackOf(t: { address: string; family: number }): "IPv4" | "IPv6" | undefined {
  if (t.family !== 6) return thisHostV4(ipv4Bytes(t.address)[0]) ? "IPv4" : undefined;
  const b = ipv6Bytes(t.address);
  const zeros = (n: number) => b.slice(0, n).every((x) => x === 0);
  if (zeros(10) && b[10] === 0xff && b[11] === 0xff) { // ::ffff:a.b.c.d
    return thisHostV4(b[12]) ? "IPv4" : undefined;
  }
  return zeros(15) && b[15] <= 1 ? "IPv6" : undefined; // :: and ::1
}

/** stunnel's validate(): a target on this host itself is refused. */
function validate(targets: { address: string; family: number }[], log: NegotiationContext["log"]) {
  for (const t of targets) {
    const loopback = loopbackOf(t);
    if (loopback) {
      log(3, `SOCKS connection to the ${loopback} loopback rejected`);
      return false;
    }
  }
  return true;
}

const tcp = (host: string, port: number): Address => ({ kind: "tcp", host, port });

/** SOCKS 4 and 4a (the version byte was read). */
async function socks4(ch: Channel, ctx: NegotiationContext): Promise<void> {
  const { log } = ctx;
  const req = await ch.readBytes(7); // CD, DSTPORT, DSTIP
  await ch.readString(); // USERID: ignored
  const reply = new Uint8Array(8);
  reply.set(req, 1); // VN 0, then the request's port and address
  const port = (req[1] << 8) | req[2];
  const addr = (req[3] << 24 | req[4] << 16 | req[5] << 8 | req[6]) >>> 0;
  let ok = false;
  if (req[0] === 0x01) { // CONNECT
    let targets: { address: string; family: number }[];
    if (addr > 0 && addr < 256) { // 0.0.0.x: SOCKS 4a, a host name follows
      const host = await ch.readString();
      targets = await resolveAll(host);
      if (targets.length) log(6, `SOCKS4a resolved "${host}" to ${targets.length} host(s)`);
      else log(3, `SOCKS4a failed to resolve "${host}"`);
    } else {
      targets = [{ address: ipv4(req.subarray(3)), family: 4 }];
      log(6, "SOCKS4 address received");
    }
    ok = targets.length > 0 && validate(targets, log);
    if (ok) ctx.setTargets(targets.map((t) => tcp(t.address, port)));
  } else if (req[0] === 0xf0) { // RESOLVE (a TOR extension)
    const host = await ch.readString();
    const found = (await resolveAll(host))[0];
    if (found?.family === 4) {
      reply.set(ipv4Bytes(found.address), 4);
      log(6, `SOCKS4a/TOR resolved "${host}"`);
      ok = true;
    } else log(3, `SOCKS4a/TOR failed to resolve "${host}"`);
  } else {
    log(3, `Unsupported SOCKS4/SOCKS4a command ${hex2(req[0])}`);
  }
  reply[1] = ok ? 90 : 91; // granted : rejected or failed
  await ch.writeBytes(reply);
  if (!ok || req[0] !== 0x01) throw answered();
}

/** SOCKS 5 method selection: only NO AUTHENTICATION REQUIRED. */
async function socks5Method(ch: Channel, ctx: NegotiationContext): Promise<void> {
  const [n] = await ch.readBytes(1);
  const methods = await ch.readBytes(n);
  const method = methods.includes(0x00) ? 0x00 : 0xff;
  await ch.writeBytes(Uint8Array.of(0x05, method));
  if (method !== 0x00) {
    ctx.log(3, "No supported SOCKS5 authentication method received");
    throw answered();
  }
}

/** A SOCKS 5 DOMAINNAME and port. */
async function domainAndPort(ch: Channel): Promise<[string, number]> {
  const [len] = await ch.readBytes(1);
  const host = new TextDecoder("latin1").decode(await ch.readBytes(len));
  const p = await ch.readBytes(2);
  return [host, (p[0] << 8) | p[1]];
}

/** A SOCKS 5 request; the reply keeps the request's address family where it can. */
async function socks5(ch: Channel, ctx: NegotiationContext): Promise<void> {
  const { log } = ctx;
  // VER REP RSV ATYP, then an IPv4 (4+2) or IPv6 (16+2) address; zeros unless set.
  const reply = new Uint8Array(22);
  reply.set(await ch.readBytes(4));
  const [ver, cmd, , atyp] = reply;
  let ok = false;
  let rep = 0x01; // general SOCKS server failure
  if (ver !== 0x05) {
    log(3, `Invalid SOCKS5 message version ${hex2(ver)}`);
    reply[0] = 0x05;
  } else if (cmd === 0x01) { // CONNECT
    let targets: { address: string; family: number }[] | undefined;
    let port = 0;
    if (atyp === 0x01) {
      reply.set(await ch.readBytes(6), 4);
      targets = [{ address: ipv4(reply.subarray(4)), family: 4 }];
      port = (reply[8] << 8) | reply[9];
      log(6, "SOCKS5 IPv4 address received");
    } else if (atyp === 0x03) {
      const [host, p] = await domainAndPort(ch);
      port = p;
      targets = await resolveAll(host);
      if (targets.length) log(6, `SOCKS5 resolved "${host}" to ${targets.length} host(s)`);
      else {
        log(3, `SOCKS5 failed to resolve "${host}"`);
        rep = 0x04; // host unreachable
        targets = undefined;
      }
    } else if (atyp === 0x04) {
      reply.set(await ch.readBytes(18), 4);
      targets = [{ address: ipv6(reply.subarray(4)), family: 6 }];
      port = (reply[20] << 8) | reply[21];
      log(6, "SOCKS5 IPv6 address received");
    } else {
      log(3, `Unsupported SOCKS5 address type ${hex2(atyp)}`);
      rep = 0x07; // address type not supported
    }
    if (targets) {
      ok = validate(targets, log);
      rep = ok ? 0x00 : 0x02; // succeeded : connection not allowed by ruleset
      if (ok) ctx.setTargets(targets.map((t) => tcp(t.address, port)));
    }
  } else if (cmd === 0xf0) { // RESOLVE (a TOR extension)
    const [host] = await domainAndPort(ch);
    const found = (await resolveAll(host))[0];
    rep = 0x04; // host unreachable
    if (found) {
      const v6 = found.family === 6;
      log(6, `SOCKS5/TOR resolved "${host}" to ${v6 ? "IPv6" : "IPv4"}`);
      reply.set(v6 ? ipv6Bytes(found.address) : ipv4Bytes(found.address), 4);
      reply[3] = v6 ? 0x04 : 0x01;
      rep = 0x00;
    } else log(3, `SOCKS5/TOR failed to resolve "${host}"`);
  } else {
    log(3, `Unsupported SOCKS5 command ${hex2(cmd)}`);
    rep = 0x07; // command not supported
  }
  reply[1] = rep;
  if (reply[3] === 0x04) await ch.writeBytes(reply);
  else {
    reply[3] = 0x01;
    await ch.writeBytes(reply.slice(0, 10));
  }
  if (!ok) throw answered();
}

const SOL_IP = 0;
const SOL_IPV6 = 41;
const SO_ORIGINAL_DST = 80; // also IP6T_SO_ORIGINAL_DST
const AF_INET = 2;
const AF_INET6 = 10;

/** The SOCKS 5 address (ATYP, address, port) of the original destination of `conn`. */
function originalDst(conn: Conn): number[] {
  const fd = conn.localAddr.transport === "tcp" ? findConnFd(conn) : undefined;
  if (fd === undefined) {
    throw new ProtocolError(
      "getsockopt SO_ORIGINAL_DST: no TCP socket descriptor found for the local connection",
      false,
    );
  }
  const { libc } = lib();
  const addr = new Uint8Array(128);
  const len = new Uint32Array(1);
  // stunnel asks for the IPv6 destination first, then the IPv4 one, and reports the last error.
  let ok = false;
  for (const level of [SOL_IPV6, SOL_IP]) {
    len[0] = addr.length;
    addr.fill(0);
    if (libc.getsockopt(fd, level, SO_ORIGINAL_DST, addr, new Uint8Array(len.buffer)) === 0) {
      ok = true;
      break;
    }
  }
  if (!ok) throw new ProtocolError(`getsockopt SO_ORIGINAL_DST: ${errnoText()}`, false);
  const family = addr[0] | (addr[1] << 8);
  const port = [addr[2], addr[3]];
  if (family === AF_INET) return [0x01, ...addr.subarray(4, 8), ...port];
  if (family === AF_INET6) return [0x04, ...addr.subarray(8, 24), ...port];
  throw new ProtocolError(`Unsupported address type ${hex2(family)}`, false);
}

const SOCKS5_ERRORS: Record<number, string> = {
  0x01: "General SOCKS server failure",
  0x02: "Connection not allowed by ruleset",
  0x03: "Network unreachable",
  0x04: "Host unreachable",
  0x05: "Connection refused",
  0x06: "TTL expired",
  0x07: "Command not supported",
  0x08: "Address type not supported",
};

export const socks: Protocol = {
  name: "socks",
  client: {
    /** Inside TLS, after the handshake: the remote socks service connects the destination. */
    async late({ tls, log, localConn }) {
      const ch = tls!;
      await ch.writeBytes(Uint8Array.of(0x05, 0x01, 0x00)); // NO AUTHENTICATION REQUIRED
      const [ver, method] = await ch.readBytes(2);
      if (ver !== 0x05) {
        throw new ProtocolError(`Invalid SOCKS5 message version ${hex2(ver)}`, false);
      }
      if (method !== 0x00) {
        throw new ProtocolError("No supported SOCKS5 authentication method received", false);
      }
      const [atyp, ...address] = originalDst(localConn);
      log(6, `Sending SOCKS5 ${atyp === 0x04 ? "IPv6" : "IPv4"} address`);
      await ch.writeBytes(Uint8Array.of(0x05, 0x01, 0x00, atyp, ...address)); // CONNECT
      const reply = await ch.readBytes(4);
      await ch.readBytes(reply[3] === 0x04 ? 18 : 6); // BND.ADDR and BND.PORT: not used
      if (reply[0] !== 0x05) {
        throw new ProtocolError(`Invalid SOCKS5 message version ${hex2(reply[0])}`, false);
      }
      if (reply[1] === 0x00) {
        log(6, "SOCKS5 request succeeded");
        return;
      }
      const why = SOCKS5_ERRORS[reply[1]] ?? `Unknown error ${hex2(reply[1])}`;
      throw new ProtocolError(`SOCKS5 request failed: ${why}`, false);
    },
  },
  server: {
    /** Inside TLS, before the connect: the request chooses the target. */
    async middle(ctx) {
      const ch = ctx.tls!;
      ctx.log(7, "Waiting for the SOCKS request");
      const [version] = await ch.readBytes(1);
      if (version === 4) await socks4(ch, ctx);
      else if (version === 5) {
        await socks5Method(ch, ctx);
        await socks5(ch, ctx);
      } else throw new ProtocolError(`Unsupported SOCKS version ${hex2(version)}`);
    },
  },
};
