#!/usr/bin/env bash
# ecdhe.sh - ECDHE key shares in the token (run through with-token.sh):
#   1 the status names the groups whose key shares the token makes (NSS, SoftHSM2 in
#     process: P-256, P-384, P-521) or why none (SoftHSM2 behind p11-kit's RPC, which
#     does not carry ECDH1_DERIVE)
#   2 s_server with p11tls against a plain s_client, TLS 1.3 on each group and TLS 1.2
#     ECDHE-RSA: the page on the group asked for; p11tls's call
#     log shows a key pair generated in the token for exactly the handshakes on its
#     groups (X25519: libssl's software key share, its secret imported as before)
#   3 gnutls-cli and Python's ssl on P-256, P-384 and P-521; nginx (2 workers) with curl on P-256 (in the token
#     where it can) and with curl's default X25519; curl with p11tls as the client makes
#     its own key share in its token
#   4 'ecdhe = require': libssl offers only the token's curves, so a client that offers
#     only X25519 gets handshake_failure, and the server's log says why; on SoftHSM2 a
#     TLS 1.2 SHA-384 suite over P-256 (whose PRF would need the secret read out of the
#     token, its HMAC-SHA-384 keys being 48 bytes at least) fails with the reason, where
#     'ecdhe = token' serves it (section 2); 'ecdhe = software': no key share in the token
#   5 bad key shares (tests/lib/bad_keyshare.py: off the curve, a byte short or long,
#     the point at infinity, compressed (TLS 1.3), zeros, random) in a TLS 1.3
#     ClientHello and in a TLS 1.2 ClientKeyExchange: illegal_parameter (or the alert
#     libssl gives with a software key share: a software-key s_server's answers are
#     printed beside), no key pair made for a TLS 1.3 one, the server serves on
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/tls.sh
. "$HERE/lib/tls.sh"
. "$HERE/../scripts/lib/nginx.sh"
tls_init
cnf=$P11TLS_OPENSSL_CNF
if [ "$P11TLS_KIND" != softhsm-remote ]; then TOKEN_GROUPS="P-256 P-384 P-521"; else TOKEN_GROUPS=""; fi
in_token() { [[ " $TOKEN_GROUPS " == *" $1 "* ]]; }
echo "# token kind: $P11TLS_KIND; groups expected in the token: ${TOKEN_GROUPS:-none}"

# ------------------------------------------------------------------ 1 status
st=$(OPENSSL_CONF=$cnf openssl list -providers -verbose | grep -A1 '^  p11tls$' | tail -1)
echo "# $st"
if [ -n "$TOKEN_GROUPS" ]; then
  check "status: ECDHE in the token on $TOKEN_GROUPS" grep -q "ECDHE in the token: $TOKEN_GROUPS; other groups in software" <<<"$st"
else
  check "status: ECDHE in software, with the reason" grep -q "ECDHE in software: the token has no EC key generation, ECDH or C_DigestKey" <<<"$st"
fi

keygens() { grep -c 'C_GenerateKeyPair -> CKR_OK' "$1" 2>/dev/null || true; }

# -------------------------------------------------- 2 s_server, each group
DBG=$WORK/server.dbg
if OPENSSL_CONF=$cnf P11TLS_DEBUG=file:$DBG tls_start_server p11 "" -key "$P11TLS_KEY_URI" \
  -cert "$P11TLS_CERT" -www; then
  run() { # run DESC GROUP S_CLIENT-ARGS...
    local desc=$1 group=$2 before after temp
    shift 2
    before=$(keygens "$DBG")
    tls_client "$WORK/c.out" -ign_eof "$@" -groups "$group" || true
    sleep 0.2
    after=$(keygens "$DBG")
    temp=$(sed -n 's/^Server Temp Key: //p' "$WORK/c.out" | head -1)
    # the page: both ends derived the same keys (Finished checked both ways)
    if grep -q '^HTTP/1.0 200 ok' "$WORK/c.out" && [[ "$temp" == *"$(tr -d '-' <<<"${group#P-}")"* ]]; then
      ok "$desc $group: page (temp key: $temp)"
    else
      not_ok "$desc $group: page (temp key: $temp)"
      tls_show "$WORK/c.out.err"
      tls_show "$SERVER_ERR"
    fi
    if in_token "$group"; then
      check_eq "$desc $group: the server's key share was generated in the token" 1 "$((after - before))"
    else
      check_eq "$desc $group: the server's key share was made in software (no token key pair)" 0 "$((after - before))"
    fi
  }
  for g in P-256 P-384 P-521 X25519; do run "TLS 1.3" "$g" -tls1_3; done
  for g in P-256 P-384 P-521; do run "TLS 1.2 ECDHE-RSA" "$g" -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256; done
  run "TLS 1.2 ECDHE-RSA-AES256-GCM-SHA384" P-256 -tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384
  tls_stop "$SERVER_PID"
else
  not_ok "s_server with p11tls starts"
fi

# ------------------------------------------- 3 gnutls, nginx, curl as a client
ngx_grant_token_access www-data
NGX=$WORK/ngx
mkdir -p "$NGX"
chmod 777 "$WORK"
nginx_cleanup() { ngx_stop "$NGX"; }
tls_on_exit nginx_cleanup
# the workers' call log: p11tls's debug option in a copy of the configuration
sed '/^\[p11tls_sect\]/a debug = file:'"$NGX/p11tls.dbg" "$cnf" | sed '/^debug = 0$/d' >"$NGX/dbg.cnf"
: >"$NGX/p11tls.dbg"
chmod 666 "$NGX/p11tls.dbg"
NPORT=$(p11_free_port)
ngx_write_conf "$NGX" "$NPORT" protocols="TLSv1.2 TLSv1.3"
if ngx_start "$NGX" "$NGX/dbg.cnf"; then
  for g in SECP256R1 SECP384R1 SECP521R1; do
    before=$(keygens "$NGX/p11tls.dbg")
    out=$(printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' | timeout 20 gnutls-cli \
      --priority "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CURVE-ALL:+CURVE-$g:-GROUP-ALL:+GROUP-$g" \
      --x509cafile "$P11TLS_CERT" -p "$NPORT" localhost 2>&1 || true)
    sleep 0.3
    n=$(($(keygens "$NGX/p11tls.dbg") - before))
    if grep -qF "(ECDHE-$g)" <<<"$out" && grep -q "hello from p11tls" <<<"$out"; then
      ok "gnutls-cli, TLS 1.3 on $g: page"
    else
      not_ok "gnutls-cli, TLS 1.3 on $g: page"
      tail -n 5 <<<"$out" | sed 's/^/#   /' >&2
    fi
    [ -n "$TOKEN_GROUPS" ] && want=1 || want=0
    check_eq "gnutls-cli on $g: key pairs generated in the worker's token ($want expected)" "$want" "$n"
  done
  # Python's ssl on each curve (set_ecdh_curve restricts the groups it offers)
  for pc in prime256v1 secp384r1 secp521r1; do
    before=$(keygens "$NGX/p11tls.dbg")
    out=$(timeout 20 python3 - "$NPORT" "$P11TLS_CERT" "$pc" <<'PY' 2>&1 || true
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.set_ecdh_curve(sys.argv[3])
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    with ctx.wrap_socket(s, server_hostname="localhost") as t:
        t.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            b = t.recv(4096)
            if not b:
                break
            data += b
        print(t.version(), data.split(b"\r\n\r\n", 1)[-1].decode().strip())
PY
)
    sleep 0.3
    n=$(($(keygens "$NGX/p11tls.dbg") - before))
    check "Python's ssl on $pc: TLS 1.3 page ($out)" grep -q "^TLSv1.3 hello from p11tls" <<<"$out"
    [ -n "$TOKEN_GROUPS" ] && want=1 || want=0
    check_eq "Python's ssl on $pc: key pairs generated in the worker's token ($want expected)" "$want" "$n"
  done
  ccurl() { curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$NPORT:127.0.0.1" "$@" "https://localhost:$NPORT/" 2>&1 || true; }
  before=$(keygens "$NGX/p11tls.dbg")
  body=$(ccurl --curves P-256)
  sleep 0.3
  n=$(($(keygens "$NGX/p11tls.dbg") - before))
  check "curl --curves P-256 (TLS 1.3) -> nginx: page" [ "$body" = "hello from p11tls" ]
  [ -n "$TOKEN_GROUPS" ] && want=1 || want=0
  check_eq "curl --curves P-256: nginx's key share generated in its token" "$want" "$n"
  before=$(keygens "$NGX/p11tls.dbg")
  body=$(ccurl --tlsv1.2 --tls-max 1.2 --ciphers ECDHE-RSA-AES128-GCM-SHA256 --curves P-384)
  sleep 0.3
  n=$(($(keygens "$NGX/p11tls.dbg") - before))
  check "curl TLS 1.2 ECDHE-RSA on P-384 -> nginx: page" [ "$body" = "hello from p11tls" ]
  check_eq "curl TLS 1.2 on P-384: nginx's key share generated in its token" "$want" "$n"
  before=$(keygens "$NGX/p11tls.dbg")
  body=$(ccurl)
  sleep 0.3
  n=$(($(keygens "$NGX/p11tls.dbg") - before))
  check "curl with its defaults (X25519) -> nginx: page" [ "$body" = "hello from p11tls" ]
  check_eq "curl with its defaults: X25519, a software key share (no token key pair)" 0 "$n"
  # curl with p11tls: its own key share in its token
  rm -f "$WORK/curl.dbg"
  body=$(OPENSSL_CONF=$cnf P11TLS_DEBUG=file:$WORK/curl.dbg ccurl --curves P-256)
  check "curl with p11tls --curves P-256 -> nginx: page" [ "$body" = "hello from p11tls" ]
  # (its activation probes 6 key pairs where the token can do ECDHE)
  n=$(keygens "$WORK/curl.dbg")
  [ -n "$TOKEN_GROUPS" ] && want=7 || want=0
  check_eq "curl with p11tls: its key share generated in its token (6 probe key pairs + 1)" "$want" "$n"
  ngx_stop "$NGX"
else
  not_ok "nginx with p11tls starts"
fi

# ------------------------------------------------ 4 ecdhe = require / software
for mode in require software; do
  sed "/^\[p11tls_sect\]/a ecdhe = $mode" "$cnf" >"$WORK/$mode.cnf"
  if OPENSSL_CONF=$WORK/$mode.cnf P11TLS_DEBUG=file:$WORK/$mode.dbg tls_start_server "$mode" "" \
    -key "$P11TLS_KEY_URI" -cert "$P11TLS_CERT" -www; then
    st=$(OPENSSL_CONF=$WORK/$mode.cnf openssl list -providers -verbose | grep -A1 '^  p11tls$' | tail -1)
    base=$(keygens "$WORK/$mode.dbg")
    tls_client "$WORK/x.out" -ign_eof -tls1_3 -groups X25519 -msg || true
    tls_client "$WORK/p.out" -ign_eof -tls1_3 -groups P-256 || true
    sleep 0.2
    n=$(($(keygens "$WORK/$mode.dbg") - base))
    if [ "$mode" = require ]; then
      check "ecdhe = require: the status says so" grep -q "require\|refused" <<<"$st"
      check "ecdhe = require: a client offering only X25519 gets handshake_failure" \
        grep -q 'Alert .*fatal handshake_failure' "$WORK/x.out"
      check_grep "ecdhe = require: the server's log says why (no group in common)" "$SERVER_ERR" \
        "no suitable key share|no shared group"
      if [ -n "$TOKEN_GROUPS" ]; then
        check "ecdhe = require: a P-256 client is served (key share in the token: $n)" \
          bash -c "grep -q '^HTTP/1.0 200 ok' '$WORK/p.out' && [ $n -eq 1 ]"
        tls_client "$WORK/r.out" -ign_eof -tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384 -groups P-256 || true
        if [ "$P11TLS_KIND" = softhsm ]; then
          check "ecdhe = require, SoftHSM2, TLS 1.2 SHA-384 over P-256: refused (internal_error)" \
            bash -c "! grep -q '^HTTP/1.0 200 ok' '$WORK/r.out' && grep -q 'alert internal error' '$WORK/r.out.err'"
          check_grep "ecdhe = require: the server's log says why" "$SERVER_ERR" \
            "HMAC key of 48 bytes.*'ecdhe = require' refuses that"
        else
          check "ecdhe = require, TLS 1.2 SHA-384 over P-256: served" grep -q '^HTTP/1.0 200 ok' "$WORK/r.out"
        fi
      else
        check "ecdhe = require on a token without ECDHE: P-256 is refused too" bash -c "! grep -q '^HTTP/1.0 200 ok' '$WORK/p.out'"
      fi
    else
      check "ecdhe = software: the status says so" grep -q "ECDHE in software (ecdhe = software)" <<<"$st"
      check "ecdhe = software: X25519 and P-256 clients are served" \
        bash -c "grep -q '^HTTP/1.0 200 ok' '$WORK/x.out' && grep -q '^HTTP/1.0 200 ok' '$WORK/p.out'"
      check_eq "ecdhe = software: no key share in the token" 0 "$n"
    fi
    tls_stop "$SERVER_PID"
  else
    not_ok "s_server with ecdhe = $mode starts"
  fi
done

# ------------------------------------------------------ 5 bad key shares
KINDS=(offcurve short long infinity compressed zero random)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/soft.key" -out "$WORK/soft.pem" \
  -subj /CN=localhost -days 2 2>/dev/null
if OPENSSL_CONF=/dev/null tls_start_server ref "" -key "$WORK/soft.key" -cert "$WORK/soft.pem" -www; then
  REF_PORT=$SERVER_PORT REF_PID=$SERVER_PID
else
  REF_PORT= REF_PID=
fi
if OPENSSL_CONF=$cnf P11TLS_DEBUG=file:$WORK/bad.dbg tls_start_server bad "" -key "$P11TLS_KEY_URI" \
  -cert "$P11TLS_CERT" -www; then
  for proto in tls13 tls12; do
    # (TLS 1.2 takes a compressed point that decompresses: a random one may be valid)
    if [ "$proto" = tls13 ]; then KINDS=(offcurve short long infinity compressed zero random); else KINDS=(offcurve short long infinity zero random); fi
    for g in P-256 P-384 P-521; do
      got="" ref=""
      base=$(keygens "$WORK/bad.dbg")
      for k in "${KINDS[@]}"; do
        got="$got $(python3 "$HERE/lib/bad_keyshare.py" "$SERVER_PORT" "$proto" "$g" "$k" | tr ' ' '-')"
        [ -z "$REF_PORT" ] || ref="$ref $(python3 "$HERE/lib/bad_keyshare.py" "$REF_PORT" "$proto" "$g" "$k" | tr ' ' '-')"
      done
      sleep 0.2
      n=$(($(keygens "$WORK/bad.dbg") - base))
      echo "# $proto $g (${KINDS[*]}): p11tls:$got; software key:$ref"
      # illegal_parameter (RFC 8446 4.2.8.2, RFC 8422 5.11), or what libssl answers with
      # a software key share (TLS 1.2, the point at infinity: internal_error)
      bad=0
      read -r -a ga <<<"$got"
      read -r -a ra <<<"$ref"
      for ((j = 0; j < ${#KINDS[@]}; j++)); do
        [ "${ga[j]:-}" = alert-47 ] || [ "${ga[j]:-}" = "${ra[j]:-x}" ] || bad=$((bad + 1))
      done
      check_eq "$proto $g: ${#KINDS[@]} bad key shares, each answered with a fatal alert (illegal_parameter, or libssl's own)" 0 "$bad"
      if [ "$proto" = tls13 ]; then
        check_eq "$proto $g: no key pair made for a bad share (refused before)" 0 "$n"
      elif in_token "$g"; then
        # TLS 1.2: the server's pair exists before the client's point arrives; it is
        # destroyed with the connection (test_ecdh counts the objects)
        check_eq "$proto $g: the server's key pairs were made in the token" "${#KINDS[@]}" "$n"
      fi
    done
  done
  check "the server still runs" tls_alive "$SERVER_PID"
  tls_client "$WORK/after.out" -ign_eof -tls1_3 -groups P-256 || true
  check "and serves a good handshake" grep -q '^HTTP/1.0 200 ok' "$WORK/after.out"
  tls_stop "$SERVER_PID"
else
  not_ok "s_server with p11tls starts (bad key shares)"
fi
[ -z "$REF_PID" ] || tls_stop "$REF_PID"

tls_finish
