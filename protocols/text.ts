/** The line-protocol text helpers the STARTTLS and proxy protocols share. */

/** stunnel's is_prefix(): a case-insensitive prefix test. */
export function isPrefix(line: string, prefix: string): boolean {
  return line.slice(0, prefix.length).toLowerCase() === prefix.toLowerCase();
}

/** Base64 of the bytes of a Latin-1 string. */
export function base64(text: string): string {
  return btoa(text);
}
