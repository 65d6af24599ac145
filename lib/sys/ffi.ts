/**
 * The only place that opens native libraries: OpenSSL 3 (libssl, libcrypto) and libc.
 * Everything else uses the typed wrappers exported here.
 */
import { type OpenSslCandidate, openSslCandidates, type OpenSslFiles } from "./openssl_files.ts";

/**
 * The C library, per platform: glibc by its soname on Linux, libSystem on macOS; Windows has no
 * POSIX C library to call. STUNNEL_LIBC names another file, or `none` (the portable core alone,
 * as on Windows: platform.ts says what needs the C library).
 */
function libcFile(): string | undefined {
  const named = Deno.env.get("STUNNEL_LIBC");
  if (named !== undefined && named !== "") return named === "none" ? undefined : named;
  return { linux: "libc.so.6", darwin: "/usr/lib/libSystem.B.dylib" }[Deno.build.os as string];
}

const sslSymbols = {
  TLS_server_method: { parameters: [], result: "pointer" },
  TLS_client_method: { parameters: [], result: "pointer" },
  SSL_CTX_new: { parameters: ["pointer"], result: "pointer" },
  SSL_CTX_free: { parameters: ["pointer"], result: "void" },
  SSL_CTX_use_certificate_chain_file: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_CTX_use_PrivateKey_file: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  SSL_CTX_use_certificate: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_CTX_use_PrivateKey: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_CTX_check_private_key: { parameters: ["pointer"], result: "i32" },
  SSL_CTX_set_cipher_list: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_CTX_set_ciphersuites: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_CTX_set_options: { parameters: ["pointer", "u64"], result: "u64" },
  SSL_CTX_clear_options: { parameters: ["pointer", "u64"], result: "u64" },
  SSL_CTX_get_options: { parameters: ["pointer"], result: "u64" },
  SSL_CTX_set_security_level: { parameters: ["pointer", "i32"], result: "void" },
  SSL_CTX_set_session_id_context: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  SSL_CTX_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  SSL_CTX_ctrl_str: {
    name: "SSL_CTX_ctrl",
    parameters: ["pointer", "i32", "i64", "buffer"],
    result: "i64",
  },
  SSL_new: { parameters: ["pointer"], result: "pointer" },
  SSL_free: { parameters: ["pointer"], result: "void" },
  SSL_set_bio: { parameters: ["pointer", "pointer", "pointer"], result: "void" },
  SSL_set_accept_state: { parameters: ["pointer"], result: "void" },
  SSL_set_connect_state: { parameters: ["pointer"], result: "void" },
  SSL_do_handshake: { parameters: ["pointer"], result: "i32" },
  SSL_read: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  SSL_write: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  SSL_get_error: { parameters: ["pointer", "i32"], result: "i32" },
  SSL_shutdown: { parameters: ["pointer"], result: "i32" },
  SSL_get_shutdown: { parameters: ["pointer"], result: "i32" },
  SSL_ctrl_str: {
    name: "SSL_ctrl",
    parameters: ["pointer", "i32", "i64", "buffer"],
    result: "i64",
  },
  SSL_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  SSL_get_version: { parameters: ["pointer"], result: "pointer" },
  SSL_get_current_cipher: { parameters: ["pointer"], result: "pointer" },
  SSL_CIPHER_get_name: { parameters: ["pointer"], result: "pointer" },
  SSL_CIPHER_get_bits: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_session_reused: { parameters: ["pointer"], result: "i32" },
  SSL_get1_session: { parameters: ["pointer"], result: "pointer" },
  SSL_set_session: { parameters: ["pointer", "pointer"], result: "i32" },
  SSL_SESSION_free: { parameters: ["pointer"], result: "void" },
  SSL_SESSION_is_resumable: { parameters: ["pointer"], result: "i32" },
  SSL_get_state: { parameters: ["pointer"], result: "i32" },
  SSL_is_init_finished: { parameters: ["pointer"], result: "i32" },
  SSL_CTX_load_verify_locations: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  SSL_CTX_set_verify: { parameters: ["pointer", "i32", "pointer"], result: "void" },
  SSL_load_client_CA_file: { parameters: ["buffer"], result: "pointer" },
  SSL_CTX_set_client_CA_list: { parameters: ["pointer", "pointer"], result: "void" },
  SSL_get1_peer_certificate: { parameters: ["pointer"], result: "pointer" },
  SSL_get_verify_result: { parameters: ["pointer"], result: "i64" },
  // sni.ts
  SSL_CTX_callback_ctrl: { parameters: ["pointer", "i32", "function"], result: "i64" },
  SSL_get_servername: { parameters: ["pointer", "i32"], result: "pointer" },
  // ALPN (extension `alpn`; context.ts, core.ts)
  SSL_get0_alpn_selected: { parameters: ["pointer", "buffer", "buffer"], result: "void" },
  SSL_CTX_set_alpn_protos: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  SSL_CTX_set_alpn_select_cb: { parameters: ["pointer", "function", "pointer"], result: "void" },
  SSL_set_SSL_CTX: { parameters: ["pointer", "pointer"], result: "pointer" },
  SSL_set_verify: { parameters: ["pointer", "i32", "pointer"], result: "void" },
  SSL_CTX_get_verify_mode: { parameters: ["pointer"], result: "i32" },
  SSL_CTX_get_verify_callback: { parameters: ["pointer"], result: "pointer" },
  SSL_get0_param: { parameters: ["pointer"], result: "pointer" },
  SSL_CTX_get0_param: { parameters: ["pointer"], result: "pointer" },
  SSL_CTX_up_ref: { parameters: ["pointer"], result: "i32" },
  SSL_CTX_set_client_hello_cb: { parameters: ["pointer", "function", "pointer"], result: "void" },
  SSL_client_hello_get0_ext: { parameters: ["pointer", "u32", "buffer", "buffer"], result: "i32" },
  SSL_set_session_id_context: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  // session.ts
  SSL_CTX_set_timeout: { parameters: ["pointer", "i64"], result: "i64" },
  SSL_CTX_set_num_tickets: { parameters: ["pointer", "usize"], result: "i32" },
  SSL_CTX_sess_set_new_cb: { parameters: ["pointer", "function"], result: "void" },
  SSL_CTX_set_session_ticket_cb: {
    parameters: ["pointer", "function", "function", "pointer"],
    result: "i32",
  },
  SSL_SESSION_set1_ticket_appdata: { parameters: ["pointer", "buffer", "usize"], result: "i32" },
  SSL_version: { parameters: ["pointer"], result: "i32" },
  i2d_SSL_SESSION: { parameters: ["pointer", "buffer"], result: "i32" },
  d2i_SSL_SESSION: { parameters: ["pointer", "buffer", "i64"], result: "pointer" },
  // psk.ts
  SSL_CTX_set_psk_client_callback: { parameters: ["pointer", "function"], result: "void" },
  SSL_CTX_set_psk_server_callback: { parameters: ["pointer", "function"], result: "void" },
  // policy.ts
  SSL_CONF_CTX_new: { parameters: [], result: "pointer" },
  SSL_CONF_CTX_set_ssl_ctx: { parameters: ["pointer", "pointer"], result: "void" },
  SSL_CONF_CTX_set_flags: { parameters: ["pointer", "u32"], result: "u32" },
  SSL_CONF_cmd: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  SSL_CONF_CTX_finish: { parameters: ["pointer"], result: "i32" },
  SSL_CONF_CTX_free: { parameters: ["pointer"], result: "void" },
  SSL_CTX_set_info_callback: { parameters: ["pointer", "function"], result: "void" },
  SSL_CTX_get_ciphers: { parameters: ["pointer"], result: "pointer" },
  SSL_CIPHER_description: { parameters: ["pointer", "buffer", "i32"], result: "pointer" },
  // verify.ts
  SSL_CTX_get_cert_store: { parameters: ["pointer"], result: "pointer" },
  SSL_add_file_cert_subjects_to_stack: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_add_dir_cert_subjects_to_stack: { parameters: ["pointer", "buffer"], result: "i32" },
  SSL_get_ex_data_X509_STORE_CTX_idx: { parameters: [], result: "i32" },
  SSL_get_SSL_CTX: { parameters: ["pointer"], result: "pointer" },
  // ocsp.ts
  SSL_get0_verified_chain: { parameters: ["pointer"], result: "pointer" },
  SSL_get_peer_cert_chain: { parameters: ["pointer"], result: "pointer" },
  SSL_CTX_get0_certificate: { parameters: ["pointer"], result: "pointer" },
  SSL_set_verify_result: { parameters: ["pointer", "i64"], result: "void" },
  // sessiond
  SSL_CTX_sess_set_get_cb: { parameters: ["pointer", "function"], result: "void" },
  SSL_CTX_sess_set_remove_cb: { parameters: ["pointer", "function"], result: "void" },
  SSL_SESSION_get_id: { parameters: ["pointer", "buffer"], result: "pointer" },
  SSL_SESSION_get_timeout: { parameters: ["pointer"], result: "i64" },
  SSL_client_hello_get0_session_id: { parameters: ["pointer", "buffer"], result: "usize" },
  SSL_get_options: { parameters: ["pointer"], result: "u64" },
} as const satisfies Deno.ForeignLibraryInterface;

const cryptoSymbols = {
  OpenSSL_version: { parameters: ["i32"], result: "pointer" },
  OpenSSL_version_num: { parameters: [], result: "u64" },
  BIO_s_mem: { parameters: [], result: "pointer" },
  BIO_new: { parameters: ["pointer"], result: "pointer" },
  BIO_new_mem_buf: { parameters: ["buffer", "i32"], result: "pointer" },
  BIO_free: { parameters: ["pointer"], result: "i32" },
  BIO_read: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  BIO_write: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  BIO_ctrl: { parameters: ["pointer", "i32", "i64", "pointer"], result: "i64" },
  ERR_get_error_all: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "u64",
  },
  ERR_error_string_n: { parameters: ["u64", "buffer", "usize"], result: "void" },
  ERR_clear_error: { parameters: [], result: "void" },
  d2i_PKCS12_bio: { parameters: ["pointer", "pointer"], result: "pointer" },
  PKCS12_parse: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  PKCS12_free: { parameters: ["pointer"], result: "void" },
  X509_free: { parameters: ["pointer"], result: "void" },
  EVP_PKEY_free: { parameters: ["pointer"], result: "void" },
  // tmpkey.ts: the peer's key exchange key, as stunnel's print_tmp_key() names it
  EVP_PKEY_get_id: { parameters: ["pointer"], result: "i32" },
  EVP_PKEY_get_bits: { parameters: ["pointer"], result: "i32" },
  EVP_PKEY_get_group_name: { parameters: ["pointer", "buffer", "usize", "buffer"], result: "i32" },
  OBJ_nid2sn: { parameters: ["i32"], result: "pointer" },
  OBJ_txt2nid: { parameters: ["buffer"], result: "i32" },
  EC_curve_nid2nist: { parameters: ["i32"], result: "pointer" },
  OPENSSL_sk_num: { parameters: ["pointer"], result: "i32" },
  OPENSSL_sk_value: { parameters: ["pointer", "i32"], result: "pointer" },
  X509_check_host: {
    parameters: ["pointer", "buffer", "usize", "u32", "pointer"],
    result: "i32",
  },
  X509_check_email: { parameters: ["pointer", "buffer", "usize", "u32"], result: "i32" },
  X509_check_ip_asc: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  X509_get_subject_name: { parameters: ["pointer"], result: "pointer" },
  // protocols/proxy.ts (PROXY v2): the CN of the client certificate
  X509_NAME_get_text_by_NID: {
    parameters: ["pointer", "i32", "buffer", "i32"],
    result: "i32",
  },
  X509_NAME_oneline: { parameters: ["pointer", "pointer", "i32"], result: "pointer" },
  CRYPTO_free: { parameters: ["pointer", "pointer", "i32"], result: "void" },
  // sni.ts
  X509_VERIFY_PARAM_inherit: { parameters: ["pointer", "pointer"], result: "i32" },
  X509_VERIFY_PARAM_get_inh_flags: { parameters: ["pointer"], result: "u32" },
  X509_VERIFY_PARAM_set_inh_flags: { parameters: ["pointer", "u32"], result: "i32" },
  // session.ts
  HMAC_Init_ex: { parameters: ["pointer", "buffer", "i32", "pointer", "pointer"], result: "i32" },
  EVP_sha256: { parameters: [], result: "pointer" },
  // digest.ts
  HMAC: {
    parameters: ["pointer", "buffer", "i32", "buffer", "usize", "buffer", "pointer"],
    result: "pointer",
  },
  EVP_aes_128_cbc: { parameters: [], result: "pointer" },
  EVP_aes_256_cbc: { parameters: [], result: "pointer" },
  EVP_EncryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "pointer"],
    result: "i32",
  },
  EVP_DecryptInit_ex: {
    parameters: ["pointer", "pointer", "pointer", "buffer", "pointer"],
    result: "i32",
  },
  RAND_bytes: { parameters: ["pointer", "i32"], result: "i32" },
  // policy.ts
  BIO_new_file: { parameters: ["buffer", "buffer"], result: "pointer" },
  PEM_read_bio_DHparams: {
    parameters: ["pointer", "pointer", "pointer", "pointer"],
    result: "pointer",
  },
  DH_bits: { parameters: ["pointer"], result: "i32" },
  DH_free: { parameters: ["pointer"], result: "void" },
  // verify.ts
  CRYPTO_get_ex_new_index: {
    parameters: ["i32", "i64", "pointer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  X509_STORE_CTX_get_ex_data: { parameters: ["pointer", "i32"], result: "pointer" },
  X509_STORE_CTX_set_ex_data: { parameters: ["pointer", "i32", "pointer"], result: "i32" },
  X509_STORE_CTX_get_current_cert: { parameters: ["pointer"], result: "pointer" },
  X509_STORE_CTX_get_error: { parameters: ["pointer"], result: "i32" },
  X509_STORE_CTX_set_error: { parameters: ["pointer", "i32"], result: "void" },
  X509_STORE_CTX_get_error_depth: { parameters: ["pointer"], result: "i32" },
  X509_STORE_CTX_get1_certs: { parameters: ["pointer", "pointer"], result: "pointer" },
  X509_verify_cert_error_string: { parameters: ["i64"], result: "pointer" },
  X509_NAME_print_ex: { parameters: ["pointer", "pointer", "i32", "u64"], result: "i32" },
  X509_NAME_free: { parameters: ["pointer"], result: "void" },
  X509_get0_pubkey_bitstr: { parameters: ["pointer"], result: "pointer" },
  ASN1_STRING_length: { parameters: ["pointer"], result: "i32" },
  ASN1_STRING_get0_data: { parameters: ["pointer"], result: "pointer" },
  X509_STORE_add_lookup: { parameters: ["pointer", "pointer"], result: "pointer" },
  X509_STORE_set_flags: { parameters: ["pointer", "u64"], result: "i32" },
  X509_LOOKUP_file: { parameters: [], result: "pointer" },
  X509_LOOKUP_hash_dir: { parameters: [], result: "pointer" },
  X509_LOOKUP_ctrl: { parameters: ["pointer", "i32", "buffer", "i64", "pointer"], result: "i32" },
  X509_load_crl_file: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  OPENSSL_sk_new_null: { parameters: [], result: "pointer" },
  OPENSSL_sk_free: { parameters: ["pointer"], result: "void" },
  // ocsp.ts
  OPENSSL_sk_push: { parameters: ["pointer", "pointer"], result: "i32" },
  X509_up_ref: { parameters: ["pointer"], result: "i32" },
  X509_NAME_cmp: { parameters: ["pointer", "pointer"], result: "i32" },
  X509_get_issuer_name: { parameters: ["pointer"], result: "pointer" },
  X509_get1_ocsp: { parameters: ["pointer"], result: "pointer" },
  X509_email_free: { parameters: ["pointer"], result: "void" },
  X509_STORE_CTX_new: { parameters: [], result: "pointer" },
  X509_STORE_CTX_init: {
    parameters: ["pointer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  X509_STORE_CTX_free: { parameters: ["pointer"], result: "void" },
  X509_verify_cert: { parameters: ["pointer"], result: "i32" },
  X509_STORE_CTX_get1_chain: { parameters: ["pointer"], result: "pointer" },
  X509_STORE_up_ref: { parameters: ["pointer"], result: "i32" },
  X509_STORE_free: { parameters: ["pointer"], result: "void" },
  ASN1_TIME_print: { parameters: ["pointer", "pointer"], result: "i32" },
  ASN1_TIME_diff: { parameters: ["buffer", "buffer", "pointer", "pointer"], result: "i32" },
  // expiry.ts
  X509_get0_notAfter: { parameters: ["pointer"], result: "pointer" },
  ASN1_TIME_to_tm: { parameters: ["pointer", "buffer"], result: "i32" },
  CRYPTO_memdup: { parameters: ["buffer", "usize", "pointer", "i32"], result: "pointer" },
  OSSL_HTTP_parse_url: {
    parameters: [
      "buffer",
      "buffer",
      "pointer",
      "buffer",
      "buffer",
      "pointer",
      "buffer",
      "pointer",
      "pointer",
    ],
    result: "i32",
  },
  OSSL_HTTP_REQ_CTX_new: { parameters: ["pointer", "pointer", "i32"], result: "pointer" },
  OSSL_HTTP_REQ_CTX_free: { parameters: ["pointer"], result: "void" },
  OSSL_HTTP_REQ_CTX_set_request_line: {
    parameters: ["pointer", "i32", "pointer", "pointer", "buffer"],
    result: "i32",
  },
  OSSL_HTTP_REQ_CTX_set_expected: {
    parameters: ["pointer", "pointer", "i32", "i32", "i32"],
    result: "i32",
  },
  OSSL_HTTP_REQ_CTX_add1_header: { parameters: ["pointer", "buffer", "buffer"], result: "i32" },
  OSSL_HTTP_REQ_CTX_set1_req: {
    parameters: ["pointer", "buffer", "pointer", "pointer"],
    result: "i32",
  },
  OSSL_HTTP_REQ_CTX_nbio_d2i: { parameters: ["pointer", "buffer", "pointer"], result: "i32" },
  OCSP_REQUEST_it: { parameters: [], result: "pointer" },
  OCSP_RESPONSE_it: { parameters: [], result: "pointer" },
  OCSP_REQUEST_new: { parameters: [], result: "pointer" },
  OCSP_REQUEST_free: { parameters: ["pointer"], result: "void" },
  OCSP_RESPONSE_free: { parameters: ["pointer"], result: "void" },
  OCSP_BASICRESP_free: { parameters: ["pointer"], result: "void" },
  OCSP_cert_to_id: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  OCSP_CERTID_dup: { parameters: ["pointer"], result: "pointer" },
  OCSP_CERTID_free: { parameters: ["pointer"], result: "void" },
  OCSP_request_add0_id: { parameters: ["pointer", "pointer"], result: "pointer" },
  OCSP_request_add1_nonce: { parameters: ["pointer", "pointer", "i32"], result: "i32" },
  OCSP_response_status: { parameters: ["pointer"], result: "i32" },
  OCSP_response_status_str: { parameters: ["i64"], result: "pointer" },
  OCSP_response_get1_basic: { parameters: ["pointer"], result: "pointer" },
  OCSP_check_nonce: { parameters: ["pointer", "pointer"], result: "i32" },
  OCSP_basic_verify: { parameters: ["pointer", "pointer", "pointer", "u64"], result: "i32" },
  OCSP_resp_find_status: {
    parameters: ["pointer", "pointer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  OCSP_cert_status_str: { parameters: ["i64"], result: "pointer" },
  OCSP_crl_reason_str: { parameters: ["i64"], result: "pointer" },
  OCSP_check_validity: { parameters: ["pointer", "pointer", "i64", "i64"], result: "i32" },
  i2d_OCSP_RESPONSE: { parameters: ["pointer", "buffer"], result: "i32" },
  // ntlm
  OSSL_LIB_CTX_new: { parameters: [], result: "pointer" },
  OSSL_LIB_CTX_free: { parameters: ["pointer"], result: "void" },
  OSSL_PROVIDER_load: { parameters: ["pointer", "buffer"], result: "pointer" },
  EVP_MD_fetch: { parameters: ["pointer", "buffer", "pointer"], result: "pointer" },
  EVP_Digest: {
    parameters: ["buffer", "usize", "buffer", "buffer", "pointer", "pointer"],
    result: "i32",
  },
  EVP_CIPHER_fetch: { parameters: ["pointer", "buffer", "pointer"], result: "pointer" },
  EVP_CIPHER_CTX_new: { parameters: [], result: "pointer" },
  EVP_CIPHER_CTX_free: { parameters: ["pointer"], result: "void" },
  EVP_CIPHER_CTX_set_padding: { parameters: ["pointer", "i32"], result: "i32" },
  EVP_EncryptUpdate: {
    parameters: ["pointer", "buffer", "buffer", "buffer", "i32"],
    result: "i32",
  },
  // engine (engine.ts, random.ts)
  ENGINE_by_id: { parameters: ["buffer"], result: "pointer" },
  ENGINE_get_id: { parameters: ["pointer"], result: "pointer" },
  ENGINE_ctrl: { parameters: ["pointer", "i32", "i64", "pointer", "pointer"], result: "i32" },
  ENGINE_ctrl_cmd: {
    parameters: ["pointer", "buffer", "i64", "buffer", "pointer", "i32"],
    result: "i32",
  },
  ENGINE_ctrl_cmd_string: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "i32" },
  ENGINE_init: { parameters: ["pointer"], result: "i32" },
  ENGINE_set_default_string: { parameters: ["pointer", "buffer"], result: "i32" },
  ENGINE_register_all_complete: { parameters: [], result: "i32" },
  ENGINE_get_first: { parameters: [], result: "pointer" },
  ENGINE_get_next: { parameters: ["pointer"], result: "pointer" },
  ENGINE_load_private_key: {
    parameters: ["pointer", "buffer", "pointer", "pointer"],
    result: "pointer",
  },
  UI_OpenSSL: { parameters: [], result: "pointer" },
  ERR_peek_last_error: { parameters: [], result: "u64" },
  OSSL_PROVIDER_available: { parameters: ["pointer", "buffer"], result: "i32" },
  EVP_default_properties_enable_fips: { parameters: ["pointer", "i32"], result: "i32" },
  RAND_status: { parameters: [], result: "i32" },
  RAND_load_file: { parameters: ["buffer", "i64"], result: "i32" },
  RAND_write_file: { parameters: ["buffer"], result: "i32" },
  RAND_file_name: { parameters: ["buffer", "usize"], result: "pointer" },
  X509_STORE_add_cert: { parameters: ["pointer", "pointer"], result: "i32" },
  X509_NAME_dup: { parameters: ["pointer"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

const libcSymbols = {
  openlog: { parameters: ["buffer", "i32", "i32"], result: "void" },
  // syslog is variadic; always called with the fixed format "%s" and one string.
  syslog: { parameters: ["i32", "buffer", "buffer"], result: "void" },
  closelog: { parameters: [], result: "void" },
  getpid: { parameters: [], result: "i32" },
  setsid: { parameters: [], result: "i32" },
  setuid: { parameters: ["u32"], result: "i32" },
  setgid: { parameters: ["u32"], result: "i32" },
  setgroups: { parameters: ["usize", "buffer"], result: "i32" },
  chroot: { parameters: ["buffer"], result: "i32" },
  chdir: { parameters: ["buffer"], result: "i32" },
  getpwnam: { parameters: ["buffer"], result: "pointer" },
  getgrnam: { parameters: ["buffer"], result: "pointer" },
  errno_location: {
    name: Deno.build.os === "darwin" ? "__error" : "__errno_location",
    parameters: [],
    result: "pointer",
  },
  strerror: { parameters: ["i32"], result: "pointer" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  dup: { parameters: ["i32"], result: "i32" },
  dup2: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // notify.ts: systemd's MONOTONIC_USEC (CLOCK_MONOTONIC, which performance.now() is not)
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  // daemon.ts: the memory of the contexts a reload freed goes back to the system
  malloc_trim: { parameters: ["usize"], result: "i32" },
  // exec.ts / inetd.ts: half-close of a socket on stdout (inetd mode)
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  // socks (client mode): SO_ORIGINAL_DST
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  // sockets (sockfd.ts, sockopt.ts, netconn.ts)
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  // Waits for a connect in progress on a thread of its own: the event loop keeps running.
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  // resolve.ts: while the configuration is read, and on a thread of its own for connections
  getaddrinfo: { parameters: ["buffer", "pointer", "buffer", "buffer"], result: "i32" },
  getaddrinfo_async: {
    name: "getaddrinfo",
    parameters: ["buffer", "pointer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  freeaddrinfo: { parameters: ["pointer"], result: "void" },
  // pty: the master side of a pseudo-terminal (O_NONBLOCK; waits go through `poll`)
  posix_openpt: { parameters: ["i32"], result: "i32" },
  grantpt: { parameters: ["i32"], result: "i32" },
  unlockpt: { parameters: ["i32"], result: "i32" },
  ptsname_r: { parameters: ["i32", "buffer", "usize"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // spawn.ts: a program on a socket of ours (Deno.Command only gives it pipes)
  posix_spawn: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  posix_spawn_file_actions_init: { parameters: ["buffer"], result: "i32" },
  posix_spawn_file_actions_adddup2: { parameters: ["buffer", "i32", "i32"], result: "i32" },
  posix_spawn_file_actions_destroy: { parameters: ["buffer"], result: "i32" },
  posix_spawnattr_init: { parameters: ["buffer"], result: "i32" },
  posix_spawnattr_setflags: { parameters: ["buffer", "i16"], result: "i32" },
  posix_spawnattr_setsigdefault: { parameters: ["buffer", "buffer"], result: "i32" },
  posix_spawnattr_setsigmask: { parameters: ["buffer", "buffer"], result: "i32" },
  posix_spawnattr_destroy: { parameters: ["buffer"], result: "i32" },
  // Waits for that program's end on a thread of its own.
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32", nonblocking: true },
} as const satisfies Deno.ForeignLibraryInterface;

type SslLib = Deno.DynamicLibrary<typeof sslSymbols>["symbols"];
type CryptoLib = Deno.DynamicLibrary<typeof cryptoSymbols>["symbols"];
type LibC = Deno.DynamicLibrary<typeof libcSymbols>["symbols"];

export interface Native {
  ssl: SslLib;
  crypto: CryptoLib;
  libc: LibC;
}

/**
 * The symbols of `path`, each bound on its first use. Binding costs (Deno compiles a call stub
 * per symbol: with all ~260 bound up front, half the start-up time and 7 MiB of memory, in every
 * thread), and a configuration uses a fraction of them.
 */
function lazySymbols<S extends Deno.ForeignLibraryInterface>(
  path: () => string,
  symbols: S,
): Deno.DynamicLibrary<S>["symbols"] {
  const bound = {} as Deno.DynamicLibrary<S>["symbols"];
  for (const name of Object.keys(symbols) as (keyof S & string)[]) {
    Object.defineProperty(bound, name, {
      configurable: true,
      get() {
        const one = { [name]: symbols[name] } as Pick<S, typeof name>;
        const value = Deno.dlopen(path(), one).symbols[name];
        Object.defineProperty(bound, name, { value });
        return value;
      },
    });
  }
  return bound;
}

/** OpenSSL 3 as loaded: the files and the version, for `-version` and the log. */
export interface OpenSslLoaded {
  libssl: string;
  libcrypto: string;
  version: string;
}

/** No usable OpenSSL 3: the message names every file tried and why each failed. */
export class OpenSslMissing extends Error {}

const OPENSSL_3 = 0x30000000n;

/**
 * The OpenSSL of this thread: which files to load (set before the first use), and once
 * loaded, the files and their version. Per thread, as the handles are.
 */
interface OpenSslState {
  files: OpenSslFiles;
  loaded?: OpenSslLoaded;
  missing?: OpenSslMissing;
}

let native: Native | undefined;
let openssl: OpenSslState = { files: {} };
const libcState: { loaded?: string; missing?: LibcMissing } = {};

/**
 * Names the OpenSSL files to load (`libssl`/`libcrypto`, then the environment, then the
 * platform's search). Takes effect only before OpenSSL is first used; false when it is already
 * loaded from other files.
 */
export function chooseOpenSsl(files: OpenSslFiles): boolean {
  if (openssl.loaded || openssl.missing) {
    return files.libssl === openssl.files.libssl && files.libcrypto === openssl.files.libcrypto;
  }
  openssl = { files: { ...files } };
  return true;
}

/** Loads OpenSSL 3 once (throws OpenSslMissing, every time, when it cannot). */
export function loadOpenSsl(): OpenSslLoaded {
  if (openssl.loaded) return openssl.loaded;
  if (openssl.missing) throw openssl.missing;
  const tried: string[] = [];
  for (const candidate of openSslCandidates(openssl.files, Deno.build.os, Deno.build.arch)) {
    const loaded = tryOpenSsl(candidate, tried);
    if (loaded) return openssl.loaded = loaded;
  }
  openssl.missing = new OpenSslMissing(
    `OpenSSL 3 not found (tried ${tried.join("; ")}); name the library files with ` +
      "`libssl`/`libcrypto` (or STUNNEL_LIBSSL/STUNNEL_LIBCRYPTO), or use `tlsEngine = deno`",
  );
  throw openssl.missing;
}

/** The version if `candidate` loads and is OpenSSL 3 or later; else why not, in `tried`. */
function tryOpenSsl(candidate: OpenSslCandidate, tried: string[]): OpenSslLoaded | undefined {
  const { libssl, libcrypto, where } = candidate;
  let crypto;
  try {
    // libcrypto first: libssl then links to this one (the loader matches its soname).
    crypto = Deno.dlopen(libcrypto, {
      OpenSSL_version_num: cryptoSymbols.OpenSSL_version_num,
      OpenSSL_version: cryptoSymbols.OpenSSL_version,
    }).symbols;
    Deno.dlopen(libssl, { TLS_method: { parameters: [], result: "pointer" } });
  } catch (e) {
    tried.push(`${libcrypto} and ${libssl}${where}: ${loaderReason(e)}`);
    return undefined;
  }
  const version = readCString(crypto.OpenSSL_version(0));
  if (crypto.OpenSSL_version_num() < OPENSSL_3) {
    tried.push(`${libcrypto}${where}: ${version} is older than 3.0`);
    return undefined;
  }
  return {
    libssl: loadedPath(libssl),
    libcrypto: loadedPath(libcrypto),
    version,
  };
}

/** The dynamic loader's reason a library did not open, in one line. */
function loaderReason(e: unknown): string {
  return (e instanceof Error ? e.message : String(e))
    .replace(/^(Could not open library: )+/, "").split("\n")[0];
}

/** Where the dynamic linker found a library opened by its bare name (Linux: the maps). */
function loadedPath(file: string): string {
  if (file.includes("/") || file.includes("\\") || Deno.build.os !== "linux") return file;
  try {
    const line = Deno.readTextFileSync("/proc/self/maps").split("\n")
      .find((l) => l.endsWith(`/${file}`));
    return line ? line.slice(line.indexOf("/")) : file;
  } catch {
    return file;
  }
}

/** The libraries of this thread (the handles are immutable after that). */
export function lib(): Native {
  if (!native) {
    let ssl: SslLib | undefined;
    let crypto: CryptoLib | undefined;
    // The C library is looked for on the first use of one of its symbols (platform.ts).
    const libc = lazySymbols(loadLibc, libcSymbols);
    native = {
      // OpenSSL is found and loaded on the first use of one of its symbols.
      get ssl() {
        return ssl ??= lazySymbols(() => loadOpenSsl().libssl, sslSymbols);
      },
      get crypto() {
        return crypto ??= lazySymbols(() => loadOpenSsl().libcrypto, cryptoSymbols);
      },
      libc,
    };
  }
  return native;
}

/** No C library to call on this platform (or STUNNEL_LIBC=none), or it did not load. */
export class LibcMissing extends Error {
  /** STUNNEL_LIBC named the file that did not load: an error, not the platform's lot. */
  constructor(message: string, readonly named = false) {
    super(message);
  }
}

/** The C library's file, loaded once per thread, or why not (throws LibcMissing, every time). */
export function loadLibc(): string {
  if (libcState.loaded !== undefined) return libcState.loaded;
  if (libcState.missing) throw libcState.missing;
  const file = libcFile();
  if (file === undefined) {
    const why = Deno.env.get("STUNNEL_LIBC") === "none"
      ? "STUNNEL_LIBC=none"
      : `${Deno.build.os} has no POSIX C library`;
    throw libcState.missing = new LibcMissing(`no C library (${why})`);
  }
  try {
    Deno.dlopen(file, { getpid: libcSymbols.getpid }).close();
  } catch (e) {
    const reason = loaderReason(e);
    throw libcState.missing = new LibcMissing(
      `the C library ${file} did not load: ${reason}`,
      Deno.env.get("STUNNEL_LIBC") === file,
    );
  }
  return libcState.loaded = loadedPath(file);
}

/** Copies `bytes` into memory OpenSSL handed to a callback (a buffer of at least that size). */
export function copyTo(dest: Ptr, bytes: Uint8Array): void {
  if (dest === null) throw new Error("no memory to copy into (NULL)");
  new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(dest, bytes.length)).set(bytes);
}

// libwrap: TCP Wrappers (libwrap.so.0), opened only when a service has `libwrap = yes`.
export const LIBWRAP = "libwrap.so.0";
const libwrapSymbols = {
  // hosts_ctl(daemon, client name, client address, user): reads /etc/hosts.{allow,deny}
  hosts_ctl: {
    parameters: ["buffer", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type LibWrap = Deno.DynamicLibrary<typeof libwrapSymbols>["symbols"];
let libwrapHandle: LibWrap | undefined;

/** Opens libwrap once per thread; throws (with the loader's reason) when it is missing. */
export function libwrap(): LibWrap {
  libwrapHandle ??= Deno.dlopen(LIBWRAP, libwrapSymbols).symbols;
  return libwrapHandle;
}

export type Ptr = Deno.PointerValue;

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s` for `char *` parameters. */
export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Reads a C string (or "" for NULL). */
export function readCString(p: Ptr): string {
  return p === null ? "" : new Deno.UnsafePointerView(p).getCString();
}

// OpenSSL constants that are macros in the headers.
export const SSL_FILETYPE_PEM = 1;
export const SSL_ERROR_NONE = 0;
export const SSL_ERROR_SSL = 1;
export const SSL_ERROR_WANT_READ = 2;
export const SSL_ERROR_WANT_WRITE = 3;
export const SSL_ERROR_SYSCALL = 5;
export const SSL_ERROR_ZERO_RETURN = 6;
export const SSL_ERROR_WANT_CLIENT_HELLO_CB = 11;
export const SSL_SENT_SHUTDOWN = 1;
export const SSL_RECEIVED_SHUTDOWN = 2;
export const SSL_CTRL_SET_TLSEXT_HOSTNAME = 55;
export const SSL_CTRL_GET_PEER_TMP_KEY = 109;
export const SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59;
export const SSL_CTRL_SET_SESS_CACHE_SIZE = 42;
export const SSL_CTRL_SET_SESS_CACHE_MODE = 44;
export const SSL_CTRL_MODE = 33;
export const SSL_CTRL_CHAIN_CERT = 89;
export const SSL_CTRL_SET_GROUPS_LIST = 92;
export const SSL_CTRL_SET_MIN_PROTO_VERSION = 123;
export const SSL_CTRL_SET_MAX_PROTO_VERSION = 124;
export const SSL_CTRL_GET_MAX_PROTO_VERSION = 131;
export const SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1;
export const SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2;
export const SSL_MODE_RELEASE_BUFFERS = 0x10;
export const SSL_SESS_CACHE_OFF = 0;
export const SSL_SESS_CACHE_CLIENT = 1;
export const SSL_SESS_CACHE_SERVER = 2;
export const BIO_CTRL_PENDING = 10;
export const BIO_C_SET_BUF_MEM_EOF_RETURN = 130;
export const TLSEXT_NAMETYPE_host_name = 0;
export const O_RDWR = 2;
export const SSL_VERIFY_NONE = 0;
export const SSL_VERIFY_PEER = 1;
export const SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2;
// sni.ts
export const SSL_CTRL_SET_TLSEXT_SERVERNAME_CB = 53;
export const SSL_TLSEXT_ERR_OK = 0;
export const SSL_TLSEXT_ERR_ALERT_FATAL = 2;
export const SSL_TLSEXT_ERR_NOACK = 3;
export const SSL_CLIENT_HELLO_SUCCESS = 1;
export const SSL_CLIENT_HELLO_ERROR = 0;
export const SSL_CLIENT_HELLO_RETRY = -1;
export const TLSEXT_TYPE_server_name = 0;
export const X509_VP_FLAG_OVERWRITE = 0x2;
export const X509_VP_FLAG_RESET_FLAGS = 0x4;
// session.ts
export const SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72;
export const TLS1_3_VERSION = 0x304;
// psk.ts
export const PSK_MAX_IDENTITY_LEN = 256;
export const PSK_MAX_PSK_LEN = 512;
// policy.ts
export const SSL_CTRL_SET_TMP_DH = 3;
export const SSL_CTRL_SET_DH_AUTO = 118;
export const SSL_CONF_FLAG_FILE = 0x2;
export const SSL_CONF_FLAG_CLIENT = 0x4;
export const SSL_CONF_FLAG_SERVER = 0x8;
export const SSL_CONF_FLAG_CERTIFICATE = 0x20;
export const SSL_CB_ACCEPT_LOOP = 0x2001;
export const SSL_CB_HANDSHAKE_DONE = 0x20;
export const TLS_ST_SR_CLNT_HELLO = 20;

export const PROTOCOL_VERSIONS: Record<string, number> = {
  SSLv3: 0x300,
  TLSv1: 0x301,
  "TLSv1.1": 0x302,
  "TLSv1.2": 0x303,
  "TLSv1.3": 0x304,
};

/** One entry of the OpenSSL error queue, formatted as stunnel logs it. */
export interface OpenSslError {
  code: bigint;
  /** e.g. `../ssl/record/ssl3_record.c:350: error:0A00010B:SSL routines::wrong version number` */
  text: string;
}

/** Empties the (per-thread) OpenSSL error queue, oldest first. */
export function drainErrors(): OpenSslError[] {
  const { crypto } = lib();
  const errors: OpenSslError[] = [];
  const file = new BigUint64Array(1);
  const line = new Int32Array(1);
  const buf = new Uint8Array(256);
  for (;;) {
    const code = crypto.ERR_get_error_all(
      new Uint8Array(file.buffer),
      new Uint8Array(line.buffer),
      null,
      null,
      null,
    );
    if (code === 0n) return errors;
    crypto.ERR_error_string_n(code, buf, BigInt(buf.length));
    const reason = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    const filePtr = Deno.UnsafePointer.create(file[0]);
    errors.push({ code, text: `${readCString(filePtr)}:${line[0]}: ${reason}` });
  }
}

/** The calling thread's errno, right after a failed libc call (oserror.ts words it). */
export function errno(): number {
  const p = lib().libc.errno_location();
  return p === null ? 0 : new Deno.UnsafePointerView(p).getInt32();
}

export function opensslVersion(): string {
  return readCString(lib().crypto.OpenSSL_version(0));
}

/** Whatever `print` writes into a memory BIO, as text. */
export function bioText(print: (bio: Ptr) => void): string {
  const { crypto } = lib();
  const bio = crypto.BIO_new(crypto.BIO_s_mem());
  if (bio === null) return "";
  try {
    print(bio);
    const n = Number(crypto.BIO_ctrl(bio, BIO_CTRL_PENDING, 0n, null));
    const buf = new Uint8Array(Math.max(n, 0));
    const got = n > 0 ? crypto.BIO_read(bio, buf, n) : 0;
    return new TextDecoder().decode(buf.subarray(0, Math.max(got, 0)));
  } finally {
    crypto.BIO_free(bio);
  }
}
