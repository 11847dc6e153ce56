#!/usr/bin/env bash
# nginx_token_loss.sh - the token goes away while nginx (p11tls, 2 workers) is under
# curl load, twice, and comes back (run through with-token.sh):
#   softhsm-remote  the p11-kit server and its per-connection handlers are killed
#                   (by PID), then restarted with make-token.sh on the same socket;
#   softhsm, nss    the token is loaded through tests/shim/p11shim.so, which answers
#                   CKR_DEVICE_REMOVED while a control file exists.
# Checks: handshakes during the outage fail with a TLS alert (no hang), nginx's
# master and workers keep their PIDs (no crash), handshakes succeed again within
# a few seconds of the token's return without a restart or reload, and p11tls names
# the cause once per event and worker (not in every failed handshake's log line);
# its debug log notes the loss and the return once per event and worker.
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
build=${P11TLS_BUILD_DIR:?}
. "$src/scripts/lib/nginx.sh"
. "$src/tests/lib/tap.sh"
. "$src/tests/lib/load.sh"

OUTAGE_S=2        # how long the token stays away (plus the restart, for softhsm-remote)
AFTER_S=2         # load after the token is back, before the next event
RECOVERY_MAX_S=5  # "within a few seconds"
EVENTS=2
LOOPS=3           # parallel curl loops

work=$(mktemp -d /tmp/p11tls-tokloss.XXXXXX)
chmod 755 "$work"
ngx=$work/ngx
load_pids=()
server_down=0
cleanup() {
  load_stop "$work/stop-load" 7 "${load_pids[@]}"
  [ -d "$ngx" ] && ngx_stop "$ngx"
  if [ "$server_down" = 1 ]; then
    # leave the fixture's token as we found it: served
    "$src/scripts/make-token.sh" --kind softhsm-remote --dir "$P11TLS_DIR" > /dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
now() { echo "$EPOCHREALTIME"; }
# seconds between two EPOCHREALTIME values, 2 decimals
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

ngx_grant_token_access www-data
port=$(p11_free_port)
url=https://localhost:$port/
curl_tls() { curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" --tlsv1.2 --tls-max 1.2 "$@"; }

# ---------------------------------------------------------------- the token
cnf=$P11TLS_OPENSSL_CNF
case "$P11TLS_KIND" in
softhsm-remote)
  token_down() {
    local spid handlers p i
    spid=$(tr -dc '0-9' < "$P11TLS_DIR/p11-kit-server.pid")
    [ -n "$spid" ] && kill -0 "$spid" || { echo "no p11-kit server running" >&2; return 1; }
    # the server forks one p11-kit-remote per connection; they outlive it: all go
    handlers=$(ps -o pid= --ppid "$spid" | tr -d ' ')
    server_down=1
    kill -KILL "$spid" $handlers 2>/dev/null || true
    for i in $(seq 1 50); do
      for p in $spid $handlers; do kill -0 "$p" 2>/dev/null && continue 2; done
      break
    done
    echo "    killed p11-kit server $spid and $(wc -w <<<"$handlers") connection handler(s)"
  }
  token_up() {
    env -u P11TLS_DEBUG "$src/scripts/make-token.sh" --kind softhsm-remote --dir "$P11TLS_DIR" \
      > "$work/make-token.log" 2>&1 ||
      { cat "$work/make-token.log" >&2; return 1; }
    server_down=0
    ngx_grant_token_access www-data # the new socket, for the workers' user
  }
  ;;
softhsm | nss)
  shim=$build/tests/p11shim.so
  check "the interposer module was built ($shim)" [ -f "$shim" ]
  export P11SHIM_MODULE=$P11TLS_MODULE P11SHIM_FAIL_FILE=$work/token-removed
  cnf=$work/openssl.cnf
  sed "s|^pkcs11-module = .*|pkcs11-module = $shim|" "$P11TLS_OPENSSL_CNF" > "$cnf"
  check "openssl.cnf copy loads the token through the shim" grep -qxF "pkcs11-module = $shim" "$cnf"
  if [ -n "$P11TLS_INIT_ARGS" ]; then
    check "openssl.cnf copy keeps the module's init args" grep -q "^pkcs11-init-args = " "$cnf"
  fi
  token_down() { : > "$P11SHIM_FAIL_FILE"; }
  token_up() { rm -f "$P11SHIM_FAIL_FILE"; }
  ;;
*) echo "unknown P11TLS_KIND '$P11TLS_KIND'" >&2; exit 1 ;;
esac

# p11tls's debug log (the loss and the return are noted there): opened by the
# master (root), inherited by the workers.
debug=$work/p11tls-debug.log
install -m 644 /dev/null "$debug"
export P11TLS_DEBUG=$debug
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port" workers=2 env="P11SHIM_MODULE P11SHIM_FAIL_FILE"
ngx_start "$ngx" "$cnf"
master=$(cat "$ngx/master.pid")
workers_before=$(ngx_workers "$ngx" | tr '\n' ' ')
check "nginx runs 2 workers ($workers_before)" [ "$(wc -w <<<"$workers_before")" -eq 2 ]
if [ "$P11TLS_KIND" != softhsm-remote ]; then
  n=0
  for w in $workers_before; do grep -q p11shim.so "/proc/$w/maps" && n=$((n + 1)); done
  check "control: both workers have the shim loaded" [ "$n" -eq 2 ]
fi
good=0
for i in $(seq 1 20); do
  [ "$(curl_tls --max-time 5 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)" = 200 ] && good=$((good + 1))
done
check "before the loss: 20/20 requests answered ($good)" [ "$good" -eq 20 ]

# ---------------------------------------------------------------- load
# Each request a new process, a new connection, a full handshake; RSA key
# exchange and ECDHE alternate. One line per request: start end exit-status output.
load_loop() {
  local id=$1 n=0 c rc out t0
  while [ ! -e "$work/stop-load" ]; do
    if [ $((n % 2)) -eq 0 ]; then c=AES128-GCM-SHA256; else c=ECDHE-RSA-AES128-GCM-SHA256; fi
    t0=$EPOCHREALTIME rc=0
    out=$(curl_tls --max-time 5 --ciphers "$c" -o /dev/null -w ' http=%{http_code}' "$url" 2>&1) || rc=$?
    echo "$t0 $EPOCHREALTIME $rc ${out//$'\n'/ }" >> "$work/load.$id"
    n=$((n + 1))
  done
}
for i in $(seq 1 "$LOOPS"); do
  load_loop "$i" &
  load_pids+=($!)
done
sleep 2

# ---------------------------------------------------------------- events
declare -a ev_down ev_up ev_ok ev_end ev_log0 ev_log1
for e in $(seq 1 "$EVENTS"); do
  echo "# event $e: the token goes away for ${OUTAGE_S} s"
  ev_log0[e]=$(wc -l < "$ngx/error.log")
  ev_down[e]=$(now)
  token_down
  sleep "$OUTAGE_S"
  token_up
  ev_up[e]=$(now)
  # first success after the token is back (any worker)
  t_ok=""
  while [ "$(secs "${ev_up[e]}" "$(now)" | tr -d .)" -lt $((RECOVERY_MAX_S * 200)) ]; do
    if [ "$(curl_tls --max-time 5 -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true)" = 200 ]; then
      t_ok=$(now)
      break
    fi
    sleep 0.1
  done
  if [ -n "$t_ok" ]; then
    ev_ok[e]=$t_ok
    rec=$(secs "${ev_up[e]}" "$t_ok")
    echo "    token back; first handshake served after $rec s (outage $(secs "${ev_down[e]}" "${ev_up[e]}") s)"
    check "event $e: handshakes succeed again within $RECOVERY_MAX_S s of the token's return ($rec s)" \
      awk -v r="$rec" -v m="$RECOVERY_MAX_S" 'BEGIN { exit !(r <= m) }'
  else
    ev_ok[e]=$(now)
    not_ok "event $e: no handshake succeeded within $((RECOVERY_MAX_S * 2)) s of the token's return"
  fi
  sleep "$AFTER_S"
  ev_end[e]=$(now)
  ev_log1[e]=$(wc -l < "$ngx/error.log")
  check "event $e: nginx master $master still running" kill -0 "$master"
done
: > "$work/stop-load"
for p in "${load_pids[@]}"; do wait "$p" || true; done
load_pids=()

# ---------------------------------------------------------------- results
cat "$work"/load.* > "$work/load.all"
total=$(wc -l < "$work/load.all")
echo "# $total requests by $LOOPS curl loops"
workers_after=$(ngx_workers "$ngx" | tr '\n' ' ')
check "the same workers after both events (before: $workers_before, after: $workers_after)" \
  [ "$workers_before" = "$workers_after" ]
check "no worker crashed or exited (error.log)" \
  bash -c "! grep -E 'exited on signal|worker process [0-9]+ exited' '$ngx/error.log'"
check "nginx was neither restarted nor reloaded (error.log)" \
  bash -c "[ \$(grep -c 'start worker process [0-9]' '$ngx/error.log') -eq 2 ] && ! grep -q 'reconfiguring' '$ngx/error.log'"

# request classes: ok, alert (TLS alert from the server; a TLS 1.2 server that loses the
# token between its ChangeCipherSpec and its Finished aborts there, which curl reports
# as "data between ccs and finished"), timeout (curl 28: a hang), other (reset, EOF,
# HTTP status other than 200)
# classify FROM TO [within]: the requests that started in [FROM, TO) (with
# "within": and also ended before TO; one that ends after it may meet the next loss)
classify() {
  awk -v from="$1" -v to="$2" -v w="${3:-}" '$1 >= from && $1 < to && (w == "" || $2 < to) {
      if ($3 == 0 && $0 ~ /http=200/) ok++
      else if ($3 == 28) to_++
      else if ($3 == 35 && ($0 ~ /alert/ || $0 ~ /data between ccs and finished/)) al++
      else { other++; if (ex == "") ex = $0 }
    }
    END { printf "%d %d %d %d %s\n", ok, al, to_, other, ex }' "$work/load.all"
}
before=$(classify 0 "${ev_down[1]}" within)
read -r b_ok b_al b_to b_other b_ex <<<"$before"
check "before the first loss: every request answered ($b_ok ok, $((b_al + b_to + b_other)) failed${b_ex:+: $b_ex})" \
  [ "$((b_al + b_to + b_other))" -eq 0 -a "$b_ok" -gt 0 ]
for e in $(seq 1 "$EVENTS"); do
  read -r o_ok o_al o_to o_other o_ex <<<"$(classify "${ev_down[e]}" "${ev_up[e]}")"
  echo "    event $e outage: $o_ok ok, $o_al failed with a TLS alert, $o_to timed out, $o_other other failures"
  check "event $e: handshakes failed during the outage ($o_al with an alert)" [ "$o_al" -gt 0 ]
  check "event $e: no request hung (curl --max-time 5 expired $o_to times)" [ "$o_to" -eq 0 ]
  check "event $e: every failure was a TLS alert ($o_other others${o_ex:+: $o_ex})" [ "$o_other" -eq 0 ]
  # after the first success: every worker is back within a second
  settle=$(awk -v t="${ev_ok[e]}" 'BEGIN { printf "%.6f", t + 1.0 }')
  read -r a_ok a_al a_to a_other a_ex <<<"$(classify "$settle" "${ev_end[e]}" within)"
  last=$(awk -v from="${ev_up[e]}" -v to="${ev_end[e]}" '$1 >= from && $2 < to && $3 != 0 { l = $1 } END { print l }' "$work/load.all")
  echo "    event $e after: $a_ok ok, $((a_al + a_to + a_other)) failed from 1 s after the first success;" \
    "last failure started $([ -n "$last" ] && secs "${ev_up[e]}" "$last" || echo "-") s after the token was back"
  check "event $e: all requests answered from 1 s after the first success ($a_ok ok, $((a_al + a_to + a_other)) failed${a_ex:+: $a_ex})" \
    [ "$((a_al + a_to + a_other))" -eq 0 -a "$a_ok" -gt 0 ]
  if [ "$((a_al + a_to + a_other))" -ne 0 ]; then
    awk -v from="$settle" -v to="${ev_end[e]}" '$1 >= from && $2 < to && $3 != 0' "$work/load.all" |
      sed -n '1,5s/^/      /p' || true
  fi

  # nginx's error log for this event: one line per failed handshake; p11tls's cause
  # (a CKR_ name) in at most one of them per worker.
  sed -n "$((ev_log0[e] + 1)),${ev_log1[e]}p" "$ngx/error.log" > "$work/event$e.log"
  nfail=$(grep -c 'SSL_do_handshake() failed' "$work/event$e.log" || true)
  check "event $e: nginx logged failed handshakes ($nfail)" [ "$nfail" -gt 0 ]
  for w in $workers_before; do
    grep -F " $w#" "$work/event$e.log" | grep 'SSL_do_handshake() failed' > "$work/w.log" || true
    nw=$(wc -l < "$work/w.log")
    ncause=$(grep -c 'CKR_' "$work/w.log" || true)
    nlost=$(grep -c "p11tls: token '[^']*' lost" "$work/w.log" || true)
    nshort=$(grep -c "p11tls: token '[^']*' unavailable (lost" "$work/w.log" || true)
    echo "    event $e worker $w: $nw failed handshakes logged; the cause (CKR_) in $ncause line(s)," \
      "'token lost' in $nlost, 'unavailable (lost N s ago)' in $nshort"
    check "event $e worker $w: the cause logged at most once ($ncause lines name a CKR_)" [ "$ncause" -le 1 ]
    check "event $e worker $w: every failed handshake's line names p11tls" \
      [ "$(grep -c 'p11tls' "$work/w.log" || true)" -eq "$nw" ]
    if [ "$nw" -ge 3 ]; then
      check "event $e worker $w: the later failures say 'unavailable' ($nshort of $nw)" [ "$nshort" -ge $((nw - 2)) ]
    fi
  done
  first=$(grep -m1 'CKR_' "$work/event$e.log" | sed 's/.*SSL_do_handshake() failed (SSL: //; s/) while SSL handshaking.*//' || true)
  echo "    event $e: the cause as logged: $first"

  # p11tls's debug log: the loss and the return noted once per worker process
  for w in $workers_before; do
    awk -v from="${ev_down[e]}" -v to="${ev_end[e]}" -v p="p11tls[$w]" '$1 == p && $2 >= from && $2 < to' \
      "$debug" > "$work/wdbg.log"
    nl=$(awk '$3 == "token" && / lost \(/' "$work/wdbg.log" | wc -l)
    nb=$(awk '$3 == "token" && / is back /' "$work/wdbg.log" | wc -l)
    back=$(grep -m1 "token '[^']*' is back" "$work/wdbg.log" | cut -d' ' -f3- || true)
    echo "    event $e worker $w debug log: loss noted $nl time(s), return $nb time(s)${back:+: $back}"
    if [ "$nl" -gt 0 ]; then
      check "event $e worker $w: loss noted once, return noted once ($nl, $nb)" [ "$nl" -eq 1 -a "$nb" -eq 1 ]
    fi
  done
  nlw=$(awk -v from="${ev_down[e]}" -v to="${ev_end[e]}" '$2 >= from && $2 < to && $3 == "token" && / lost \(/ { print $1 }' \
    "$debug" | sort -u | wc -l)
  check "event $e: at least one worker saw the loss ($nlw)" [ "$nlw" -ge 1 ]
done

tap_finish
