#!/usr/bin/env bash
# The README commands.
#
#   ./dev.sh start [CONF]   run the proxy on CONF (default examples/stunnel.conf)
#   ./dev.sh test [ARGS]    run the whole test suite (ARGS go to `deno test`, e.g. --filter x);
#                           without ARGS the quick reliability suite runs after it
#   ./dev.sh soak [--quick] [ARGS]   the reliability suite (tests/reliability/soak.ts)
#
# All first make sure the Deno pinned in tools/deno/package.json is installed (with npm).
# `test` and `soak` also install the programs the tests drive (openssl, curl, stunnel4, socat,
# testssl.sh, ...) and the C headers the name-table tests read (libssl-dev, libc6-dev) when they
# are missing and we are root; both end with a plain `N passed, N failed` line.
# Environment: PROXY_CMD=stunnel4 runs the end-to-end tests against the reference stunnel.
set -euo pipefail
cd "$(dirname "$0")"

# The pinned Deno lives in its own npm project, so that Deno does not take the root for one.
DENO_DIR_PIN=tools/deno
DENO=$DENO_DIR_PIN/node_modules/.bin/deno

pinned_deno_version() {
  sed -n 's/.*"deno"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$DENO_DIR_PIN/package.json" | head -n 1
}

ensure_deno() {
  local want have=""
  want="$(pinned_deno_version)"
  if [[ -x "$DENO" ]]; then
    have="$("$DENO" --version 2>/dev/null | head -n 1 | awk '{print $2}')" || have=""
  fi
  if [[ -z "$have" || "$have" != "$want" ]]; then
    echo "dev.sh: installing Deno ${want} (found: ${have:-none}) with npm" >&2
    npm install --prefix "$DENO_DIR_PIN" --no-audit --no-fund >&2
    have="$("$DENO" --version | head -n 1 | awk '{print $2}')"
    if [[ "$have" != "$want" ]]; then
      echo "dev.sh: expected Deno $want, got $have" >&2
      exit 1
    fi
  fi
}

# What the end-to-end tests drive: "PROBE PACKAGE", where PROBE is a command on PATH or, for
# a package without one, a file it installs.
TEST_TOOLS=(
  "openssl openssl"
  "curl curl"
  "stunnel4 stunnel4"
  "socat socat"
  "/usr/bin/softhsm2-util softhsm2"
  "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so libengine-pkcs11-openssl"
  "pkcs11-tool opensc"
  "/usr/lib/postgresql/15/bin/postgres postgresql"
  "/usr/lib/dovecot/imap dovecot-imapd"
  "/usr/lib/dovecot/pop3 dovecot-pop3d"
  "/usr/sbin/slapd slapd"
  "ldapsearch ldap-utils"
  "/usr/lib/postfix/sbin/master postfix"
  "/usr/sbin/iptables iptables"
  "/usr/sbin/ip iproute2"
  "unshare util-linux"
  "/lib/x86_64-linux-gnu/libwrap.so.0 libwrap0"
  "setsid util-linux"
  "ps procps"
  "/usr/include/openssl/ssl.h libssl-dev"
  "/usr/include/syslog.h libc6-dev"
  "prlimit util-linux"
  "testssl testssl.sh"
  "/usr/sbin/haproxy haproxy"
  "promtool prometheus"
  "/usr/lib/python3/dist-packages/prometheus_client/parser.py python3-prometheus-client"
)

ensure_test_tools() {
  local missing=() entry probe package
  for entry in "${TEST_TOOLS[@]}"; do
    read -r probe package <<<"$entry"
    if [[ "$probe" == /* ]]; then
      [[ -e "$probe" ]] || missing+=("$package")
    else
      command -v "$probe" >/dev/null 2>&1 || missing+=("$package")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ "$(id -u)" != 0 ]]; then
    echo "dev.sh: missing ${missing[*]}; not root, so not installing (tests needing them fail)" >&2
    return 0
  fi
  echo "dev.sh: installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  # The servers the tests start themselves (PostgreSQL, Dovecot, slapd, Postfix) must not be
  # started by their packages: Postfix gets no system configuration, and while installing, a
  # policy-rc.d (if there is none) denies every service start.
  if command -v debconf-set-selections >/dev/null 2>&1; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  fi
  local policy=/usr/sbin/policy-rc.d made_policy="" rc=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || rc=$?
  if [[ -n "$made_policy" ]]; then rm -f "$policy"; fi
  return "$rc"
}

# Throwaway certificates for examples/stunnel.conf: a CA and a localhost server certificate.
ensure_example_certs() {
  local d=examples/certs
  [[ -f "$d/server.pem" && -f "$d/server.key" && -f "$d/ca.pem" ]] && return 0
  command -v openssl >/dev/null 2>&1 || { echo "dev.sh: openssl is needed to make $d" >&2; exit 1; }
  echo "dev.sh: generating throwaway certificates in $d" >&2
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=stunnel-deno example CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 365 -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n') \
    -out "$d/server.pem" 2>/dev/null
  rm -f "$d/server.csr" "$d/ca.srl"
  chmod 600 "$d/ca.key" "$d/server.key"
}

cmd_start() {
  ensure_deno
  if [[ -z "${1:-}" ]]; then ensure_example_certs; fi
  exec "$DENO" run -A main.ts "${1:-examples/stunnel.conf}"
}

# The quick reliability suite's limit; the full one runs 10 minutes of load, and more beside.
SOAK_TIMEOUT_QUICK=900
SOAK_TIMEOUT_FULL=3600

# Runs the reliability suite with ARGS; its output ends with `N passed, N failed`.
run_soak() {
  local limit=$SOAK_TIMEOUT_FULL
  if [[ " $* " == *" --quick "* ]]; then limit=$SOAK_TIMEOUT_QUICK; fi
  timeout --kill-after=15 "$limit" "$DENO" run -A tests/reliability/soak.ts "$@" </dev/null
}

cmd_soak() {
  ensure_deno
  ensure_test_tools
  run_soak "$@"
}

cmd_test() {
  ensure_deno
  ensure_test_tools
  local out rc=0 summary failures passed failed ignored
  out="$(mktemp "${TMPDIR:-/tmp}/dev-test.XXXXXX")"
  # Outer bound in case the runner itself hangs; every test also has its own time limit.
  timeout --kill-after=15 "${DEV_TEST_TIMEOUT:-1200}" \
    "$DENO" test -A tests/ "$@" 2>&1 </dev/null | tee "$out" || rc=$? # pipefail: deno's status
  # Deno's summary: "ok | 12 passed | 0 failed (3s)", "FAILED | 10 passed | 2 failed | 1 ignored ..."
  summary="$(sed 's/\x1b\[[0-9;]*m//g' "$out" | grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -n 1)" || true
  # The failed tests' names again, near the end, where a CI log's tail shows them.
  failures="$(sed 's/\x1b\[[0-9;]*m//g' "$out" | sed -n '/^ FAILURES/,$p' | grep -E ' => ')" || true
  rm -f "$out"
  if [[ -z "$summary" ]]; then
    # No summary: the runner failed before or while running tests (type error, timeout, crash).
    echo "0 passed, 1 failed"
    exit 1
  fi
  passed="$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '^[0-9]+')"
  failed="$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '^[0-9]+')"
  ignored="$(grep -oE '[0-9]+ ignored' <<<"$summary" | grep -oE '^[0-9]+')" || ignored=0
  # The whole suite (no ARGS) also runs the quick reliability suite; its checks count too.
  if (($# == 0)); then
    local soak_out soak_rc=0 soak_summary
    soak_out="$(mktemp "${TMPDIR:-/tmp}/dev-soak.XXXXXX")"
    run_soak --quick 2>&1 | tee "$soak_out" || soak_rc=$?
    soak_summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$soak_out" | tail -n 1)" || true
    rm -f "$soak_out"
    if [[ -z "$soak_summary" ]]; then
      soak_summary="0 passed, 1 failed" # it did not get to its summary
    fi
    if [[ -n "$failures" ]]; then printf 'deno test failures:\n%s\n' "$failures"; fi
    echo "deno test: ${passed} passed, ${failed} failed; quick soak: ${soak_summary}"
    passed=$((passed + $(grep -oE '^[0-9]+' <<<"$soak_summary")))
    failed=$((failed + $(grep -oE '[0-9]+ failed' <<<"$soak_summary" | grep -oE '^[0-9]+')))
    if ((soak_rc != 0 && rc == 0)); then rc=$soak_rc; fi
  fi
  if ((ignored > 0)); then
    echo "${passed} passed, ${failed} failed, ${ignored} skipped"
  else
    echo "${passed} passed, ${failed} failed"
  fi
  if ((failed > 0)); then exit 1; fi
  if ((rc != 0)); then exit "$rc"; fi
}

case "${1:-}" in
  start)
    shift
    cmd_start "$@"
    ;;
  test)
    shift
    cmd_test "$@"
    ;;
  soak)
    shift
    cmd_soak "$@"
    ;;
  *)
    echo "usage: $0 start [CONF] | $0 test [deno test args] | $0 soak [--quick] [soak args]" >&2
    exit 2
    ;;
esac
