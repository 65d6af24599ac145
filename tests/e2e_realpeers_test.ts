/**
 * End-to-end: `protocol =` against REAL servers and clients from Debian, on loopback, each
 * server in a throwaway directory (tests/realpeers.ts): PostgreSQL with psql, Dovecot IMAP and
 * POP3 with curl, slapd with ldapsearch, Postfix with curl. Client mode: a plain client, the
 * proxy negotiates TLS with the server (STARTTLS, SSLRequest, LDAP StartTLS); server mode: a
 * client that asks for TLS, the proxy answers it and talks plain to the server.
 *
 * Run against the reference: PROXY_CMD=stunnel4 deno test -A tests/e2e_realpeers_test.ts
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { freePorts } from "./harness/net.ts";
import { makePki, type Pki } from "./harness/pki.ts";
import { e2e, run, type Scope } from "./harness/process.ts";
import { GLOBALS, startProxy } from "./harness/proxy.ts";
import { pollUntil } from "./harness/timing.ts";
import {
  MAIL_BODY,
  MAIL_PASS,
  MAIL_USER,
  psql,
  startDovecot,
  startPostfix,
  startPostgres,
  startSlapd,
} from "./realpeers.ts";

function serverConf(pki: Pki, accept: number, connect: number, extra: string): string {
  return GLOBALS +
    `[s]\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n${extra}`;
}

/** A client-mode service verifying the real server's certificate for the name localhost. */
function clientConf(pki: Pki, accept: number, connect: number, extra: string): string {
  return GLOBALS +
    `[c]\nclient = yes\naccept = 127.0.0.1:${accept}\nconnect = 127.0.0.1:${connect}\n` +
    `CAfile = ${pki.ca}\nverifyChain = yes\ncheckHost = localhost\n${extra}`;
}

const TIMEOUT = { timeoutMs: 45_000 };

// ------------------------------------------------------------------------------- PostgreSQL

const SSL_QUERY = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

e2e("pgsql client mode: psql (no TLS) -> proxy -> PostgreSQL with ssl = on", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [pgPort, port] = freePorts(2);
  await startPostgres(s, pki, pgPort, true);
  const proxy = await startProxy(clientConf(pki, port, pgPort, "protocol = pgsql\n"));
  const conninfo = `host=127.0.0.1 port=${port} user=postgres dbname=postgres sslmode=disable`;
  const ssl = await psql(conninfo, SSL_QUERY);
  assertEquals(ssl.code, 0, ssl.stderr);
  assertEquals(ssl.stdout.trim(), "t", "the server sees a TLS connection");
  const q = await psql(conninfo, "SELECT 6 * 7, current_user");
  assertEquals(q.stdout.trim(), "42|postgres", q.stderr);
  await proxy.waitForLog(/Certificate accepted at depth=0: CN=localhost/);
  // Directly, the same psql gets a plain connection: the TLS came from the proxy.
  const direct = await psql(conninfo.replace(`port=${port}`, `port=${pgPort}`), SSL_QUERY);
  assertEquals(direct.stdout.trim(), "f", direct.stderr);
});

e2e(
  "pgsql server mode: psql sslmode=verify-full -> proxy -> PostgreSQL with ssl = off",
  TIMEOUT,
  async (s) => {
    const pki = await makePki();
    const [pgPort, port] = freePorts(2);
    await startPostgres(s, pki, pgPort, false);
    const proxy = await startProxy(serverConf(pki, port, pgPort, "protocol = pgsql\n"));
    const conninfo = `host=localhost hostaddr=127.0.0.1 port=${port} user=postgres ` +
      `dbname=postgres sslmode=verify-full sslrootcert=${pki.ca} gssencmode=disable`;
    const q = await psql(conninfo, `SELECT 6 * 7, (${SSL_QUERY})`);
    assertEquals(q.code, 0, q.stderr);
    // TLS ends at the proxy: the server itself sees a plain connection.
    assertEquals(q.stdout.trim(), "42|f");
    await proxy.waitForLog(/SSLRequest received/);
    await proxy.waitForLog(/Connection closed: \d+ byte\(s\) sent to TLS/);
    // Without the proxy, the same psql is refused: this server has no TLS.
    const direct = await psql(conninfo.replace(`port=${port}`, `port=${pgPort}`), "SELECT 1");
    assert(direct.code !== 0, "ssl = off server must refuse sslmode=verify-full");
    assertMatch(direct.stderr, /does not support SSL/);
  },
);

// ------------------------------------------------------------------------------- Dovecot

/** curl on a mail URL (imap:// or pop3://) on localhost:port, resolved to 127.0.0.1. */
function curlMail(scheme: string, port: number, path: string, args: string[] = []) {
  return run(
    [
      "curl",
      "-sS",
      "--max-time",
      "15",
      "--resolve",
      `localhost:${port}:127.0.0.1`,
      ...args,
      `${scheme}://${MAIL_USER}:${MAIL_PASS}@localhost:${port}/${path}`,
    ],
    20_000,
  );
}

/** Waits for Dovecot's login line for the user over `proto`; returns it. */
async function dovecotLogin(log: () => Promise<string>, proto: string): Promise<string> {
  const re = new RegExp(`${proto}-login: (?:Info: )?Login: user=<${MAIL_USER}>.*`);
  let line = "";
  await pollUntil(
    async () => {
      line = (await log()).match(re)?.[0] ?? "";
      return line !== "";
    },
    10_000,
    `dovecot ${proto} login line`,
  );
  return line;
}

e2e("imap client mode: curl imap:// -> proxy -> Dovecot STARTTLS", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [imapPort, pop3Port, port] = freePorts(3);
  const dovecot = await startDovecot(s, pki, imapPort, pop3Port, true);
  const proxy = await startProxy(clientConf(pki, port, imapPort, "protocol = imap\n"));
  const r = await curlMail("imap", port, "INBOX;UID=1");
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, MAIL_BODY);
  // Dovecot marks a login inside TLS with ", TLS,".
  assertMatch(await dovecotLogin(dovecot.log, "imap"), /, TLS(,|$)/);
  await proxy.waitForLog(/Certificate accepted at depth=0: CN=localhost/);
});

e2e("imap server mode: curl --ssl-reqd imap:// -> proxy -> plain Dovecot", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [imapPort, pop3Port, port] = freePorts(3);
  const dovecot = await startDovecot(s, pki, imapPort, pop3Port, false);
  const proxy = await startProxy(serverConf(pki, port, imapPort, "protocol = imap\n"));
  const r = await curlMail("imap", port, "INBOX;UID=1", ["--ssl-reqd", "--cacert", pki.ca]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, MAIL_BODY);
  await proxy.waitForLog(/RFC 2595 detected/);
  // Dovecot itself has no TLS here: its login is a plain one.
  assertNotMatch(await dovecotLogin(dovecot.log, "imap"), /, TLS(,|$)/);
  // This Dovecot has no TLS: the same curl straight to it refuses to go on.
  const direct = await curlMail("imap", imapPort, "INBOX;UID=1", ["--ssl-reqd"]);
  assertEquals(direct.code, 64, `curl: ${direct.stderr}`); // CURLE_USE_SSL_FAILED
});

e2e("pop3 client mode: curl pop3:// -> proxy -> Dovecot STLS", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [imapPort, pop3Port, port] = freePorts(3);
  const dovecot = await startDovecot(s, pki, imapPort, pop3Port, true);
  const proxy = await startProxy(clientConf(pki, port, pop3Port, "protocol = pop3\n"));
  const r = await curlMail("pop3", port, "1");
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, MAIL_BODY);
  assertMatch(await dovecotLogin(dovecot.log, "pop3"), /, TLS(,|$)/);
  await proxy.waitForLog(/Certificate accepted at depth=0: CN=localhost/);
});

e2e("pop3 server mode: curl --ssl-reqd pop3:// -> proxy -> plain Dovecot", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [imapPort, pop3Port, port] = freePorts(3);
  const dovecot = await startDovecot(s, pki, imapPort, pop3Port, false);
  const proxy = await startProxy(serverConf(pki, port, pop3Port, "protocol = pop3\n"));
  const r = await curlMail("pop3", port, "1", ["--ssl-reqd", "--cacert", pki.ca]);
  assertEquals(r.code, 0, r.stderr);
  assertEquals(r.stdout, MAIL_BODY);
  assertNotMatch(await dovecotLogin(dovecot.log, "pop3"), /, TLS(,|$)/);
  await proxy.waitForLog(/Connection closed: \d+ byte\(s\) sent to TLS/);
  const direct = await curlMail("pop3", pop3Port, "1", ["--ssl-reqd"]);
  assertEquals(direct.code, 64, `curl: ${direct.stderr}`);
});

// ------------------------------------------------------------------------------- slapd

/** ldapsearch of the root DSE (anonymous simple bind) at 127.0.0.1:port. */
function rootDse(port: number) {
  return run(
    [
      "ldapsearch",
      "-x",
      "-LLL",
      "-o",
      "nettimeout=10",
      "-H",
      `ldap://127.0.0.1:${port}`,
      "-b",
      "",
      "-s",
      "base",
      "supportedExtension",
    ],
    20_000,
  );
}

e2e("ldap client mode: ldapsearch (no TLS) -> proxy -> slapd StartTLS", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [ldapPort, port] = freePorts(2);
  const slapd = await startSlapd(s, pki, ldapPort, true);
  // slapd requires TLS (`security tls=1`): plain LDAP straight to it is refused.
  const direct = await rootDse(ldapPort);
  assertEquals(direct.code, 13, `ldapsearch: ${direct.stdout}${direct.stderr}`);
  assertMatch(direct.stderr + direct.stdout, /Confidentiality required/);
  const proxy = await startProxy(clientConf(pki, port, ldapPort, "protocol = ldap\n"));
  const r = await rootDse(port);
  assertEquals(r.code, 0, `ldapsearch: ${r.stdout}${r.stderr}`);
  assertMatch(r.stdout, /supportedExtension: 1\.3\.6\.1\.4\.1\.1466\.20037/);
  await proxy.waitForLog(/LDAP Start TLS successfully negotiated/);
  await proxy.waitForLog(/Certificate accepted at depth=0: CN=localhost/);
  // slapd logged the StartTLS and a TLS layer (ssf) on a connection.
  await slapd.process.waitForOutput(/EXT oid=1\.3\.6\.1\.4\.1\.1466\.20037/);
  await slapd.process.waitForOutput(/TLS established tls_ssf=\d+/);
});

// ------------------------------------------------------------------------------- Postfix

const MESSAGE = "From: a@example.org\r\nTo: b@example.org\r\nSubject: real peers\r\n\r\nhello\r\n";

/** curl sending MESSAGE from a@ to b@example.org over SMTP at localhost:port. */
async function curlSmtp(s: Scope, port: number, args: string[] = []) {
  const file = `${await s.tempDir("e2e-smtp-")}/message.txt`;
  await Deno.writeTextFile(file, MESSAGE);
  return run(
    [
      "curl",
      "-sS",
      "--max-time",
      "15",
      "--resolve",
      `localhost:${port}:127.0.0.1`,
      "--mail-from",
      "a@example.org",
      "--mail-rcpt",
      "b@example.org",
      "-T",
      file,
      ...args,
      `smtp://localhost:${port}`,
    ],
    20_000,
  );
}

/** Waits for Postfix to log that the message to b@example.org was delivered (discarded). */
function postfixDelivered(log: () => Promise<string>): Promise<string> {
  let line = "";
  return pollUntil(
    async () => {
      line = (await log()).match(/to=<b@example\.org>.*status=sent.*/)?.[0] ?? "";
      return line !== "";
    },
    10_000,
    "postfix delivery line",
  ).then(() => line);
}

e2e("smtp client mode: curl smtp:// -> proxy -> Postfix STARTTLS", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [smtpPort, port] = freePorts(2);
  const postfix = await startPostfix(s, pki, smtpPort, true);
  // Postfix requires TLS (smtpd_tls_security_level = encrypt): plaintext MAIL gets 530.
  const direct = await curlSmtp(s, smtpPort);
  assertEquals(direct.code, 55, `curl: ${direct.stderr}`); // CURLE_SEND_ERROR: MAIL failed
  assertMatch(direct.stderr, /530/);
  const proxy = await startProxy(clientConf(pki, port, smtpPort, "protocol = smtp\n"));
  const r = await curlSmtp(s, port);
  assertEquals(r.code, 0, `curl: ${r.stderr}`);
  await postfixDelivered(postfix.log);
  assertMatch(await postfix.log(), /TLS connection established from localhost\[127\.0\.0\.1\]/);
  await proxy.waitForLog(/Certificate accepted at depth=0: CN=localhost/);
});

e2e("smtp server mode: curl --ssl-reqd smtp:// -> proxy -> plain Postfix", TIMEOUT, async (s) => {
  const pki = await makePki();
  const [smtpPort, port] = freePorts(2);
  const postfix = await startPostfix(s, pki, smtpPort, false);
  const proxy = await startProxy(serverConf(pki, port, smtpPort, "protocol = smtp\n"));
  const r = await curlSmtp(s, port, ["--ssl-reqd", "--cacert", pki.ca]);
  assertEquals(r.code, 0, `curl: ${r.stderr}`);
  await proxy.waitForLog(/RFC 2487 detected/);
  await postfixDelivered(postfix.log);
  assertNotMatch(await postfix.log(), /TLS connection established/);
  // This Postfix has no STARTTLS: curl --ssl-reqd straight to it refuses to send.
  const direct = await curlSmtp(s, smtpPort, ["--ssl-reqd"]);
  assertEquals(direct.code, 64, `curl: ${direct.stderr}`); // CURLE_USE_SSL_FAILED
});
