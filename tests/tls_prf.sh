#!/usr/bin/env bash
# tls_prf.sh - TLS 1.2 through p11tls's TLS1-PRF, end to end with openssl s_server.
#
# Run with a token: tests/with-token.sh DIR bash tests/tls_prf.sh
# The SERVER runs with OPENSSL_CONF=$P11TLS_OPENSSL_CNF (p11tls loaded and
# preferred); the CLIENT is plain OpenSSL. For each of AES128-GCM-SHA256,
# AES256-GCM-SHA384 (RSA key exchange) and ECDHE-RSA-AES128-GCM-SHA256, with the
# extended master secret on and off:
#   - a full handshake fetches the -www page; the server's keylog holds a handle
#     (not the master secret) for the client's client random;
#   - resumption by session ID (-no_ticket) and by ticket (-no_cache) works and
#     the server keeps using the same handle;
#   - the RFC 5705 exporter printed by s_server equals the client's;
#   - cross-process: after the server has exited, `openssl kdf TLS1-PRF` in a new
#     process with p11tls, given the HANDLE from the server's keylog, computes the
#     same exporter as plain OpenSSL given the REAL master secret from the
#     client's keylog (and as the client printed). s_server 3.0 has no option to
#     share a ticket key or a session cache between processes, so this is how a
#     handle minted in one process is shown to resolve in another.
# Then: a forged handle neither crashes nor reproduces a real value, and the
# TLS 1.0/1.1 PRF (MD5-SHA1) is refused.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/tls.sh
. "$HERE/lib/tls.sh"
tls_init

LABEL=EXPERIMENTAL-p11tls
CIPHERS=(AES128-GCM-SHA256 AES256-GCM-SHA384 ECDHE-RSA-AES128-GCM-SHA256)
SRV_ARGS=(-key "$P11TLS_KEY_URI" -cert "$P11TLS_CERT" -tls1_2)
REAL_VALUES=() # every exporter value seen (uppercase hex)
LAST_SEED=''   # label || client_random || server_random of the last full handshake

echo "# token kind: $P11TLS_KIND"

# The server's configuration with EMS disabled: a copy of the token's openssl.cnf
# with an SSL_CONF section that `s_server -ssl_config p11tls_noems` selects.
NOEMS_CNF=$WORK/server-noems.cnf
awk '{ print } /^\[openssl_init\]$/ { print "ssl_conf = p11tls_ssl_module" }' \
  "$P11TLS_OPENSSL_CNF" >"$NOEMS_CNF"
cat >>"$NOEMS_CNF" <<'EOF'
[p11tls_ssl_module]
p11tls_noems = p11tls_noems_sect
[p11tls_noems_sect]
Options = -ExtendedMasterSecret
EOF

# A FIFO that never delivers data, as stdin of the non -www server (s_server
# quits when its stdin reaches end of file). Opened read-write: never blocks.
mkfifo "$WORK/never.fifo"
exec {NEVER_FD}<>"$WORK/never.fifo"

is_hex96() { [[ $1 =~ ^[0-9a-f]{96}$ ]]; }

run_combo() {
  local cipher=$1 ems=$2 n=$3 cnf tag digest ems_word
  local -a ssl_cfg=()
  tag="$cipher ems=$ems"
  digest=SHA256
  [[ $cipher != *SHA384 ]] || digest=SHA384
  if [ "$ems" = on ]; then
    cnf=$P11TLS_OPENSSL_CNF
    ems_word=yes
  else
    cnf=$NOEMS_CNF
    ssl_cfg=(-ssl_config p11tls_noems)
    ems_word=no
  fi
  local d=$WORK/c$n
  mkdir -p "$d"

  # ---------------------------------------------- session IDs (-no_ticket)
  local skl=$d/sid-server.keylog
  if ! OPENSSL_CONF=$cnf tls_start_server "c$n-sid" "" "${SRV_ARGS[@]}" -www -no_ticket \
    -keylogfile "$skl" "${ssl_cfg[@]}"; then
    not_ok "$tag: s_server (session IDs) starts"
    return 0
  fi
  local pid=$SERVER_PID rc=0
  tls_client "$d/full.out" -ign_eof -tls1_2 -cipher "$cipher" -keylogfile "$d/full.keylog" \
    -sess_out "$d/sess.pem" -keymatexport "$LABEL" -keymatexportlen 32 \
    -msg -msgfile "$d/full.msg" || rc=$?
  check_eq "$tag: full handshake: s_client exit status" 0 "$rc"
  check_grep "$tag: full handshake: HTTP 200" "$d/full.out" '^HTTP/1\.0 200 ok'
  check_grep "$tag: full handshake: cipher $cipher negotiated" "$d/full.out" \
    "^New, TLSv1\.2, Cipher is $cipher\$"
  check_grep "$tag: full handshake: extended master secret: $ems_word" "$d/full.out" \
    "^ *Extended master secret: $ems_word\$"

  local cr ms h
  cr=$(tls_keylog_last_random "$d/full.keylog" 2>/dev/null || true)
  ms=$(tls_keylog_secret "$d/full.keylog" "$cr" 2>/dev/null || true)
  h=$(tls_keylog_secret "$skl" "$cr" 2>/dev/null || true)
  if is_hex96 "$ms" && is_hex96 "$h"; then
    ok "$tag: client and server keylogs hold a 48-byte secret for client random ${cr:0:16}..."
  else
    not_ok "$tag: client and server keylogs hold a 48-byte secret for client random '$cr' (client '$ms', server '$h')"
  fi
  check_ne "$tag: the server's keylog holds a handle, not the client's master secret" "$ms" "$h"
  # The -www page prints the server's SSL_SESSION: its Master-Key is the handle too.
  if [ -n "$h" ] && grep -aqi "^ *Master-Key: $h\$" "$d/full.out"; then
    ok "$tag: the server's status page shows the handle as Master-Key"
  else
    not_ok "$tag: the server's status page shows the handle as Master-Key"
  fi
  if [ -n "$ms" ] && grep -aqi "^ *Master-Key: $ms\$" "$d/full.out"; then
    ok "$tag: the client's session shows the real master secret"
  else
    not_ok "$tag: the client's session shows the real master secret"
  fi
  local k_client
  k_client=$(tls_keymat "$d/full.out" 2>/dev/null || true)
  if [[ $k_client =~ ^[0-9A-F]{64}$ ]]; then
    ok "$tag: client printed a 32-byte exporter value"
    REAL_VALUES+=("$k_client")
  else
    not_ok "$tag: client printed a 32-byte exporter value (got '$k_client')"
  fi

  rc=0
  tls_client "$d/sid.out" -ign_eof -tls1_2 -cipher "$cipher" -keylogfile "$d/sid.keylog" \
    -sess_in "$d/sess.pem" || rc=$?
  check_eq "$tag: session-ID resumption: s_client exit status" 0 "$rc"
  check_grep "$tag: session-ID resumption: Reused" "$d/sid.out" "^Reused, TLSv1\.2, Cipher is $cipher\$"
  check_grep "$tag: session-ID resumption: HTTP 200" "$d/sid.out" '^HTTP/1\.0 200 ok'
  local cr2
  cr2=$(tls_keylog_last_random "$d/sid.keylog" 2>/dev/null || true)
  check_eq "$tag: session-ID resumption: the server reuses the same handle" "$h" \
    "$(tls_keylog_secret "$skl" "$cr2" 2>/dev/null || true)"
  tls_stop "$pid"

  # ---------------------------------- cross-process: the handle in a new process
  local sr seed plain prov
  sr=$(tls_server_random "$d/full.msg" 2>/dev/null || true)
  if [[ $cr =~ ^[0-9a-f]{64}$ ]] && [[ $sr =~ ^[0-9a-f]{64}$ ]]; then
    ok "$tag: client and server randoms found (server random ${sr:0:16}...)"
  else
    not_ok "$tag: client and server randoms found ('$cr', '$sr')"
  fi
  seed=$(tls_hex "$LABEL")$cr$sr
  LAST_SEED=$seed
  rc=0
  plain=$(tls_kdf "" "$digest" 32 "$ms" "$seed" 2>"$d/kdf-plain.err") || rc=$?
  check_eq "$tag: plain OpenSSL TLS1-PRF on the real master secret = the client's exporter" \
    "$k_client" "$plain"
  rc=0
  prov=$(tls_kdf "$P11TLS_OPENSSL_CNF" "$digest" 32 "$h" "$seed" 2>"$d/kdf-prov.err") || rc=$?
  check_eq "$tag: cross-process: p11tls TLS1-PRF (new process, server stopped) exit status" 0 "$rc"
  [ "$rc" = 0 ] || tls_show "$d/kdf-prov.err"
  check_eq "$tag: cross-process: p11tls TLS1-PRF on the handle = exporter from the real secret" \
    "$plain" "$prov"

  # ------------------------------------------ tickets (-no_cache: tickets only)
  skl=$d/ticket-server.keylog
  if ! OPENSSL_CONF=$cnf tls_start_server "c$n-ticket" "" "${SRV_ARGS[@]}" -www -no_cache \
    -keylogfile "$skl" "${ssl_cfg[@]}"; then
    not_ok "$tag: s_server (tickets) starts"
    return 0
  fi
  pid=$SERVER_PID
  rc=0
  tls_client "$d/tfull.out" -ign_eof -tls1_2 -cipher "$cipher" -keylogfile "$d/tfull.keylog" \
    -sess_out "$d/tsess.pem" || rc=$?
  check_eq "$tag: ticket server: full handshake exit status" 0 "$rc"
  check_grep "$tag: ticket server: full handshake, HTTP 200" "$d/tfull.out" '^HTTP/1\.0 200 ok'
  check_grep "$tag: ticket server: the client got a ticket" "$d/tfull.out" '^ *TLS session ticket:$'
  cr=$(tls_keylog_last_random "$d/tfull.keylog" 2>/dev/null || true)
  h=$(tls_keylog_secret "$skl" "$cr" 2>/dev/null || true)
  check_ne "$tag: ticket server: keylog holds a handle, not the master secret" \
    "$(tls_keylog_secret "$d/tfull.keylog" "$cr" 2>/dev/null || true)" "$h"
  rc=0
  tls_client "$d/ticket.out" -ign_eof -tls1_2 -cipher "$cipher" -keylogfile "$d/ticket.keylog" \
    -sess_in "$d/tsess.pem" || rc=$?
  check_eq "$tag: ticket resumption: s_client exit status" 0 "$rc"
  check_grep "$tag: ticket resumption: Reused" "$d/ticket.out" "^Reused, TLSv1\.2, Cipher is $cipher\$"
  check_grep "$tag: ticket resumption: HTTP 200" "$d/ticket.out" '^HTTP/1\.0 200 ok'
  cr2=$(tls_keylog_last_random "$d/ticket.keylog" 2>/dev/null || true)
  check_eq "$tag: ticket resumption: the server reuses the same handle" "$h" \
    "$(tls_keylog_secret "$skl" "$cr2" 2>/dev/null || true)"
  tls_stop "$pid"

  # -------------------------- exporter on both sides (s_server without -www)
  if ! OPENSSL_CONF=$cnf tls_start_server "c$n-keymat" "$NEVER_FD" "${SRV_ARGS[@]}" -naccept 1 \
    -keymatexport "$LABEL" -keymatexportlen 32 "${ssl_cfg[@]}"; then
    not_ok "$tag: s_server (exporter) starts"
    return 0
  fi
  pid=$SERVER_PID
  rc=0
  tls_client "$d/km.out" -tls1_2 -cipher "$cipher" -keymatexport "$LABEL" -keymatexportlen 32 || rc=$?
  check_eq "$tag: exporter connection: s_client exit status" 0 "$rc"
  if tls_wait_exit "$pid" 20; then
    ok "$tag: exporter server exits after its connection (-naccept 1)"
  else
    not_ok "$tag: exporter server exits after its connection (-naccept 1)"
  fi
  tls_stop "$pid"
  local ks kc
  kc=$(tls_keymat "$d/km.out" 2>/dev/null || true)
  ks=$(tls_keymat "$SERVER_OUT" 2>/dev/null || true)
  if [[ $kc =~ ^[0-9A-F]{64}$ ]] && [ "$kc" = "$ks" ]; then
    ok "$tag: the server's exporter value equals the client's"
    REAL_VALUES+=("$kc")
  else
    not_ok "$tag: the server's exporter value equals the client's (server '$ks', client '$kc')"
    tls_show "$SERVER_OUT"
    tls_show "$SERVER_ERR"
  fi
}

n=0
for cipher in "${CIPHERS[@]}"; do
  for ems in on off; do
    n=$((n + 1))
    run_combo "$cipher" "$ems" "$n"
  done
done

# ---------------------------------------------------------- forged handles
# A random 48-byte "handle" with an exporter label: the provider must not crash
# (status 0 or 1) and must not reproduce any real value. Once with the seed of a
# real exporter (same label and randoms), once with a random seed, for both PRF hashes.
for digest in SHA256 SHA384; do
  for which in real-seed random-seed; do
    forged=$(od -An -tx1 -N48 /dev/urandom | tr -d ' \n')
    if [ "$which" = real-seed ] && [ -n "$LAST_SEED" ]; then
      seed=$LAST_SEED
    else
      seed=$(tls_hex "EXPERIMENTAL-forged")$(od -An -tx1 -N64 /dev/urandom | tr -d ' \n')
    fi
    rc=0
    out=$(tls_kdf "$P11TLS_OPENSSL_CNF" "$digest" 32 "$forged" "$seed" 2>"$WORK/forged.err") || rc=$?
    if [ "$rc" = 0 ] || [ "$rc" = 1 ]; then
      ok "forged handle ($digest, $which): openssl kdf exits with status $rc (no crash)"
    else
      not_ok "forged handle ($digest, $which): openssl kdf exits with status 0 or 1 (got $rc)"
      tls_show "$WORK/forged.err"
    fi
    if [ "$rc" = 0 ]; then
      match=0
      for v in "${REAL_VALUES[@]}"; do
        [ "$v" != "$out" ] || match=1
      done
      if [[ $out =~ ^[0-9A-F]{64}$ ]] && [ "$match" = 0 ]; then
        ok "forged handle ($digest, $which): output differs from all ${#REAL_VALUES[@]} real exporter values"
      else
        not_ok "forged handle ($digest, $which): output differs from all real exporter values (got '$out')"
      fi
    fi
  done
done

# ------------------------------------------------- TLS 1.0/1.1 PRF refused
rc=0
out=$(tls_kdf "$P11TLS_OPENSSL_CNF" MD5-SHA1 32 "$(od -An -tx1 -N48 /dev/urandom | tr -d ' \n')" \
  "$(tls_hex "key expansion")$(od -An -tx1 -N64 /dev/urandom | tr -d ' \n')" \
  2>"$WORK/md5sha1.err") || rc=$?
check_eq "TLS 1.0/1.1 PRF (MD5-SHA1): openssl kdf fails with status 1" 1 "$rc"
check_grep "TLS 1.0/1.1 PRF (MD5-SHA1): the error names MD5-SHA1" "$WORK/md5sha1.err" 'MD5-SHA1'
check_eq "TLS 1.0/1.1 PRF (MD5-SHA1): no output" "" "$out"

exec {NEVER_FD}>&-
tls_finish
