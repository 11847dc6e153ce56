#!/usr/bin/env bash
# pool.sh - a pool of tokens (openssl.cnf member1.., pkcs11/pool.c) with nginx:
#   setup  SoftHSM2 tokens A and B, each behind its own `p11-kit server` (a p11-kit
#          module with 'remote:' per server), both provisioned from one handle-key
#          backup and one encrypted server key (p11tls-tool import-key)
#   1 failover: nginx (2 workers) under curl load (TLS 1.2 RSA key exchange, TLS 1.2
#     ECDHE, TLS 1.3) while A's server is killed: the requests that fail are at most
#     those in flight at that moment; every request started after it succeeds
#   2 re-admission: A's server restarted: each worker's probe finds it within the probe
#     interval (printed), and A serves operations again; no nginx restart
#   3 resumption: sessions made while only A serves (TLS 1.2 by ticket and by session
#     ID, TLS 1.3) resume when only B serves
#   3b a start without a member: nginx starts while A's server is down (B serves); A's
#     server started: each worker admits A (checks as at start) within the probe interval
#   4 bad input, refused at load with the member named: another handle key (token C),
#     another server key (token D), a member URI that matches no token, a wrong PIN
#   5 levels: NSS softoken (`sealed`) and SoftHSM2 (`transient`) in one pool: level
#     transient; with min-assurance sealed only NSS is used and the status says why
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
HERE=$src/tests
# shellcheck source=tests/lib/tls.sh
. "$HERE/lib/tls.sh"
. "$src/scripts/lib/nginx.sh"
. "$HERE/lib/load.sh"
TOOL=${P11TLS_TOOL:?}
PROBE_MS=1000
LOOPS=3
tls_init
chmod 755 "$WORK"
PASS=$WORK/passphrase
printf 'pool test passphrase %s\n' "$RANDOM$RANDOM" >"$PASS"
chmod 600 "$PASS"
BK=$WORK/handle-key.backup
MODS=()
load_pids=()
ngx=$WORK/ngx
cleanup_pool() {
  load_stop "$WORK/stop-load" 7 "${load_pids[@]}"
  [ ! -d "$ngx" ] || ngx_stop "$ngx"
  for d in "$WORK"/tok-*; do
    [ ! -f "$d/p11-kit-server.pid" ] || bash "$src/scripts/make-token.sh" --stop --dir "$d" >/dev/null 2>&1 || true
  done
  rm -f "${MODS[@]}"
}
tls_on_exit cleanup_pool

# ------------------------------------------------------------------ setup
# The server key: one, encrypted under the passphrase (its protected backup).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null |
  openssl pkcs8 -topk8 -v2 aes-256-cbc -passout "file:$PASS" -out "$WORK/server.key"
openssl req -new -x509 -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -key "$WORK/server.key" -passin "file:$PASS" -out "$WORK/server.pem" 2>/dev/null
check "the server key's backup is encrypted" grep -q 'BEGIN ENCRYPTED PRIVATE KEY' "$WORK/server.key"
has() { grep -q -- "$2" <<<"$1"; } # has TEXT PATTERN
mk() { # mk NAME KIND [make-token args...]
  local name=$1 kind=$2
  shift 2
  P11TLS_TOOL=$TOOL bash "$src/scripts/make-token.sh" --kind "$kind" --dir "$WORK/tok-$name" \
    --label "pool-$name" --no-client "$@" >"$WORK/$name.make.log" 2>&1
}
remote_module() { # remote_module NAME: a p11-kit module for token NAME's server, named
  # in MOD (not in a subshell: MODS lists the files the clean-up removes)
  local f=/etc/pkcs11/modules/p11tls-test-$$-$1.module
  mkdir -p /etc/pkcs11/modules
  MODS+=("$f")
  printf '# p11tls pool.sh (removed at its end)\nremote: unix:path=%s\n' "$WORK/tok-$1/p11kit.sock" >"$f"
  MOD=p11tls-test-$$-$1
}
shared=(--key-backup "$BK" --passphrase-file "$PASS" --server-key "$WORK/server.key")
check "token A behind its p11-kit server (shared handle key, imported server key)" mk a softhsm-remote "${shared[@]}"
check "token B behind its p11-kit server (the same)" mk b softhsm-remote "${shared[@]}"
remote_module a
MOD_A=$MOD
remote_module b
MOD_B=$MOD

# pool_cnf FILE [min-assurance] MEMBER...: MEMBER is "module|init-args|token-uri|pin-file"
pool_cnf() {
  local f=$1 min=$2 i=0 m
  shift 2
  {
    echo "openssl_conf = openssl_init"
    echo "[openssl_init]"
    echo "providers = provider_sect"
    echo "alg_section = algorithm_sect"
    echo "[provider_sect]"
    echo "default = default_sect"
    echo "p11tls = p11tls_sect"
    echo "[default_sect]"
    echo "activate = 1"
    echo "[p11tls_sect]"
    echo "module = $P11TLS_PROVIDER_DIR/p11tls.so"
    echo "min-assurance = $min"
    echo "probe-interval = $PROBE_MS"
    for m in "$@"; do i=$((i + 1)); echo "member$i = pool_member$i"; done
    echo "activate = 1"
    i=0
    for m in "$@"; do
      i=$((i + 1))
      IFS='|' read -r mod args uri pin <<<"$m"
      echo "[pool_member$i]"
      echo "pkcs11-module = $mod"
      [ -z "$args" ] || echo "pkcs11-init-args = $args"
      echo "token = $uri"
      echo "pin-source = file:$pin"
    done
    echo "[algorithm_sect]"
    echo "default_properties = ?provider=p11tls"
  } >"$f"
}
member() { echo "$2||pkcs11:token=pool-$1|$WORK/tok-$1/user.pin"; }
CNF=$WORK/pool.cnf
pool_cnf "$CNF" transient "$(member a "$MOD_A")" "$(member b "$MOD_B")"
"$TOOL" pem-uri --uri "pkcs11:object=p11tls-key;id=%01;type=private" --out "$WORK/key.pem"
out=$("$TOOL" check --conf "$CNF" --key "$WORK/key.pem" --cert "$WORK/server.pem" 2>&1) || true
echo "$out" | sed 's/^/#   /'
after=$(grep -A3 '^after the handshakes' <<<"$out" || true)
check "check: the pool of A and B loads, both members in use" \
  has "$out" "pool of 2 tokens ('pool-a', 'pool-b'), assurance transient.*member1 token 'pool-a' (transient): in use, 0 operations; member2 token 'pool-b' (transient): in use, 0 operations"
check "check: the key matches and the four handshakes run on the pool" has "$out" '^result: ok'
check "check: after its handshakes both members served operations" \
  has "$after" "member1 token 'pool-a' (transient): in use, [1-9][0-9]* operations"
check "check: ... member2 too" has "$after" "member2 token 'pool-b' (transient): in use, [1-9][0-9]* operations"

out=$(OPENSSL_CONF=$CNF openssl list -providers -verbose 2>&1 || true)
check "openssl list -providers -verbose shows each member's state" \
  has "$out" "member1 token 'pool-a' (transient): in use, 0 operations; member2 token 'pool-b' (transient): in use"

# ------------------------------------------------------------------ nginx
debug=$WORK/p11tls-debug.log
install -m 644 /dev/null "$debug"
mkdir -p "$ngx"
port=$(p11_free_port)
url=https://localhost:$port/
ngx_write_conf "$ngx" "$port" workers=2 user=root protocols="TLSv1.2 TLSv1.3" \
  key="$WORK/key.pem" cert="$WORK/server.pem"
P11TLS_DEBUG=$debug ngx_start "$ngx" "$CNF"
master=$(cat "$ngx/master.pid")
workers=$(ngx_workers "$ngx" | tr '\n' ' ')
check "nginx runs 2 workers on the pool ($workers)" [ "$(wc -w <<<"$workers")" -eq 2 ]
curl_p() { curl -sS --cacert "$WORK/server.pem" --resolve "localhost:$port:127.0.0.1" "$@"; }
good=0
for i in $(seq 1 12); do
  [ "$(curl_p --max-time 5 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)" = 200 ] && good=$((good + 1))
done
check "before the loss: 12/12 requests answered ($good)" [ "$good" -eq 12 ]

# each request a new connection, a full handshake: TLS 1.2 RSA key exchange, TLS 1.2
# ECDHE, TLS 1.3 in turn. One line per request: start end exit-status output
load_loop() {
  local id=$1 n=0 rc out t0 args
  while [ ! -e "$WORK/stop-load" ]; do
    case $((n % 3)) in
    0) args=(--tlsv1.2 --tls-max 1.2 --ciphers AES128-GCM-SHA256) ;;
    1) args=(--tlsv1.2 --tls-max 1.2 --ciphers ECDHE-RSA-AES128-GCM-SHA256) ;;
    2) args=(--tlsv1.3) ;;
    esac
    t0=$EPOCHREALTIME rc=0
    out=$(curl_p --max-time 5 "${args[@]}" -o /dev/null -w ' http=%{http_code}' "$url" 2>&1) || rc=$?
    echo "$t0 $EPOCHREALTIME $rc ${out//$'\n'/ }" >>"$WORK/load.$id"
    n=$((n + 1))
  done
}
load_start() {
  rm -f "$WORK/stop-load"
  for i in $(seq 1 "$LOOPS"); do
    load_loop "$i" &
    load_pids+=($!)
  done
}
load_end() {
  load_stop "$WORK/stop-load" 10 "${load_pids[@]}"
  load_pids=()
  cat "$WORK"/load.* >"$WORK/load.all"
}
server_pid() { tr -dc '0-9' <"$WORK/tok-$1/p11-kit-server.pid"; }
kill_server() { # the server and its per-connection handlers, by PID; returns once its
  # socket refuses connections (the killed processes may stay zombies a while)
  local spid handlers
  spid=$(server_pid "$1")
  handlers=$(ps -o pid= --ppid "$spid" | tr -d ' ')
  kill -KILL "$spid" $handlers 2>/dev/null || true
  python3 - "$WORK/tok-$1/p11kit.sock" <<'PY'
import socket, sys, time
end = time.time() + 10
while time.time() < end:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except OSError:
        sys.exit(0)
    finally:
        s.close()
    time.sleep(0.005)
sys.exit(1)
PY
}
restart_server() { mk "$1" softhsm-remote "${shared[@]}"; }
# answers_at NAME: started before a restart, prints when token NAME's socket first
# accepts a connection (epoch seconds; polled every 10 ms, for 60 s at most)
answers_at() {
  python3 - "$WORK/tok-$1/p11kit.sock" <<'PY'
import socket, sys, time
end = time.time() + 60
while time.time() < end:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
        print("%.3f" % time.time())
        sys.exit(0)
    except OSError:
        time.sleep(0.01)
    finally:
        s.close()
sys.exit(1)
PY
}
# readmitted NAME SINCE: waits until both workers' debug log says token NAME is back
# (re-opened: by the pool's probe, or by an operation that needed it);
# prints the seconds from SINCE to the later of the two lines
readmitted() {
  local label=pool-$1 since=$2 i last
  for i in $(seq 1 100); do
    last=$(grep -F "token '$label' is back after" "$debug" | awk -v s="$since" '$2 >= s { print $1, $2 }' |
      sort -u -k1,1 | awk '{ if ($2 > m) m = $2; n++ } END { if (n >= 2) print m }')
    [ -n "$last" ] && { awk -v a="$since" -v b="$last" 'BEGIN { printf "%.2f", b - a }'; return 0; }
    sleep 0.1
  done
  return 1
}
handler_cpu() { # CPU ticks of a server's connection handlers
  local p t=0
  for p in $(ps -o pid= --ppid "$(server_pid "$1")"); do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

# ------------------------------------------------------- 1 failover
echo "# 1 failover: A's p11-kit server is killed under load"
load_start
sleep 2
# the kill takes a moment (finding the handlers, the signals, their exit): "in flight"
# is a request that overlaps [t_k0, t_k1], "after" one that starts after t_k1
t_k0=$EPOCHREALTIME
kill_server a
t_k1=$EPOCHREALTIME
sleep 4
load_end
read -r total inflight failed_in failed_after ok_after ex <<<"$(awk -v k0="$t_k0" -v k1="$t_k1" '
  { n++ }
  $1 < k1 && $2 > k0 { inf++; if (!($3 == 0 && $0 ~ /http=200/)) fi++ }
  $1 >= k1 { if ($3 == 0 && $0 ~ /http=200/) oa++; else { fa++; if (ex == "") ex = $0 } }
  END { printf "%d %d %d %d %d %s\n", n, inf, fi, fa, oa, (ex == "" ? "-" : ex) }' "$WORK/load.all")"
echo "#   $total requests; the kill took $(awk -v a="$t_k0" -v b="$t_k1" 'BEGIN { printf "%.3f", b - a }') s; $inflight in flight meanwhile, $failed_in of them failed; after it: $ok_after ok, $failed_after failed"
check "the requests that failed ($failed_in) are at most those in flight at the kill ($inflight)" \
  [ "$failed_in" -le "$inflight" ]
if [ "$failed_after" -eq 0 ] && [ "$ok_after" -gt 0 ]; then
  ok "every request started after the kill succeeded ($ok_after ok, 0 failed)"
else
  not_ok "every request started after the kill succeeded ($ok_after ok, $failed_after failed, e.g. $ex; kill from $t_k0 to $t_k1)"
  grep -E 'SSL_do_handshake|p11tls' "$ngx/error.log" | tail -4 | sed 's/^/#   /' >&2
fi
check "each worker took A out (debug log)" \
  bash -c "[ \$(grep -F \"member member1 (token 'pool-a') lost\" '$debug' | awk '{print \$1}' | sort -u | wc -l) -ge 1 ]"

# ------------------------------------------------------- 2 re-admission
echo "# 2 A's server restarted"
rm -f "$WORK"/load.*
load_start
answers_at a >"$WORK/a.up" &
up_pid=$!
check "A's p11-kit server restarted" restart_server a
wait "$up_pid" || true
t_up=$(cat "$WORK/a.up") # when A's server first answered (make-token.sh goes on after that)
if secs=$(readmitted a "$t_up"); then
  echo "#   both workers use A again $secs s after its server first answered (probe interval $PROBE_MS ms)"
  # the probe interval, and the re-open's own calls (module, slot) through the server
  check "A is back in use within the probe interval ($secs s <= $PROBE_MS ms + 0.5 s)" \
    awk -v s="$secs" -v p="$PROBE_MS" 'BEGIN { exit !(s <= p / 1000 + 0.5) }'
  grep -F "token 'pool-a'" "$debug" | grep -v ' C_' | tail -6 | sed 's/^/#     /'
else
  not_ok "A is back in use (no 'answers again' from both workers within 10 s)"
fi
cpu0=$(handler_cpu a)
sleep 3
cpu1=$(handler_cpu a)
load_end
check "A serves operations again (its handlers' CPU: $cpu0 -> $cpu1 ticks)" [ "$cpu1" -gt "$cpu0" ]
failed=$(awk -v u="$t_up" '$1 >= u && !($3 == 0 && $0 ~ /http=200/)' "$WORK/load.all" | wc -l)
check "no request failed after A came back ($failed)" [ "$failed" -eq 0 ]

# ------------------------------------------------------- 3 resumption across members
echo "# 3 sessions made on A resume on B"
kill_server b
# the workers notice B's loss at their next operations on it
for i in $(seq 1 10); do curl_p --max-time 5 -o /dev/null "$url" 2>/dev/null || true; done
conn() { # conn OUT ARGS...: one s_client connection (HTTP/1.0 GET)
  local out=$1
  shift
  printf 'GET / HTTP/1.0\r\n\r\n' | timeout 20 openssl s_client -connect "127.0.0.1:$port" \
    -servername localhost -CAfile "$WORK/server.pem" -ign_eof "$@" >"$out" 2>&1 || true
}
kinds=("tls1_2 ticket|-tls1_2" "tls1_2 session-id|-tls1_2 -no_ticket" "tls1_3|-tls1_3")
for k in "${kinds[@]}"; do
  name=${k%%|*} args=${k#*|} f=$WORK/sess.${name// /-}
  # shellcheck disable=SC2086
  conn "$f.new" $args -sess_out "$f"
  check "$name: a session made while only A serves" grep -q '^New, ' "$f.new"
done
answers_at b >"$WORK/b.up" &
up_pid=$!
check "B's p11-kit server restarted" restart_server b
wait "$up_pid" || true
t_up=$(cat "$WORK/b.up")
for i in $(seq 1 20); do curl_p --max-time 5 -o /dev/null "$url" 2>/dev/null || true; done
secs=$(readmitted b "$t_up") && echo "#   B back in use after $secs s" || not_ok "B is back in use"
kill_server a
for k in "${kinds[@]}"; do
  name=${k%%|*} args=${k#*|} f=$WORK/sess.${name// /-}
  # shellcheck disable=SC2086
  conn "$f.resumed" $args -sess_in "$f"
  if grep -q '^Reused, ' "$f.resumed" && grep -q 'hello from p11tls' "$f.resumed"; then
    ok "$name: the session made on A resumes on B (A is down) and serves the page"
  else
    not_ok "$name: the session made on A resumes on B"
    tail -5 "$f.resumed" | sed 's/^/#   /' >&2
  fi
done
out=$("$TOOL" info --conf "$CNF" 2>&1) || true
check "info --conf with A down: the pool starts without A and says why" \
  has "$out" "member1 token 'pool-a': not reached since start (no token present when p11tls started)"
check "nginx master $master still running, not restarted or reloaded" \
  bash -c "kill -0 $master && [ \$(grep -c 'start worker process [0-9]' '$ngx/error.log') -eq 2 ] && ! grep -q 'reconfiguring' '$ngx/error.log'"
ngx_stop "$ngx"

# ------------------------------------------------------- 3b a start without a member
echo "# 3b nginx starts while A is down; A joins when its server is back"
ngx=$WORK/ngx2
mkdir -p "$ngx"
port=$(p11_free_port)
url=https://localhost:$port/
ngx_write_conf "$ngx" "$port" workers=2 user=root protocols="TLSv1.2 TLSv1.3" \
  key="$WORK/key.pem" cert="$WORK/server.pem"
if P11TLS_DEBUG=$debug ngx_start "$ngx" "$CNF"; then
  ok "nginx starts on the pool with A down"
else
  not_ok "nginx starts on the pool with A down"
fi
good=0
for i in $(seq 1 12); do
  [ "$(curl_p --max-time 5 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)" = 200 ] && good=$((good + 1))
done
check "with A down since the start: 12/12 requests answered on B ($good)" [ "$good" -eq 12 ]
rm -f "$WORK"/load.*
load_start
answers_at a >"$WORK/a.up" &
up_pid=$!
check "A's p11-kit server started" restart_server a
wait "$up_pid" || true
t_up=$(cat "$WORK/a.up")
joined=""
for i in $(seq 1 100); do
  joined=$(grep -F "(token 'pool-a') reached after start" "$debug" | awk -v s="$t_up" '$2 >= s { print $1, $2 }' |
    sort -u -k1,1 | awk '{ if ($2 > m) m = $2; n++ } END { if (n >= 2) print m }')
  [ -n "$joined" ] && break
  sleep 0.1
done
if [ -n "$joined" ]; then
  secs=$(awk -v a="$t_up" -v b="$joined" 'BEGIN { printf "%.2f", b - a }')
  echo "#   both workers admitted A $secs s after its server first answered"
  check "A joins within the probe interval ($secs s <= $PROBE_MS ms + 0.5 s)" \
    awk -v s="$secs" -v p="$PROBE_MS" 'BEGIN { exit !(s <= p / 1000 + 0.5) }'
else
  not_ok "A joins (no 'reached after start' from both workers within 10 s)"
fi
cpu0=$(handler_cpu a)
sleep 3
cpu1=$(handler_cpu a)
load_end
check "A serves operations (its handlers' CPU: $cpu0 -> $cpu1 ticks)" [ "$cpu1" -gt "$cpu0" ]
failed=$(awk '!($3 == 0 && $0 ~ /http=200/)' "$WORK/load.all" | wc -l)
check "no request failed meanwhile ($failed of $(wc -l <"$WORK/load.all"))" [ "$failed" -eq 0 ]
ngx_stop "$ngx"

# ------------------------------------------------------- 4 bad input
echo "# 4 bad input"
check "token C: its own handle key, the same server key" \
  mk c softhsm-remote --server-key "$WORK/server.key" --passphrase-file "$PASS"
check "token D: the shared handle key, a server key of its own" \
  mk d softhsm-remote --key-backup "$BK" --passphrase-file "$PASS"
remote_module c
MOD_C=$MOD
remote_module d
MOD_D=$MOD
refused() { # refused TEXT PATTERN CONF [check args]: check --conf fails, naming the cause
  local what=$1 pat=$2 cnf=$3 out rc=0
  shift 3
  out=$("$TOOL" check --conf "$cnf" "$@" 2>&1) || rc=$?
  if [ "$rc" = 1 ] && grep -q -- "$pat" <<<"$out"; then
    ok "$what: refused ($(grep -o -- "$pat" <<<"$out" | head -1))"
  else
    not_ok "$what: refused with /$pat/ (exit $rc)"
    sed 's/^/#   /' <<<"$out" >&2
  fi
}
pool_cnf "$WORK/c.cnf" transient "$(member a "$MOD_A")" "$(member c "$MOD_C")"
refused "a member with another handle key" "pool member member2 (token 'pool-c') holds another handle key" "$WORK/c.cnf"
pool_cnf "$WORK/d.cnf" transient "$(member a "$MOD_A")" "$(member d "$MOD_D")"
refused "a member with another server key" "pool member member2 (token 'pool-d') holds another key" \
  "$WORK/d.cnf" --key "pkcs11:object=p11tls-key;id=%01;type=private" --cert "$WORK/server.pem"
pool_cnf "$WORK/nomatch.cnf" transient "$(member a "$MOD_A")" "$MOD_B||pkcs11:token=no-such-token|$WORK/tok-b/user.pin"
refused "a member URI that matches no token" "no token matches 'pkcs11:token=no-such-token'.*pool member member2" "$WORK/nomatch.cnf"
printf '0000\n' >"$WORK/wrong.pin"
pool_cnf "$WORK/pin.cnf" transient "$(member a "$MOD_A")" "$MOD_D||pkcs11:token=pool-d|$WORK/wrong.pin"
refused "a wrong PIN for one member" "token 'pool-d': the configured PIN was refused.*pool member member2" "$WORK/pin.cnf"
check "no output holds the passphrase or a PIN" \
  bash -c "! grep -rqF -e \"\$(head -1 '$PASS')\" -e \"\$(cat '$WORK/tok-a/user.pin')\" '$WORK'/*.make.log '$debug'"

# ------------------------------------------------------- 5 levels
echo "# 5 NSS softoken and SoftHSM2 in one pool"
check "NSS token N from the backups" mk n nss "${shared[@]}"
check "SoftHSM2 token S (in process) from the backups" mk s softhsm "${shared[@]}"
nss_args=$(. "$WORK/tok-n/env.sh" && echo "$P11TLS_INIT_ARGS")
nss_mod=$(. "$WORK/tok-n/env.sh" && echo "$P11TLS_MODULE")
shm_mod=$(. "$WORK/tok-s/env.sh" && echo "$P11TLS_MODULE")
export SOFTHSM2_CONF=$WORK/tok-s/softhsm2.conf
nss_uri=$(. "$WORK/tok-n/env.sh" && echo "$P11TLS_TOKEN_URI")
ns=("$shm_mod||pkcs11:token=pool-s|$WORK/tok-s/user.pin" "$nss_mod|$nss_args|$nss_uri|$WORK/tok-n/user.pin")
pool_cnf "$WORK/ns.cnf" transient "${ns[@]}"
out=$("$TOOL" check --conf "$WORK/ns.cnf" --key "$WORK/key.pem" --cert "$WORK/server.pem" 2>&1) || true
sed 's/^/#   /' <<<"$out"
check "NSS + SoftHSM2: the pool's level is transient (the lower member's)" \
  has "$out" "pool of 2 tokens ('pool-s', '.*'), assurance transient"
check "NSS + SoftHSM2: the handshakes pass" has "$out" '^result: ok'
pool_cnf "$WORK/one-module.cnf" transient "${ns[0]}" "${ns[0]}"
refused "two members in one module instance" "pool members member1 and member2 are in one module instance" "$WORK/one-module.cnf"
pool_cnf "$WORK/ns-sealed.cnf" sealed "${ns[@]}"
out=$("$TOOL" check --conf "$WORK/ns-sealed.cnf" --key "$WORK/key.pem" --cert "$WORK/server.pem" 2>&1) || true
sed 's/^/#   /' <<<"$out"
after=$(grep -A3 '^after the handshakes' <<<"$out" || true)
check "min-assurance sealed: the pool gives sealed" has "$out" "pool of 2 tokens ('pool-s', '.*'), assurance sealed"
check "min-assurance sealed: its handshakes pass" has "$out" '^result: ok'
check "min-assurance sealed: the status says why SoftHSM2 is not used" \
  grep -q "member1 token 'pool-s' (transient): not used, below min-assurance (it lacks: " <<<"$after"
check "min-assurance sealed: only NSS served the handshakes" \
  grep -q "member2 token 'NSS Certificate DB' (sealed): in use, [1-9][0-9]* operations" <<<"$after"
check "the clean-up will remove the ${#MODS[@]} p11-kit module files written" [ "${#MODS[@]}" -eq 4 ]
tls_finish
