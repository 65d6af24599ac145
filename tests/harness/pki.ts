/** The throwaway PKI, generated with the openssl CLI once per test process. */
import { splitCommand } from "./command.ts";
import { run } from "./process.ts";

export interface CertKey {
  cert: string;
  key: string;
}

export interface Pki {
  dir: string;
  /** Root CA certificate (PEM path) and its key. */
  ca: string;
  caKey: string;
  /** The root CA certificate, PEM text (for Deno.connectTls caCerts). */
  caPem: string;
  /** Server certificates for CN=localhost, SAN DNS:localhost, IP:127.0.0.1. */
  serverEc: CertKey;
  serverRsa: CertKey;
  /** Client certificate CN=client (clientAuth). */
  client: CertKey;
  /** CN=revoked, signed by the CA and listed in `crl`. */
  revoked: CertKey;
  /** CRL of the root CA, revoking `revoked`. */
  crl: string;
  /** CN=localhost (server and client usage), signed by the CA, expired in 2020. */
  expired: CertKey;
  /** A second, unrelated CA and a localhost server certificate it signed. */
  otherCa: string;
  otherCaKey: string;
  otherServer: CertKey;
  /** Key and certificate (ECDSA server) in one PEM file. */
  combined: string;
  /** PKCS#12 bundle of the ECDSA server key, certificate and CA, empty password. */
  p12: string;
}

/** Runs `openssl ARGS` in `cwd`; ARGS is split on whitespace (file names have no spaces). */
async function openssl(args: string, cwd: string): Promise<void> {
  const r = await run(["openssl", ...splitCommand(args)], 60_000, { cwd, unscoped: true });
  if (r.code !== 0) throw new Error(`openssl ${args} failed (${r.code}):\n${r.stderr}${r.stdout}`);
}

function caConfig(dir: string): string {
  return `[ ca ]
default_ca = CA_default

[ CA_default ]
dir = ${dir}/ca-db
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
unique_subject = no
copy_extensions = none

[ policy_any ]
commonName = supplied

[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = unused

[ v3_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ server_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client_ext ]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;
}

async function generatePki(dir: string): Promise<Pki> {
  await Deno.mkdir(`${dir}/ca-db/newcerts`, { recursive: true });
  await Deno.writeTextFile(`${dir}/ca-db/index.txt`, "");
  await Deno.writeTextFile(`${dir}/ca-db/index.txt.attr`, "unique_subject = no\n");
  await Deno.writeTextFile(`${dir}/ca-db/serial`, "1000\n");
  await Deno.writeTextFile(`${dir}/ca-db/crlnumber`, "1000\n");
  await Deno.writeTextFile(`${dir}/openssl.cnf`, caConfig(dir));
  const ssl = (args: string) => openssl(args, dir);
  const cnf = "-config openssl.cnf";
  const ca = `ca ${cnf} -batch -cert ca.pem -keyfile ca.key`;

  const ecKeys = ["ca", "other-ca", "server-ec", "client", "revoked", "expired", "other-server"];
  await Promise.all([
    ...ecKeys.map((k) =>
      ssl(`genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ${k}.key`)
    ),
    ssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out server-rsa.key"),
  ]);

  const selfSigned = (name: string, cn: string) =>
    ssl(
      `req ${cnf} -new -x509 -key ${name}.key -subj /CN=${cn} -days 30 -extensions v3_ca ` +
        `-sha256 -out ${name}.pem`,
    );
  await selfSigned("ca", "Test-Root-CA");
  await selfSigned("other-ca", "Unrelated-Test-CA");

  // Certificates of the root CA go through `openssl ca`, which keeps the database for the CRL
  // and can backdate (for the expired certificate).
  const issue = async (name: string, cn: string, ext: string, dates = "") => {
    await ssl(`req ${cnf} -new -key ${name}.key -subj /CN=${cn} -out ${name}.csr`);
    await ssl(`${ca} -notext -extensions ${ext} ${dates} -in ${name}.csr -out ${name}.pem`);
  };
  await issue("server-ec", "localhost", "server_ext");
  await issue("server-rsa", "localhost", "server_ext");
  await issue("client", "client", "client_ext");
  await issue("revoked", "revoked", "server_ext");
  await issue(
    "expired",
    "localhost",
    "server_ext",
    "-startdate 20200101000000Z -enddate 20200201000000Z",
  );
  await ssl(`${ca} -revoke revoked.pem`);
  await ssl(`${ca} -gencrl -out crl.pem`);

  // A localhost certificate from the unrelated CA (x509 -req, no database needed).
  await ssl(`req ${cnf} -new -key other-server.key -subj /CN=localhost -out other-server.csr`);
  await ssl(
    "x509 -req -in other-server.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial " +
      "-days 30 -sha256 -extfile openssl.cnf -extensions server_ext -out other-server.pem",
  );

  const combined = (await Deno.readTextFile(`${dir}/server-ec.key`)) +
    (await Deno.readTextFile(`${dir}/server-ec.pem`));
  await Deno.writeTextFile(`${dir}/combined.pem`, combined, { mode: 0o600 });
  await ssl(
    "pkcs12 -export -inkey server-ec.key -in server-ec.pem -certfile ca.pem -passout pass: " +
      "-out server.p12",
  );

  const ck = (name: string): CertKey => ({ cert: `${dir}/${name}.pem`, key: `${dir}/${name}.key` });
  return {
    dir,
    ca: `${dir}/ca.pem`,
    caKey: `${dir}/ca.key`,
    caPem: await Deno.readTextFile(`${dir}/ca.pem`),
    serverEc: ck("server-ec"),
    serverRsa: ck("server-rsa"),
    client: ck("client"),
    revoked: ck("revoked"),
    crl: `${dir}/crl.pem`,
    expired: ck("expired"),
    otherCa: `${dir}/other-ca.pem`,
    otherCaKey: `${dir}/other-ca.key`,
    otherServer: ck("other-server"),
    combined: `${dir}/combined.pem`,
    p12: `${dir}/server.p12`,
  };
}

const pkiCache = new Map<string, Promise<Pki>>();
let defaultPkiDir: string | undefined;

/**
 * The throwaway PKI, generated once per test process (the promise is cached). Without `dir`
 * it lives in a temp dir that is removed when the test process exits.
 */
export function makePki(dir?: string): Promise<Pki> {
  if (!dir) {
    if (!defaultPkiDir) {
      defaultPkiDir = Deno.makeTempDirSync({ prefix: "e2e-pki-" });
      const d = defaultPkiDir;
      globalThis.addEventListener("unload", () => {
        try {
          Deno.removeSync(d, { recursive: true });
        } catch {
          // gone already
        }
      });
    }
    dir = defaultPkiDir;
  }
  let p = pkiCache.get(dir);
  if (!p) {
    p = generatePki(dir);
    pkiCache.set(dir, p);
  }
  return p;
}

/** `cert =` and `key =` lines for the harness's ECDSA server certificate. */
export async function serverCertLines(): Promise<string> {
  const pki = await makePki();
  return `cert = ${pki.serverEc.cert}\nkey = ${pki.serverEc.key}\n`;
}
