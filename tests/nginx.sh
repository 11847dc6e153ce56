#!/usr/bin/env bash
# nginx.sh - Debian's nginx and curl, unmodified, with p11tls on the token under
# test (run through with-token.sh): many handshakes on both workers, resumption
# by session ID and ticket across workers, reload and restart, curl with p11tls
# as a client, gnutls-cli as a non-OpenSSL client, a memory dump of the workers
# (transient, out-of-process token), and start-up failures that name the cause.
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
. "$src/scripts/lib/nginx.sh"
. "$src/tests/lib/tap.sh"

work=$(mktemp -d /tmp/p11tls-nginx.XXXXXX)
chmod 755 "$work"
cleanup() {
  for d in "$work"/ngx*; do [ -d "$d" ] && ngx_stop "$d"; done
  rm -rf "$work"
}
trap cleanup EXIT

ngx_grant_token_access www-data
port=$(p11_free_port)
ngx=$work/ngx1
mkdir -p "$ngx"
ngx_write_conf "$ngx" "$port"
ngx_start "$ngx"
url=https://localhost:$port/
# nginx writes an access-log line after the client has its answer: wait until the
# log has at least N lines (bounded), and until it stops growing before resetting it.
wait_log() {
  local n=$1 i
  for i in $(seq 1 100); do
    [ "$(wc -l < "$ngx/access.log")" -ge "$n" ] && return 0
    sleep 0.05
  done
  return 0
}
reset_log() {
  local a b i
  for i in $(seq 1 40); do
    a=$(wc -l < "$ngx/access.log"); sleep 0.05; b=$(wc -l < "$ngx/access.log")
    [ "$a" = "$b" ] && break
  done
  : > "$ngx/access.log"
}
curl_tls() { curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" --tlsv1.2 --tls-max 1.2 "$@"; }

# 1. 200 sequential requests per cipher, each a full handshake; both workers serve.
for c in AES128-GCM-SHA256 AES256-GCM-SHA384 ECDHE-RSA-AES128-GCM-SHA256; do
  reset_log
  good=0
  for i in $(seq 1 200); do
    body=$(curl_tls --ciphers "$c" "$url" -w '%{http_code}' 2>&1 || true)
    [ "$body" = "hello from p11tls
200" ] && good=$((good + 1))
  done
  check "$c: 200/200 requests answered 200 with the body (got $good)" [ "$good" -eq 200 ]
  wait_log 200
  n=$(grep -c " TLSv1.2 $c \. 200 " "$ngx/access.log" || true)
  check "$c: access log shows 200 full handshakes with that cipher (got $n)" [ "$n" -eq 200 ]
  w=$(awk '{print $1}' "$ngx/access.log" | sort -u | wc -l)
  check "$c: both workers served (distinct worker PIDs: $w)" [ "$w" -ge 2 ]
done

# 2. Resumption on the other worker, by ticket (tickets on) and by session ID
#    (tickets off: nginx's shared session cache).
resume_check() {
  local kind=$1 urls=() i first other
  for i in $(seq 1 30); do urls+=("$url"); done
  reset_log
  curl_tls -H "Connection: close" "${urls[@]}" > /dev/null 2>&1 || true
  wait_log 30
  # nginx logs in completion order: count, don't rely on the order
  check "$kind: exactly one full handshake" [ "$(awk '$4 == "."' "$ngx/access.log" | wc -l)" -eq 1 ]
  first=$(awk '$4 == "." {print $1}' "$ngx/access.log")
  other=$(awk -v f="$first" '$4 == "r" && $1 != f' "$ngx/access.log" | wc -l)
  check "$kind: resumed on the other worker ($other of 29 connections)" [ "$other" -ge 1 ]
  check "$kind: every later connection resumed" \
    [ "$(awk '$4 == "r"' "$ngx/access.log" | wc -l)" -eq 29 ]
}
resume_check "ticket"
ngx_stop "$ngx"
ngx_write_conf "$ngx" "$port" tickets=off
ngx_start "$ngx"
resume_check "session ID"
ngx_stop "$ngx"

# 3. Tickets across `nginx -s reload` and a full restart (same ticket key file).
ngx_write_conf "$ngx" "$port"
ngx_start "$ngx"
sclient() {
  printf 'GET / HTTP/1.0\r\n\r\n' | env -u OPENSSL_CONF timeout 10 openssl s_client -ign_eof \
    -connect "127.0.0.1:$port" -servername localhost -tls1_2 -CAfile "$P11TLS_CERT" "$@" 2>&1
}
out=$(sclient -sess_out "$work/sess.pem")
check "s_client full handshake" grep -q "^New, TLSv1.2" <<<"$out"
ngx_reload "$ngx"
out=$(sclient -sess_in "$work/sess.pem")
check "ticket resumption after nginx -s reload" grep -q "^Reused, TLSv1.2" <<<"$out"
check "page served after reload resumption" grep -q "hello from p11tls" <<<"$out"
ngx_stop "$ngx"
ngx_start "$ngx"
out=$(sclient -sess_in "$work/sess.pem")
check "ticket resumption after a full nginx restart" grep -q "^Reused, TLSv1.2" <<<"$out"
check "page served after restart resumption" grep -q "hello from p11tls" <<<"$out"

# 4. curl with p11tls loaded (its own master secrets in the token): against nginx
#    with p11tls, and against a plain nginx with a software key.
out=$(OPENSSL_CONF=$P11TLS_OPENSSL_CNF SSLKEYLOGFILE=$work/curl.keylog curl_tls "$url" 2>&1 || true)
check "curl with p11tls -> nginx with p11tls" [ "$out" = "hello from p11tls" ]
plain=$work/ngx-plain
mkdir -p "$plain"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$plain/key.pem" -out "$plain/cert.pem" \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost" -days 2 2>/dev/null
chmod 644 "$plain/key.pem"
pport=$(p11_free_port)
ngx_write_conf "$plain" "$pport" key="$plain/key.pem" cert="$plain/cert.pem"
ngx_start "$plain" /dev/null
out=$(OPENSSL_CONF=$P11TLS_OPENSSL_CNF SSLKEYLOGFILE=$work/curl2.keylog curl -sS --cacert "$plain/cert.pem" \
  --resolve "localhost:$pport:127.0.0.1" --tlsv1.2 --tls-max 1.2 "https://localhost:$pport/" 2>&1 || true)
check "curl with p11tls -> nginx without p11tls" [ "$out" = "hello from p11tls" ]
ngx_stop "$plain"

# 5. A client that is not OpenSSL: GnuTLS, RSA key exchange.
out=$(printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' | timeout 15 gnutls-cli --port "$port" \
  --x509cafile "$P11TLS_CERT" \
  --priority 'NORMAL:-VERS-ALL:+VERS-TLS1.2:-KX-ALL:+RSA' localhost 2>&1 || true)
check "gnutls-cli: TLS 1.2 RSA key exchange handshake" grep -qF "(TLS1.2-X.509)-(RSA)-" <<<"$out"
check "gnutls-cli: page fetched" grep -q "hello from p11tls" <<<"$out"

# 6. At transient with the token out of process: after handshakes, a memory dump
#    of each worker holds none of the client's master secrets (nor the PIN).
if [ "$P11TLS_KIND" = softhsm-remote ]; then
  : > "$work/client.keylog"
  for c in AES128-GCM-SHA256 ECDHE-RSA-AES128-GCM-SHA256 AES256-GCM-SHA384; do
    for i in 1 2 3 4 5; do
      SSLKEYLOGFILE=$work/client.keylog curl_tls --ciphers "$c" -o /dev/null "$url"
    done
  done
  secrets=$(awk '$1 == "CLIENT_RANDOM" {print $3}' "$work/client.keylog" | sort -u)
  nsec=$(wc -w <<<"$secrets")
  check "client keylog has the master secrets of 15 handshakes ($nsec)" [ "$nsec" -eq 15 ]
  pin=$(cat "$P11TLS_PIN_FILE")
  find=$src/tests/lib/find-bytes.pl
  # control: the byte-exact search finds a secret planted in binary noise
  first=$(head -1 <<<"$secrets")
  { head -c 4096 /dev/urandom; perl -e 'print pack("H*", $ARGV[0])' "$first"; head -c 4096 /dev/urandom; } > "$work/planted"
  check "control: the search finds a master secret planted in binary data" \
    [ "$(perl "$find" "$work/planted" "$first" | awk '{print $2}')" -eq 1 ]
  pinhex=$(perl -e 'local $/; open F, "<", $ARGV[0]; print unpack("H*", <F>)' "$P11TLS_PIN_FILE")
  for w in $(ngx_workers "$ngx"); do
    gcore -o "$work/core" "$w" > /dev/null 2>&1 || true
    core=$work/core.$w
    check "gcore dumped worker $w" [ -s "$core" ]
    check "control: the dump of worker $w is searchable (nginx's response text found)" \
      env LC_ALL=C grep -qaF "hello from p11tls" "$core"
    found=$(perl "$find" "$core" $secrets | awk '$2 > 0' | wc -l)
    check "worker $w memory holds none of the $nsec client master secrets (found $found)" [ "$found" -eq 0 ]
    frags=$(for s in $secrets; do echo "${s:0:32} ${s:32:32} ${s:64:32}"; done)
    found=$(perl "$find" "$core" $frags | awk '$2 > 0' | wc -l)
    check "worker $w memory holds no 16-byte piece of them either (found $found)" [ "$found" -eq 0 ]
    found=$(perl "$find" "$core" "$pinhex" | awk '{print $2}')
    check "worker $w memory does not hold the PIN (found $found)" [ "$found" -eq 0 ]
    rm -f "$core"
  done
fi
ngx_stop "$ngx"

# 7. Start-up failures name the cause: wrong PIN, unknown token, missing module.
bad_start() {
  local what=$1 sedexpr=$2 expect=$3 cnf=$work/bad.cnf rc=0
  sed "$sedexpr" "$P11TLS_OPENSSL_CNF" > "$cnf"
  echo -n "wrong-pin-$$" > "$work/wrong.pin"
  : > "$ngx/error.log"
  OPENSSL_CONF=$cnf timeout 20 nginx -c "$ngx/nginx.conf" -g 'daemon off;' > "$ngx/stdout.log" 2>&1 || rc=$?
  check "$what: nginx refuses to start (exit status $rc, not a crash)" [ "$rc" -eq 1 ]
  check "$what: nginx's log names the cause ($expect)" grep -q "$expect" "$ngx/error.log" "$ngx/stdout.log"
  check "$what: no PIN in the log" bash -c "! cat '$ngx/error.log' '$ngx/stdout.log' | grep -qF -e 'wrong-pin-$$' -e \"\$(cat '$P11TLS_PIN_FILE')\""
}
bad_start "wrong PIN" "s|^pin-source = .*|pin-source = file:$work/wrong.pin|" "CKR_PIN_INCORRECT"
bad_start "unknown token" "s|^token = .*|token = pkcs11:token=no-such-token|" "no token matches"
bad_start "missing module" "s|^pkcs11-module = .*|pkcs11-module = /nonexistent/libpkcs11.so|" "cannot load '/nonexistent/libpkcs11.so'"

tap_finish
