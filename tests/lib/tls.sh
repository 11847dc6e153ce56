# shellcheck shell=bash disable=SC2034
# tests/lib/tls.sh - shared helpers for the TLS shell tests (sourced, bash only).
#
# tls_init              makes $WORK (mktemp -d) and installs the EXIT trap that
#                       kills every process recorded with tls_track, runs the
#                       functions registered with tls_on_exit, removes $WORK and
#                       prints the "N passed, M failed" line.
# ok/not_ok/check_*     TAP-like "ok - ..." / "not ok - ..." lines.
# tls_start_server      starts `openssl s_server` on 127.0.0.1 on a free random
#                       port (retrying on bind failures); sets SERVER_PID,
#                       SERVER_PORT, SERVER_OUT, SERVER_ERR.
# tls_stop              stops one recorded process by PID (TERM, then KILL).
# tls_client            a plain OpenSSL client (OPENSSL_CONF unset), bounded.
#
# Environment: the token's env.sh (P11TLS_*), loaded by tests/with-token.sh.

TLS_DONE=0
TLS_PIDS=()
TLS_EXIT_HOOKS=()
WORK=
# Set by tls_start_server for the caller (SC2034: used by the scripts).
SERVER_PID=
SERVER_PORT=
SERVER_OUT=
SERVER_ERR=

# Bounds (seconds).
TLS_SERVER_START_TIMEOUT=${TLS_SERVER_START_TIMEOUT:-30}
TLS_SERVER_LIFETIME=${TLS_SERVER_LIFETIME:-600}
TLS_CLIENT_TIMEOUT=${TLS_CLIENT_TIMEOUT:-30}
TLS_CMD_TIMEOUT=${TLS_CMD_TIMEOUT:-60}

# ok, not_ok, check, check_eq, tap_finish
# shellcheck source=tests/lib/tap.sh
. "$(dirname "${BASH_SOURCE[0]}")/tap.sh"
# tls_spy_cnf
# shellcheck source=tests/lib/spy.sh
. "$(dirname "${BASH_SOURCE[0]}")/spy.sh"
# check_ne DESCRIPTION A B: both non-empty and different.
check_ne() {
  if [ -n "$2" ] && [ -n "$3" ] && [ "$2" != "$3" ]; then
    ok "$1"
  else
    not_ok "$1 ('$2' vs '$3')"
  fi
}
# check_grep DESCRIPTION FILE ERE: FILE has a line matching ERE.
check_grep() {
  if grep -aEq -- "$3" "$2" 2>/dev/null; then
    ok "$1"
  else
    not_ok "$1 (no line matching /$3/ in $(basename "$2"))"
    tls_show "$2"
  fi
}
# Shows the end of a file on stderr (diagnostics for a failed check). A PIN in
# a p11-kit call log (C_Login's "pPin = (N) ...") is masked.
tls_show() {
  [ -f "$1" ] || return 0
  echo "# --- last lines of $(basename "$1"):" >&2
  tail -n 15 -- "$1" | sed -e 's/\(pPin = ([0-9]*)\).*/\1 <masked>/' -e 's/^/#   /' >&2
}

tls_track() { TLS_PIDS+=("$1"); }
tls_on_exit() { TLS_EXIT_HOOKS+=("$1"); }

tls_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# tls_stop PID: TERM, wait up to 5 s, then KILL; reaps it.
tls_stop() {
  local pid=$1 i
  [ -n "$pid" ] || return 0
  if tls_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      tls_alive "$pid" || break
      # A dead child stays a zombie until waited for: kill -0 still succeeds.
      if [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" = Z ]; then
        break
      fi
      sleep 0.1
    done
    if tls_alive "$pid" && [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" != Z ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
}

# tls_wait_exit PID SECONDS: waits for PID to exit on its own; 1 on timeout.
tls_wait_exit() {
  local pid=$1 n=$(($2 * 10)) i st
  for ((i = 0; i < n; i++)); do
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
    if [ -z "$st" ] || [ "$st" = Z ]; then
      wait "$pid" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
  return 1
}

tls_cleanup() {
  local rc=$? pid h
  set +e
  for pid in "${TLS_PIDS[@]}"; do
    tls_stop "$pid"
  done
  for h in "${TLS_EXIT_HOOKS[@]}"; do
    "$h"
  done
  [ -z "$WORK" ] || rm -rf -- "$WORK"
  if [ "$TLS_DONE" = 0 ]; then
    not_ok "the script stopped early (exit status $rc)"
    tap_finish || true
    rc=1
  fi
  exit "$rc"
}

tls_init() {
  local v
  for v in P11TLS_KIND P11TLS_OPENSSL_CNF P11TLS_KEY_URI P11TLS_CERT P11TLS_PIN_FILE; do
    if [ -z "${!v:-}" ]; then
      echo "Bail out! $v is not set: run through tests/with-token.sh with a token that has the provider" >&2
      exit 1
    fi
  done
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11tls-test.XXXXXX")
  trap tls_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# tls_finish: the summary line; exit status 1 if any check failed.
tls_finish() {
  TLS_DONE=1
  tap_finish
}

tls_random_port() { echo $((20000 + $(od -An -tu4 -N4 /dev/urandom | tr -d ' ') % 40000)); }

# tls_start_server NAME STDIN_FD_OR_EMPTY S_SERVER_ARGS...
# Runs `openssl s_server -accept 127.0.0.1:PORT ARGS` with the environment of the
# caller (set OPENSSL_CONF for it), stdout/stderr in $WORK/NAME.out/.err. With a
# STDIN_FD the server reads that descriptor (a FIFO that never delivers data, for
# servers that are not -www); else /dev/null. Waits for "ACCEPT"; on a bind
# failure retries on another port (10 attempts). Returns 1 if it never starts.
tls_start_server() {
  local name=$1 infd=$2 attempt port pid i
  shift 2
  SERVER_OUT=$WORK/$name.out
  SERVER_ERR=$WORK/$name.err
  for ((attempt = 0; attempt < 10; attempt++)); do
    port=$(tls_random_port)
    if [ -n "$infd" ]; then
      timeout -s TERM "$TLS_SERVER_LIFETIME" openssl s_server -accept "127.0.0.1:$port" "$@" \
        >"$SERVER_OUT" 2>"$SERVER_ERR" <&"$infd" &
    else
      timeout -s TERM "$TLS_SERVER_LIFETIME" openssl s_server -accept "127.0.0.1:$port" "$@" \
        >"$SERVER_OUT" 2>"$SERVER_ERR" </dev/null &
    fi
    pid=$!
    tls_track "$pid"
    for ((i = 0; i < TLS_SERVER_START_TIMEOUT * 10; i++)); do
      grep -q '^ACCEPT' "$SERVER_OUT" 2>/dev/null && break
      tls_alive "$pid" || break
      [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" != Z ] || break
      sleep 0.1
    done
    if grep -q '^ACCEPT' "$SERVER_OUT" 2>/dev/null; then
      SERVER_PID=$pid
      SERVER_PORT=$port
      return 0
    fi
    tls_stop "$pid"
    if grep -qiE 'bind|address already in use|in use' "$SERVER_ERR"; then
      continue
    fi
    echo "# s_server $name did not start:" >&2
    tls_show "$SERVER_ERR"
    return 1
  done
  echo "# s_server $name: no free port after 10 attempts" >&2
  return 1
}

# tls_client OUT ARGS...: plain OpenSSL s_client (OPENSSL_CONF unset) to the
# current server, sending an HTTP GET; stdout in OUT, stderr in OUT.err. Pass
# -ign_eof for -www servers (wait for the response); without it the client
# closes once the GET is sent. Returns s_client's status (137: timed out).
# TLS_CLIENT_CNF: an OpenSSL configuration for the client (e.g. tls_spy_cnf's).
tls_client() {
  local out=$1
  shift
  printf 'GET / HTTP/1.0\r\n\r\n' |
    env -u OPENSSL_CONF ${TLS_CLIENT_CNF:+"OPENSSL_CONF=$TLS_CLIENT_CNF"} timeout -s KILL "$TLS_CLIENT_TIMEOUT" openssl s_client \
      -connect "127.0.0.1:$SERVER_PORT" -servername localhost "$@" >"$out" 2>"$out.err"
}

# tls_keylog_secret FILE CLIENT_RANDOM: the secret logged for that client random
# (lowercase hex), empty if none.
tls_keylog_secret() {
  awk -v cr="$(echo "$2" | tr 'A-F' 'a-f')" \
    '$1 == "CLIENT_RANDOM" && tolower($2) == cr { s = tolower($3) } END { print s }' "$1"
}

# tls_keylog_last_random FILE: the client random of the last CLIENT_RANDOM line.
tls_keylog_last_random() {
  awk '$1 == "CLIENT_RANDOM" { r = tolower($2) } END { print r }' "$1"
}

# tls_server_random MSGFILE: the server random (lowercase hex) from s_client -msg output.
tls_server_random() {
  awk '
    /^<<< .*Handshake .*, ServerHello$/ { grab = 1; next }
    grab && /^ / { for (i = 1; i <= NF; i++) b[n++] = $i; next }
    grab { exit }
    END { if (n >= 38) { for (i = 6; i < 38; i++) printf "%s", b[i]; print "" } }' "$1"
}

# tls_keymat FILE: the "Keying material:" value printed by s_client/s_server (uppercase hex).
tls_keymat() {
  sed -n 's/^[[:space:]]*Keying material: *\([0-9A-Fa-f]*\)[[:space:]]*$/\1/p' "$1" | tail -n 1 |
    tr 'a-f' 'A-F'
}

tls_hex() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }

# tls_kdf CNF_OR_EMPTY DIGEST KEYLEN HEXSECRET HEXSEED: one `openssl kdf TLS1-PRF`
# in a new process; with CNF as OPENSSL_CONF, without it plain OpenSSL. Prints
# the output as uppercase hex without colons; the status is openssl's.
tls_kdf() {
  local cnf=$1 out rc=0
  if [ -n "$cnf" ]; then
    out=$(OPENSSL_CONF=$cnf timeout -s KILL "$TLS_CMD_TIMEOUT" openssl kdf -keylen "$3" \
      -kdfopt "digest:$2" -kdfopt "hexsecret:$4" -kdfopt "hexseed:$5" TLS1-PRF) || rc=$?
  else
    out=$(env -u OPENSSL_CONF timeout -s KILL "$TLS_CMD_TIMEOUT" openssl kdf -keylen "$3" \
      -kdfopt "digest:$2" -kdfopt "hexsecret:$4" -kdfopt "hexseed:$5" TLS1-PRF) || rc=$?
  fi
  printf '%s\n' "$out" | tr -d ':[:space:]' | tr 'a-f' 'A-F'
  return "$rc"
}

