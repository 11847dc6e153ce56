#!/usr/bin/env bash
# fail_closed.sh - the mistakes a new user makes with their own token, openssl.cnf
# and nginx (workers as www-data), each of which must stop p11tls with the cause
# named, never run the TLS secrets in software while p11tls says it is active,
# never spend a login attempt it knows is wasted, and never stay broken once the
# token is back (run through with-token.sh, on a private token made for it):
#   1 no default_properties: the status and nginx name the missing line; nginx does
#     not serve; with min-assurance = key-only it serves ECDHE and refuses RSA key
#     exchange with the cause
#   2 an empty PIN file, a directory as the PIN file, a token that reports its PIN
#     locked or one try left: refused before any C_Login (counted by the interposed
#     module tests/shim/p11shim.so); a good configuration logs in exactly once
#   3 the token's storage removed and restored under nginx load (workers that had
#     served TLS 1.3 but made no TLS 1.2 handle yet): TLS 1.2 comes back on every
#     worker without a reload, within RECOVERY_MAX_S (the time is printed)
#   4 (SoftHSM2) the handle key provisioned by root, unreadable by the workers: the
#     handshake error names the worker's user and the user that found the key
#   5 a worker that cannot re-open the token after fork (SoftHSM2: no
#     `env SOFTHSM2_CONF;`; NSS: a database the worker's user cannot read): its
#     log names the user and the likely cause
#   6 an unknown key in p11tls's section is refused by name; pkcs11-provider's names
#     work as aliases; a long cause is never cut in the status line
#   7 a TLS 1.1 client: the handshake fails and nginx's log says why, at [crit]
#   8 P11TLS_DEBUG=file:PATH writes there; a log file that cannot be opened is said
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
build=${P11TLS_BUILD_DIR:?}
. "$src/scripts/lib/nginx.sh"
. "$src/tests/lib/tap.sh"
. "$src/tests/lib/load.sh"

RECOVERY_MAX_S=5 # every worker serves TLS 1.2 again within this time of the return
OUTAGE_S=2

work=$(mktemp -d /tmp/p11tls-failclosed.XXXXXX)
chmod 755 "$work"
load_pids=()
cleanup() {
  load_stop "$work/stop-load" 7 "${load_pids[@]}"
  for d in "$work"/ngx*; do [ -d "$d" ] && ngx_stop "$d"; done
  [ -n "${store:-}" ] && [ -d "$store.away" ] && mv "$store.away" "$store"
  rm -rf "$work"
}
trap cleanup EXIT

# A private token of the fixture's kind (this test removes its storage and its
# handle key): made by make-token.sh, not shared with other tests.
kind=$P11TLS_KIND
fixture_cert_dir=$P11TLS_DIR
"$src/scripts/make-token.sh" --kind "$kind" --dir "$work/tok" --no-client > "$work/make-token.log" 2>&1 ||
  { cat "$work/make-token.log" >&2; exit 1; }
. "$work/tok/env.sh"
[ "$P11TLS_DIR" = "$work/tok" ] || { echo "wrong token directory $P11TLS_DIR (fixture $fixture_cert_dir)" >&2; exit 1; }
cnf=$P11TLS_OPENSSL_CNF
case "$kind" in
softhsm) store=$P11TLS_DIR/tokens ;;
nss) store=$P11TLS_DIR/nssdb ;;
*) echo "fail_closed.sh: token kind $kind is not covered" >&2; exit 1 ;;
esac
ngx_grant_token_access www-data

# status CNF: the p11tls provider's "name: ..." and "status: ..." lines.
status() {
  OPENSSL_CONF=$1 timeout 60 openssl list -providers -verbose 2>&1 | grep -A3 '^  p11tls$' |
    grep -E '^ +(name|status):' || true
}
# variant NAME SED: a copy of the token's openssl.cnf changed by SED; prints its path.
variant() {
  sed "$2" "$cnf" > "$work/$1.cnf"
  echo "$work/$1.cnf"
}
port=$(p11_free_port)
curl_at() { # curl_at PORT [curl options...]: prints the HTTP code (000 on failure)
  local p=$1
  shift
  curl -sS -o /dev/null -w '%{http_code}' --max-time 20 --cacert "$P11TLS_CERT" \
    --resolve "localhost:$p:127.0.0.1" -H 'Connection: close' "$@" "https://localhost:$p/" 2> /dev/null || true
}
tls12() { curl_at "$port" --tlsv1.2 --tls-max 1.2 "$@"; }
# start_fails WHAT CNF EXPECT-ERE: nginx with CNF refuses to start; its output names EXPECT.
start_fails() {
  local what=$1 c=$2 expect=$3 d=$work/ngx-bad rc=0
  mkdir -p "$d"
  [ -f "$d/nginx.conf" ] || ngx_write_conf "$d" "$port"
  : > "$d/error.log"
  OPENSSL_CONF=$c timeout 30 nginx -c "$d/nginx.conf" -g 'daemon off;' > "$d/stdout.log" 2>&1 || rc=$?
  check "$what: nginx refuses to start (exit status $rc)" [ "$rc" -eq 1 ]
  check "$what: nginx's log names the cause (/$expect/)" grep -qE -- "$expect" "$d/error.log" "$d/stdout.log"
}

# ------------------------------------------------------------------ 1 routing
echo "# 1. openssl.cnf without default_properties"
noprops=$(variant noprops '/default_properties/d')
st=$(status "$noprops")
check "status: inactive without default_properties" grep -q 'status: inactive' <<< "$st"
check "status names the line to add" grep -q "default_properties = ?provider=p11tls" <<< "$st"
check "status names the provider that would win (default)" grep -q "from provider 'default'" <<< "$st"
start_fails "no default_properties" "$noprops" "default_properties = \?provider=p11tls"
# The same through s_server: no TLS 1.2 handshake completes (secrets would be on the host).
rc=0
echo | OPENSSL_CONF=$noprops timeout 20 openssl s_server -accept "127.0.0.1:$port" -key "$P11TLS_KEY_URI" \
  -cert "$P11TLS_CERT" -naccept 1 > "$work/s_server.log" 2>&1 || rc=$?
check "s_server refuses to use the key without default_properties (exit $rc)" [ "$rc" -ne 0 ]
check "s_server says why" grep -q "default_properties" "$work/s_server.log"
# key-only: accepted on purpose; ECDHE serves (secrets on the host, as configured),
# RSA key exchange is refused with the cause instead of a bad_record_mac.
keyonly=$(variant keyonly '/default_properties/d; s/^min-assurance = .*/min-assurance = key-only/')
st=$(status "$keyonly")
check "key-only: status active" grep -q 'status: active' <<< "$st"
check "key-only: status says only the key is in the token" grep -q "key only" <<< "$st"
ngx=$work/ngx1
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port"
ngx_start "$ngx" "$keyonly"
check_eq "key-only: ECDHE-RSA served" 200 "$(tls12 --ciphers ECDHE-RSA-AES128-GCM-SHA256)"
check_eq "key-only: RSA key exchange refused" 000 "$(tls12 --ciphers AES128-GCM-SHA256)"
sleep 0.3
check "key-only: nginx's log says why RSA key exchange fails" \
  grep -q "RSA key exchange keeps the pre-master secret in the token" "$ngx/error.log"
ngx_stop "$ngx"

# ---------------------------------------------------------------------- 2 PIN
echo "# 2. PINs p11tls must not send"
shim=$build/tests/p11shim.so
check "the interposer module was built" [ -f "$shim" ]
shimcnf=$(variant shim "s|^pkcs11-module = .*|pkcs11-module = $shim|")
export P11SHIM_MODULE=$P11TLS_MODULE P11SHIM_LOGIN_LOG=$work/logins
logins() { if [ -f "$P11SHIM_LOGIN_LOG" ]; then wc -l < "$P11SHIM_LOGIN_LOG"; else echo 0; fi; }
rm -f "$P11SHIM_LOGIN_LOG"
st=$(status "$shimcnf")
check "through the interposer: active" grep -q 'status: active' <<< "$st"
check_eq "openssl list logs in exactly once" 1 "$(logins)"
: > "$work/empty.pin"
mkdir -p "$work/pin.dir"
for case in "empty:$work/empty.pin:is empty" "directory:$work/pin.dir:is not a regular file"; do
  IFS=: read -r what path expect <<< "$case"
  rm -f "$P11SHIM_LOGIN_LOG"
  st=$(status "$(variant "pin-$what" "s|^pkcs11-module = .*|pkcs11-module = $shim|; s|^pin-source = .*|pin-source = file:$path|")")
  check "$what PIN file: refused" grep -q 'status: inactive' <<< "$st"
  check "$what PIN file: the cause names the option and the file" grep -qF "pin-source: PIN file '$path' $expect" <<< "$st"
  check_eq "$what PIN file: no C_Login made" 0 "$(logins)"
done
for case in "0x20000:one PIN attempt left (CKF_USER_PIN_FINAL_TRY)" "0x40000:user PIN locked (CKF_USER_PIN_LOCKED)"; do
  flags=${case%%:*}
  expect=${case#*:}
  rm -f "$P11SHIM_LOGIN_LOG"
  st=$(P11SHIM_TOKEN_FLAGS=$flags status "$shimcnf")
  check "token flags $flags: refused" grep -q 'status: inactive' <<< "$st"
  check "token flags $flags: says $expect" grep -qF "$expect" <<< "$st"
  check_eq "token flags $flags: no C_Login made" 0 "$(logins)"
done
unset P11SHIM_LOGIN_LOG

# --------------------------------------------------- 3 storage gone and back
echo "# 3. the token's storage removed and restored under load"
ngx=$work/ngx3
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port" protocols="TLSv1.2 TLSv1.3"
ngx_start "$ngx" "$cnf"
mapfile -t workers < <(ngx_workers "$ngx")
check_eq "two workers" 2 "${#workers[@]}"
# Every worker uses the token (the ECDHE signature) but makes no handle first: a
# client that does not trust the certificate ends each handshake before its key
# exchange (curl without --cacert).
for i in $(seq 1 12); do
  curl -sS -o /dev/null --max-time 20 --resolve "localhost:$port:127.0.0.1" --tlsv1.2 --tls-max 1.2 \
    --ciphers ECDHE-RSA-AES128-GCM-SHA256 "https://localhost:$port/" 2> /dev/null || true
done
sleep 0.3
signed=$(grep -E 'alert (unknown ca|bad certificate|certificate unknown)' "$ngx/error.log" |
  sed -n 's/.*\] \([0-9]*\)#.*/\1/p' | sort -u | wc -l)
check "both workers signed with the token before the outage, no handle made (by $signed)" [ "$signed" -eq 2 ]
rm -f "$work/stop-load"
: > "$ngx/access.log"
mv "$store" "$store.away"
t_gone=$EPOCHREALTIME
for l in 1 2 3; do
  (
    while [ ! -e "$work/stop-load" ]; do
      echo "$EPOCHREALTIME $(tls12 --ciphers ECDHE-RSA-AES128-GCM-SHA256:AES128-GCM-SHA256)"
    done
  ) > "$work/load.$l" &
  load_pids+=($!)
done
sleep "$OUTAGE_S"
mv "$store.away" "$store"
t_back=$EPOCHREALTIME
mark=$(wc -l < "$ngx/access.log")
# Wait (bounded) until each worker has served a TLS 1.2 request after the return.
recovered=""
for i in $(seq 1 $((RECOVERY_MAX_S * 10 + 20))); do
  n=0
  for w in "${workers[@]}"; do
    tail -n +"$((mark + 1))" "$ngx/access.log" | awk -v w="$w" '$1 == w && $2 == "TLSv1.2" && $5 == 200' |
      grep -q . && n=$((n + 1))
  done
  [ "$n" -eq 2 ] && { recovered=$EPOCHREALTIME; break; }
  sleep 0.1
done
load_stop "$work/stop-load" 7 "${load_pids[@]}"
load_pids=()
failed=$(cat "$work"/load.* | awk '$2 != 200' | wc -l)
total=$(cat "$work"/load.* | wc -l)
during=$(cat "$work"/load.* | awk -v a="$t_gone" -v b="$t_back" '$1 >= a && $1 <= b && $2 != 200' | wc -l)
echo "# requests: $total, failed: $failed ($during while the storage was away)"
if [ -n "$recovered" ]; then
  secs=$(awk -v a="$t_back" -v b="$recovered" 'BEGIN { printf "%.2f", b - a }')
  echo "# every worker served TLS 1.2 again $secs s after the storage came back"
  check "every worker serves TLS 1.2 again within ${RECOVERY_MAX_S} s ($secs s), without a reload" \
    awk -v s="$secs" -v m="$RECOVERY_MAX_S" 'BEGIN { exit !(s <= m) }'
else
  not_ok "every worker serves TLS 1.2 again within ${RECOVERY_MAX_S} s (not all did)"
  tail -n 5 "$ngx/error.log" >&2
fi
now_workers=$(ngx_workers "$ngx" | tr '\n' ' ')
check_eq "the same workers (no reload, no crash)" "${workers[*]} " "$now_workers"
if [ "$kind" = softhsm ]; then
  check "during the outage handshakes failed (the outage was real: $during)" [ "$during" -gt 0 ]
  check "nginx's log says the handle key is not visible and the token is re-opened" \
    grep -q "handle key 'p11tls-ms-wrap-transient-v2' is not visible.*treats the token as lost" "$ngx/error.log"
  check "no attempt to create the handle key in a worker" bash -c "! grep -q 'creating the handle key' '$ngx/error.log'"
fi
ngx_stop "$ngx"

# ------------------------------------------------------------ 4 ownership trap
if [ "$kind" = softhsm ]; then
  echo "# 4. the handle key provisioned by root, unreadable by the workers"
  # Delete the handle key, then provision it again as root after access was granted:
  # SoftHSM2 writes the new object file for root alone (0600).
  if GNUTLS_PIN=$(cat "$P11TLS_PIN_FILE") p11tool --provider "$P11TLS_MODULE" --login --batch \
    --delete "pkcs11:token=p11tls;object=p11tls-ms-wrap-transient-v2" > "$work/p11tool.log" 2>&1; then
    ok "the handle key deleted (p11tool)"
  else
    not_ok "the handle key deleted (p11tool)"
    cat "$work/p11tool.log" >&2
  fi
  st=$(status "$cnf")
  check "without the handle key: refused" grep -q 'status: inactive' <<< "$st"
  check "without the handle key: says to run p11tls-tool provision" grep -q "create it once with 'p11tls-tool provision'" <<< "$st"
  "$P11TLS_TOOL" provision --module "$P11TLS_MODULE" --token-uri "$P11TLS_TOKEN_URI" \
    --pin-file "$P11TLS_PIN_FILE" > "$work/provision.log"
  check "p11tls-tool provision created it" grep -q "created" "$work/provision.log"
  unreadable=$(find "$store" -name '*.object' ! -perm -g+r | wc -l)
  check "one object file is not readable by the workers' group ($unreadable)" [ "$unreadable" -eq 1 ]
  ngx=$work/ngx4
  mkdir -p "$ngx"
  ngx_write_conf "$ngx" "$port"
  ngx_start "$ngx" "$cnf"
  check_eq "TLS 1.2 fails (the workers cannot see the key)" 000 "$(tls12)"
  sleep 0.3
  check "the error names the worker's user and who found the key" \
    grep -q "not visible in token 'p11tls' to this process (user 'www-data' (uid [0-9]*), pid [0-9]*); it was found when p11tls started (user 'root'" "$ngx/error.log"
  ngx_stop "$ngx"
  ngx_grant_token_access www-data
  ngx_start "$ngx" "$cnf"
  check_eq "after granting access: TLS 1.2 served" 200 "$(tls12)"
  ngx_stop "$ngx"
fi

# ------------------------------------------------ 5 workers that cannot open it
echo "# 5. a worker that cannot re-open the token after fork"
ngx=$work/ngx5
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port"
if [ "$kind" = softhsm ]; then
  sed -i 's/ env SOFTHSM2_CONF;//' "$ngx/nginx.conf"
  expect_cause="set when p11tls started but missing here: [^;]*SOFTHSM2_CONF"
else
  chmod -R o-rwx,g-rwx "$store" # the workers' user cannot read the database
  expect_cause="the token's storage is not readable by this user"
fi
ngx_start "$ngx" "$cnf"
check_eq "the handshake fails" 000 "$(tls12)"
sleep 0.3
check "the worker's log names its user (www-data)" grep -q "this process is user 'www-data'" "$ngx/error.log"
check "the worker's log names the user that opened the token (root)" grep -q "the token was opened by user 'root'" "$ngx/error.log"
check "the worker's log names the likely cause" grep -qE "$expect_cause" "$ngx/error.log"
ngx_stop "$ngx"
ngx_grant_token_access www-data

# ------------------------------------------------------------ 6 configuration keys
echo "# 6. configuration keys"
unk=$(variant unknown 's/^token = /pkcs11-module-quirks = no-deinit\ntoken = /')
st=$(status "$unk")
check "unknown key: refused" grep -q 'status: inactive' <<< "$st"
check "unknown key: named, and said to be pkcs11-provider's" grep -q "unknown option 'pkcs11-module-quirks' in section \[p11tls_sect\].*pkcs11-provider option" <<< "$st"
start_fails "unknown key" "$unk" "unknown option 'pkcs11-module-quirks'"
long=$(printf 'x%.0s' $(seq 1 300))
st=$(status "$(variant long "s/^token = /$long = 1\ntoken = /")")
check "a 300-character cause is not cut in the status line" grep -q "unknown option '$long' in section \[p11tls_sect\] of $work/long.cnf (options: .*see man p11tls)" <<< "$st"
alias=$(variant alias 's/^pin-source = /pkcs11-module-token-pin = /; s/^pkcs11-module = /pkcs11-module-path = /')
check "pkcs11-provider's names are accepted" grep -q 'status: active' <<< "$(status "$alias")"
ngx=$work/ngx6
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port"
ngx_start "$ngx" "$alias"
check_eq "nginx serves with pkcs11-module-path and pkcs11-module-token-pin" 200 "$(tls12)"
ngx_stop "$ngx"
both=$(variant both "s|^token = |pkcs11-module-token-pin = file:$work/empty.pin\ntoken = |")
check "an option and its alias both set: refused by name" grep -q "options 'pin-source' and 'pkcs11-module-token-pin'" <<< "$(status "$both")"

# ---------------------------------------------------------------- 7 TLS 1.1
echo "# 7. a TLS 1.1 client"
ngx=$work/ngx7
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port" protocols="TLSv1.1 TLSv1.2" ciphers="DEFAULT:@SECLEVEL=0"
ngx_start "$ngx" "$cnf"
for c in AES128-SHA ECDHE-RSA-AES128-SHA; do
  out=$(echo | timeout 20 openssl s_client -connect "127.0.0.1:$port" -tls1_1 -cipher "$c:@SECLEVEL=0" 2>&1 || true)
  check "$c: the TLS 1.1 handshake ends with the server's alert" grep -q "alert internal error" <<< "$out"
done
sleep 0.3
n=$(grep -c "\[crit\].*TLS 1.0 and 1.1 are refused" "$ngx/error.log" || true)
check "nginx's log says why, at [crit], for both handshakes ($n)" [ "$n" -eq 2 ]
check "nginx's log names the fix" grep -q "ssl_protocols TLSv1.2 TLSv1.3;" "$ngx/error.log"
ngx_stop "$ngx"

# ---------------------------------------------------------------- 8 debug log
echo "# 8. the debug log"
P11TLS_DEBUG=file:$work/debug.log status "$cnf" > /dev/null
check "P11TLS_DEBUG=file:PATH writes to PATH" grep -q "token 'p11tls\|token 'NSS" "$work/debug.log"
out=$(P11TLS_DEBUG=/nonexistent-dir/p11tls.log OPENSSL_CONF=$cnf openssl list -providers 2>&1 > /dev/null || true)
check "a debug log that cannot be opened is said" grep -q "cannot open the debug log '/nonexistent-dir/p11tls.log'" <<< "$out"

tap_finish
