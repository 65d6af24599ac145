/** `PSKsecrets`: the file of IDENTITY:KEY lines, read with the configuration. */
import { osError } from "../sys/oserror.ts";
import { PSK_MAX_IDENTITY_LEN, PSK_MAX_PSK_LEN } from "../sys/ffi.ts";
import { opensslHex, OptionError } from "./options.ts";
import type { PskSecrets } from "./types.ts";

const FAILED = "Failed to read PSK secrets";
/** Shorter keys are unlikely to have enough entropy (stunnel's rule). */
const MIN_KEY_LENGTH = 16;

/**
 * Reads a PSKsecrets file as stunnel's psk_read does: one IDENTITY:KEY per line, empty lines
 * skipped, CR ignored; a KEY that is hexadecimal (colons allowed between bytes) is converted to
 * binary, anything else is taken as it is. Throws an OptionError with stunnel's lines.
 */
export function readPskSecrets(path: string): PskSecrets {
  const notes: PskSecrets["notes"] = [];
  let mode: number | null;
  try {
    mode = Deno.statSync(path).mode;
  } catch (e) {
    const { text, errno } = osError(e);
    throw new OptionError(FAILED, [`${path}: ${text} (${errno})`]);
  }
  // Only a warning in stunnel too: the file should be neither world-readable nor -writable.
  if (mode !== null && (mode & 0o7) !== 0) {
    notes.push({ level: 4, text: `Insecure file permissions on ${path}` });
  }
  let bytes: Uint8Array;
  try {
    bytes = Deno.readFileSync(path);
  } catch {
    throw new OptionError(FAILED, ["Cannot open PSKsecrets file"]);
  }
  const keys: PskSecrets["keys"] = [];
  const decoder = new TextDecoder();
  splitLines(bytes).forEach((line, index) => {
    const at = `PSKsecrets line ${index + 1}`;
    if (line.length === 0) return;
    const colon = line.indexOf(0x3a);
    if (colon < 0) throw new OptionError(FAILED, [`${at}: Not in identity:key format`]);
    const identityBytes = line.subarray(0, colon);
    if (identityBytes.length + 1 > PSK_MAX_IDENTITY_LEN) {
      throw new OptionError(FAILED, [
        `${at}: Identity longer than ${PSK_MAX_IDENTITY_LEN} characters`,
      ]);
    }
    const identity = decoder.decode(identityBytes);
    const keyText = line.subarray(colon + 1);
    const hex = opensslHex(decoder.decode(keyText));
    const key = hex ?? new Uint8Array(keyText);
    notes.push({
      level: 6,
      text: `${at}: ${key.length}-byte ${hex ? "hexadecimal" : "ASCII"} key configured for ` +
        `identity "${identity}"`,
    });
    if (key.length > PSK_MAX_PSK_LEN) {
      throw new OptionError(FAILED, [`${at}: Key longer than ${PSK_MAX_PSK_LEN} bytes`]);
    }
    if (key.length < MIN_KEY_LENGTH) {
      throw new OptionError(FAILED, [`${at}: Key shorter than ${MIN_KEY_LENGTH} bytes`]);
    }
    keys.push({ identity, key });
  });
  if (keys.length === 0) throw new OptionError(FAILED, []);
  return { path, keys, notes };
}

/** stunnel's file_getline: lines end at LF, every CR is dropped, a last unterminated line counts. */
function splitLines(bytes: Uint8Array): Uint8Array[] {
  const lines: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= bytes.length; i++) {
    if (i < bytes.length && bytes[i] !== 0x0a) continue;
    if (i < bytes.length || i > start) {
      lines.push(bytes.subarray(start, i).filter((b) => b !== 0x0d));
    }
    start = i + 1;
  }
  return lines;
}
