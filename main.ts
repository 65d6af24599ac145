/**
 * stunnel's command line on Unix: `stunnel [FILE] | -fd N | -help | -version | -sockets | -options`
 */
import { run, versionLines } from "./mod.ts";
import { early } from "./lib/sys/log.ts";
import { helpText, optionsText, socketsText, versionDefaultsText } from "./lib/config/reference.ts";

/** Debian's stunnel4 reads this file when no argument is given. */
const DEFAULT_CONFIG = "/etc/stunnel/stunnel.conf";

function printInfo(body: string): never {
  const text = [...versionLines(), body].join("\n");
  Deno.stderr.writeSync(new TextEncoder().encode(text.endsWith("\n") ? text : `${text}\n`));
  Deno.exit(0);
}

async function main(args: string[]): Promise<number> {
  const [first, second] = args;
  switch (first) {
    case "-help":
      printInfo(helpText());
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
      const fd = Number(second);
      if (!/^\d+$/.test(second ?? "")) {
        early(3, `Invalid file descriptor number "${second ?? ""}"`);
        return 1;
      }
      return await run({ fd });
    }
  }
  const path = first ?? DEFAULT_CONFIG;
  if (path.startsWith("-")) {
    // stunnel on Unix takes anything else (the Win32 service flags too) as a file name.
    early(3, `Invalid configuration file name "${path}"`);
    early(3, "realpath: No such file or directory (2)");
    return 1;
  }
  return await run({ path });
}

Deno.exit(await main(Deno.args));
