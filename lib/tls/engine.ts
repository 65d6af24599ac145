/**
 * The process-wide cryptography set-up of the global options, done before any service as stunnel
 * does: cryptographic engines (`engine`, `engineCtrl`, `engineDefault`; OpenSSL 3 still has the
 * ENGINE API), `fips` and the PRNG (random.ts). And what a service loads from an engine
 * (`engineId`/`engineNum`): its private key and, when the engine has it, its certificate.
 *
 * Engines live in libcrypto and are shared by all threads: the main thread opens, controls and
 * initializes them (at start and on every reload, as stunnel reads its file again); a worker
 * thread only finds the same engines again, to number them the same way.
 */
import { cstr, drainErrors, lib, type Ptr, readCString } from "../sys/ffi.ts";
import { seedPrng } from "./random.ts";
import { TlsError } from "./core.ts";
import type { ConfigLine, EngineRef, EngineStep, GlobalOptions } from "../config/types.ts";

type Log = (level: number, message: string) => void;

/** OpenSSL's engine.h: hand the engine a UI method (PIN prompts). */
const ENGINE_CTRL_SET_USER_INTERFACE = 4;

interface OpenEngine {
  id: string;
  engine: Ptr;
}

/** This thread's view of the configured engines, numbered from 1 as in stunnel. */
let engines: OpenEngine[] = [];

/** A configuration line that failed, with what stunnel logs before it. */
class EngineError extends Error {
  constructor(readonly lines: string[]) {
    super(lines.at(-1));
  }
}

function lineError(line: ConfigLine, reason: string, before: string[] = []): EngineError {
  return new EngineError([
    ...before,
    `${line.where.file}:${line.where.line}: "${line.text}": ${reason}`,
  ]);
}

/** stunnel's sslerror(): the drained OpenSSL error queue, then `what` with the first error. */
function sslError(what: string): string[] {
  return new TlsError(what, drainErrors(), "No error").logLines();
}

function engineId(engine: Ptr): string {
  return readCString(lib().crypto.ENGINE_get_id(engine));
}

/**
 * The global crypto set-up of the main thread (and of inetd mode): engines in file order, FIPS
 * mode, the PRNG. Logs like stunnel; false after logging why it failed.
 */
export function setUpGlobalCrypto(global: GlobalOptions, log: Log): boolean {
  try {
    runEngineSteps(global, log);
  } catch (e) {
    if (!(e instanceof EngineError)) throw e;
    for (const line of e.lines) log(3, line);
    return false;
  }
  if (!setFipsMode(global.fips, log)) {
    log(3, "Global options: Failed to initialize TLS");
    return false;
  }
  if (!seedPrng(global, log)) {
    log(3, "Global options: Failed to initialize TLS");
    return false;
  }
  return true;
}

/** A worker thread: the same engines, found again (the main thread has set them up). */
export function attachEngines(global: GlobalOptions): void {
  const { crypto } = lib();
  engines = [];
  for (const step of global.engineSteps) {
    if (step.option !== "engine") continue;
    if (step.value.toLowerCase() === "auto") {
      engines = listAllEngines();
      continue;
    }
    const engine = crypto.ENGINE_by_id(cstr(step.value));
    if (engine === null) drainErrors();
    else engines.push({ id: engineId(engine), engine });
  }
}

function listAllEngines(): OpenEngine[] {
  const { crypto } = lib();
  const found: OpenEngine[] = [];
  for (let e = crypto.ENGINE_get_first(); e !== null; e = crypto.ENGINE_get_next(e)) {
    found.push({ id: engineId(e), engine: e });
  }
  return found;
}

function runEngineSteps(global: GlobalOptions, log: Log): void {
  engines = [];
  const setup = new EngineSetup(log);
  for (const step of global.engineSteps) setup.run(step);
  // The end of the global options: stunnel logs a failure here and carries on.
  setup.initialize();
}

/** The `engine`, `engineCtrl` and `engineDefault` lines, one at a time, onto `engines`. */
class EngineSetup {
  /** The last engine opened by name still waits for ENGINE_init (stunnel: engine_initialized). */
  private pending = false;

  constructor(private readonly log: Log) {}

  run({ option, value, line }: EngineStep): void {
    if (option === "engine" && value.toLowerCase() === "auto") this.enableAll();
    else if (option === "engine") this.open(value, line);
    else if (engines.length === 0) throw lineError(line, "No engine was defined");
    else if (option === "engineCtrl") this.control(value, line);
    else this.setDefault(value, line);
  }

  /** Initializes the pending engine; returns the reason of a failure (logged already). */
  initialize(): string | undefined {
    if (!this.pending) return undefined;
    this.pending = false;
    const { crypto } = lib();
    this.log(7, `Initializing engine ${this.label()}`);
    if (crypto.ENGINE_init(this.current().engine) !== 1) {
      if (crypto.ERR_peek_last_error() !== 0n) {
        for (const l of sslError("ENGINE_init")) this.log(3, l);
      } else this.log(3, `Engine ${this.label()} not initialized`);
      return "Engine initialization failed";
    }
    this.log(6, `Engine ${this.label()} initialized`);
    return undefined;
  }

  private current(): OpenEngine {
    return engines[engines.length - 1];
  }

  private label(): string {
    return `#${engines.length} (${this.current().id})`;
  }

  /** `engine = auto`: every engine OpenSSL has, registered. */
  private enableAll(): void {
    this.log(6, "Enabling automatic engine support");
    lib().crypto.ENGINE_register_all_complete();
    drainErrors();
    this.pending = false;
    engines = [];
    for (const e of listAllEngines()) {
      engines.push(e);
      this.log(6, `Engine #${engines.length} (${e.id}) registered`);
    }
    this.log(6, "Automatic engine support enabled");
  }

  private open(id: string, line: ConfigLine): void {
    const { crypto } = lib();
    // As in stunnel, the previous engine is initialized first, whatever comes of it.
    this.initialize();
    this.log(7, `Enabling support for engine "${id}"`);
    const engine = crypto.ENGINE_by_id(cstr(id));
    if (engine === null) {
      throw lineError(line, "Failed to open the engine", sslError("ENGINE_by_id"));
    }
    engines.push({ id: engineId(engine), engine });
    this.pending = true;
    // stunnel hands engines a logging callback where they take one; none is handed here.
    this.log(6, `Logging not supported by engine ${this.label()}`);
    const ui = crypto.UI_OpenSSL();
    if (crypto.ENGINE_ctrl(engine, ENGINE_CTRL_SET_USER_INTERFACE, 0n, ui, null) > 0) {
      this.log(5, `UI set for engine ${this.label()}`);
    } else {
      drainErrors();
      this.log(6, `UI not supported by engine ${this.label()}`);
    }
  }

  /** `engineCtrl = COMMAND[:ARGUMENT]`; `init` initializes the engine now. */
  private control(value: string, line: ConfigLine): void {
    const colon = value.indexOf(":");
    const command = colon < 0 ? value : value.slice(0, colon);
    const argument = colon < 0 ? undefined : value.slice(colon + 1);
    if (command.toLowerCase() === "init") {
      const failed = this.initialize();
      if (failed) throw lineError(line, failed);
      return;
    }
    this.log(7, `Executing engine control command ${value}`);
    const ok = lib().crypto.ENGINE_ctrl_cmd_string(
      this.current().engine,
      cstr(command),
      argument === undefined ? null : cstr(argument),
      0,
    );
    if (ok !== 1) {
      throw lineError(
        line,
        "Failed to execute the engine control command",
        sslError("ENGINE_ctrl_cmd_string"),
      );
    }
  }

  /** `engineDefault = TASK,...` */
  private setDefault(tasks: string, line: ConfigLine): void {
    if (lib().crypto.ENGINE_set_default_string(this.current().engine, cstr(tasks)) !== 1) {
      throw lineError(
        line,
        "Failed to set engine as default",
        sslError("ENGINE_set_default_string"),
      );
    }
    this.log(6, `Engine ${this.label()} set as default for ${tasks}`);
  }
}

function setFipsMode(fips: boolean, log: Log): boolean {
  const { crypto } = lib();
  if (fips) {
    const name = cstr("fips");
    if (
      crypto.OSSL_PROVIDER_available(null, name) !== 1 &&
      crypto.OSSL_PROVIDER_load(null, name) === null
    ) {
      for (const line of sslError("FIPS PROVIDER")) log(3, line);
      return false;
    }
    if (crypto.EVP_default_properties_enable_fips(null, 1) !== 1) {
      for (const line of sslError("EVP_default_properties_enable_fips")) log(3, line);
      return false;
    }
  }
  log(5, `FIPS mode ${fips ? "enabled" : "disabled"}`);
  return true;
}

/**
 * The engine of a service's `engineId`/`engineNum`; throws an Error whose message is stunnel's
 * line for an unknown one.
 */
export function serviceEngine(ref: EngineRef): Ptr {
  const found = ref.id !== undefined
    ? engines.find((e) => e.id === ref.id)
    : engines[(ref.num ?? 0) - 1];
  if (found) return found.engine;
  const error = lineError(
    ref.line,
    ref.id !== undefined ? "Engine ID not found" : "Illegal engine number",
  );
  throw new Error(error.message);
}

/** The certificate `id` through the engine's LOAD_CERT_CTRL command (an X509 to free), or null. */
function engineCertificate(engine: Ptr, id: string): Ptr {
  const name = cstr(id);
  // struct { const char *cert_id; X509 *cert; }, filled in by the engine.
  const params = new BigUint64Array([
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(name))),
    0n,
  ]);
  lib().crypto.ENGINE_ctrl_cmd(
    engine,
    cstr("LOAD_CERT_CTRL"),
    0n,
    new Uint8Array(params.buffer),
    null,
    1,
  );
  return Deno.UnsafePointer.create(params[1]);
}

/**
 * stunnel's load_cert_engine: the certificate `id` from the engine. False (after logging the
 * error) when the engine has none; the file is tried then.
 */
export function loadCertFromEngine(ctx: Ptr, engine: Ptr, id: string, log: Log): boolean {
  const { ssl, crypto } = lib();
  log(6, `Loading certificate from engine ID: ${id}`);
  const cert = engineCertificate(engine, id);
  if (cert === null) {
    for (const line of sslError("ENGINE_ctrl_cmd")) log(3, line);
    return false;
  }
  try {
    if (ssl.SSL_CTX_use_certificate(ctx, cert) !== 1) {
      for (const line of sslError("SSL_CTX_use_certificate")) log(3, line);
      return false;
    }
  } finally {
    crypto.X509_free(cert);
  }
  log(6, `Certificate loaded from engine ID: ${id}`);
  return true;
}

/**
 * `CAengine`: each CA certificate from the service's engine goes into the trust store, and its
 * name onto `names` (the CAs a server names to its clients). One that cannot be read is logged
 * and skipped, as in stunnel.
 */
export function loadEngineCAs(
  ctx: Ptr,
  ref: EngineRef | undefined,
  ids: readonly string[],
  names: Ptr,
  log: Log,
): void {
  const { ssl, crypto } = lib();
  const engine = ref ? serviceEngine(ref) : null;
  const store = ssl.SSL_CTX_get_cert_store(ctx);
  for (const id of ids) {
    const cert = engine === null ? null : engineCertificate(engine, id);
    if (cert === null) {
      drainErrors();
      log(3, `CAengine failed to retrieve "${id}"`);
      continue;
    }
    try {
      // An anchor already in the store (the same CA twice) is no error.
      crypto.X509_STORE_add_cert(store, cert);
      drainErrors();
      const name = crypto.X509_NAME_dup(crypto.X509_get_subject_name(cert));
      if (name !== null) crypto.OPENSSL_sk_push(names, name);
    } finally {
      crypto.X509_free(cert);
    }
  }
}

/**
 * stunnel's load_key_engine: the private key `id` from the engine (a PIN it needs is asked on
 * the terminal, or given in the id, e.g. a pkcs11 URI's pin-value). False after logging the
 * error; the file is tried then.
 */
export function loadKeyFromEngine(ctx: Ptr, engine: Ptr, id: string, log: Log): boolean {
  const { ssl, crypto } = lib();
  log(6, `Initializing private key on engine ID: ${id}`);
  const key = crypto.ENGINE_load_private_key(engine, cstr(id), crypto.UI_OpenSSL(), null);
  if (key === null) {
    for (const line of sslError("ENGINE_load_private_key")) log(3, line);
    return false;
  }
  try {
    if (ssl.SSL_CTX_use_PrivateKey(ctx, key) !== 1) {
      for (const line of sslError("SSL_CTX_use_PrivateKey")) log(3, line);
      return false;
    }
  } finally {
    crypto.EVP_PKEY_free(key);
  }
  log(6, `Private key initialized on engine ID: ${id}`);
  return true;
}
