/**
 * Real protocol servers from Debian for tests/e2e_realpeers_test.ts: PostgreSQL, Dovecot
 * (IMAP, POP3), slapd and Postfix, each in a throwaway directory on loopback high ports,
 * started in the foreground by the running test and stopped with its scope.
 */

import { waitForPort } from "./harness/net.ts";
import type { Pki } from "./harness/pki.ts";
import { run, type Scope, spawn, type Spawned } from "./harness/process.ts";

export const PG_BIN = "/usr/lib/postgresql/15/bin";

/** A server started for one test, with its captured output (stdout+stderr). */
export interface RealServer {
  process: Spawned;
  dir: string;
}

/** `cmd` must succeed within `ms`; throws with its output otherwise. */
export async function mustRun(cmd: string[], ms = 30_000): Promise<string> {
  const r = await run(cmd, ms);
  if (r.code !== 0) {
    throw new Error(`${cmd.join(" ")} failed (${r.code}):\n${r.stderr}${r.stdout}`);
  }
  return r.stdout;
}

/** A temp dir of the scope that other users may traverse (servers drop root). */
async function openDir(scope: Scope, prefix: string): Promise<string> {
  const dir = await scope.tempDir(prefix);
  await Deno.chmod(dir, 0o755);
  return dir;
}

/** Numeric uid and gid of a system user (from /etc/passwd). */
async function userIds(user: string): Promise<{ uid: number; gid: number }> {
  const line = (await Deno.readTextFile("/etc/passwd")).split("\n")
    .find((l) => l.startsWith(`${user}:`));
  if (!line) throw new Error(`no user ${user} in /etc/passwd (is its package installed?)`);
  const f = line.split(":");
  return { uid: Number(f[2]), gid: Number(f[3]) };
}

/** Copies the server certificate and key of the PKI into `dir`, owned by `user`, key 0600. */
async function copyServerCert(
  pki: Pki,
  dir: string,
  user?: string,
): Promise<{ cert: string; key: string }> {
  const cert = `${dir}/server.pem`, key = `${dir}/server.key`;
  await Deno.copyFile(pki.serverEc.cert, cert);
  await Deno.copyFile(pki.serverEc.key, key);
  await Deno.chmod(cert, 0o644);
  await Deno.chmod(key, 0o600);
  if (user) {
    const { uid, gid } = await userIds(user);
    await Deno.chown(cert, uid, gid);
    await Deno.chown(key, uid, gid);
  }
  return { cert, key };
}

/** Waits for `port` to listen; throws with the server's output if it exits first. */
async function waitUp(p: Spawned, port: number, what: string, ms = 20_000): Promise<void> {
  const up = waitForPort(port, ms).then(() => "up" as const);
  up.catch(() => {}); // when the server exits first, this one is not awaited
  const first = await Promise.race([up, p.exited.then(() => "exited" as const)]);
  if (first === "exited") throw new Error(`${what} exited before listening:\n${p.output.text()}`);
}

// ------------------------------------------------------------------------------- PostgreSQL

/**
 * PostgreSQL 15 as the `postgres` user (it refuses root): a fresh cluster (trust
 * authentication) listening on 127.0.0.1:`port`, with TLS (the PKI's server certificate)
 * when `ssl` is set.
 */
export async function startPostgres(
  scope: Scope,
  pki: Pki,
  port: number,
  ssl: boolean,
): Promise<RealServer> {
  const dir = await openDir(scope, "e2e-pg-");
  const { uid, gid } = await userIds("postgres");
  await Deno.chown(dir, uid, gid);
  const { cert, key } = await copyServerCert(pki, dir, "postgres");
  await mustRun([
    "runuser",
    "-u",
    "postgres",
    "--",
    `${PG_BIN}/initdb`,
    "-D",
    `${dir}/data`,
    "-A",
    "trust",
    "-U",
    "postgres",
    "--no-sync",
  ]);
  const process = spawn([
    "runuser",
    "-u",
    "postgres",
    "--",
    `${PG_BIN}/postgres`,
    "-D",
    `${dir}/data`,
    "-p",
    String(port),
    "-k",
    dir,
    "-c",
    "listen_addresses=127.0.0.1",
    "-c",
    `ssl=${ssl ? "on" : "off"}`,
    "-c",
    `ssl_cert_file=${cert}`,
    "-c",
    `ssl_key_file=${key}`,
    "-c",
    "fsync=off",
  ], { stdin: false });
  await waitUp(process, port, "postgres");
  await process.waitForOutput(/ready to accept connections/, 20_000);
  return { process, dir };
}

/** psql with a libpq connection string; returns its stdout (unaligned, tuples only). */
export function psql(conninfo: string, sql: string, ms = 15_000) {
  return run(
    ["psql", conninfo, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
    ms,
    { env: { PGCONNECT_TIMEOUT: "10" } },
  );
}

// ------------------------------------------------------------------------------- Dovecot

export const MAIL_USER = "alice";
export const MAIL_PASS = "wonderland";
/** The one message in the user's INBOX. */
export const MAIL_BODY = "Subject: real peers\r\nFrom: bob@example.org\r\n\r\n" +
  "Delivered through Dovecot.\r\n";

/**
 * Dovecot (run as root, login processes as dovenull, mail as nobody) with IMAP on `imapPort`
 * and POP3 on `pop3Port`, one passwd-file user with one message; STARTTLS/STLS offered with
 * the PKI's certificate when `ssl` is set. Its log is `${dir}/dovecot.log`.
 */
export async function startDovecot(
  scope: Scope,
  pki: Pki,
  imapPort: number,
  pop3Port: number,
  ssl: boolean,
): Promise<RealServer & { log(): Promise<string> }> {
  const dir = await openDir(scope, "e2e-dovecot-");
  const { cert, key } = await copyServerCert(pki, dir);
  const nobody = await userIds("nobody");
  const maildir = `${dir}/mail/${MAIL_USER}`;
  for (const sub of ["new", "cur", "tmp"]) {
    await Deno.mkdir(`${maildir}/${sub}`, { recursive: true });
  }
  await Deno.writeTextFile(`${maildir}/new/1700000000.M1P1.e2e`, MAIL_BODY);
  await mustRun(["chown", "-R", `${nobody.uid}:${nobody.gid}`, `${dir}/mail`]);
  await Deno.writeTextFile(
    `${dir}/passwd`,
    `${MAIL_USER}:{PLAIN}${MAIL_PASS}:${nobody.uid}:${nobody.gid}::${dir}/mail/${MAIL_USER}::\n`,
  );
  await Deno.mkdir(`${dir}/run`);
  await Deno.mkdir(`${dir}/state`);
  const conf = `${dir}/dovecot.conf`;
  await Deno.writeTextFile(
    conf,
    `base_dir = ${dir}/run
state_dir = ${dir}/state
instance_name = e2e-${imapPort}
log_path = ${dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = ${ssl ? "yes" : "no"}
${ssl ? `ssl_cert = <${cert}\nssl_key = <${key}\n` : ""}default_internal_user = dovecot
default_login_user = dovenull
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:${dir}/mail/%u
first_valid_uid = 1
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${dir}/passwd
}
userdb {
  driver = passwd-file
  args = username_format=%u ${dir}/passwd
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = ${imapPort}
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = ${pop3Port}
  }
  inet_listener pop3s {
    port = 0
  }
}
`,
  );
  const process = spawn(["dovecot", "-F", "-c", conf], { stdin: false });
  await waitUp(process, imapPort, "dovecot");
  await waitForPort(pop3Port);
  const log = async () => {
    try {
      return await Deno.readTextFile(`${dir}/dovecot.log`);
    } catch {
      return "";
    }
  };
  return { process, dir, log };
}

// ------------------------------------------------------------------------------- slapd

/**
 * slapd on ldap://127.0.0.1:`port`/ with StartTLS (the PKI's certificate) and no database:
 * the root DSE only. With `requireTls`, every operation but StartTLS needs a TLS layer
 * (`security tls=1`), so a plain client is refused with "Confidentiality required".
 */
export async function startSlapd(
  scope: Scope,
  pki: Pki,
  port: number,
  requireTls: boolean,
): Promise<RealServer> {
  const dir = await openDir(scope, "e2e-slapd-");
  const { cert, key } = await copyServerCert(pki, dir);
  const conf = `${dir}/slapd.conf`;
  await Deno.writeTextFile(
    conf,
    `pidfile ${dir}/slapd.pid
argsfile ${dir}/slapd.args
TLSCertificateFile ${cert}
TLSCertificateKeyFile ${key}
${requireTls ? "security tls=1\n" : ""}`,
  );
  const process = spawn([
    "slapd",
    "-f",
    conf,
    "-h",
    `ldap://127.0.0.1:${port}/`,
    "-d",
    "stats",
  ], { stdin: false });
  await waitUp(process, port, "slapd");
  return { process, dir };
}

// ------------------------------------------------------------------------------- Postfix

/** The services of a minimal Postfix, nothing chrooted; `smtpd` on 127.0.0.1:PORT. */
const POSTFIX_MASTER_CF = `127.0.0.1:@PORT@ inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
`;

/**
 * Postfix with its own config, queue and data directories, smtpd on 127.0.0.1:`port`, relaying
 * for 127.0.0.0/8 into the discard transport (mail is accepted, then dropped). With `tls` it
 * offers STARTTLS with the PKI's certificate and requires it (`smtpd_tls_security_level =
 * encrypt`: plaintext MAIL gets 530); without, it has no TLS at all. Its log is `${dir}/maillog`.
 * The master runs as session leader (setsid) so that SIGTERM stops all of its processes.
 */
export async function startPostfix(
  scope: Scope,
  pki: Pki,
  port: number,
  tls: boolean,
): Promise<RealServer & { log(): Promise<string> }> {
  const dir = await openDir(scope, "e2e-postfix-");
  const { cert, key } = await copyServerCert(pki, dir);
  const { uid, gid } = await userIds("postfix");
  await Deno.mkdir(`${dir}/queue`);
  await Deno.mkdir(`${dir}/data`);
  await Deno.chown(`${dir}/data`, uid, gid);
  await Deno.writeTextFile(`${dir}/master.cf`, POSTFIX_MASTER_CF.replace("@PORT@", String(port)));
  await Deno.writeTextFile(
    `${dir}/main.cf`,
    `compatibility_level = 3.6
queue_directory = ${dir}/queue
data_directory = ${dir}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = localhost
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
default_transport = discard
local_transport = discard
relay_transport = discard
alias_maps =
alias_database =
biff = no
maillog_file = ${dir}/maillog
maillog_file_prefixes = ${dir}
` +
      (tls
        ? `smtpd_tls_cert_file = ${cert}\nsmtpd_tls_key_file = ${key}\n` +
          "smtpd_tls_security_level = encrypt\nsmtpd_tls_loglevel = 1\n"
        : "smtpd_tls_security_level = none\n"),
  );
  // Creates the queue's subdirectories with their owners.
  await mustRun(["postfix", "-c", dir, "check"]);
  const process = spawn(["setsid", "/usr/lib/postfix/sbin/master", "-c", dir, "-d"], {
    stdin: false,
  });
  await waitUp(process, port, "postfix master");
  const log = async () => {
    try {
      return await Deno.readTextFile(`${dir}/maillog`);
    } catch {
      return "";
    }
  };
  return { process, dir, log };
}
