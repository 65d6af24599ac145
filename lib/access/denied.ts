/** An access check (libwrap, ident) refused the client; its reason was logged already. */
export class AccessDenied extends Error {
  constructor(readonly check: "libwrap" | "ident") {
    super(`${check}: access denied`);
    this.name = "AccessDenied";
  }
}
