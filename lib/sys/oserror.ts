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
