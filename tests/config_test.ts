import assert from "node:assert/strict";
import { formatAddress } from "../lib/config/address.ts";
import {
  type ConfigEnv,
  ConfigError,
  loadConfig,
  parseConfigText,
  systemEnv,
} from "../lib/config/parser.ts";
import { findOption, OPTIONS } from "../lib/config/options.ts";
import {
  helpLines,
  optionsLines,
  optionsMarkdown,
  optionsText,
  socketsLines,
  versionDefaultsLines,
} from "../lib/config/reference.ts";
import type { Configuration } from "../lib/config/types.ts";

const CONF = "/etc/stunnel/test.conf";

/** An in-memory machine: `files` maps absolute paths to contents; directories are implied. */
function memoryEnv(files: Record<string, string> = {}): ConfigEnv {
  const parent = (path: string) => path.slice(0, path.lastIndexOf("/"));
  const notFound = () => new Deno.errors.NotFound("No such file or directory (os error 2)");
  return {
    readFile(path) {
      if (!(path in files)) throw notFound();
      return files[path];
    },
    readDir(path) {
      const names = Object.keys(files).filter((f) => parent(f) === path);
      if (names.length === 0) throw notFound();
      return names.map((f) => f.slice(path.length + 1));
    },
    isFile: (path) => path in files,
    unreadable: (path) => path in files ? undefined : "No such file or directory",
    userExists: (name) => name === "nobody",
    groupExists: (name) => name === "nogroup",
    tcpService: (name) => ({ https: 443, imaps: 993 } as Record<string, number>)[name],
    resolveHost: systemEnv().resolveHost,
    libwrapMissing: systemEnv().libwrapMissing,
    readPskSecrets: systemEnv().readPskSecrets,
  };
}

const PEM = { "/certs/server.pem": "cert+key", "/certs/server.key": "key" };

function parse(text: string, files: Record<string, string> = PEM): Configuration {
  return parseConfigText(text, CONF, memoryEnv(files));
}

/** Asserts the exact stunnel-style message (and thereby file, line and option). */
function assertConfigError(text: string, message: string, files?: Record<string, string>) {
  assert.throws(() => parse(text, files), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `not a ConfigError: ${e}`);
    assert.equal(e.message, message);
    return true;
  });
}

const SERVER = "[s]\naccept = 4433\nconnect = 8080\ncert = /certs/server.pem\n";
const CLIENT = "[c]\nclient = yes\naccept = 127.0.0.1:8443\nconnect = example.com:443\n";

// ---------------------------------------------------------------- the table

Deno.test("table: every option of the manual, plus CAengine, exactly once", () => {
  const manual = [
    "chroot compression debug EGD engine engineCtrl engineDefault fips foreground iconActive",
    "iconError iconIdle log output pid RNDbytes RNDfile RNDoverwrite service syslog taskbar",
    "accept CApath CAfile cert checkEmail checkHost checkIP ciphers ciphersuites client config",
    "connect CRLpath CRLfile curves logId delay engineId engineNum exec execArgs failover ident",
    "include key libwrap local OCSP OCSPaia OCSPflag OCSPnonce options protocol",
    "protocolAuthentication protocolDomain protocolHeader protocolHost protocolPassword",
    "protocolUsername PSKidentity PSKsecrets pty redirect renegotiation reset retry",
    "securityLevel requireCert setgid setuid sessionCacheSize sessionCacheTimeout sessionResume",
    "sessiond sni socket sslVersion sslVersionMax sslVersionMin stack ticketKeySecret",
    "ticketMacSecret TIMEOUTbusy TIMEOUTclose TIMEOUTconnect TIMEOUTidle transparent verify",
    "verifyChain verifyPeer",
  ].join(" ").split(" ");
  assert.equal(new Set(manual).size, 91);
  const names = OPTIONS.map((o) => o.name);
  assert.equal(new Set(names).size, names.length);
  // Extensions beyond stunnel (README: "Operations beyond stunnel", "TLS engines").
  const extensions = [
    "alpn",
    "logFormat",
    "proxyVersion",
    "tlsEngine",
    "libssl",
    "libcrypto",
    "metrics",
    "watchFiles",
  ];
  assert.deepEqual([...names].sort(), [...manual, "CAengine", ...extensions].sort());
});

Deno.test("table: names are matched case-insensitively, with stunnel's aliases", () => {
  assert.equal(findOption("timeoutIDLE")?.name, "TIMEOUTidle");
  assert.equal(findOption("session")?.name, "sessionCacheTimeout");
  assert.equal(findOption("nosuch"), undefined);
});

Deno.test("table: repeatable options are exactly stunnel's list ones", () => {
  const repeatable = OPTIONS.filter((o) => o.repeat).map((o) => o.name).sort();
  assert.deepEqual(
    repeatable,
    [
      "accept",
      "CAengine",
      "checkEmail",
      "checkHost",
      "checkIP",
      "config",
      "connect",
      "engineCtrl",
      "OCSPflag",
      "options",
      "protocolHeader",
      "sni",
      "socket",
    ].sort(),
  );
});

// ---------------------------------------------------------------- bad configurations

Deno.test("error: unknown option", () => {
  assertConfigError(
    `${SERVER}bogus = 1`,
    `${CONF}:5: "bogus = 1": Specified option name is not valid here`,
  );
});

Deno.test("error: global-only option inside a section", () => {
  assertConfigError(
    `${SERVER}  chroot = /var/empty`,
    `${CONF}:5: "  chroot = /var/empty": Specified option name is not valid here`,
  );
});

Deno.test("error: Windows GUI options are unknown names, as for stunnel on Unix", () => {
  for (const name of ["iconActive", "iconError", "iconIdle", "taskbar"]) {
    assertConfigError(
      `${name} = x`,
      `${CONF}:1: "${name} = x": Specified option name is not valid here`,
    );
  }
});

Deno.test("error: missing '='", () => {
  assertConfigError(`${SERVER}[oops`, `${CONF}:5: "[oops": No '=' found`);
});

Deno.test("error: bad value of each value type, in stunnel's words", () => {
  const cases: [string, string][] = [
    ["client = maybe", "The argument needs to be either 'yes' or 'no'"],
    ["client =", "The argument needs to be either 'yes' or 'no'"],
    ["TIMEOUTidle = x", "Illegal idle timeout"],
    ["TIMEOUTbusy = 5s", "Illegal busy timeout"],
    ["TIMEOUTclose = -1", "Illegal close timeout"],
    ["TIMEOUTconnect = ", "Illegal connect timeout"],
    ["debug = 8", "Illegal debug level"],
    ["debug = loud", "Illegal debug level"],
    ["debug = nosuch.info", "Illegal syslog facility"],
    ["failover = random", "The argument needs to be either 'rr' or 'prio'"],
    ["foreground = maybe", "The argument needs to be either 'yes', 'quiet' or 'no'"],
    ["log = rotate", "The argument needs to be either 'append' or 'overwrite'"],
    ["logId = random", "Invalid connection identifier type"],
    ["securityLevel = 6", "Illegal security level"],
    ["stack = big", "Illegal thread stack size"],
    ["sslVersion = SSLv2", "Invalid protocol version"],
    ["sslVersionMin = TLSv9", "Invalid protocol version"],
    ["options = NO_SUCH", "Illegal TLS option"],
    ["options = -NO_SUCH", "Illegal TLS option"],
    ["setuid = nosuchuser", "Illegal UID"],
    ["setgid = nosuchgroup", "Illegal GID"],
    ["compression = lzma", "Specified compression type is not available"],
    [
      "compression = zlib",
      "Configured compression is unsupported: this libssl has no zlib support",
    ],
    ["accept = nosuchservice", 'Unknown TCP service "nosuchservice"'],
    ["accept = 65536", "Port number out of range (1..65535): 65536"],
    ["connect = :80", "Empty host name"],
    ["verify = 5", "Bad verify level"],
    ["transparent = maybe", "Selected transparent proxy mode is not available"],
    ["socket = x:SO_KEEPALIVE=yes", "Illegal socket option"],
    ["OCSPflag = NOPE", "Illegal OCSP flag"],
    // The reason stunnel gives on the line; its explanation is a line of its own before it.
    ["ticketKeySecret = 00ff", "Failed to read ticketKeySecret"],
  ];
  for (const [line, reason] of cases) {
    assertConfigError(`foreground = yes\n${line}\n${SERVER}`, `${CONF}:2: "${line}": ${reason}`);
  }
});

Deno.test("error: debug facility is only accepted in the global section", () => {
  assertConfigError(
    `${SERVER}debug = daemon.info`,
    `${CONF}:5: "debug = daemon.info": Illegal debug level`,
  );
});

Deno.test("error: unreadable certificate or key names file, line and option", () => {
  assertConfigError(
    "[s]\naccept = 4433\nconnect = 8080\ncert = /nope",
    `${CONF}:4: "cert = /nope": cannot read /nope: No such file or directory`,
  );
  assertConfigError(
    `${SERVER}key=/nope.key`,
    `${CONF}:5: "key=/nope.key": cannot read /nope.key: No such file or directory`,
  );
});

Deno.test("error: a service needs two endpoints", () => {
  assertConfigError(
    "[c]\nclient = yes\naccept = 1234",
    "Service [c]: Each service must define two endpoints",
  );
  assertConfigError(
    "[c]\nclient = yes\nconnect = 1234",
    "Service [c]: Each service must define two endpoints",
  );
});

Deno.test("error: a TLS server needs a certificate", () => {
  assertConfigError("[s]\naccept = 1\nconnect = 2", "Service [s]: TLS server needs a certificate");
  assertConfigError("connect = 2", "Inetd mode: TLS server needs a certificate");
});

Deno.test("error: the first failing section is reported", () => {
  assertConfigError(
    `${CLIENT}[bad]\nclient = yes\naccept = 1\n${SERVER}`,
    "Service [bad]: Each service must define two endpoints",
  );
});

Deno.test("error: duplicate service name", () => {
  assertConfigError(
    `${SERVER}[other]\nclient=yes\naccept=1\nconnect=2\n[s]\n`,
    `${CONF}:9: duplicate service name [s]`,
  );
});

Deno.test("error: include of a missing directory", () => {
  assert.throws(
    () => parse(`include = /nowhere\n${SERVER}`),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.message, `${CONF}:1: "include = /nowhere": Failed to include directory`);
      assert.deepEqual(e.lines, ["scandir: No such file or directory (2)", e.message]);
      return true;
    },
  );
});

Deno.test("error: an error in an included file names that file and line", () => {
  const files = { ...PEM, "/inc/01.conf": "client = yes\n", "/inc/02.conf": "\n\nbogus = 1\n" };
  assert.throws(
    () => parse(`include = /inc\n${CLIENT}`, files),
    (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(
        e.message,
        `/inc/02.conf:3: "bogus = 1": Specified option name is not valid here`,
      );
      assert.deepEqual(e.where, { file: "/inc/02.conf", line: 3 });
      assert.equal(e.lines.at(-1), `${CONF}:1: "include = /inc": Failed to include a file`);
      return true;
    },
  );
});

Deno.test("error: a bad yes/no value of libwrap", () => {
  // (No option is "not supported yet" any more: libwrap and pty were the last examples.)
  assertConfigError(
    `${SERVER}libwrap = maybe`,
    `${CONF}:5: "libwrap = maybe": ${"The argument needs to be either 'yes' or 'no'"}`,
  );
});

/** An SNI secondary service of [s] (after SERVER): no accept, its own connect and cert. */
const VIRTUAL = "[v]\nconnect = 8081\ncert = /certs/server.pem\n";

Deno.test("server-mode sni: a secondary service of an earlier section; the last sni wins", () => {
  const config = parse(`${SERVER}${VIRTUAL}sni = s:a.example\nsni = s:*.example.com`);
  const [s, v] = config.services;
  assert.equal(s.sniVirtual, undefined);
  assert.deepEqual(v.sniVirtual, { master: "s", pattern: "*.example.com" });
  assert.deepEqual(v.sni, ["s:*.example.com"]);
  // As stunnel: renegotiations of a secondary service never resume a session.
  assert.ok(v.options.includes("NO_SESSION_RESUMPTION_ON_RENEGOTIATION"));
  assert.ok(!s.options.includes("NO_SESSION_RESUMPTION_ON_RENEGOTIATION"));
});

Deno.test("error: server-mode sni names an earlier server section; MASTER form not in client", () => {
  const at = (line: number, value: string) => `Service [v]: ${CONF}:${line}: "sni = ${value}": `;
  assertConfigError(
    `${SERVER}${VIRTUAL}sni = x:a.example`,
    `${at(8, "x:a.example")}SNI section name not found`,
  );
  assertConfigError(
    `${VIRTUAL}sni = s:a.example\n${SERVER}`,
    `${at(4, "s:a.example")}SNI section name not found`,
  );
  assertConfigError(
    `${CLIENT}${VIRTUAL}sni = c:a.example`,
    `${at(8, "c:a.example")}SNI primary service is a TLS client`,
  );
  assertConfigError(
    `${SERVER}${VIRTUAL}sni = a.example`,
    `${at(8, "a.example")}Invalid SNI parameter format`,
  );
  assertConfigError(
    `${SERVER}${VIRTUAL}accept = 4434\nsni = s:a.example`,
    `Service [v]: Each service must define two endpoints: ${CONF}:8: "accept" in an SNI ` +
      "secondary service (its connections come from [s])",
  );
  assertConfigError(
    `${CLIENT}sni = s:www.example.com`,
    `Service [c]: ${CONF}:5: "sni = s:www.example.com": SERVICE:PATTERN is the server-mode ` +
      'form of "sni" (SNI secondary services are TLS servers)',
  );
});

Deno.test("error: inetd mode needs exactly one endpoint and no accept", () => {
  assertConfigError("client = yes", "Inetd mode: Inetd mode must define one endpoint");
  assertConfigError(
    "client = yes\naccept = 1\nconnect = 2",
    "Inetd mode: 'accept' option is only allowed in a [section]",
  );
});

// ---------------------------------------------------------------- good configurations

Deno.test("defaults are stunnel 5.68's", () => {
  const config = parse(SERVER);
  assert.equal(config.inetd, false);
  assert.equal(config.source, CONF);
  const g = config.global;
  assert.equal(g.debugFacility, "daemon");
  assert.equal(g.debugLevel, 5);
  assert.equal(g.foreground, "no");
  assert.equal(g.syslog, true);
  assert.equal(g.log, "append");
  assert.equal(g.pid, "");
  assert.equal(g.service, "stunnel");
  assert.equal(g.fips, false);
  const [s] = config.services;
  assert.equal(s.name, "s");
  assert.equal(s.client, false);
  assert.deepEqual(s.accept, [{ kind: "tcp", host: "0.0.0.0", port: 4433 }]);
  assert.deepEqual(s.connect, [{ kind: "tcp", host: "localhost", port: 8080 }]);
  assert.equal(s.key, "/certs/server.pem");
  assert.equal(s.ciphers, "HIGH:!aNULL:!SSLv2:!DH:!kDHEPSK");
  assert.equal(
    s.ciphersuites,
    "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
  );
  assert.equal(s.curves, "X25519:P-256:X448:P-521:P-384");
  assert.equal(s.debugLevel, 5);
  assert.equal(s.failover, "prio");
  assert.equal(s.logId, "sequential");
  assert.deepEqual(s.options, []);
  assert.equal(s.securityLevel, 2);
  assert.equal(s.sessionCacheSize, 1000);
  assert.equal(s.sessionCacheTimeout, 300);
  assert.equal(s.sessionResume, true);
  assert.equal(s.renegotiation, true);
  assert.equal(s.reset, true);
  assert.equal(s.sslVersionMin, "TLSv1");
  assert.equal(s.sslVersionMax, undefined);
  assert.equal(s.stack, 65536);
  assert.deepEqual(
    [s.TIMEOUTbusy, s.TIMEOUTclose, s.TIMEOUTconnect, s.TIMEOUTidle],
    [300, 60, 10, 43200],
  );
  assert.deepEqual(s.where.cert, { file: CONF, line: 4 });
});

Deno.test("grammar: comments, blank lines, indentation, BOM, CRLF, case, spacing", () => {
  const text = "\uFEFF; comment\r\n  # another\r\n\r\n  FOREGROUND   =   yes  \r\n" +
    "[ spaced ]\r\n\tclient=YES\r\naccept=1\r\nconnect = 2 \r\n";
  const config = parse(text);
  assert.equal(config.global.foreground, "yes");
  assert.equal(config.services[0].name, " spaced ");
  assert.equal(config.services[0].client, true);
  assert.deepEqual(config.files, [{ path: CONF, utf8Bom: true }]);
  assert.deepEqual(config.global.where.foreground, { file: CONF, line: 4 });
});

Deno.test("grammar: the raw line in messages keeps its BOM and whitespace, not the CR", () => {
  assertConfigError("\uFEFF  bad\r\n", `${CONF}:1: "\uFEFF  bad": No '=' found`);
});

Deno.test("service-level options in the global section are defaults for every service", () => {
  const config = parse(
    "client = yes\nTIMEOUTidle = 60\nconnect = backup:1\nsni = global.example\n" +
      "[a]\naccept = 1\n[b]\naccept = 2\nTIMEOUTidle = 5\nconnect = 3\n",
  );
  const [a, b] = config.services;
  assert.equal(a.client && b.client, true);
  assert.equal(a.TIMEOUTidle, 60);
  assert.equal(b.TIMEOUTidle, 5);
  assert.deepEqual(a.connect.map(formatAddress), ["backup:1"]);
  // Repeated options add to the inherited values.
  assert.deepEqual(b.connect.map(formatAddress), ["backup:1", "localhost:3"]);
  assert.deepEqual(a.sni, ["global.example"]);
  assert.deepEqual(a.where.TIMEOUTidle, { file: CONF, line: 2 });
  assert.deepEqual(b.where.TIMEOUTidle, { file: CONF, line: 9 });
});

Deno.test("repeated options accumulate; single ones keep the last value", () => {
  const config = parse(
    `${CLIENT}connect = 2\nconnect = [::1]:3\noptions = NO_TLSv1\noptions = -no_sslv3\n` +
      "TIMEOUTbusy = 1\nTIMEOUTbusy = 2\nsni = a.example\nsni = b.example\n",
  );
  const [c] = config.services;
  assert.deepEqual(c.connect.map(formatAddress), ["example.com:443", "localhost:2", "::1:3"]);
  assert.deepEqual(c.options, ["NO_TLSv1", "-NO_SSLv3"]);
  assert.equal(c.TIMEOUTbusy, 2);
  assert.deepEqual(c.sni, ["b.example"]);
});

Deno.test("options with side effects: debug, sslVersion, delay, key, setuid, service", () => {
  const config = parse(
    "debug = LOCAL3.info\nsetuid = nobody\nsetgid = 65534\nservice = mytunnel\n" +
      `${CLIENT}debug = 7\nsslVersion = tlsv1.2\ndelay = yes\nfailover = rr\n` +
      "cert = /certs/server.pem\n",
  );
  const g = config.global;
  assert.equal(g.debugFacility, "local3");
  assert.equal(g.debugLevel, 6);
  assert.equal(g.setuid, "nobody");
  assert.equal(g.setgid, "65534");
  assert.equal(g.service, "mytunnel");
  const [c] = config.services;
  assert.equal(c.debugLevel, 7);
  assert.equal(c.setuid, "nobody");
  assert.equal(c.sslVersionMin, "TLSv1.2");
  assert.equal(c.sslVersionMax, "TLSv1.2");
  assert.equal(c.failover, "prio");
  assert.equal(c.key, "/certs/server.pem");
  assert.deepEqual(c.where.key, c.where.cert);
});

Deno.test("include: files in ascending name order, at the point of the line", () => {
  const files = {
    ...PEM,
    "/inc/b.conf": "[b]\nclient = yes\naccept = 2\nconnect = 3\n",
    "/inc/a.conf": "TIMEOUTidle = 7\n",
    "/inc/10.conf": "client = yes\n",
    "/inc/sub/ignored.conf": "bogus",
  };
  const config = parse(`include = /inc\n[z]\naccept = 4\nconnect = 5\n`, files);
  assert.deepEqual(config.services.map((s) => s.name), ["b", "z"]);
  assert.equal(config.services[0].TIMEOUTidle, 7);
  assert.equal(config.services[1].client, true);
  assert.deepEqual(config.files?.map((f) => f.path), [
    CONF,
    "/inc/10.conf",
    "/inc/a.conf",
    "/inc/b.conf",
  ]);
  assert.deepEqual(config.services[0].where.client, { file: "/inc/b.conf", line: 2 });
});

Deno.test("inetd mode: no section, one service named '' from the global section", () => {
  const config = parse("client = yes\nconnect = example.com:443\nTIMEOUTclose = 0\n");
  assert.equal(config.inetd, true);
  assert.equal(config.services.length, 1);
  const [s] = config.services;
  assert.equal(s.name, "");
  assert.deepEqual(s.accept, []);
  assert.deepEqual(s.connect, [{ kind: "tcp", host: "example.com", port: 443 }]);
  assert.equal(s.TIMEOUTclose, 0);
});

Deno.test("loadConfig resolves a relative path and reads real files", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/cert.pem`, "x");
    await Deno.mkdir(`${dir}/conf.d`);
    await Deno.writeTextFile(`${dir}/conf.d/01.conf`, "[x]\nclient=yes\naccept=1\nconnect=2\n");
    await Deno.writeTextFile(
      `${dir}/main.conf`,
      `cert = ${dir}/cert.pem\ninclude = ${dir}/conf.d\n`,
    );
    const cwd = Deno.cwd();
    Deno.chdir(dir);
    try {
      const config = await loadConfig("main.conf");
      assert.equal(config.source, await Deno.realPath(`${dir}/main.conf`));
      assert.equal(config.services[0].name, "x");
      assert.equal(config.services[0].key, `${dir}/cert.pem`);
    } finally {
      Deno.chdir(cwd);
    }
    await assert.rejects(loadConfig(`${dir}/missing.conf`), (e: unknown) => {
      assert.ok(e instanceof ConfigError);
      assert.equal(e.message, `Invalid configuration file name "${dir}/missing.conf"`);
      assert.equal(e.lines[1], "realpath: No such file or directory (2)");
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- reference texts

Deno.test("reference: -help layout is stunnel's", () => {
  const lines = helpLines();
  assert.deepEqual(lines.slice(0, 3), [
    " ",
    "Global options:",
    "chroot                 = directory to chroot stunnel process",
  ]);
  assert.ok(lines.includes(" "));
  assert.ok(lines.includes("Service-level options:"));
  const protocol = lines.indexOf(
    "protocol               = protocol to negotiate before TLS initialization",
  );
  assert.deepEqual(lines.slice(protocol + 1, protocol + 4), [
    "                         currently supported: cifs, connect, imap,",
    "                             nntp, pgsql, pop3, proxy, smtp, socks",
    "protocolAuthentication = authentication type for protocol negotiations",
  ]);
  assert.equal(lines.at(-1), "verifyPeer             = yes|no verify peer certificate");
  assert.ok(!lines.some((line) => /^(fips|taskbar|icon)/.test(line)));
  // stunnel's 14 global options and the extensions logFormat, metrics and watchFiles; its 73
  // service options and the extensions alpn and proxyVersion.
  assert.equal(lines.length, 2 + 14 + 3 + 2 + 73 + 2 + 3);
});

Deno.test("reference: -version defaults, -options and -sockets", () => {
  assert.deepEqual(versionDefaultsLines().slice(0, 6), [
    " ",
    "Global options:",
    "RNDbytes               = 1024",
    "RNDfile                = /dev/urandom",
    "RNDoverwrite           = yes",
    " ",
  ]);
  assert.ok(versionDefaultsLines().includes("TIMEOUTidle            = 43200 seconds"));
  assert.equal(versionDefaultsLines().at(-1), "verify                 = none");
  assert.equal(
    optionsText(["ALL", "NO_TICKET"]),
    " \nSupported TLS options:\noptions = ALL\noptions = NO_TICKET\n",
  );
  assert.equal(optionsLines().length, 2 + 53);
  const sockets = socketsLines();
  assert.equal(sockets[2], "    Option Name         |  Accept  |   Local  |  Remote  |OS default");
  assert.ok(
    sockets.includes("    SO_REUSEADDR        |       yes|    --    |    --    |        no"),
  );
  assert.ok(
    sockets.includes("    SO_BINDTODEVICE     |    --    |    --    |    --    |          "),
  );
});

Deno.test("reference: the Markdown reference lists every option with its status", () => {
  const markdown = optionsMarkdown();
  for (const option of OPTIONS) assert.ok(markdown.includes(`| \`${option.name}\` |`), option.name);
  assert.match(markdown, /\| `libwrap` .*\| supported \|/);
  assert.match(markdown, /\| `iconIdle` .*\| refused: /);
  assert.match(markdown, /\| `stack` .*has no effect/);
});
