/**
 * `-check FILE` (extension, like `nginx -t`): every check a start makes, and nothing a start
 * does to the machine: no port bound, no fork, no pid file, no chroot, no change of user.
 */
import { checkServices, newRuntime } from "../proxy/daemon.ts";
import type { Logger } from "../sys/log.ts";
import { lookupId } from "./supervisor.ts";
import type { Configuration, GlobalOptions } from "../config/types.ts";
import type { TlsEngineChoice } from "../tls/choice.ts";

/** Logs what a start would refuse; true when nothing is. */
export async function checkConfiguration(
  config: Configuration,
  tls: TlsEngineChoice,
  log: Logger,
): Promise<boolean> {
  if (!checkProcess(config.global, log)) return false;
  return await checkServices(config, log, newRuntime(false, tls));
}

/** What the supervisor needs after binding: the user, the group, the jail, the pid file's home. */
function checkProcess(global: GlobalOptions, log: Logger): boolean {
  let ok = true;
  if (global.setgid && lookupId(global.setgid, "group") === undefined) {
    log(3, `Invalid group name: ${global.setgid}`);
    ok = false;
  }
  if (global.setuid && lookupId(global.setuid, "user") === undefined) {
    log(3, `Invalid user name: ${global.setuid}`);
    ok = false;
  }
  if (global.chroot && !isDirectory(global.chroot)) {
    log(3, `chroot ${global.chroot}: No such directory`);
    ok = false;
  }
  if (global.pid) {
    // The pid file is written inside the jail.
    const path = global.chroot ? `${global.chroot}/${global.pid}` : global.pid;
    const slash = path.lastIndexOf("/");
    const dir = slash < 0 ? "." : path.slice(0, slash) || "/";
    if (!isDirectory(dir)) {
      log(3, `Cannot create pid file ${global.pid}: no directory ${dir}`);
      ok = false;
    }
  }
  return ok;
}

function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}
