#!/usr/bin/env bash
# tls13_bad.sh - TLS 1.3 with bad input and a failing token (run through with-token.sh):
#   1 fuzzed Finished: a plain client whose own Finished MAC has one byte changed
#     (tests/spy/spy_provider.c, P11SPY_CORRUPT; random byte and XOR per try, three
#     suites) gets decrypt_error from s_server with p11tls, as RFC 8446 6.2 demands
#     and as a software-key s_server answers; the server goes on serving
#   2 fuzzed PSK binders: the same client resuming with a changed binder is refused
#     with the alert a software-key s_server sends for the same binder (libssl 3.0
#     answers illegal_parameter, where RFC 8446 6.2 names decrypt_error: libssl's
#     choice, not p11tls's); the session still resumes with its true binder
#   3 nginx with p11tls: the same two refusals, its workers still the same processes
#   4 (in-process tokens, through tests/shim/p11shim.so) the token goes away in the
#     middle of a TLS 1.3 handshake, at several points: the handshake fails, the
#     server's error names the PKCS#11 call and CKR_DEVICE_REMOVED, and it is never
#     finished in software; once the token is back, handshakes succeed again
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/tls.sh
. "$HERE/lib/tls.sh"
. "$HERE/../scripts/lib/nginx.sh"
tls_init
TRIES=${P11TLS_BAD_TRIES:-8}
SUITES=(TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256)
tls_spy_cnf "$WORK/spy.cnf"
echo "# token kind: $P11TLS_KIND; $TRIES tries per suite and kind of corruption"

# spy_client OUT ARGS...: a plain s_client through the spy provider (-msg: the alerts).
spy_client() {
  local out=$1
  shift
  printf 'GET / HTTP/1.0\r\n\r\n' |
    OPENSSL_CONF=$WORK/spy.cnf timeout -s KILL "$TLS_CLIENT_TIMEOUT" openssl s_client \
      -connect "127.0.0.1:$SERVER_PORT" -servername localhost -msg -ign_eof "$@" >"$out" 2>&1 || true
}
# alert_of OUT: the fatal alert the client received ("decrypt_error"), empty if none.
alert_of() { sed -n 's/^<<< TLS 1.3, Alert \[length 0002\], fatal \([a-z_]*\)$/\1/p' "$1" | head -1; }

# fuzz PORT-LABEL: sections 1 and 2 against the server on $SERVER_PORT; prints
# "finished-alerts binder-alerts" lines into $WORK/alerts.<label>.
fuzz() {
  local label=$1 suite i hl pos x a
  : >"$WORK/alerts.$label"
  for suite in "${SUITES[@]}"; do
    hl=32
    [ "$suite" = TLS_AES_256_GCM_SHA384 ] && hl=48
    rm -f "$WORK/sess"
    spy_client "$WORK/full.out" -tls1_3 -ciphersuites "$suite" -sess_out "$WORK/sess"
    if ! grep -q "^New, TLSv1.3, Cipher is $suite" "$WORK/full.out" || [ ! -s "$WORK/sess" ]; then
      not_ok "$label $suite: a full handshake through the spy provider"
      tls_show "$WORK/full.out"
      continue
    fi
    for ((i = 0; i < TRIES; i++)); do
      pos=$((RANDOM % hl))
      x=$((RANDOM % 255 + 1))
      # the client's 2nd MAC of a full handshake is its own Finished (the 1st checks
      # the server's); the 1st of a resumption is its binder
      P11SPY_CORRUPT=2:$pos:$x spy_client "$WORK/f.out" -tls1_3 -ciphersuites "$suite"
      echo "finished $suite $pos $x $(alert_of "$WORK/f.out")" >>"$WORK/alerts.$label"
      P11SPY_CORRUPT=1:$pos:$x spy_client "$WORK/b.out" -tls1_3 -ciphersuites "$suite" -sess_in "$WORK/sess"
      a=$(alert_of "$WORK/b.out")
      grep -q "^Reused, TLSv1.3" "$WORK/b.out" && a="resumed-anyway"
      echo "binder $suite $pos $x $a" >>"$WORK/alerts.$label"
    done
    spy_client "$WORK/r.out" -tls1_3 -ciphersuites "$suite" -sess_in "$WORK/sess"
    check "$label $suite: after $TRIES bad binders the session resumes with its true binder" \
      grep -q "^Reused, TLSv1.3, Cipher is $suite" "$WORK/r.out"
  done
}
summary() { # summary LABEL KIND: "alert xN, ..." for one kind of corruption
  awk -v k="$2" '$1 == k { n[$5 == "" ? "none" : $5]++ } END { for (a in n) printf "%s x%d ", a, n[a] }' \
    "$WORK/alerts.$1"
}

# ------------------------------------------- reference: s_server, software key
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/soft.key" -out "$WORK/soft.pem" \
  -subj /CN=localhost -days 2 2>/dev/null
if OPENSSL_CONF=/dev/null tls_start_server ref "" -key "$WORK/soft.key" -cert "$WORK/soft.pem" -www -tls1_3; then
  rm -f "$WORK/sess"
  spy_client "$WORK/rf.out" -tls1_3 -sess_out "$WORK/sess"
  P11SPY_CORRUPT=2:0:1 spy_client "$WORK/rf.out" -tls1_3
  REF_FIN=$(alert_of "$WORK/rf.out")
  P11SPY_CORRUPT=1:0:1 spy_client "$WORK/rb.out" -tls1_3 -sess_in "$WORK/sess"
  REF_BIND=$(alert_of "$WORK/rb.out")
  tls_stop "$SERVER_PID"
else
  REF_FIN= REF_BIND=
fi
echo "# reference (libssl, software key): bad Finished -> ${REF_FIN:-?}, bad binder -> ${REF_BIND:-?}"
check_eq "reference: a bad client Finished gets decrypt_error (RFC 8446 6.2)" decrypt_error "$REF_FIN"
check "reference: a bad binder gets a fatal alert (${REF_BIND:-none})" [ -n "$REF_BIND" ]

# ------------------------------------------------ 1, 2: s_server with p11tls
if OPENSSL_CONF=$P11TLS_OPENSSL_CNF tls_start_server p11 "" -key "$P11TLS_KEY_URI" \
  -cert "$P11TLS_CERT" -www -tls1_3; then
  fuzz s_server
  n=$((3 * TRIES))
  echo "# s_server, bad Finished: $(summary s_server finished)"
  echo "# s_server, bad binder:   $(summary s_server binder)"
  got=$(awk -v a="$REF_FIN" '$1 == "finished" && $5 == a' "$WORK/alerts.s_server" | wc -l)
  check_eq "s_server: $n fuzzed Finished MACs, each answered $REF_FIN" "$n" "$got"
  got=$(awk -v a="$REF_BIND" '$1 == "binder" && $5 == a' "$WORK/alerts.s_server" | wc -l)
  check_eq "s_server: $n fuzzed binders, each answered $REF_BIND (as libssl with a software key)" "$n" "$got"
  check "s_server is still running" tls_alive "$SERVER_PID"
  tls_client "$WORK/good.out" -tls1_3 -ign_eof
  check "s_server still serves a good handshake" grep -q '^HTTP/1.0 200 ok' "$WORK/good.out"
  tls_stop "$SERVER_PID"
else
  not_ok "s_server with p11tls starts"
fi

# ------------------------------------------------------------- 3: nginx
ngx_grant_token_access www-data
NGX=$WORK/ngx
mkdir -p "$NGX"
nginx_cleanup() { ngx_stop "$NGX"; }
tls_on_exit nginx_cleanup
SERVER_PORT=$(p11_free_port)
ngx_write_conf "$NGX" "$SERVER_PORT" protocols="TLSv1.2 TLSv1.3"
if ngx_start "$NGX" "$P11TLS_OPENSSL_CNF"; then
  before=$(ngx_workers "$NGX" | sort | tr '\n' ' ')
  rm -f "$WORK/sess"
  spy_client "$WORK/nf.out" -tls1_3 -sess_out "$WORK/sess"
  P11SPY_CORRUPT=2:$((RANDOM % 32)):$((RANDOM % 255 + 1)) spy_client "$WORK/nf.out" -tls1_3
  check_eq "nginx: a fuzzed Finished is answered $REF_FIN" "$REF_FIN" "$(alert_of "$WORK/nf.out")"
  P11SPY_CORRUPT=1:$((RANDOM % 32)):$((RANDOM % 255 + 1)) spy_client "$WORK/nb.out" -tls1_3 -sess_in "$WORK/sess"
  check_eq "nginx: a fuzzed binder is answered $REF_BIND" "$REF_BIND" "$(alert_of "$WORK/nb.out")"
  after=$(ngx_workers "$NGX" | sort | tr '\n' ' ')
  check "nginx: the same workers serve on (no crash: $after)" [ -n "$before" -a "$before" = "$after" ]
  ngx_stop "$NGX"
else
  not_ok "nginx with p11tls starts"
fi

# ------------------------------------------- 4: the token goes away mid-handshake
if [ "$P11TLS_KIND" = softhsm ] || [ "$P11TLS_KIND" = nss ]; then
  shim=${P11TLS_BUILD_DIR:?}/tests/p11shim.so
  export P11SHIM_MODULE=$P11TLS_MODULE P11SHIM_FAIL_FILE=$WORK/token-removed P11SHIM_ARM_FILE=$WORK/arm
  sed "s|^pkcs11-module = .*|pkcs11-module = $shim|" "$P11TLS_OPENSSL_CNF" >"$WORK/shim.cnf"
  # points: the first step of the key schedule, the handshake traffic secrets, and
  # the check of the client's Finished (the server's last MAC: its 1st C_Sign is the
  # RSA CertificateVerify, its 2nd its own Finished)
  if [ "$P11TLS_KIND" = nss ]; then
    POINTS=("C_DeriveKey 1" "C_DeriveKey 6" "C_Sign 3")
  else # HMAC strategy: every HKDF step is a C_Sign
    POINTS=("C_Sign 2" "C_Sign 8" "C_CreateObject 4")
  fi
  if OPENSSL_CONF=$WORK/shim.cnf tls_start_server shim "" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" -www -tls1_3 -keylogfile "$WORK/shim.keylog"; then
    tls_client "$WORK/pre.out" -tls1_3 -ign_eof
    check "through the shim: a TLS 1.3 handshake before the failure" grep -q '^HTTP/1.0 200 ok' "$WORK/pre.out"
    for pt in "${POINTS[@]}"; do
      : >"$SERVER_ERR"
      echo "$pt" >"$WORK/arm"
      tls_client "$WORK/mid.out" -tls1_3 -ign_eof -msg || true
      fired=no
      [ -e "$P11SHIM_FAIL_FILE" ] && fired=yes
      check "token removed at call '$pt': the shim fired during the handshake ($fired)" [ "$fired" = yes ]
      if grep -q '^HTTP/1.0 200 ok' "$WORK/mid.out"; then
        not_ok "token removed at '$pt': the handshake fails (it completed: a software fallback?)"
      else
        ok "token removed at '$pt': the handshake fails ($(grep -o 'fatal [a-z_]*' "$WORK/mid.out" | head -1 || echo 'no alert'))"
      fi
      fn=${pt% *}
      check_grep "token removed at '$pt': the server's error names $fn and CKR_DEVICE_REMOVED" \
        "$SERVER_ERR" "$fn.*CKR_DEVICE_REMOVED"
      rm -f "$P11SHIM_FAIL_FILE" "$WORK/arm"
      sleep 0.3 # p11tls re-opens a lost token at most every 250 ms
      good=0
      for i in 1 2 3 4 5; do
        tls_client "$WORK/post.out" -tls1_3 -ign_eof || true
        if grep -q "^HTTP/1.0 200 ok" "$WORK/post.out"; then good=1; break; fi
        sleep 0.3
      done
      check "token back after '$pt': TLS 1.3 handshakes succeed again (try $i)" [ "$good" = 1 ]
    done
    tls_stop "$SERVER_PID"
  else
    not_ok "s_server through the shim starts"
  fi
fi

tls_finish
