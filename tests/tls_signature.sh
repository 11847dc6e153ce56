#!/usr/bin/env bash
# tls_signature.sh - the token key signs TLS 1.2 ServerKeyExchange messages.
#
# Run with a token: tests/with-token.sh DIR bash tests/tls_signature.sh
# The SERVER (openssl s_server -www, key given as the token key's pkcs11: URI)
# runs with OPENSSL_CONF=$P11TLS_OPENSSL_CNF (p11tls loaded and preferred); the
# CLIENT is plain OpenSSL (no OPENSSL_CONF). With ECDHE-RSA-AES128-GCM-SHA256 the
# server signs its key exchange with the token key, using the signature
# algorithm the client allows: RSA-PSS+SHA256, RSA+SHA256 (PKCS#1 v1.5) and
# rsa_pss_rsae_sha384. Each handshake must complete with the certificate
# verified, the requested signature type and digest, and the HTTP page served.
# Also: `openssl pkey -pubout` on the key URI under the provider config prints
# the certificate's public key; and the key files (p11tls's key.pem, "P11TLS KEY
# URI", and pkcs11-provider's "PKCS#11 PROVIDER URI" file for the same key) work
# in `openssl pkey -in`, `openssl req -key` and `openssl s_server -key`.
# Prints "N passed, M failed" last; exits 1 on any failure.
set -euo pipefail

: "${P11TLS_OPENSSL_CNF:?run through tests/with-token.sh}"
: "${P11TLS_KEY_URI:?run through tests/with-token.sh}"
: "${P11TLS_CERT:?run through tests/with-token.sh}"

# shellcheck source=tests/lib/tap.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/tap.sh"
SERVER_PID=''
WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11tls-tls-signature.XXXXXX")

cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=''
  fi
  rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# check_out DESCRIPTION FILE STRING: FILE contains STRING (fixed string).
check_out() {
  if grep -qF -- "$3" "$2"; then
    ok "$1"
  else
    not_ok "$1 (no '$3' in the output)"
  fi
}

# Is something listening on 127.0.0.1:$1?
listening() {
  if command -v ss >/dev/null 2>&1; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Starts s_server on a free random port (127.0.0.1 only) with the key KEY (default:
# the key's URI): sets PORT, SERVER_PID.
start_server() {
  local key=${KEY:-$P11TLS_KEY_URI}
  local _attempt _i log=$WORK/server.log
  for _attempt in 1 2 3 4 5 6 7 8 9 10; do
    PORT=$((20000 + (RANDOM * 32768 + RANDOM) % 40001))
    listening "$PORT" && continue
    # under timeout(1): the server cannot outlive a test runner that kills this
    # script with SIGKILL; killing timeout's PID passes the signal on to s_server.
    OPENSSL_CONF=$P11TLS_OPENSSL_CNF timeout -k 5 300 openssl s_server \
      -accept "127.0.0.1:$PORT" -key "$key" -cert "$P11TLS_CERT" -tls1_2 -www \
      </dev/null >"$log" 2>&1 &
    SERVER_PID=$!
    for _i in $(seq 1 100); do # up to 10 s
      if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        break
      fi
      # s_server prints ACCEPT once it has bound the port: so the listener seen is ours
      if grep -q '^ACCEPT' "$log" && listening "$PORT"; then
        echo "# s_server (pid $SERVER_PID) listens on 127.0.0.1:$PORT"
        return 0
      fi
      sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "# s_server did not listen within 10 s:" >&2
      sed 's/^/#   /' "$log" >&2
      kill "$SERVER_PID" 2>/dev/null || true
      wait "$SERVER_PID" 2>/dev/null || true
      SERVER_PID=''
      return 1
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=''
    if grep -qiE 'in use|bind' "$log"; then
      echo "# port $PORT is taken, trying another" >&2
      continue
    fi
    echo "# s_server exited:" >&2
    sed 's/^/#   /' "$log" >&2
    return 1
  done
  echo "# no free port found" >&2
  return 1
}

# handshake SIGALGS SIGTYPE DIGEST: a plain client fetches the page allowing only SIGALGS.
handshake() {
  local sigalgs=$1 sigtype=$2 digest=$3 out rc=0
  out=$WORK/client-${sigalgs//[^A-Za-z0-9]/_}.out
  printf 'GET / HTTP/1.0\r\n\r\n' |
    env -u OPENSSL_CONF timeout 30 openssl s_client -connect "127.0.0.1:$PORT" -tls1_2 \
      -cipher ECDHE-RSA-AES128-GCM-SHA256 -CAfile "$P11TLS_CERT" -servername localhost \
      -sigalgs "$sigalgs" -ign_eof >"$out" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    ok "$sigalgs: s_client exits 0"
  else
    not_ok "$sigalgs: s_client exits 0 (exit status $rc)"
    sed 's/^/#   /' "$out"
  fi
  check_out "$sigalgs: handshake with ECDHE-RSA-AES128-GCM-SHA256" "$out" \
    "Cipher is ECDHE-RSA-AES128-GCM-SHA256"
  check_out "$sigalgs: certificate verified" "$out" "Verify return code: 0 (ok)"
  check_out "$sigalgs: server signed with $sigtype" "$out" "Peer signature type: $sigtype"
  check_out "$sigalgs: server signed $digest" "$out" "Peer signing digest: $digest"
  check_out "$sigalgs: HTTP response" "$out" "HTTP/1.0 200 ok"
}

echo "# token kind: ${P11TLS_KIND:-?}"

# ------------------------------------------------- public key of the token key
cert_pub=$WORK/cert.pub
env -u OPENSSL_CONF openssl x509 -in "$P11TLS_CERT" -pubkey -noout >"$cert_pub"
key_pub=$WORK/key.pub
if OPENSSL_CONF=$P11TLS_OPENSSL_CNF openssl pkey -in "$P11TLS_KEY_URI" -pubout >"$key_pub" \
  2>"$WORK/pkey.err" && [ -s "$key_pub" ] && [ -s "$cert_pub" ] && cmp -s "$key_pub" "$cert_pub"; then
  ok "openssl pkey -in \$P11TLS_KEY_URI -pubout equals the certificate's public key"
else
  not_ok "openssl pkey -in \$P11TLS_KEY_URI -pubout equals the certificate's public key"
  sed 's/^/#   /' "$WORK/pkey.err" "$key_pub"
fi

# ------------------------------------------------------------------ key files
# pkcs11-provider's URI file for the same key: PEM "PKCS#11 PROVIDER URI" over
# DER SEQUENCE { VisibleString "PKCS#11 Provider URI v1.0", UTF8String uri }.
printf 'asn1 = SEQUENCE:seq\n[seq]\ndesc = VISIBLESTRING:PKCS\\#11 Provider URI v1.0\nuri = UTF8:%s\n' \
  "$P11TLS_KEY_URI" >"$WORK/pk11.conf"
env -u OPENSSL_CONF openssl asn1parse -genconf "$WORK/pk11.conf" -out "$WORK/pk11.der" -noout
{
  echo "-----BEGIN PKCS#11 PROVIDER URI-----"
  base64 -w 64 "$WORK/pk11.der"
  echo "-----END PKCS#11 PROVIDER URI-----"
} >"$WORK/pk11-key.pem"
check "the pkcs11-provider file holds its description" \
  grep -q "PKCS#11 Provider URI v1.0" <(env -u OPENSSL_CONF openssl asn1parse -inform DER -in "$WORK/pk11.der")
for keyfile in "${P11TLS_KEY_PEM:?}" "$WORK/pk11-key.pem"; do
  what=$(basename "$keyfile")
  if OPENSSL_CONF=$P11TLS_OPENSSL_CNF openssl pkey -in "$keyfile" -pubout >"$WORK/file.pub" \
    2>"$WORK/pkey.err" && cmp -s "$WORK/file.pub" "$cert_pub"; then
    ok "$what: openssl pkey -in FILE -pubout equals the certificate's public key"
  else
    not_ok "$what: openssl pkey -in FILE -pubout equals the certificate's public key"
    sed 's/^/#   /' "$WORK/pkey.err"
  fi
  if OPENSSL_CONF=$P11TLS_OPENSSL_CNF openssl req -new -key "$keyfile" -subj /CN=p11tls-test \
    -out "$WORK/file.csr" 2>"$WORK/req.err" &&
    env -u OPENSSL_CONF openssl req -in "$WORK/file.csr" -verify -noout 2>&1 | grep -q 'verify OK' &&
    cmp -s <(env -u OPENSSL_CONF openssl req -in "$WORK/file.csr" -pubkey -noout) "$cert_pub"; then
    ok "$what: openssl req -key FILE signs a request with the token key"
  else
    not_ok "$what: openssl req -key FILE signs a request with the token key"
    sed 's/^/#   /' "$WORK/req.err"
  fi
  if KEY=$keyfile start_server; then
    ok "$what: openssl s_server -key FILE starts"
    handshake RSA+SHA256 RSA SHA256
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=''
  else
    not_ok "$what: openssl s_server -key FILE starts"
  fi
done

# --------------------------------------------------------------- handshakes
if start_server; then
  ok "s_server with the token key starts"
  handshake RSA-PSS+SHA256 RSA-PSS SHA256
  handshake RSA+SHA256 RSA SHA256
  handshake rsa_pss_rsae_sha384 RSA-PSS SHA384
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    ok "s_server still running after the handshakes"
  else
    not_ok "s_server still running after the handshakes"
  fi
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=''
else
  not_ok "s_server with the token key starts"
fi

tap_finish
