#!/usr/bin/env bash
# nginx_reload.sh - nginx with p11tls and 4 workers under curl load, with several
# `nginx -s reload` (SIGHUP to the master) and `nginx -s reopen` (SIGUSR1) during
# it (run through with-token.sh). The load: parallel curl loops, each run of curl
# fetching several URLs on new connections (a full handshake, then resumed ones),
# RSA key exchange and ECDHE alternating, plus one loop on a keep-alive connection
# left idle between requests (what a reload may close). Checks: no request fails
# except one on a keep-alive connection the reload closed, the master never goes
# away, no worker crashes or exits abnormally, 4 workers after each reload, the
# same workers after each reopen.
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
. "$src/scripts/lib/nginx.sh"
. "$src/tests/lib/tap.sh"
. "$src/tests/lib/load.sh"

WORKERS=4
RELOADS=4
URLS=6     # per curl run
LOOPS=2    # new-connection loops (plus one keep-alive loop)

work=$(mktemp -d /tmp/p11tls-reload.XXXXXX)
chmod 755 "$work"
ngx=$work/ngx
load_pids=()
cleanup() {
  load_stop "$work/stop-load" 10 "${load_pids[@]}"
  [ -d "$ngx" ] && ngx_stop "$ngx"
  rm -rf "$work"
}
trap cleanup EXIT

ngx_grant_token_access www-data
port=$(p11_free_port)
url=https://localhost:$port/
urls=() # each URL with its own -o (one -o is used by one URL only)
for i in $(seq 1 "$URLS"); do urls+=(-o /dev/null "$url"); done
curl_tls() { curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" --tlsv1.2 --tls-max 1.2 "$@"; }

mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port" workers=$WORKERS
ngx_start "$ngx"
master=$(cat "$ngx/master.pid")
w0=$(ngx_workers "$ngx" | tr '\n' ' ')
check "nginx runs $WORKERS workers ($w0)" [ "$(wc -w <<<"$w0")" -eq "$WORKERS" ]

# ------------------------------------------------------------------ load
# One line per transfer: run-start run-end exit-status http-code new-connections
# cipher kind; curl's messages go to load.ID.err.
load_loop() {
  local id=$1 kind=$2 n=0 c t0 out
  while [ ! -e "$work/stop-load" ]; do
    if [ $((n % 2)) -eq 0 ]; then c=AES128-GCM-SHA256; else c=ECDHE-RSA-AES128-GCM-SHA256; fi
    t0=$EPOCHREALTIME
    if [ "$kind" = close ]; then
      # a new connection per URL: one full handshake, then resumed ones
      out=$(curl_tls --max-time 20 --ciphers "$c" -H 'Connection: close' \
        -w '%{exitcode} %{http_code} %{num_connects}\n' "${urls[@]}" 2>> "$work/load.$id.err") || true
    else
      # one keep-alive connection, idle for 1/3 s between requests
      out=$(curl_tls --max-time 20 --ciphers "$c" --rate 3/s \
        -w '%{exitcode} %{http_code} %{num_connects}\n' "${urls[@]}" 2>> "$work/load.$id.err") || true
    fi
    while read -r rc code conn; do
      echo "$t0 $EPOCHREALTIME $rc $code $conn $c $kind"
    done <<<"$out" >> "$work/load.$id"
    n=$((n + 1))
  done
}
for i in $(seq 1 "$LOOPS"); do
  load_loop "$i" close &
  load_pids+=($!)
done
load_loop ka keepalive &
load_pids+=($!)
sleep 1.5

# ------------------------------------------------------- reloads and reopens
: > "$work/signals"
t_start=$EPOCHREALTIME
for r in $(seq 1 "$RELOADS"); do
  before=$(ngx_workers "$ngx" | tr '\n' ' ')
  echo "$EPOCHREALTIME reload" >> "$work/signals"
  if ngx_reload "$ngx"; then
    after=$(ngx_workers "$ngx" | tr '\n' ' ')
    check "reload $r: master $master alive, $WORKERS new workers ($after)" \
      bash -c "kill -0 $master && [ $(wc -w <<<"$after") -eq $WORKERS ]"
  else
    not_ok "reload $r: the workers were not replaced (before: $before, now: $(ngx_workers "$ngx" | tr '\n' ' '))"
  fi
  sleep 1
  before=$(ngx_workers "$ngx" | tr '\n' ' ')
  echo "$EPOCHREALTIME reopen" >> "$work/signals"
  kill -USR1 "$master"
  sleep 1
  after=$(ngx_workers "$ngx" | tr '\n' ' ')
  check "reopen $r: master alive, the same $WORKERS workers ($after)" \
    bash -c "kill -0 $master && [ '$before' = '$after' ] && [ $(wc -w <<<"$after") -eq $WORKERS ]"
done
t_end=$EPOCHREALTIME
sleep 1
: > "$work/stop-load"
for p in "${load_pids[@]}"; do wait "$p" || true; done
load_pids=()
check "master $master still running after $RELOADS reloads and $RELOADS reopens" kill -0 "$master"

# ------------------------------------------------------------------ results
cat "$work"/load.[0-9]* "$work/load.ka" > "$work/load.all"
total=$(wc -l < "$work/load.all")
# classes: ok; closed by reload (exit 52 or 56 on a reused keep-alive connection in a
# run that overlapped a reload); real failure (anything else)
read -r n_ok n_closed n_real <<<"$(awk '
  NR == FNR { if ($2 == "reload") rl[++nr] = $1; next }
  {
    if ($3 == 0 && $4 == 200) { ok++; next }
    closed = 0
    if (($3 == 52 || $3 == 56) && $5 == 0 && $7 == "keepalive")
      for (i = 1; i <= nr; i++) if (rl[i] >= $1 - 1 && rl[i] <= $2) closed = 1
    if (closed) cl++; else real++
  }
  END { printf "%d %d %d\n", ok, cl, real }' "$work/signals" "$work/load.all")"
secs=$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')
echo "# $total requests in $secs s of reloads and reopens (+ 2.5 s around):" \
  "$n_ok ok, $n_closed closed by a reload (keep-alive), $n_real real failures"
awk '{ k[$7 " " $6]++ } END { for (x in k) printf "    %-36s %d requests\n", x, k[x] }' "$work/load.all" | sort
if [ "$n_real" -gt 0 ]; then
  echo "    failed transfers:"
  awk '!($3 == 0 && $4 == 200)' "$work/load.all" | sed -n '1,10s/^/      /p' || true
  echo "    curl said:"
  cat "$work"/load.*.err | sort | uniq -c | sort -rn | sed -n '1,10s/^/      /p' || true
fi
# keep-alive runs: transfers on the reused connection, and new connections after
# the first (curl reconnects when a reload closed the idle connection under it)
read -r ka_reused ka_reconn <<<"$(awk '$7 == "keepalive" {
    if ($1 != run) { run = $1; next }
    if ($5 == 0) reused++; else reconn++
  } END { printf "%d %d\n", reused, reconn }' "$work/load.all")"
echo "    keep-alive: $ka_reused requests on a reused connection, $ka_reconn reconnections within a run"
check "requests were made during the reloads ($total)" [ "$total" -ge 100 ]
check "control: the keep-alive loop reused its connections ($ka_reused)" [ "$ka_reused" -gt 0 ]
check "no real failure ($n_real; $n_closed closed by a reload)" [ "$n_real" -eq 0 ]

# The access log (reopened in place): full handshakes and resumed ones, both key
# exchanges, on more than the first generation of workers.
full=$(awk '$4 == "."' "$ngx/access.log" | wc -l)
resumed=$(awk '$4 == "r"' "$ngx/access.log" | wc -l)
rsa=$(awk '$3 == "AES128-GCM-SHA256"' "$ngx/access.log" | wc -l)
ecdhe=$(awk '$3 == "ECDHE-RSA-AES128-GCM-SHA256"' "$ngx/access.log" | wc -l)
pids=$(awk '{ print $1 }' "$ngx/access.log" | sort -u | wc -l)
echo "    access log: $full full handshakes, $resumed resumed; $rsa RSA key exchange, $ecdhe ECDHE; served by $pids worker processes"
check "full handshakes and resumed ones were served ($full, $resumed)" [ "$full" -gt 0 -a "$resumed" -gt 0 ]
check "RSA key exchange and ECDHE were served ($rsa, $ecdhe)" [ "$rsa" -gt 0 -a "$ecdhe" -gt 0 ]
check "workers of several generations served (distinct PIDs: $pids)" [ "$pids" -gt "$WORKERS" ]

# nginx's error log: each reload and reopen noted; no crash, no abnormal exit, no
# failed handshake, no stale OpenSSL error.
log=$ngx/error.log
n=$(grep -c 'signal 1 (SIGHUP) received.*reconfiguring' "$log" || true)
check "error.log notes each reload ($n)" [ "$n" -eq "$RELOADS" ]
n=$(grep -c 'signal 10 (SIGUSR1) received.*reopening logs' "$log" || true)
m=$(grep -c '[0-9]: reopening logs' "$log" || true)
check "error.log notes each reopen ($n; $m processes reopened their logs)" \
  [ "$n" -eq "$RELOADS" -a "$m" -ge $((RELOADS * (WORKERS + 1))) ]
check "no worker died on a signal" bash -c "! grep 'exited on signal' '$log'"
check "every worker that exited did so with code 0 ($(grep -c 'exited with code' "$log" || true) exits)" \
  bash -c "! grep 'exited with code' '$log' | grep -v 'exited with code 0\$'"
check "old workers exited: $((RELOADS * WORKERS)) exits logged" \
  [ "$(grep -c 'exited with code 0' "$log" || true)" -eq $((RELOADS * WORKERS)) ]
check "no [alert], [emerg] or [crit] line in error.log" bash -c "! grep -E '\[(alert|emerg|crit)\]' '$log'"
check "no failed handshake in error.log" bash -c "! grep -E 'SSL_do_handshake\(\) failed' '$log'"
ngx_stop "$ngx"

tap_finish
