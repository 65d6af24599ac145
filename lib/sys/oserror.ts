/**
 * The one place where system errors become text, in stunnel's words: errno values (strerror),
 * Deno's errors ("... (os error N)") and getaddrinfo's error codes.
 */
import { errno, lib, readCString } from "./ffi.ts";
import { platform } from "./platform.ts";

/** Deno's "Connection refused (os error 111)" in stunnel's form "Connection refused (111)". */
export function osError(e: unknown): { text: string; errno: number } {
  const message = e instanceof Error ? e.message : String(e);
  const m = /^(.*?) \(os error (\d+)\)/.exec(message);
  return m ? { text: m[1], errno: Number(m[2]) } : { text: message, errno: 0 };
}

export function osErrorText(e: unknown): string {
  const { text, errno } = osError(e);
  return errno ? `${text} (${errno})` : text;
}

/** strerror(code) alone. */
function strerror(code: number): string {
  if ("missing" in platform().libc) return `Error ${code}`;
  return readCString(lib().libc.strerror(code));
}

/** `strerror (N)`, as stunnel logs a system error. */
export function errnoMessage(code: number): string {
  return `${strerror(code)} (${code})`;
}

/** errnoMessage of the current errno (right after a failed libc call). */
export function errnoText(): string {
  return errnoMessage(errno());
}

/** An errno in the form of Deno's error messages ("... (os error N)"), which osError reads. */
export function denoErrorMessage(code: number): string {
  return `${strerror(code)} (os error ${code})`;
}

/** stunnel's words for getaddrinfo's errors (glibc numbers). */
const GAI_TEXT: Record<number, string> = {
  [-2]: "Neither nodename nor servname known (EAI_NONAME)",
  [-3]: "Temporary failure in name resolution (EAI_AGAIN)",
  [-4]: "Non-recoverable failure in name resolution (EAI_FAIL)",
  [-5]: "No address associated with nodename (EAI_NODATA)",
  [-6]: "ai_family not supported (EAI_FAMILY)",
  [-8]: "Servname not supported for ai_socktype (EAI_SERVICE)",
  [-10]: "Memory allocation failure (EAI_MEMORY)",
  [-11]: "System error returned in errno (EAI_SYSTEM)",
};

/** A getaddrinfo() return code as stunnel's s_gai_strerror() words it. */
export function gaiErrorText(code: number): string {
  return GAI_TEXT[code] ?? `Unknown error (${code})`;
}
