/**
 * End-to-end: readiness for supervisors (sd_notify, extension). A Unix datagram socket bound
 * to a temporary path (or an abstract name) stands in for systemd's NOTIFY_SOCKET; the proxy
 * must send READY=1 once it listens, RELOADING=1 / READY=1 around a SIGHUP reload and
 * STOPPING=1 when it shuts down.
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { PROXY } from "./harness/command.ts";
import { echoServer, freePorts, isListening } from "./harness/net.ts";
import { serverCertLines } from "./harness/pki.ts";
import { e2e, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS } from "./harness/proxy.ts";
import { withTimeout } from "./harness/timing.ts";
import { monotonicUsec } from "../lib/sys/notify.ts";

const EXTRA = "stunnel 5.68 on Debian is built with systemd socket activation, not sd_notify";

/** systemd's side: the datagrams received, each as its KEY=VALUE map. */
class FakeSystemd {
  private readonly socket: Deno.DatagramConn;
  private readonly queue: Map<string, string>[] = [];
  private wake: (() => void) | undefined;

  constructor(readonly name: string, scope: Scope) {
    const path = name.startsWith("@") ? `\0${name.slice(1)}` : name;
    this.socket = Deno.listenDatagram({ transport: "unixpacket", path });
    scope.defer(() => this.socket.close());
    void this.receive();
  }

  private async receive(): Promise<void> {
    try {
      for (;;) {
        const [data] = await this.socket.receive();
        const lines = new TextDecoder().decode(data).split("\n");
        this.queue.push(
          new Map(lines.map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)])),
        );
        this.wake?.();
      }
    } catch {
      // closed
    }
  }

  /** The next message, within 10 s. */
  async next(): Promise<Map<string, string>> {
    while (this.queue.length === 0) {
      await withTimeout(new Promise<void>((r) => this.wake = r), 10_000, "a notify message");
    }
    return this.queue.shift()!;
  }

  get pending(): number {
    return this.queue.length;
  }
}

async function startNotified(scope: Scope, notifySocket: string, port: number) {
  const echo = echoServer();
  const dir = await scope.tempDir("e2e-notify-");
  const conf = `${dir}/stunnel.conf`;
  const text = `${GLOBALS}[svc]\naccept = 127.0.0.1:${port}\n` +
    `connect = 127.0.0.1:${echo.port}\n${await serverCertLines()}`;
  await Deno.writeTextFile(conf, text);
  const proxy = spawn([...PROXY, conf], { stdin: false, env: { NOTIFY_SOCKET: notifySocket } });
  return { proxy, conf, text };
}

e2e("sd_notify: READY once listening, RELOADING/READY around SIGHUP, STOPPING", {
  extra: EXTRA,
}, async (scope) => {
  const dir = await scope.tempDir("e2e-notify-sock-");
  const systemd = new FakeSystemd(`${dir}/notify`, scope);
  const [port] = freePorts(1);
  const { proxy } = await startNotified(scope, systemd.name, port);

  const ready = await systemd.next();
  assertEquals(ready.get("READY"), "1");
  assertEquals(ready.get("MAINPID"), String(proxy.pid));
  assertMatch(ready.get("STATUS") ?? "", /^Accepting connections \(1 service\)$/);
  assert(await isListening(port), "listening when READY arrives");

  const before = monotonicUsec();
  proxy.signal("SIGHUP");
  const reloading = await systemd.next();
  const after = monotonicUsec();
  assertEquals(reloading.get("RELOADING"), "1");
  const stamp = BigInt(reloading.get("MONOTONIC_USEC") ?? "0");
  assert(stamp >= before && stamp <= after, `MONOTONIC_USEC ${stamp} not in [${before}, ${after}]`);
  const reloaded = await systemd.next();
  assertEquals(reloaded.get("READY"), "1");
  assertEquals(reloaded.get("STATUS"), "Accepting connections (1 service)");
  await proxy.waitForOutput(/Configuration successful[\s\S]*Configuration successful/);

  proxy.signal("SIGTERM");
  const stopping = await systemd.next();
  assertEquals(stopping.get("STOPPING"), "1");
  await withTimeout(proxy.exited, 10_000, "the proxy to exit");
  assertEquals(systemd.pending, 0);
});

e2e("sd_notify: a failed reload still ends with READY, saying so", {
  extra: EXTRA,
}, async (scope) => {
  const dir = await scope.tempDir("e2e-notify-sock-");
  const systemd = new FakeSystemd(`${dir}/notify`, scope);
  const [port] = freePorts(1);
  const { proxy, conf } = await startNotified(scope, systemd.name, port);
  assertEquals((await systemd.next()).get("READY"), "1");
  await Deno.writeTextFile(conf, `${GLOBALS}[svc]\naccept = 127.0.0.1:${port}\nnoSuch = 1\n`);
  proxy.signal("SIGHUP");
  assertEquals((await systemd.next()).get("RELOADING"), "1");
  const after = await systemd.next();
  assertEquals(after.get("READY"), "1");
  assertMatch(after.get("STATUS") ?? "", /reload failed, the previous configuration is kept/);
  assert(await isListening(port), "still serving");
});

e2e("sd_notify: an abstract NOTIFY_SOCKET (@name)", { extra: EXTRA }, async (scope) => {
  const name = `@stunnel-deno-test-${crypto.randomUUID()}`;
  const systemd = new FakeSystemd(name, scope);
  const [port] = freePorts(1);
  const { proxy } = await startNotified(scope, name, port);
  const ready = await systemd.next();
  assertEquals(ready.get("READY"), "1");
  assertEquals(ready.get("MAINPID"), String(proxy.pid));
});
