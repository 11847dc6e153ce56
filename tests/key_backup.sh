#!/usr/bin/env bash
# key_backup.sh - one handle key in several tokens (`p11tls-tool provision
# --key-backup`), the first piece of a pool of tokens: three SoftHSM2 tokens of their
# own (scripts/make-token.sh), A and B provisioned from one backup file, C with a key of
# its own.
#   1 the backup: written 0600, never overwritten; A's and B's fingerprints agree, C's
#     differs; a wrong passphrase, a changed file and a token that already has another
#     key are refused with the cause; no secret in any output
#   2 nginx on A, on B and on C sharing one session-ticket key file and one server key
#     (a software key imported into each with softhsm2-util, as a pool's members hold
#     the same key; one certificate, since nginx ties sessions to it): a TLS 1.2 and a
#     TLS 1.3 session made on A resumes on B (its handles resolve there); on C the
#     ticket's handle resolves to another secret, so the resumption fails at Finished
#     (what a pool must never do: its members must share the key, and a pool
#     configuration will check the fingerprints)
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
HERE=$src/tests
# shellcheck source=tests/lib/tls.sh
. "$HERE/lib/tls.sh"
. "$src/scripts/lib/nginx.sh"
TOOL=${P11TLS_TOOL:?}
tls_init
chmod 755 "$WORK"
PASS=$WORK/passphrase
printf 'correct horse battery staple\n' >"$PASS"
chmod 600 "$PASS"
BK=$WORK/handle-key.backup
mk() { # mk NAME [make-token args...]
  local name=$1
  shift
  P11TLS_TOOL=$TOOL bash "$src/scripts/make-token.sh" --kind softhsm --dir "$WORK/$name" \
    --label "pool-$name" --no-client "$@" >"$WORK/$name.make.log" 2>&1
}
fp() { # the fingerprint p11tls-tool info prints for token dir $1
  (. "$WORK/$1/env.sh" && "$TOOL" info --module "$P11TLS_MODULE" --init-args "$P11TLS_INIT_ARGS" \
    --token-uri "$P11TLS_TOKEN_URI" \
    --pin-file "$P11TLS_PIN_FILE" | sed -n 's/^handle-key: .*fingerprint \([0-9a-f]*\))$/\1/p')
}

# ------------------------------------------------------------------ 1 the backup
check "token A, its handle key made into a new backup" mk A --key-backup "$BK" --passphrase-file "$PASS"
check "the backup is 0600" bash -c "[ \"\$(stat -c %a '$BK')\" = 600 ]"
check "token B, provisioned from the backup" mk B --key-backup "$BK" --passphrase-file "$PASS"
check "token C, a handle key of its own" mk C
fa=$(fp A) fb=$(fp B) fc=$(fp C)
echo "# fingerprints: A $fa, B $fb, C $fc"
check "A's and B's handle keys are the same (fingerprint $fa)" [ -n "$fa" -a "$fa" = "$fb" ]
check "C's handle key is another one" [ -n "$fc" -a "$fc" != "$fa" ]
. "$WORK/C/env.sh"
rc=0
out=$("$TOOL" provision --module "$P11TLS_MODULE" --token-uri "$P11TLS_TOKEN_URI" \
  --pin-file "$P11TLS_PIN_FILE" --key-backup "$BK" --passphrase-file "$PASS" 2>&1) || rc=$?
if [ "$rc" = 1 ] && grep -q 'already has a handle key .*not the one given' <<<"$out" && [ "$(fp C)" = "$fc" ]; then
  ok "C from the backup: refused with the cause, C keeps its key"
else
  not_ok "C from the backup: refused with the cause, C keeps its key (exit $rc)"
  sed 's/^/#   /' <<<"$out" >&2
fi
rc=0
out=$("$TOOL" provision --module "$P11TLS_MODULE" --token-uri "$P11TLS_TOKEN_URI" \
  --pin-file "$P11TLS_PIN_FILE" --key-backup "$BK" --passphrase-file "$PASS" --new 2>&1) || rc=$?
check "--new on an existing backup: refused, never overwritten (exit $rc)" \
  bash -c "[ $rc = 1 ] && grep -q 'never overwritten' <<<'$out'"
printf 'wrong passphrase!\n' >"$WORK/wrong"
. "$WORK/A/env.sh"
rc=0
out=$("$TOOL" provision --module "$P11TLS_MODULE" --token-uri "$P11TLS_TOKEN_URI" \
  --pin-file "$P11TLS_PIN_FILE" --key-backup "$BK" --passphrase-file "$WORK/wrong" 2>&1) || rc=$?
check "a wrong passphrase: refused with the cause (exit $rc)" \
  bash -c "[ $rc = 1 ] && grep -q 'does not open with this passphrase' <<<'$out'"
sed 's/^data \(.\)/data f/' "$BK" >"$WORK/changed.backup"
cmp -s "$BK" "$WORK/changed.backup" && sed -i 's/^data f/data 0/' "$WORK/changed.backup"
rc=0
out=$("$TOOL" provision --module "$P11TLS_MODULE" --token-uri "$P11TLS_TOKEN_URI" \
  --pin-file "$P11TLS_PIN_FILE" --key-backup "$WORK/changed.backup" --passphrase-file "$PASS" 2>&1) || rc=$?
check "a changed backup file: refused (GCM tag; exit $rc)" \
  bash -c "[ $rc = 1 ] && grep -q 'does not open with this passphrase' <<<'$out'"
out=$("$TOOL" provision --module "$P11TLS_MODULE" --token-uri "$P11TLS_TOKEN_URI" \
  --pin-file "$P11TLS_PIN_FILE" --key-backup "$BK" --passphrase-file "$PASS" 2>&1)
check "A from its own backup again: already present, same key" grep -q "already present.*fingerprint $fa" <<<"$out"
# NSS softoken (`sealed`: its key wraps only) from the same backup: the same key
for n in N1 N2; do
  check "NSS token $n from the backup" env P11TLS_TOOL="$TOOL" bash "$src/scripts/make-token.sh" \
    --kind nss --dir "$WORK/$n" --no-client --key-backup "$BK" --passphrase-file "$PASS"
done
fn1=$(fp N1) fn2=$(fp N2)
check "the NSS tokens' handle keys are the same (fingerprint $fn1)" [ -n "$fn1" -a "$fn1" = "$fn2" ]
check "no output names the passphrase" bash -c "! grep -rqF 'correct horse' '$WORK'/*.make.log"

# ------------------------------------------------------------- 2 resumption
declare -A PORT
(umask 077 && head -c 80 /dev/urandom >"$WORK/ticket.key")
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/shared.key" 2>/dev/null
openssl req -new -x509 -days 2 -subj /CN=localhost -key "$WORK/shared.key" -out "$WORK/shared.pem" 2>/dev/null
for n in A B C; do
  . "$WORK/$n/env.sh"
  softhsm2-util --import "$WORK/shared.key" --token "pool-$n" --label pool-key --id 10 \
    --pin "$(cat "$P11TLS_PIN_FILE")" >/dev/null
  "$TOOL" pem-uri --uri "pkcs11:token=pool-$n;id=%10;object=pool-key;type=private" \
    --out "$WORK/$n/pool-key.pem"
done
rm -f "$WORK/shared.key"
for n in A B C; do
  . "$WORK/$n/env.sh"
  ngx_grant_token_access www-data
  mkdir -p "$WORK/ngx$n"
  cp -p "$WORK/ticket.key" "$WORK/ngx$n/ticket.key" # one session-ticket key for all three
  PORT[$n]=$(p11_free_port)
  ngx_write_conf "$WORK/ngx$n" "${PORT[$n]}" workers=1 protocols="TLSv1.2 TLSv1.3" \
    key="$WORK/$n/pool-key.pem" cert="$WORK/shared.pem"
  if ngx_start "$WORK/ngx$n" "$P11TLS_OPENSSL_CNF"; then
    ok "nginx on token $n (port ${PORT[$n]})"
  else
    not_ok "nginx on token $n"
  fi
done
ngx_cleanup_all() { for n in A B C; do ngx_stop "$WORK/ngx$n"; done; }
tls_on_exit ngx_cleanup_all
# conn OUT PORT ARGS...: one s_client connection (HTTP/1.0 GET)
conn() {
  local out=$1 port=$2
  shift 2
  printf 'GET / HTTP/1.0\r\n\r\n' | timeout 20 openssl s_client -connect "127.0.0.1:$port" \
    -servername localhost -ign_eof "$@" >"$out" 2>&1 || true
}
conn "$WORK/full.C" "${PORT[C]}"
check "control: C serves a full handshake" grep -q 'hello from p11tls' "$WORK/full.C"
for proto in tls1_2 tls1_3; do
  conn "$WORK/$proto.A" "${PORT[A]}" "-$proto" -sess_out "$WORK/$proto.sess"
  check "$proto: a full handshake on A" grep -q '^New, ' "$WORK/$proto.A"
  conn "$WORK/$proto.B" "${PORT[B]}" "-$proto" -sess_in "$WORK/$proto.sess"
  if grep -q '^Reused, ' "$WORK/$proto.B" && grep -q 'hello from p11tls' "$WORK/$proto.B"; then
    ok "$proto: A's session resumes on B (B resolved A's handle) and serves the page"
  else
    not_ok "$proto: A's session resumes on B"
    tail -5 "$WORK/$proto.B" | sed 's/^/#   /' >&2
  fi
  conn "$WORK/$proto.C" "${PORT[C]}" "-$proto" -sess_in "$WORK/$proto.sess"
  check "$proto: on C (another handle key) the resumption does not serve the page" \
    bash -c "! grep -q 'hello from p11tls' '$WORK/$proto.C'"
done
tls_finish
