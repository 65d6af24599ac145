/**
 * End-to-end: `-check FILE` and `-check -fd N` (extension, like `nginx -t`): the configuration
 * is parsed and everything a start loads is loaded (certificates, keys, CAs, CRLs), then the
 * program exits 0 with `Configuration successful` or 1 with the errors; it binds no port,
 * does not fork, and writes no pid file or log file.
 */

import { assert, assertEquals, assertMatch, assertNotMatch } from "./harness/assert.ts";
import { PROXY } from "./harness/command.ts";
import { freePorts, isListening } from "./harness/net.ts";
import { makePki } from "./harness/pki.ts";
import { e2e, run } from "./harness/process.ts";
import { runProxy } from "./harness/proxy.ts";

const EXTRA = "-check is an extension of stunnel-deno";

/** A detached (foreground = no) server service with a pid file and a log file in `dir`. */
async function goodConfig(dir: string, port: number): Promise<string> {
  const pki = await makePki();
  return `foreground = no\npid = ${dir}/stunnel.pid\noutput = ${dir}/stunnel.log\n` +
    `syslog = no\n[svc]\naccept = 127.0.0.1:${port}\nconnect = 127.0.0.1:9\n` +
    `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\nCAfile = ${pki.ca}\n` +
    `CRLfile = ${pki.crl}\nverifyChain = yes\n`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

e2e("-check: a good configuration exits 0, binds nothing, writes nothing", {
  extra: EXTRA,
}, async (scope) => {
  const dir = await scope.tempDir("e2e-check-");
  const [port] = freePorts(1);
  await Deno.writeTextFile(`${dir}/good.conf`, await goodConfig(dir, port));
  const r = await runProxy(["-check", `${dir}/good.conf`]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /LOG5\[ui\]: Configuration successful$/m);
  assertNotMatch(r.stderr, /Binding|bound to|pid file/);
  assertEquals(await isListening(port), false);
  assertEquals(await exists(`${dir}/stunnel.pid`), false, "no pid file");
  assertEquals(await exists(`${dir}/stunnel.log`), false, "no log file");
});

e2e("-check: a port in use is no error (nothing is bound)", { extra: EXTRA }, async (scope) => {
  const dir = await scope.tempDir("e2e-check-");
  const [port] = freePorts(1);
  const holder = Deno.listen({ hostname: "127.0.0.1", port });
  scope.defer(() => holder.close());
  await Deno.writeTextFile(`${dir}/good.conf`, await goodConfig(dir, port));
  const r = await runProxy(["-check", `${dir}/good.conf`]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /Configuration successful/);
  // The real start on the same file does fail on that port: the check did not just skip it.
  const conf = (await goodConfig(dir, port)).replace("foreground = no", "foreground = yes");
  await Deno.writeTextFile(`${dir}/fg.conf`, conf);
  const start = await runProxy([`${dir}/fg.conf`]);
  assertEquals(start.code, 1);
  assertMatch(start.stderr, /Binding service \[svc\] failed/);
});

e2e("-check: a missing key file exits 1 naming file, line and option", {
  extra: EXTRA,
}, async (scope) => {
  const dir = await scope.tempDir("e2e-check-");
  const [port] = freePorts(1);
  const conf = (await goodConfig(dir, port)).replace(/^key = .*$/m, `key = ${dir}/missing.key`);
  await Deno.writeTextFile(`${dir}/bad.conf`, conf);
  const r = await runProxy(["-check", `${dir}/bad.conf`]);
  assertEquals(r.code, 1);
  assertMatch(r.stderr, new RegExp(`bad\\.conf:9: "key = ${dir}/missing\\.key": .*No such file`));
  assertMatch(r.stderr, /Configuration failed/);
  assertNotMatch(r.stderr, /Configuration successful/);
});

e2e("-check: a key that does not match the certificate is loaded and refused", {
  extra: EXTRA,
}, async (scope) => {
  const pki = await makePki();
  const dir = await scope.tempDir("e2e-check-");
  const [port] = freePorts(1);
  const conf = (await goodConfig(dir, port)).replace(/^key = .*$/m, `key = ${pki.serverRsa.key}`);
  await Deno.writeTextFile(`${dir}/mismatch.conf`, conf);
  const r = await runProxy(["-check", `${dir}/mismatch.conf`]);
  assertEquals(r.code, 1, r.stderr);
  assertMatch(r.stderr, /Service \[svc\]: Failed to initialize TLS context/);
  assertMatch(r.stderr, /Configuration failed/);
  // A corrupt CRL file is read too.
  const crl = `${dir}/bad.crl`;
  await Deno.writeTextFile(crl, "-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n");
  const badCrl = (await goodConfig(dir, port)).replace(/^CRLfile = .*$/m, `CRLfile = ${crl}`);
  await Deno.writeTextFile(`${dir}/crl.conf`, badCrl);
  const r2 = await runProxy(["-check", `${dir}/crl.conf`]);
  assertEquals(r2.code, 1, r2.stderr);
  assertMatch(r2.stderr, /Configuration failed/);
});

e2e("-check -fd N reads the configuration from a descriptor", { extra: EXTRA }, async (scope) => {
  const dir = await scope.tempDir("e2e-check-");
  const [port] = freePorts(1);
  const command = [...PROXY, "-check", "-fd", "3"].map((a) => `'${a}'`).join(" ");
  const good = await run(["bash", "-c", `exec ${command} 3< <(printf '%s' "$CONF")`], 20_000, {
    env: { CONF: await goodConfig(dir, port) },
  });
  assertEquals(good.code, 0, good.stderr);
  assertMatch(good.stderr, /Configuration successful/);
  const bad = await run(["bash", "-c", `exec ${command} 3< <(printf '%s' "$CONF")`], 20_000, {
    env: { CONF: "[svc]\naccept = 1\nnoSuchOption = 2\n" },
  });
  assertEquals(bad.code, 1);
  assertMatch(bad.stderr, /descriptor 3:3: .*noSuchOption/);
  const notNumber = await runProxy(["-check", "-fd", "x"]);
  assertEquals(notNumber.code, 1);
  assertMatch(notNumber.stderr, /Invalid file descriptor number "x"/);
});

e2e("-help names -check", { extra: EXTRA }, async () => {
  const r = await runProxy(["-help"]);
  assertEquals(r.code, 0);
  assert(/^stunnel -check FILE +=/m.test(r.stderr), r.stderr);
});
