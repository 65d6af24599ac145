/** SoftHSM2 tokens for OpenSSL's pkcs11 engine (e2e_engine_test.ts, e2e_manual2_test.ts). */
import { assert, assertEquals } from "./assert.ts";
import { run, type Scope } from "./process.ts";

export const SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so";
export const PKCS11_ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
export const PKCS11_TOOL = "/usr/bin/pkcs11-tool";

export interface SoftHsmToken {
  /** Imports a PEM private key as a key object with this label and hex id. */
  importKey(keyPem: string, label: string, id: string): Promise<void>;
  /** Imports a PEM certificate as a certificate object with this label and hex id. */
  importCert(certPem: string, label: string, id: string): Promise<void>;
}

/**
 * A fresh SoftHSM2 token `label` (user PIN `pin`) in a temporary directory of the scope, with
 * SOFTHSM2_CONF pointing at it (inherited by the proxy) until the scope closes. Fails if
 * softhsm2, libengine-pkcs11-openssl or opensc is missing.
 */
export async function softHsmToken(
  scope: Scope,
  label: string,
  pin: string,
): Promise<SoftHsmToken> {
  for (const file of [SOFTHSM_MODULE, PKCS11_ENGINE, "/usr/bin/softhsm2-util", PKCS11_TOOL]) {
    const present = await Deno.stat(file).then(() => true, () => false);
    assert(present, `${file} is missing: install softhsm2, libengine-pkcs11-openssl, opensc`);
  }
  const dir = await scope.tempDir("e2e-softhsm-");
  await Deno.mkdir(`${dir}/tokens`);
  await Deno.writeTextFile(
    `${dir}/softhsm2.conf`,
    `directories.tokendir = ${dir}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n`,
  );
  Deno.env.set("SOFTHSM2_CONF", `${dir}/softhsm2.conf`);
  scope.defer(() => Deno.env.delete("SOFTHSM2_CONF"));
  const tool = async (cmd: string[]) => {
    const r = await run(cmd, 20_000);
    assertEquals(r.code, 0, `${cmd.join(" ")}:\n${r.stdout}${r.stderr}`);
  };
  await tool([
    "softhsm2-util",
    "--init-token",
    "--free",
    "--label",
    label,
    "--pin",
    pin,
    "--so-pin",
    "567890",
  ]);
  let n = 0;
  return {
    async importKey(keyPem, keyLabel, id) {
      const pkcs8 = `${dir}/key${++n}.p8`;
      await tool(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", keyPem, "-out", pkcs8]);
      await tool([
        "softhsm2-util",
        "--import",
        pkcs8,
        "--token",
        label,
        "--label",
        keyLabel,
        "--id",
        id,
        "--pin",
        pin,
      ]);
    },
    async importCert(certPem, certLabel, id) {
      const der = `${dir}/cert${++n}.der`;
      await tool(["openssl", "x509", "-in", certPem, "-outform", "DER", "-out", der]);
      await tool([
        PKCS11_TOOL,
        "--module",
        SOFTHSM_MODULE,
        "--token-label",
        label,
        "--login",
        "--pin",
        pin,
        "--write-object",
        der,
        "--type",
        "cert",
        "--label",
        certLabel,
        "--id",
        id,
      ]);
    },
  };
}
