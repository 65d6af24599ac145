/**
 * End-to-end: `socket = a|l|r:OPTION=VALUE` seen from outside (ss shows the keepalive timers
 * of the accepted and the remote socket and the receive buffer of the listener), bad socket
 * lines refused with stunnel's words, `local` (the source address of remote connections), and
 * `transparent = source | destination` inside network namespaces made by the test (a client,
 * the proxy and a backend, each in its own namespace, with the manual's iptables and policy
 * routing setup). `transparent = both` has no test of its own: with a REDIRECT rule the
 * proxy's outgoing connection has the very address pair of the redirected one, which
 * conntrack does not let through (stunnel 5.68 fails the same way); it is the two tested
 * paths together.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_sockets_test.ts
 */

import { assert, assertEquals, assertMatch } from "./harness/assert.ts";
import { encode, readExactly, writeAll } from "./harness/bytes.ts";
import { PROXY } from "./harness/command.ts";
import { echoServer, freePorts, tlsConnect } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, run, type Scope, spawn } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { sleep } from "./harness/timing.ts";

/** A server-mode service: TLS on `accept`, plain to `connect`, with extra lines. */
async function serverConfig(accept: number, connect: number, extra: string): Promise<string> {
  const pki = await makePki();
  return GLOBALS +
    `[s]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n${extra}`;
}

/** `ss` output lines for TCP sockets matching `filter` (state and address filter). */
async function ss(args: string[], filter: string): Promise<string[]> {
  const r = await run(["ss", "-Htn", ...args, ...filter.split(" ")], 5000);
  assertEquals(r.code, 0, `ss failed: ${r.stderr}`);
  // Details (-m, -i) may come on indented lines of their own: one line per socket.
  return r.stdout.replace(/\n[ \t]+/g, " ").split("\n").filter((l) => l.trim() !== "");
}

/**
 * The one established socket matching `filter`; with `timer`, once ss shows its keepalive
 * timer (another timer, a retransmission say, may run for a moment), or as it is after 2 s.
 */
async function established(filter: string, timer = true): Promise<string> {
  let lines: string[] = [];
  for (let i = 0; i < 20; i++) {
    lines = await ss(["-o"], `state established ${filter}`);
    if (lines.length === 1 && (!timer || keepaliveSeconds(lines[0]) !== undefined)) break;
    await sleep(100);
  }
  assertEquals(lines.length, 1, `sockets matching ${filter}: ${lines.join("\n")}`);
  return lines[0];
}

/** Seconds left on a `timer:(keepalive,1min16sec,0)` of an ss -o line; undefined if none. */
function keepaliveSeconds(line: string): number | undefined {
  const m = /timer:\(keepalive,(?:(\d+)min)?(?:(\d+(?:\.\d+)?)sec)?(?:(\d+)ms)?/.exec(line);
  if (!m) return undefined;
  return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0) + Number(m[3] ?? 0) / 1000;
}

e2e("socket options: a:, l: and r: are set on the listening, accepted and remote sockets", {
  timeoutMs: 30_000,
}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  // The accepted socket inherits keepalive and its idle time from the listener (a:), and l:
  // gives it another idle time; the remote socket gets its own (r:). The listener's receive
  // buffer shows in its socket memory (the kernel doubles the value set).
  const proxy = await startProxy(
    await serverConfig(
      port,
      echo.port,
      "socket = a:SO_KEEPALIVE=yes\nsocket = a:TCP_KEEPIDLE=300\nsocket = a:SO_RCVBUF=40000\n" +
        "socket = l:TCP_KEEPIDLE=77\n" +
        "socket = r:SO_KEEPALIVE=yes\nsocket = r:TCP_KEEPIDLE=55\n",
    ),
  );
  const listening = await ss(["-l", "-m"], `sport = :${port}`);
  assert(listening.length > 0, `no listener on ${port}`);
  for (const line of listening) assertMatch(line, /rb80000\b/, `listener: ${line}`);

  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("ping\n"));
  await readExactly(tls, 5);
  await proxy.waitForLog(/connected remote server from/);
  const local = await established(`sport = :${port}`);
  const localIdle = keepaliveSeconds(local);
  assert(localIdle !== undefined && localIdle > 60 && localIdle <= 77, `local: ${local}`);
  const remote = await established(`dport = :${echo.port}`);
  const remoteIdle = keepaliveSeconds(remote);
  assert(remoteIdle !== undefined && remoteIdle > 40 && remoteIdle <= 55, `remote: ${remote}`);
  // The backend's own socket has no keepalive: the options are the proxy's.
  const backend = await established(`sport = :${echo.port}`, false);
  assertEquals(keepaliveSeconds(backend), undefined, backend);
  tls.close();
  await proxy.waitForLog(/Connection (closed|reset)/);
  await proxy.stop();
});

e2e("socket options: without socket lines no keepalive (stunnel's defaults only)", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(await serverConfig(port, echo.port, ""));
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("ping\n"));
  await readExactly(tls, 5);
  await proxy.waitForLog(/connected remote server from/);
  const local = await established(`sport = :${port}`, false);
  const remote = await established(`dport = :${echo.port}`, false);
  assertEquals(keepaliveSeconds(local), undefined, local);
  assertEquals(keepaliveSeconds(remote), undefined, remote);
  tls.close();
  await proxy.stop();
});

/** Runs the proxy on `text`; returns its exit code and output (it must not start). */
async function refused(text: string): Promise<{ code: number; log: string; conf: string }> {
  const proxy = await startProxy(text, { allowFailure: true, waitPorts: [], timeoutMs: 10_000 });
  const status = await proxy.process.wait(10_000);
  return { code: status.code, log: proxy.log(), conf: proxy.confPath };
}

e2e("socket options: bad lines are refused naming file and line, as stunnel words it", {
  timeoutMs: 40_000,
}, async () => {
  const [port, backend] = freePorts(2);
  const bad = [
    "x:SO_KEEPALIVE=yes",
    "a:SO_NOSUCH=1",
    "l:so_keepalive=yes",
    "a:SO_KEEPALIVE=maybe",
    "r:SO_RCVBUF=12x",
    "l:SO_LINGER=1:2:3",
    "a:SO_BINDTODEVICE=abcdefghijklmnop",
    "r:IP_TOS=0x10",
    "l:TCP_NODELAY",
  ];
  await Promise.all(bad.map(async (value) => {
    const text = GLOBALS + `[s]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
      `connect = 127.0.0.1:${backend}\nsocket = ${value}\n`;
    const r = await refused(text);
    assert(r.code !== 0, `exit 0 for ${value}`);
    const line = text.split("\n").indexOf(`socket = ${value}`) + 1;
    const quoted = `${r.conf}:${line}: "socket = ${value}": Illegal socket option`;
    assert(r.log.includes(quoted), `no "${quoted}" in:\n${r.log}`);
    assertMatch(r.log, /Configuration failed/);
  }));
});

e2e("socket options: an accept option the kernel refuses fails the binding", {}, async () => {
  const [port, backend] = freePorts(2);
  const r = await refused(
    GLOBALS + `[s]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
      `connect = 127.0.0.1:${backend}\nsocket = a:SO_SNDLOWAT=5\n`,
  );
  assert(r.code !== 0, "exit 0");
  // stunnel 5.68 logs these before its log is set up, in the "[!] " form.
  assertMatch(r.log, /(LOG3\[ui\]: |\[!\] )SO_SNDLOWAT: Protocol not available \(92\)/);
  assertMatch(r.log, /(LOG3\[ui\]: |\[!\] )Binding service \[s\] failed/);
});

e2e(
  "socket options: odd values stunnel accepts (empty numbers) start the service",
  {},
  async () => {
    const echo = echoServer();
    const [port] = freePorts(1);
    const proxy = await startProxy(
      await serverConfig(
        port,
        echo.port,
        "socket = l:SO_LINGER=1:\nsocket = r:SO_RCVTIMEO=\nsocket = a:SO_KEEPALIVE=YES\n",
      ),
    );
    assert(proxy.ready, proxy.log());
    await proxy.stop();
  },
);

e2e("local = 127.0.0.2: the backend sees that source address", {}, async () => {
  const pki = await makePki();
  const echo = echoServer();
  const [port] = freePorts(1);
  const proxy = await startProxy(await serverConfig(port, echo.port, "local = 127.0.0.2\n"));
  const tls = await tlsConnect(port, pki.caPem);
  await writeAll(tls, encode("ping\n"));
  assertEquals(new TextDecoder().decode(await readExactly(tls, 5)), "ping\n");
  assertEquals(echo.peers.map((p) => p.hostname), ["127.0.0.2"]);
  await proxy.waitForLog(/connected remote server from 127\.0\.0\.2:\d+/);
  tls.close();
  await proxy.stop();
});

e2e("local: a name that does not resolve is refused naming file and line", {}, async () => {
  const [port, backend] = freePorts(2);
  const r = await refused(
    GLOBALS + `[s]\nclient = yes\naccept = 127.0.0.1:${port}\n` +
      `connect = 127.0.0.1:${backend}\nlocal = nosuch.invalid\n`,
  );
  assert(r.code !== 0, "exit 0");
  assertMatch(r.log, /Error resolving "nosuch\.invalid": /);
  assert(
    r.log.includes(`${r.conf}:9: "local = nosuch.invalid": Failed to resolve local address`),
    r.log,
  );
});

// ---------------------------------------------------------------------------------------------
// Transparent proxy in network namespaces: client (10.77.0.2) -- proxy (10.77.0.1 | 10.77.1.1)
// -- backend (10.77.1.2). The backend routes everything back through the proxy's namespace.

interface Namespaces {
  client: string;
  proxy: string;
  backend: string;
}

async function sh(cmd: string): Promise<void> {
  const r = await run(["sh", "-ec", cmd], 10_000);
  if (r.code !== 0) throw new Error(`${cmd}: ${r.stderr}`);
}

/** The three namespaces, or undefined (logged) when the test cannot get CAP_NET_ADMIN. */
async function makeNamespaces(scope: Scope): Promise<Namespaces | undefined> {
  const tag = `st${Deno.pid % 100000}${Math.floor(Math.random() * 1000)}`;
  const ns = { client: `${tag}c`, proxy: `${tag}p`, backend: `${tag}b` };
  const probe = await run(["ip", "netns", "add", ns.proxy], 5000);
  if (probe.code !== 0) {
    if (/permission|not permitted/i.test(probe.stderr)) {
      console.log(`skipped: no CAP_NET_ADMIN for network namespaces (${probe.stderr.trim()})`);
      return undefined;
    }
    throw new Error(`ip netns add: ${probe.stderr}`);
  }
  scope.defer(async () => {
    for (const n of [ns.client, ns.proxy, ns.backend]) {
      await run(["ip", "netns", "del", n], 5000).catch(() => {});
    }
  });
  const inP = `ip netns exec ${ns.proxy}`;
  const inC = `ip netns exec ${ns.client}`;
  const inB = `ip netns exec ${ns.backend}`;
  await sh(`
    ip netns add ${ns.client}
    ip netns add ${ns.backend}
    ip link add ${tag}cp netns ${ns.client} type veth peer name ${tag}pc netns ${ns.proxy}
    ip link add ${tag}bp netns ${ns.backend} type veth peer name ${tag}pb netns ${ns.proxy}
    ${inC} ip link set lo up
    ${inC} ip addr add 10.77.0.2/24 dev ${tag}cp
    ${inC} ip link set ${tag}cp up
    ${inC} ip route add default via 10.77.0.1
    ${inB} ip link set lo up
    ${inB} ip addr add 10.77.1.2/24 dev ${tag}bp
    ${inB} ip link set ${tag}bp up
    ${inB} ip route add default via 10.77.1.1
    ${inP} ip link set lo up
    ${inP} ip addr add 10.77.0.1/24 dev ${tag}pc
    ${inP} ip link set ${tag}pc up
    ${inP} ip addr add 10.77.1.1/24 dev ${tag}pb
    ${inP} ip link set ${tag}pb up
    ${inP} sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.lo.rp_filter=0
    ${inP} iptables -t mangle -N DIVERT
    ${inP} iptables -t mangle -A PREROUTING -p tcp -m socket -j DIVERT
    ${inP} iptables -t mangle -A DIVERT -j MARK --set-mark 1
    ${inP} iptables -t mangle -A DIVERT -j ACCEPT
    ${inP} ip rule add fwmark 1 lookup 100
    ${inP} ip route add local 0.0.0.0/0 dev lo table 100
  `);
  return ns;
}

/** A plain backend in its namespace that answers each connection with the peer it sees. */
function peerReporter(ns: Namespaces, port: number) {
  return spawn([
    "ip",
    "netns",
    "exec",
    ns.backend,
    "socat",
    `TCP-LISTEN:${port},bind=10.77.1.2,reuseaddr,fork`,
    "SYSTEM:echo peer=$SOCAT_PEERADDR",
  ], { stdin: false });
}

/** The proxy in the proxy namespace; waits until it has bound (ports are not visible here). */
async function proxyIn(ns: Namespaces, text: string) {
  const proxy = await startProxy(text, {
    cmd: ["ip", "netns", "exec", ns.proxy, ...PROXY],
    waitPorts: [],
  });
  await proxy.waitForLog(/Service \[t\].* bound to /);
  return proxy;
}

/** A TLS client in the client namespace; returns what the backend answered. */
async function clientIn(ns: Namespaces, host: string, port: number): Promise<string> {
  for (let attempt = 0;; attempt++) {
    const r = await run([
      "ip",
      "netns",
      "exec",
      ns.client,
      "socat",
      "-t",
      "5",
      "-",
      `OPENSSL:${host}:${port},verify=0`,
    ], 10_000);
    if (r.stdout.includes("peer=") || attempt >= 20) return r.stdout + r.stderr;
    await sleep(100);
  }
}

async function transparentConfig(port: number, extra: string): Promise<string> {
  const pki = await makePki();
  return GLOBALS + `[t]\naccept = ${port}\ncert = ${pki.serverEc.cert}\n` +
    `key = ${pki.serverEc.key}\n${extra}`;
}

e2e("transparent = source: the backend sees the client's address", {
  timeoutMs: 40_000,
}, async (scope) => {
  const ns = await makeNamespaces(scope);
  if (!ns) return;
  const [port, backendPort] = freePorts(2);
  peerReporter(ns, backendPort);
  const proxy = await proxyIn(
    ns,
    await transparentConfig(port, `connect = 10.77.1.2:${backendPort}\ntransparent = source\n`),
  );
  const answer = await clientIn(ns, "10.77.0.1", port);
  assertMatch(answer, /peer=10\.77\.0\.2\b/);
  await proxy.waitForLog(/IP_TRANSPARENT socket option set/);
  await proxy.waitForLog(/connected remote server from 10\.77\.0\.2:\d+/);
  await proxy.stop();
});

e2e("transparent = destination: a redirected connection goes where the client meant", {
  timeoutMs: 40_000,
}, async (scope) => {
  const ns = await makeNamespaces(scope);
  if (!ns) return;
  const [port, backendPort] = freePorts(2);
  peerReporter(ns, backendPort);
  await sh(
    `ip netns exec ${ns.proxy} iptables -t nat -A PREROUTING -p tcp -d 10.77.1.2 ` +
      `--dport ${backendPort} -j REDIRECT --to-ports ${port}`,
  );
  const proxy = await proxyIn(ns, await transparentConfig(port, "transparent = destination\n"));
  // The client connects to the backend itself; the proxy's namespace redirects it to the proxy.
  const answer = await clientIn(ns, "10.77.1.2", backendPort);
  // The backend sees the proxy (destination only), and the proxy connected the original target.
  assertMatch(answer, /peer=10\.77\.1\.1\b/);
  await proxy.waitForLog(new RegExp(`s_connect: connected 10\\.77\\.1\\.2:${backendPort}`));
  await proxy.stop();
});
