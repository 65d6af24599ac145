/** One accepted connection: TLS handshake, connect to the remote, two pumps, teardown. */
import { AccessDenied } from "../access/denied.ts";
import type { Logger } from "../sys/log.ts";
import { NOT_A_SOCKET } from "../net/conn.ts";
import { DenoTlsStream, pipe, PlainStream, type Progress, type Stream, TlsStream } from "./pump.ts";
import type { DenoTlsContext } from "../tls/deno.ts";
import type { Service } from "./service.ts";
import { handshakeFailure, type ServiceCounters } from "./metrics.ts";
import { osErrorText } from "../sys/oserror.ts";
import type { Conn } from "../net/conn.ts";
import { resetNow } from "../net/reset.ts";
import { platform } from "../sys/platform.ts";
import { applyLocalOptions, originalDestination } from "../net/localsock.ts";
import { ocspChecksPeer } from "../tls/ocsp_scope.ts";
import { attachSni } from "../tls/sni.ts";
import { peerTmpKey } from "../tls/tmpkey.ts";
import { type TlsConnection, TlsError } from "../tls/core.ts";
import { execEnvironment, spawnExec } from "../local/exec.ts";
import { identAuth } from "../access/ident.ts";
import { libwrapAuth } from "../access/libwrap.ts";
import { peerAuthenticated } from "../tls/verify.ts";
import type { Address } from "../config/types.ts";
import {
  Channel,
  type Negotiation,
  type NegotiationContext,
  negotiationFor,
  type Phase,
  ProtocolError,
} from "../../protocols/mod.ts";

export function formatPeer(addr: Deno.Addr): string {
  if (addr.transport === "tcp" || addr.transport === "udp") {
    return `${addr.hostname}:${addr.port}`;
  }
  return (addr as Deno.UnixAddr).path || "unnamed socket";
}

/** Which wait ran out, in stunnel's words; `fatal` ones end with a reset. */
interface TimedOut {
  line: string;
  fatal: boolean;
}

export class Connection {
  /** ms since epoch of the accept, for the duration in JSON log lines. */
  private readonly started = Date.now();
  /** ms since epoch of the last byte moved in either direction, or of the start of a busy wait. */
  lastActivity = Date.now();
  /** Both read sides still open (else, once nothing is buffered, the close timeout applies). */
  bothOpen = true;
  /**
   * Chunks read from one side and not yet written to the other: as in stunnel, buffered data
   * keeps TIMEOUTidle in force after a side has closed.
   */
  private buffered = 0;
  /** Set while waiting for the peer in the handshake: TIMEOUTbusy applies. */
  busy = false;
  /** What the busy wait is, for its timeout line (a protocol negotiation names its read). */
  private busyStep = "ssl_start";
  /** Chosen by the protocol negotiation (socks): connect there instead of `connect`. */
  private targets: Address[] | undefined;
  private toTls = 0;
  private toSocket = 0;
  private streams: Stream[] = [];
  /** Every socket of this connection, for `reset = yes`. */
  private sockets: Conn[] = [];
  private tlsStream: TlsStream | DenoTlsStream | undefined;
  private timedOut: TimedOut | undefined;
  /** The peer failed authentication: connect to `redirect` instead of `connect`. */
  private redirected = false;
  /** Ends the SNI registration of a server-mode handshake (before the SSL object is freed). */
  private detachSni: (() => void) | undefined;
  /** The accepting service's figures (SNI does not move a connection's counts). */
  readonly counters: ServiceCounters;
  /** In the TLS handshake: a failure now counts as a failed handshake. */
  private handshaking = false;

  constructor(
    /** The accepting service, until SNI hands the connection to a secondary service. */
    public service: Service,
    readonly local: Conn,
    readonly log: Logger,
  ) {
    this.counters = service.counters;
  }

  /** SNI chose a secondary service: its connect, checks, timeouts and name apply from now on. */
  switchService(to: Service): void {
    this.service = to;
    if (this.log.context) this.log.context.service = to.name;
  }

  get bytesToTls(): number {
    return this.toTls;
  }

  get bytesToSocket(): number {
    return this.toSocket;
  }

  /** Called by the daemon's timer: ends the connection if it waited too long. */
  checkTimeout(now: number): void {
    const o = this.service.opts;
    const timeout: TimedOut & { seconds: number } = this.busy
      ? { seconds: o.TIMEOUTbusy, fatal: true, line: `${this.busyStep}: s_poll_wait: TIMEOUTbusy` }
      : this.bothOpen || this.buffered > 0
      ? { seconds: o.TIMEOUTidle, fatal: true, line: "transfer: s_poll_wait: TIMEOUTidle" }
      : { seconds: o.TIMEOUTclose, fatal: false, line: "transfer: s_poll_wait: TIMEOUTclose" };
    if (now - this.lastActivity < timeout.seconds * 1000) return;
    this.timedOut = timeout;
    this.abort();
  }

  /** Closes both sockets; pending reads and writes then fail and the pumps end. */
  abort(): void {
    for (const s of this.streams) s.close();
  }

  async run(): Promise<void> {
    const { service, log } = this;
    let reset = false;
    try {
      // As stunnel: libwrap and IDENT decide before the connection counts as accepted.
      await this.checkAccess();
      // As stunnel: a local side that is no socket (pipes, a terminal) has no peer to name.
      const peer = this.local.remoteAddr;
      const from = peer === NOT_A_SOCKET ? "" : ` from ${formatPeer(peer)}`;
      log(5, `Service [${service.name}] accepted connection${from}`);
      const { tls, plain } = await this.establish();
      await this.transfer(tls, plain);
    } catch (e) {
      // Refused by a check: `reset = yes` resets the client too.
      if (!this.sockets.includes(this.local)) this.sockets.push(this.local);
      reset = this.fail(e);
    } finally {
      for (const s of this.streams) s.close();
      if (this.streams.length === 0) closeQuietly(this.local);
      const counts = `${this.toTls} byte(s) sent to TLS, ${this.toSocket} byte(s) sent to socket`;
      log(5, `Connection ${reset ? "reset" : "closed"}: ${counts}`, {
        bytesToTls: this.toTls,
        bytesToSocket: this.toSocket,
        durationMs: Date.now() - this.started,
      });
      this.detachSni?.();
      if (this.tlsStream instanceof TlsStream) this.tlsStream.tls.free();
    }
  }

  /**
   * Logs why the connection ends; with `reset = yes` a failure of ours closes the sockets with
   * RST, as stunnel does. Returns whether it did. TIMEOUTclose is no failure: the data is done.
   */
  private fail(e: unknown): boolean {
    const timedOut = this.timedOut;
    if (this.handshaking) this.counters.handshake(handshakeFailure(e, timedOut !== undefined));
    if (timedOut) {
      this.log(
        timedOut.fatal ? 6 : 3,
        `${timedOut.line} exceeded: ${timedOut.fatal ? "sending reset" : "closing"}`,
      );
      if (!timedOut.fatal) return false;
    } else {
      this.logFailure(e);
    }
    // Without descriptors the default `reset = yes` falls back to a close (config/platform.ts).
    if (!this.service.opts.reset || !platform().descriptors) return false;
    // A negotiation that answered the peer properly ends without a reset, as in stunnel.
    if (e instanceof ProtocolError && !e.reset) return false;
    // A peer that reset the connection is gone: only failures of ours are worth an RST.
    if (!(e instanceof Deno.errors.ConnectionReset)) {
      for (const s of this.sockets) resetNow(s);
    }
    return true;
  }

  /** `libwrap = yes` (/etc/hosts.allow, /etc/hosts.deny), then `ident = USERNAME`. */
  private async checkAccess(): Promise<void> {
    const opts = this.service.opts;
    if (!opts.libwrap && opts.ident === undefined) return;
    const peer = this.local.remoteAddr;
    const unixSocket = opts.accept.some((a) => a.kind === "unix");
    if (opts.libwrap) await libwrapAuth(this.service.name, peer, unixSocket, this.log);
    if (opts.ident !== undefined) {
      await identAuth({
        username: opts.ident,
        peer,
        local: this.local.localAddr,
        unixSocket,
        TIMEOUTconnect: opts.TIMEOUTconnect,
        TIMEOUTbusy: opts.TIMEOUTbusy,
      }, this.log);
    }
  }

  /**
   * Everything up to the transfer: the streams it moves data between (returned rather than
   * transferred here, so that an idle connection does not keep this frame suspended).
   */
  private async establish(): Promise<
    { tls: TlsStream | DenoTlsStream; plain: PlainStream }
  > {
    const { service } = this;
    const opts = service.opts;
    this.sockets.push(this.local);
    // TCP_NODELAY (stunnel's l: default) and the other l: options; the listener gave most of
    // them to the accepted socket already (listener.ts).
    applyLocalOptions(
      { all: service.sockets.local, own: service.localPerConnection },
      this.local,
      this.log,
    );
    // `protocol =`: its phases run around the handshake and the connect (protocols/mod.ts).
    const negotiation = await negotiationFor(opts);
    const deno = service.denoTls;
    if (deno) return await this.establishDeno(deno, negotiation);
    const local = new PlainStream(this.local);
    this.streams.push(local);
    await this.negotiate(negotiation, "early", { local });
    if (opts.client) {
      const remote = await this.openRemote(undefined);
      await this.negotiate(negotiation, "middle", { local, remote });
      const sni = service.sniName();
      this.log(6, sni ? `SNI: sending servername: ${sni}` : "SNI: extension disabled");
      const tls = new TlsStream(remote, service.tls.newConnection(sni, this.log));
      this.tlsStream = tls;
      this.streams.push(tls);
      await this.handshake(tls);
      await this.negotiate(negotiation, "late", { local, tls });
      return { tls, plain: local };
    } else {
      let remote: PlainStream | undefined;
      if (negotiation?.connectBeforeTls) {
        remote = await this.openRemote(undefined);
        await this.negotiate(negotiation, "middle", { local, remote });
      }
      const tls = new TlsStream(local, service.tls.newConnection(undefined, this.log));
      this.tlsStream = tls;
      this.streams.push(tls);
      this.detachSni = attachSni(tls.tls, this);
      await this.handshake(tls);
      if (!remote) {
        await this.negotiate(negotiation, "middle", { tls });
        remote = await this.openRemote(tls.tls);
      }
      await this.negotiate(negotiation, "late", { tls, remote });
      return { tls, plain: remote };
    }
  }

  /**
   * establish() with Deno's TLS: a server-mode connection was accepted by Deno.listenTls (its
   * handshake is all that is left); a client-mode one upgrades its remote TCP connection with
   * Deno.startTls, after any plaintext the protocol exchanges there.
   */
  private async establishDeno(
    deno: DenoTlsContext,
    negotiation: Negotiation | undefined,
  ): Promise<{ tls: DenoTlsStream; plain: PlainStream }> {
    const { service } = this;
    if (!service.opts.client) {
      const tls = new DenoTlsStream(this.local as Deno.TlsConn);
      this.tlsStream = tls;
      this.streams.push(tls);
      await this.handshakeDeno(tls);
      await this.negotiate(negotiation, "middle", { tls });
      const remote = await this.openRemote(undefined);
      await this.negotiate(negotiation, "late", { tls, remote });
      return { tls, plain: remote };
    }
    const local = new PlainStream(this.local);
    this.streams.push(local);
    await this.negotiate(negotiation, "early", { local });
    const remote = await this.openRemote(undefined);
    await this.negotiate(negotiation, "middle", { local, remote });
    const sni = service.sniName();
    this.log(6, `SNI: sending servername: ${service.opts.checkHost[0] ?? sni}`);
    const conn = remote.conn;
    // Deno.startTls takes Deno's own TCP connections (config/deno_tls.ts refuses the others).
    if (conn.remoteAddr.transport !== "tcp" || !conn.setNoDelay || conn.resetNow) {
      throw new Error("Deno's TLS needs a TCP connection made by Deno");
    }
    if (remote.hasPending) throw new ProtocolError("Data after the STARTTLS reply");
    // startTls takes the TCP connection over: closing the TLS one closes it.
    const tls = new DenoTlsStream(await deno.startClient(conn as Deno.TcpConn, sni));
    this.streams = this.streams.filter((s) => s !== remote);
    this.tlsStream = tls;
    this.streams.push(tls);
    await this.handshakeDeno(tls);
    await this.negotiate(negotiation, "late", { local, tls });
    return { tls, plain: local };
  }

  /** Deno's handshake: one wait for the peer, bounded by TIMEOUTbusy. */
  private async handshakeDeno(tls: DenoTlsStream): Promise<void> {
    this.busy = true;
    const required = this.service.opts.client;
    this.log(6, required ? "Peer certificate required" : "Peer certificate not required");
    const alpn = await tls.handshake(() => this.lastActivity = Date.now());
    this.busy = false;
    if (this.log.level >= 6) {
      // Deno tells nothing of the session, the protocol version or the cipher.
      this.log(6, `TLS ${this.service.opts.client ? "connected" : "accepted"}`);
      if (this.service.opts.alpn) {
        this.log(6, alpn ? `ALPN: selected protocol: ${alpn}` : "ALPN: no protocol selected");
      }
    }
  }

  /** Runs one phase of the protocol negotiation, if it has one; TIMEOUTbusy bounds its waits. */
  private async negotiate(
    negotiation: Negotiation | undefined,
    phase: Phase,
    streams: { local?: PlainStream; remote?: PlainStream; tls?: TlsStream | DenoTlsStream },
  ): Promise<void> {
    const run = negotiation?.[phase];
    if (!run) return;
    const waiting = (step: string) => {
      this.busy = true;
      this.busyStep = step;
      this.lastActivity = Date.now();
    };
    const channel = (s: PlainStream | TlsStream | undefined) =>
      s && new Channel(s, this.log, waiting);
    const ctx: NegotiationContext = {
      opts: this.service.opts,
      log: this.log,
      local: channel(streams.local),
      remote: channel(streams.remote),
      tls: channel(streams.tls),
      localConn: this.local,
      tlsConnection: this.tlsStream instanceof TlsStream ? this.tlsStream.tls : undefined,
      setTargets: (targets) => this.targets = targets,
    };
    try {
      await run.call(negotiation, ctx);
    } finally {
      this.busy = false;
      this.busyStep = "ssl_start";
    }
    // What the negotiation read ahead belongs to the TLS engine or the transfer.
    ctx.local?.release();
    ctx.remote?.release();
    ctx.tls?.release();
  }

  private async handshake(tls: TlsStream): Promise<void> {
    this.busy = true;
    const required = this.service.opts.requireCert;
    this.log(6, required ? "Peer certificate required" : "Peer certificate not required");
    // A peer that fails verification (verify.ts) ends the handshake here.
    this.handshaking = true;
    await tls.handshake(() => this.lastActivity = Date.now());
    this.busy = false;
    // Read after the handshake: SNI may have switched the service during it.
    const { log, service } = this;
    const engine = tls.tls;
    // OCSP cannot block inside the verify callback: it asks here, before any byte moves.
    if (ocspChecksPeer(service.opts)) {
      const { checkPeerOcsp } = await import("../tls/ocsp.ts");
      await checkPeerOcsp(engine, service.opts, log);
    }
    this.handshaking = false;
    this.counters.handshake("ok");
    if (engine.sessionReused) this.counters.resumedSessions++;
    else this.counters.newSessions++;
    // A context renewed meanwhile (`watchFiles`) keeps no session of the one it replaced.
    if (engine.context === service.tls) service.tls.handshakeDone(engine);
    if (log.level >= 6) {
      const side = service.opts.client ? "connected" : "accepted";
      const reused = engine.sessionReused ? "previous session reused" : "new session negotiated";
      log(6, `TLS ${side}: ${reused}`);
      const { name, bits } = engine.cipher;
      const version = engine.version;
      // stunnel 5.68 says "ciphersuite" for every protocol version.
      log(6, `${version} ciphersuite: ${name} (${bits}-bit encryption)`);
      const key = peerTmpKey(engine);
      log(6, key ? `Peer temporary key: ${key}` : "No peer temporary key received");
      if (service.opts.alpn) {
        const alpn = engine.alpn;
        log(6, alpn ? `ALPN: selected protocol: ${alpn}` : "ALPN: no protocol selected");
      }
    }
    // `redirect`: a client that failed authentication (or sent no certificate) got through the
    // handshake only to be sent to the redirect target; a resumed session keeps its verdict.
    if (!service.opts.client && service.opts.redirect && !peerAuthenticated(engine)) {
      this.redirected = true;
      log(5, "Redirecting connection");
    }
  }

  /**
   * The remote side: the `exec` program (local mode) when the service has no `connect`, else a
   * connection to `connect` (or to the redirect or negotiated targets). `tls`: the handshake
   * whose peer certificate the program learns about.
   */
  private async openRemote(tls: TlsConnection | undefined): Promise<PlainStream> {
    const opts = this.service.opts;
    const local = opts.exec !== undefined && opts.connect.length === 0 && !this.targets &&
      !this.redirected;
    const conn = local
      ? spawnExec(opts, execEnvironment(this.local.remoteAddr, tls), this.log)
      : await this.connectRemote();
    const remote = new PlainStream(conn);
    this.streams.push(remote);
    return remote;
  }

  private async connectRemote(): Promise<Conn> {
    const { transparent } = this.service.opts;
    // `transparent = destination|both`: where the client meant to go, unless `redirect` or a
    // protocol chose the target (stunnel's order).
    if ((transparent === "destination" || transparent === "both") && !this.targets) {
      if (!this.redirected) this.targets = [originalDestination(this.local)];
    }
    const remote = await this.service.connect(
      this.log,
      this.redirected,
      this.targets,
      this.local.remoteAddr,
    );
    this.log(
      5,
      `Service [${this.service.name}] connected remote server from ${formatPeer(remote.localAddr)}`,
    );
    this.sockets.push(remote);
    setNoDelay(remote, this.log);
    return remote;
  }

  /** Both directions at once until both have ended. */
  private async transfer(tls: TlsStream | DenoTlsStream, plain: PlainStream): Promise<void> {
    this.lastActivity = Date.now();
    let failure: unknown;
    const fail = (e: unknown) => {
      failure ??= e;
      this.abort();
    };
    const progress = (count: (bytes: number) => void): Progress => ({
      read: () => this.buffered++,
      crossed: (bytes) => {
        this.buffered--;
        count(bytes);
        this.lastActivity = Date.now();
      },
    });
    const { counters } = this;
    const tlsToSocket = pipe(
      tls,
      plain,
      progress((n) => {
        this.toSocket += n;
        counters.bytesToSocket += n;
      }),
    ).then(() => {
      this.log(6, tls.peerEnd === "eof" ? "TLS socket closed (SSL_read)" : "TLS closed (SSL_read)");
      // pipe() ended the plain side's direction: a socket is shut down, anything else closed.
      const socket = plain.conn.remoteAddr !== NOT_A_SOCKET;
      this.log(7, socket ? "Sent socket write shutdown" : "Closing the file descriptor");
      this.bothOpen = false;
      this.lastActivity = Date.now();
    }, fail);
    const socketToTls = pipe(
      plain,
      tls,
      progress((n) => {
        this.toTls += n;
        counters.bytesToTls += n;
      }),
    ).then(() => {
      this.log(6, "Read socket closed (read hangup)");
      if (tls.closeNotifySent) {
        this.log(7, "Sending close_notify alert");
        this.log(6, "SSL_shutdown successfully sent close_notify alert");
      }
      this.bothOpen = false;
      this.lastActivity = Date.now();
    }, fail);
    // Neither rejects (`fail` takes the failure).
    await tlsToSocket;
    await socketToTls;
    if (failure !== undefined) throw failure;
  }

  private logFailure(e: unknown): void {
    const { log } = this;
    if (e instanceof TlsError) {
      for (const line of e.logLines()) log(3, line);
    } else if (e instanceof ProtocolError) {
      if (e.line) log(3, e.line);
    } else if (!(e instanceof AccessDenied)) {
      log(3, osErrorText(e));
    }
  }
}

/** stunnel's default r:TCP_NODELAY=yes, on a socket Deno made (netconn.ts sets its own). */
function setNoDelay(conn: Conn, log: Logger): void {
  if (!conn.setNoDelay) return;
  conn.setNoDelay(true);
  log(7, "Option TCP_NODELAY set on remote socket");
}

function closeQuietly(conn: Conn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}
