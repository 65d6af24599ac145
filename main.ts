/**
 * stunnel's command line on Unix: `stunnel [FILE] | -fd N | -help | -version | -sockets | -options`,
 * and `-check FILE | -check -fd N` (extension: check the configuration, start nothing).
 */
import { check, type ConfigSource, run, versionLines } from "./mod.ts";
import { early } from "./lib/sys/log.ts";
import { helpText, optionsText, socketsText, versionDefaultsText } from "./lib/config/reference.ts";

/** Debian's stunnel4 reads this file when no argument is given. */
const DEFAULT_CONFIG = "/etc/stunnel/stunnel.conf";

/** Appended to `-help`: the command line, with this implementation's `-check`. */
const COMMAND_LINE = [
  " ",
  "Command line:",
  "stunnel [FILE]         = run with configuration FILE (default /etc/stunnel/stunnel.conf)",
  "stunnel -fd N          = run with the configuration read from file descriptor N",
  "stunnel -check FILE    = check configuration FILE (or -check -fd N) as a start would,",
  "                         without binding, forking or writing; exit 0 if it is good",
  "stunnel -help|-version|-sockets|-options = print this, defaults, socket or TLS options",
].map((line) => `${line}\n`).join("");

function printInfo(body: string): never {
  const text = [...versionLines(), body].join("\n");
  Deno.stderr.writeSync(new TextEncoder().encode(text.endsWith("\n") ? text : `${text}\n`));
  Deno.exit(0);
}

async function main(args: string[]): Promise<number> {
  const [first, second] = args;
  switch (first) {
    case "-help":
      printInfo(helpText() + COMMAND_LINE);
      break;
    case "-version":
      printInfo(versionDefaultsText());
      break;
    case "-sockets":
      printInfo(socketsText());
      break;
    case "-options":
      printInfo(optionsText());
      break;
    case "-fd": {
      const source = fdSource(second);
      return source ? await run(source) : 1;
    }
    case "-check": {
      const source = second === "-fd" ? fdSource(args[2]) : fileSource(second);
      return source ? await check(source) : 1;
    }
  }
  const source = fileSource(first);
  return source ? await run(source) : 1;
}

/** `-fd N`: the configuration is read from descriptor N; undefined after saying why not. */
function fdSource(arg: string | undefined): ConfigSource | undefined {
  if (!/^\d+$/.test(arg ?? "")) {
    early(3, `Invalid file descriptor number "${arg ?? ""}"`);
    return undefined;
  }
  return { fd: Number(arg) };
}

/** A configuration file (Debian's default without one); undefined after saying why not. */
function fileSource(arg: string | undefined): ConfigSource | undefined {
  const path = arg ?? DEFAULT_CONFIG;
  if (path.startsWith("-")) {
    // stunnel on Unix takes anything else (the Win32 service flags too) as a file name.
    early(3, `Invalid configuration file name "${path}"`);
    early(3, "realpath: No such file or directory (2)");
    return undefined;
  }
  return { path };
}

Deno.exit(await main(Deno.args));
