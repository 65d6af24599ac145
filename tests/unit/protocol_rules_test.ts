/**
 * The configuration rules of `protocol =` (lib/config/protocols.ts): which modes exist, which
 * protocol* options each mode uses, and the end-of-section checks, in the words the end-to-end
 * tests expect in the log.
 */
import assert from "node:assert/strict";
import {
  checkProtocol,
  PROTOCOL_NAMES,
  PROTOCOL_OPTIONS,
  protocolIsEndpoint,
  type ProtocolOption,
} from "../../lib/config/protocols.ts";
import { defaultServiceOptions } from "../../lib/config/options.ts";
import type { ServiceOptions } from "../../lib/config/types.ts";

const FILE = "/etc/stunnel/t.conf";
/** Where each option of a test section is: `protocol` on line 1, the protocol* options after. */
const LINE: Record<string, number> = {
  protocol: 1,
  ...Object.fromEntries(PROTOCOL_OPTIONS.map((o, i) => [o, 10 + i])),
};
const VALUE: Record<ProtocolOption, string | string[]> = {
  protocolAuthentication: "basic",
  protocolDomain: "EXAMPLE",
  protocolHeader: ["X-Test: 1"],
  protocolHost: "target.example:443",
  protocolPassword: "secret",
  protocolUsername: "alice",
};

/** A section with `set`, each option on its line of LINE. */
function section(client: boolean, set: Partial<ServiceOptions>): ServiceOptions {
  const opts = { ...defaultServiceOptions("t"), client, ...set };
  for (const name of Object.keys(set)) opts.where[name] = { file: FILE, line: LINE[name] };
  return opts;
}

const at = (name: string) => `${FILE}:${LINE[name]}: `;

/** The protocol* options each mode uses, as the manual describes them. */
const USED: Record<string, readonly ProtocolOption[]> = {
  "capwin server": ["protocolHost"],
  "connect client": PROTOCOL_OPTIONS,
  "smtp client": ["protocolHost", "protocolUsername", "protocolPassword", "protocolAuthentication"],
};
/** What a mode needs to pass its own checks. */
const NEEDED: Record<string, Partial<ServiceOptions>> = {
  "capwin server": { protocolHost: "h" },
  "connect client": { protocolHost: "t:1" },
};
/** The modes stunnel 5.68 refuses, with its message. */
const REFUSED: Record<string, string> = {
  "capwinctrl server": "The 'capwinctrl' protocol is not supported in the server mode",
  "ldap server": "The 'ldap' protocol is not supported in the server mode",
  "nntp server": "The 'nntp' protocol is not supported in the server mode",
  "proxy client": "The 'proxy' protocol is not supported in the client mode",
};
const MODES = PROTOCOL_NAMES.flatMap((name) => [`${name} client`, `${name} server`]);

function sectionOf(mode: string, set: Partial<ServiceOptions> = {}): ServiceOptions {
  const [protocol, side] = mode.split(" ");
  return section(side === "client", { protocol, ...NEEDED[mode], ...set });
}

Deno.test("protocol rules: stunnel's refusals of a mode, without a line", () => {
  for (const [mode, message] of Object.entries(REFUSED)) {
    assert.deepEqual(checkProtocol(sectionOf(mode)), { message }, mode);
  }
  assert.deepEqual(checkProtocol(sectionOf("connect server")), {
    message: `${at("protocol")}protocol 'connect' is not supported yet in the server mode`,
    where: { file: FILE, line: 1 },
  });
});

Deno.test("protocol rules: each mode uses exactly its protocol* options", () => {
  for (const mode of MODES.filter((m) => !(m in REFUSED) && m !== "connect server")) {
    assert.equal(checkProtocol(sectionOf(mode)), undefined, mode);
    const [name, side] = mode.split(" ");
    for (const option of PROTOCOL_OPTIONS) {
      // Where a domain is used, it is NTLM's (whose authentication needs one).
      const ntlm = option === "protocolDomain" && USED[mode]?.includes(option)
        ? { protocolAuthentication: "NTLM" }
        : {};
      const problem = checkProtocol(sectionOf(mode, { [option]: VALUE[option], ...ntlm }));
      if (USED[mode]?.includes(option)) {
        assert.equal(problem, undefined, `${mode} uses ${option}`);
      } else {
        assert.deepEqual(problem, {
          message: `${at(option)}option '${option}' is not used by protocol '${name}' in the ` +
            `${side} mode`,
          where: { file: FILE, line: LINE[option] },
        }, `${mode} does not use ${option}`);
      }
    }
  }
});

Deno.test("protocol rules: protocol* options without a protocol", () => {
  assert.equal(checkProtocol(section(false, {})), undefined);
  assert.deepEqual(checkProtocol(section(true, { protocolHost: "h:1" })), {
    message: `${at("protocolHost")}option 'protocolHost' needs a 'protocol'`,
    where: { file: FILE, line: LINE.protocolHost },
  });
});

Deno.test("protocol rules: the checks of capwin and connect name the protocol line", () => {
  const problem = (mode: string, set: Partial<ServiceOptions>) =>
    checkProtocol(section(mode.endsWith("client"), { protocol: mode.split(" ")[0], ...set }));
  const protocolLine = (text: string) => ({
    message: `${at("protocol")}${text}`,
    where: { file: FILE, line: 1 },
  });
  assert.deepEqual(
    problem("capwin server", {}),
    protocolLine("protocol 'capwin' needs 'protocolHost'"),
  );
  assert.deepEqual(
    problem("connect client", {}),
    protocolLine("protocol 'connect' needs 'protocolHost'"),
  );
  assert.deepEqual(
    problem("connect client", { protocolHost: "t:1", protocolAuthentication: "ntlm" }),
    protocolLine("protocolAuthentication 'NTLM' needs 'protocolDomain'"),
  );
  assert.deepEqual(
    problem("connect client", { protocolHost: "t:1", protocolDomain: "D" }),
    protocolLine("option 'protocolDomain' is only used by protocolAuthentication 'NTLM'"),
  );
});

Deno.test("protocol rules: names ignore case; socks and capwinctrl choose the remote", () => {
  assert.equal(checkProtocol(section(true, { protocol: "SMTP", protocolHost: "h" })), undefined);
  assert.deepEqual(checkProtocol(section(false, { protocol: "Proxy", protocolHost: "h" })), {
    message: `${at("protocolHost")}option 'protocolHost' is not used by protocol 'proxy' in ` +
      "the server mode",
    where: { file: FILE, line: LINE.protocolHost },
  });
  const endpoints = MODES.filter((mode) => protocolIsEndpoint(sectionOf(mode)));
  assert.deepEqual(endpoints, ["capwinctrl client", "socks server"]);
  assert.equal(protocolIsEndpoint(section(false, {})), false);
});
