#!/usr/bin/env bash
# tls13.sh - TLS 1.3 with its key schedule in the token (run through with-token.sh):
#   1 nginx with Debian's stock `ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;` and curl
#     with its default options negotiate TLS 1.3; tickets resume on both workers and
#     after a full restart
#   2 openssl s_server (p11tls) against a plain s_client, for each TLS 1.3 suite: the
#     server's keylog holds only handles (none of its five secrets equals the
#     client's); exporter output (-keymatexport, 40 bytes: two HKDF blocks with
#     SHA-256) is the same on both sides; a session resumes by ticket (its PSK is a
#     handle, its binder computed in the token)
#   3 HelloRetryRequest (the client's key share is not the server's group); KeyUpdate
#     sent and requested by the client
#   4 other clients: gnutls-cli and Python's ssl
#   5 curl with p11tls as the client: its TLS 1.3 key schedule runs in its token
#   6 a memory dump (gcore) of the nginx worker after TLS 1.3 handshakes holds none
#     of the clients' secrets (every one their key schedule made, recorded by the
#     test provider tests/spy), nor a 16-byte piece of one, nor the PIN:
#     softhsm-remote (transient, the token in another process): all of them;
#     nss (sealed, the token in the worker): those whose token objects are gone (a
#     small handle cache, then more handshakes); the secrets of the last handshakes,
#     still objects of the in-process token, are found there: the search's control
#   7 post-handshake client authentication (s_server's "c" command; before 6): the client
#     (p11tls with its key in the token) answers with its certificate and a
#     Finished keyed by a secret derived from its application traffic secret; the
#     server checks it in its token
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
. "$src/scripts/lib/nginx.sh"
. "$src/tests/lib/tap.sh"
. "$src/tests/lib/spy.sh"

SUITES=(TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256)
work=$(mktemp -d /tmp/p11tls-tls13.XXXXXX)
chmod 755 "$work"
spids=()
cleanup() {
  for p in "${spids[@]}"; do kill "$p" 2> /dev/null || true; wait "$p" 2> /dev/null || true; done
  for d in "$work"/ngx*; do [ -d "$d" ] && ngx_stop "$d"; done
  rm -rf "$work"
}
trap cleanup EXIT
cnf=$P11TLS_OPENSSL_CNF
echo "# token kind: $P11TLS_KIND"
st=$(OPENSSL_CONF=$cnf openssl list -providers -verbose | grep -A1 '^  p11tls$' | tail -1)
echo "# $st"
case "$P11TLS_KIND" in
nss) check "status: TLS 1.3 with the token's HKDF mechanisms" grep -q "TLS 1.3: HKDF mechanisms" <<< "$st" ;;
*) check "status: TLS 1.3 with the token's HMAC" grep -q "TLS 1.3: HMAC sign" <<< "$st" ;;
esac

# ------------------------------------------------------------- 1 nginx + curl
ngx_grant_token_access www-data
port=$(p11_free_port)
ngx=$work/ngx1
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port" protocols="TLSv1 TLSv1.1 TLSv1.2 TLSv1.3" ciphers="HIGH:!aNULL:!MD5"
ngx_start "$ngx" "$cnf"
urls=()
for i in $(seq 1 20); do urls+=("https://localhost:$port/"); done
# one curl: a full handshake, then 19 connections that resume with its tickets
out=$(curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" -H 'Connection: close' \
  -w '%{http_code}\n' "${urls[@]}" 2>&1 || true)
n200=$(grep -c '^200$' <<< "$out" || true)
check "curl with default options: 20/20 requests answered 200 (got $n200)" [ "$n200" -eq 20 ]
for i in $(seq 1 50); do [ "$(wc -l < "$ngx/access.log")" -ge 20 ] && break; sleep 0.1; done
n13=$(awk '$2 == "TLSv1.3" && $5 == 200' "$ngx/access.log" | wc -l)
check "nginx logged 20 TLS 1.3 handshakes (got $n13)" [ "$n13" -eq 20 ]
full=$(awk '$2 == "TLSv1.3" && $4 == "."' "$ngx/access.log" | wc -l)
resumed_workers=$(awk '$2 == "TLSv1.3" && $4 == "r" {print $1}' "$ngx/access.log" | sort -u | wc -l)
resumed=$(awk '$2 == "TLSv1.3" && $4 == "r"' "$ngx/access.log" | wc -l)
echo "# $full full, $resumed resumed, resumed on $resumed_workers worker(s)"
check "tickets resume (TLS 1.3 PSK, binders in the token): $resumed of 19 resumed" [ "$resumed" -ge 15 ]
check "sessions resume on both workers (the PSK handle resolves in another process)" [ "$resumed_workers" -eq 2 ]
# a ticket from before a full restart (the same ticket key file): its PSK handle
# resolves in the new processes
printf 'GET / HTTP/1.0\r\n\r\n' | OPENSSL_CONF=/dev/null timeout 20 openssl s_client -ign_eof \
  -connect "127.0.0.1:$port" -servername localhost -tls1_3 -CAfile "$P11TLS_CERT" \
  -sess_out "$work/sess13" > "$work/r1.out" 2>&1 || true
ngx_stop "$ngx"
ngx_start "$ngx" "$cnf"
printf 'GET / HTTP/1.0\r\n\r\n' | OPENSSL_CONF=/dev/null timeout 20 openssl s_client -ign_eof \
  -connect "127.0.0.1:$port" -servername localhost -tls1_3 -CAfile "$P11TLS_CERT" \
  -sess_in "$work/sess13" > "$work/r2.out" 2>&1 || true
check "TLS 1.3 ticket resumed after a full nginx restart" grep -q "^Reused, TLSv1.3" "$work/r2.out"
check "page served on the resumed session" grep -q "hello from p11tls" "$work/r2.out"
ngx_stop "$ngx"

# ------------------------------------------------------- 2 s_server + s_client
start_server() { # start_server LOG ARGS...: s_server with p11tls; sets SPORT
  local log=$1 i
  shift
  SPORT=$(p11_free_port)
  # s_server ends when its stdin does: a FIFO held open by a sleep (both by PID)
  rm -f "$work/in"
  mkfifo "$work/in"
  sleep 60 > "$work/in" 2> /dev/null &
  spids+=($!)
  OPENSSL_CONF=$cnf timeout 60 openssl s_server -accept "127.0.0.1:$SPORT" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" "$@" < "$work/in" > "$log" 2>&1 &
  spids+=($!)
  for i in $(seq 1 100); do grep -q '^ACCEPT' "$log" && return 0; sleep 0.1; done
  cat "$log" >&2
  return 1
}
stop_server() { # the server, then its stdin's sleep (the last two PIDs started)
  local n=${#spids[@]} p
  for p in "${spids[n - 1]}" "${spids[n - 2]}"; do
    kill "$p" 2> /dev/null || true
    wait "$p" 2> /dev/null || true
  done
  spids=("${spids[@]:0:n-2}")
}
client() { # client OUT ARGS...: a plain s_client (no p11tls), stdin open 1 s
  local out=$1
  shift
  sleep 1 | OPENSSL_CONF=/dev/null timeout 20 openssl s_client -connect "127.0.0.1:$SPORT" \
    -CAfile "$P11TLS_CERT" "$@" > "$out" 2>&1 || true
}
EXP=(-keymatexport EXPERIMENTAL-p11tls-test -keymatexportlen 40)
for suite in "${SUITES[@]}"; do
  start_server "$work/s.log" -keylogfile "$work/s.keylog" "${EXP[@]}"
  rm -f "$work/sess"
  client "$work/c1.out" -tls1_3 -ciphersuites "$suite" -keylogfile "$work/c.keylog" -sess_out "$work/sess" "${EXP[@]}"
  client "$work/c2.out" -tls1_3 -ciphersuites "$suite" -sess_in "$work/sess" "${EXP[@]}"
  stop_server
  check "$suite: full handshake" grep -q "^New, TLSv1.3, Cipher is $suite" "$work/c1.out"
  check "$suite: resumed with the ticket" grep -q "^Reused, TLSv1.3, Cipher is $suite" "$work/c2.out"
  same=0
  differ=0
  for label in CLIENT_HANDSHAKE_TRAFFIC_SECRET SERVER_HANDSHAKE_TRAFFIC_SECRET CLIENT_TRAFFIC_SECRET_0 \
    SERVER_TRAFFIC_SECRET_0 EXPORTER_SECRET; do
    c=$(awk -v l="$label" '$1 == l {print $3}' "$work/c.keylog" | head -1)
    s=$(awk -v l="$label" '$1 == l {print $3}' "$work/s.keylog" | head -1)
    if [ -n "$c" ] && [ -n "$s" ] && [ "${#c}" = "${#s}" ] && [ "$c" != "$s" ]; then
      differ=$((differ + 1))
    elif [ "$c" = "$s" ]; then
      same=$((same + 1))
    fi
  done
  check "$suite: the server's keylog holds handles: 5/5 secrets differ from the client's (same: $same)" [ "$differ" -eq 5 ]
  ck=$(grep -h 'Keying material:' "$work/c1.out" "$work/c2.out" | awk '{print $3}')
  sk=$(grep 'Keying material:' "$work/s.log" | awk '{print $3}' | head -2)
  check "$suite: exporter output matches the client's, full and resumed" [ -n "$ck" -a "$ck" = "$sk" ]
  rm -f "$work/s.keylog" "$work/c.keylog"
done

# ------------------------------------------------------- 3 HRR and KeyUpdate
start_server "$work/s.log" -groups X25519 -msg
client "$work/hrr.out" -groups P-256:X25519 -msg
stop_server
nsh=$(grep -c '<<< TLS 1.3, Handshake \[length [0-9a-f]*\], ServerHello' "$work/hrr.out" || true)
check "HelloRetryRequest: the server asked for another key share (2 ServerHello messages: $nsh)" [ "$nsh" -eq 2 ]
check "HelloRetryRequest: the handshake completes" grep -q "^New, TLSv1.3" "$work/hrr.out"
start_server "$work/s.log" -www
(sleep 0.5; echo k; sleep 0.5; echo K; sleep 0.5; printf 'GET / HTTP/1.0\r\n\r\n'; sleep 1) |
  OPENSSL_CONF=/dev/null timeout 20 openssl s_client -connect "127.0.0.1:$SPORT" -CAfile "$P11TLS_CERT" \
    > "$work/ku.out" 2>&1 || true
stop_server
nku=$(grep -c '^KEYUPDATE$' "$work/ku.out" || true)
check "KeyUpdate: the client updated its keys and asked the server to (2: $nku)" [ "$nku" -eq 2 ]
check "KeyUpdate: the connection still carries data afterwards" grep -q "^HTTP/1.0 200 ok" "$work/ku.out"

# ------------------------------------------------------------ 4 other clients
ngx=$work/ngx2
mkdir -p "$ngx"
port=$(p11_free_port)
ngx_write_conf "$ngx" "$port" protocols="TLSv1.2 TLSv1.3"
ngx_start "$ngx" "$cnf"
for prio in "NORMAL:-VERS-ALL:+VERS-TLS1.3" "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"; do
  out=$(printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' |
    timeout 20 gnutls-cli --priority "$prio" --x509cafile "$P11TLS_CERT" -p "$port" localhost 2>&1 || true)
  if grep -qF "(TLS1.3-X.509)-" <<< "$out" && grep -q "hello from p11tls" <<< "$out"; then
    ok "gnutls-cli ($prio): TLS 1.3 handshake and page ($(grep -o '(TLS1.3-X.509)-[^ ]*' <<< "$out"))"
  else
    not_ok "gnutls-cli ($prio): TLS 1.3 handshake and page"
    tail -n 5 <<< "$out" | sed 's/^/#   /' >&2
  fi
done
out=$(timeout 20 python3 - "$port" "$P11TLS_CERT" << 'PY' 2>&1 || true
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    with ctx.wrap_socket(s, server_hostname="localhost") as t:
        t.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            b = t.recv(4096)
            if not b:
                break
            data += b
        print(t.version(), t.cipher()[0], data.split(b"\r\n\r\n", 1)[-1].decode().strip())
PY
)
check "Python's ssl: TLS 1.3 handshake and page ($out)" grep -q "^TLSv1.3 .* hello from p11tls" <<< "$out"

# ------------------------------------------------------ 5 curl with p11tls
rm -f "$work/curl-dbg"
body=$(OPENSSL_CONF=$cnf P11TLS_DEBUG=file:$work/curl-dbg curl -sS --cacert "$P11TLS_CERT" \
  --resolve "localhost:$port:127.0.0.1" --tlsv1.3 "https://localhost:$port/" 2>&1 || true)
check "curl with p11tls as the client: TLS 1.3 page" [ "$body" = "hello from p11tls" ]
if [ "$P11TLS_KIND" = nss ]; then
  check "curl's TLS 1.3 key schedule ran in its token (C_DeriveKey in its debug log)" \
    grep -q "C_DeriveKey -> CKR_OK" "$work/curl-dbg"
else
  check "curl's TLS 1.3 key schedule ran in its token (C_Sign in its debug log)" \
    grep -q "C_Sign -> CKR_OK" "$work/curl-dbg"
fi
ngx_stop "$ngx"

# ---------------------------- 7 post-handshake client authentication (before 6)
SPORT=$(p11_free_port)
rm -f "$work/pha.in"
mkfifo "$work/pha.in"
# the server's stdin: "c" (SSL_verify_client_post_handshake) once the client is in
(sleep 2.5; echo c; sleep 2.5) > "$work/pha.in" &
spids+=($!)
OPENSSL_CONF=$cnf timeout 30 openssl s_server -accept "127.0.0.1:$SPORT" -key "$P11TLS_KEY_URI" \
  -cert "$P11TLS_CERT" -CAfile "$P11TLS_CA" -verify_return_error < "$work/pha.in" > "$work/pha-s.out" 2>&1 &
spids+=($!)
for i in $(seq 1 50); do grep -q '^ACCEPT' "$work/pha-s.out" && break; sleep 0.1; done
(sleep 4; printf 'after\n') | OPENSSL_CONF=$cnf timeout 20 openssl s_client -connect "127.0.0.1:$SPORT" \
  -tls1_3 -enable_pha -cert "$P11TLS_CLIENT_CERT" -key "$P11TLS_CLIENT_KEY_PEM" -CAfile "$P11TLS_CERT" \
  > "$work/pha-c.out" 2>&1 || true
stop_server
check "post-handshake auth: the handshake did not ask for a certificate (no client chain before 'c')" \
  bash -c "! sed -n '1,/^CIPHER is/p' '$work/pha-s.out' | grep -q 'CN = p11tls-client'"
check "post-handshake auth: the server verified the client's certificate after 'c'" \
  grep -q "^depth=0 CN = p11tls-client" "$work/pha-s.out"
check "post-handshake auth: and its Finished (SSL_do_handshake -> 1, checked in the token)" \
  grep -q "^SSL_do_handshake -> 1" "$work/pha-s.out"
check "post-handshake auth: the connection carries data afterwards" grep -q "^after" "$work/pha-s.out"

# ------------------------------------------------------------ 6 memory dump
dump_check() { # dump_check CNF N-MEASURED N-AFTER
  local cnf6=$1 nm=$2 na=$3 i suite w core found frags nsec pinhex
  ngx=$work/ngx6
  mkdir -p "$ngx"
  port=$(p11_free_port)
  ngx_write_conf "$ngx" "$port" protocols="TLSv1.2 TLSv1.3" workers=1
  ngx_start "$ngx" "$cnf6"
  tls_spy_cnf "$work/spy.cnf"
  spy_curl() { # spy_curl OUT-FILE SUITE: curl through the spy, its secrets in OUT-FILE
    OPENSSL_CONF=$work/spy.cnf P11SPY_OUT=$1 curl -sS --cacert "$P11TLS_CERT" \
      --resolve "localhost:$port:127.0.0.1" --tlsv1.3 --tls13-ciphers "$2" -o /dev/null \
      "https://localhost:$port/" 2>&1 || true
  }
  rm -f "$work/spy.measured" "$work/spy.after"
  for ((i = 0; i < nm; i++)); do spy_curl "$work/spy.measured" "${SUITES[i % 3]}"; done
  for ((i = 0; i < na; i++)); do spy_curl "$work/spy.after" "${SUITES[i % 3]}"; done
  # secrets: not the record keys and IVs (the worker holds those by design), not the
  # public constants (the early secret without a PSK, its "derived" salt)
  secrets() { awk '$1 != "key" && $1 != "iv" {print $2}' "$1" | sort | uniq -u; }
  secrets "$work/spy.measured" > "$work/measured"
  nsec=$(wc -l < "$work/measured")
  check "dump: the spy recorded the secrets of $nm TLS 1.3 handshakes ($nsec)" [ "$nsec" -ge $((nm * 10)) ]
  w=$(ngx_workers "$ngx")
  gcore -o "$work/core" "$w" > /dev/null 2>&1 || true
  core=$work/core.$w
  check "gcore dumped worker $w" [ -s "$core" ]
  check "control: the dump is searchable (nginx's response text found)" \
    env LC_ALL=C grep -qaF "hello from p11tls" "$core"
  found=$(perl "$src/tests/lib/find-bytes.pl" "$core" $(cat "$work/measured") | awk '$2 > 0' | wc -l)
  check "worker memory holds none of the $nsec secrets of the measured handshakes (found $found)" [ "$found" -eq 0 ]
  frags=$(while read -r v; do echo "${v:0:32} ${v:32:32}"; done < "$work/measured")
  found=$(perl "$src/tests/lib/find-bytes.pl" "$core" $frags | awk '$2 > 0' | wc -l)
  check "worker memory holds no 16-byte piece of them either (found $found)" [ "$found" -eq 0 ]
  pinhex=$(perl -e 'local $/; open F, "<", $ARGV[0]; print unpack("H*", <F>)' "$P11TLS_PIN_FILE")
  found=$(perl "$src/tests/lib/find-bytes.pl" "$core" "$pinhex" | awk '{print $2}')
  check "worker memory does not hold the PIN (found $found)" [ "$found" -eq 0 ]
  if [ "$na" -gt 0 ]; then
    secrets "$work/spy.after" > "$work/after"
    found=$(perl "$src/tests/lib/find-bytes.pl" "$core" $(cat "$work/after") | awk '$2 > 0' | wc -l)
    echo "# secrets of the last $na handshakes found in the dump: $found of $(wc -l < "$work/after")"
    check "control: secrets of the last handshakes, still objects of the in-process token, are found ($found)" [ "$found" -ge 1 ]
  fi
  rm -f "$core"
  ngx_stop "$ngx"
}
case "$P11TLS_KIND" in
softhsm-remote) dump_check "$cnf" 9 0 ;;
nss)
  # 16 cached secret objects: generations of 2, retired as the later handshakes make theirs
  sed -e '/^handle-cache-size *=/d' -e '/^\[p11tls_sect\]/a handle-cache-size = 16' "$cnf" > "$work/small-cache.cnf"
  dump_check "$work/small-cache.cnf" 9 3
  ;;
esac

tap_finish
