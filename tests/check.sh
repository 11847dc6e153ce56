#!/usr/bin/env bash
# check.sh - `p11tls-tool check` (run through with-token.sh):
#   1 a good configuration, with the key as a URI and as a key file: exit 0, the level,
#     the four handshakes each with "libssl holds a handle" (measured: the server's
#     keylog differs from the client's), P-256's key share in the token where the status
#     says so and X25519's on the host
#   2 min-assurance = key-only without default_properties: exit 3, "computed on the host"
#     for ECDHE-RSA and TLS 1.3, RSA key exchange refused with the reason
#   3 (SoftHSM2) broken configurations, each exit 1 with the cause and the option: a
#     wrong PIN, a wrong token label, a missing key, a key that does not match the
#     certificate, a wrong module path, a PIN file the user cannot read (run as
#     www-data), a level below min-assurance, a missing configuration file; usage: 2
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
. "$src/tests/lib/tap.sh"
. "$src/scripts/lib/nginx.sh"
TOOL=${P11TLS_TOOL:?}
WORK=$(mktemp -d /tmp/p11tls-check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"
cnf=$P11TLS_OPENSSL_CNF
case "$P11TLS_KIND" in
  nss) level=sealed ;;
  *) level=transient ;;
esac

# run NAME ARGS...: the tool's output in $WORK/NAME.out, its exit status in $rc
run() {
  local name=$1
  shift
  rc=0
  "$@" >"$WORK/$name.out" 2>&1 || rc=$?
}

# ------------------------------------------------------------------ 1 good
for k in uri file; do
  [ $k = uri ] && key=$P11TLS_KEY_URI || key=$P11TLS_KEY_PEM
  run good-$k "$TOOL" check --conf "$cnf" --key "$key" --cert "$P11TLS_CERT"
  out=$WORK/good-$k.out
  check_eq "good configuration, key as a $k: exit 0" 0 "$rc"
  check "good ($k): the status names level $level" grep -q "assurance $level" "$out"
  check "good ($k): the key is in the token" grep -q "RSA key, 2048 bits, in the token (p11tls)" "$out"
  check "good ($k): the certificate matches" grep -q "^  matches the key" "$out"
  n=$(grep -c 'ok: libssl holds a handle' "$out" || true)
  check_eq "good ($k): 4 handshakes, each with a handle where libssl thinks the secret is" 4 "$n"
  check "good ($k): the level's meaning is said ($level)" grep -q "\`$level\`" "$out"
  if grep -q "ECDHE in the token: P-256" "$out"; then
    check "good ($k): P-256's key pair and shared secret in the token" \
      grep -q "TLS 1.3, P-256 .*key pair and shared secret (P-256) are in the token" "$out"
  else
    check "good ($k): P-256's shared secret on the host (the status says so)" \
      grep -q "TLS 1.3, P-256 .*(P-256) is computed on the host" "$out"
  fi
  check "good ($k): X25519's shared secret on the host" grep -q "TLS 1.3, X25519 .*(X25519) is computed on the host" "$out"
  check "good ($k): result ok" grep -q "^result: ok" "$out"
  [ "$rc" = 0 ] || sed 's/^/#   /' "$out" >&2
done

# ------------------------------------------------------- 2 key-only
sed -e 's/^min-assurance.*$/min-assurance = key-only/' -e '/^default_properties/d' "$cnf" >"$WORK/keyonly.cnf"
grep -q '^min-assurance' "$WORK/keyonly.cnf" || sed -i '/^\[p11tls_sect\]/a min-assurance = key-only' "$WORK/keyonly.cnf"
run keyonly "$TOOL" check --conf "$WORK/keyonly.cnf" --key "$P11TLS_KEY_URI" --cert "$P11TLS_CERT"
check_eq "key-only, no default_properties: exit 3" 3 "$rc"
n=$(grep -c "computed on the host (p11tls is not in the key schedule's path" "$WORK/keyonly.out" || true)
check_eq "key-only: ECDHE-RSA and TLS 1.3 work, each said to compute its secrets on the host" 3 "$n"
check "key-only: RSA key exchange refused, with the reason" \
  grep -q "RSA key exchange   refused, as 'min-assurance = key-only' makes it" "$WORK/keyonly.out"

# ------------------------------------------------------- 3 broken
if [ "$P11TLS_KIND" = softhsm ]; then
  # bad NAME EXPECTED-REGEX CONF [ARGS...]: exit 1, the first problem matches
  bad() {
    local name=$1 re=$2
    shift 2
    run "$name" "$@"
    if [ "$rc" = 1 ] && grep -qE "^first problem: .*($re)" "$WORK/$name.out"; then
      ok "$name: exit 1, the cause and the option named ($(grep '^first problem' "$WORK/$name.out" | cut -c1-150))"
    else
      not_ok "$name: exit 1 (got $rc), the cause and the option named (/$re/)"
      sed 's/^/#   /' "$WORK/$name.out" >&2
    fi
  }
  printf '0000\n' >"$WORK/wrong.pin"
  sed "s#^pin-source.*#pin-source = file:$WORK/wrong.pin#" "$cnf" >"$WORK/pin.cnf"
  bad "wrong PIN" "CKR_PIN_INCORRECT.*'pin-source'" "$TOOL" check --conf "$WORK/pin.cnf"
  sed 's#^token = .*#token = pkcs11:token=no-such-token#' "$cnf" >"$WORK/label.cnf"
  bad "wrong token label" "no token matches 'pkcs11:token=no-such-token'.*'token'" \
    "$TOOL" check --conf "$WORK/label.cnf"
  bad "missing key" "the key does not load \(--key; nginx: ssl_certificate_key\)" \
    "$TOOL" check --conf "$cnf" --key "pkcs11:token=${P11TLS_TOKEN_URI#*token=};object=no-such-key;type=private" --cert "$P11TLS_CERT"
  bad "key and certificate do not match" "does not belong to the key.*ssl_certificate" \
    "$TOOL" check --conf "$cnf" --key "$P11TLS_KEY_URI" --cert "$P11TLS_CLIENT_CERT"
  sed 's#^pkcs11-module = .*#pkcs11-module = /usr/lib/no-such-module.so#' "$cnf" >"$WORK/module.cnf"
  bad "wrong module path" "cannot load '/usr/lib/no-such-module.so'.*'pkcs11-module'" \
    "$TOOL" check --conf "$WORK/module.cnf"
  # a PIN file only root can read, the check run as www-data (who can read the token)
  ngx_grant_token_access www-data
  install -m 600 "$P11TLS_PIN_FILE" "$WORK/root-only.pin"
  sed "s#^pin-source.*#pin-source = file:$WORK/root-only.pin#" "$cnf" >"$WORK/unreadable.cnf"
  chmod 644 "$WORK/unreadable.cnf"
  bad "PIN file unreadable by the user" "root-only.pin.*(Permission denied|cannot read).*pin-source|pin-source.*root-only.pin" \
    runuser -u www-data -- env SOFTHSM2_CONF="$SOFTHSM2_CONF" "$TOOL" check --conf "$WORK/unreadable.cnf"
  sed 's/^min-assurance.*$/min-assurance = sealed/' "$cnf" >"$WORK/level.cnf"
  bad "level below min-assurance" "assurance 'transient' but 'min-assurance' is 'sealed'" \
    "$TOOL" check --conf "$WORK/level.cnf"
  bad "configuration file missing" "the configuration file does not load" \
    "$TOOL" check --conf "$WORK/no-such.cnf"
  run usage "$TOOL" check --key "$P11TLS_KEY_URI"
  check_eq "no --conf: usage error, exit 2" 2 "$rc"
fi
tap_finish
