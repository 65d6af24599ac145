/**
 * The address of a local side that is no socket: inetd mode on pipes, a connect+exec program on
 * a pseudo-terminal. stunnel then logs the connection as accepted from nobody.
 */
export const NOT_A_SOCKET: Deno.Addr = Object.freeze({ transport: "unix", path: "" });
