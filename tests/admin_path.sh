#!/usr/bin/env bash
# admin_path.sh - the administrator's path, on this machine's system directories (as
# root; refuses to run where it would clobber an existing setup):
#   1 scripts/package.sh builds the Debian package; lintian reports no error
#   2 a SoftHSM2 token "web" in the system's token directory made with softhsm2-util,
#     its RSA key with p11tool (not the project's scripts)
#   3 the README's "I have a token" block (between its steps markers) runs as it
#     stands (PATH without /usr/local: the demo's `cmake --install` puts a p11tls-tool
#     there; an unpackaged p11tls.so in OpenSSL's modules directory is set aside and
#     put back at the end): installs the package, writes the PIN file, provisions, writes the key
#     file, copies the example openssl.cnf, makes the certificate, and `p11tls-tool
#     check` reports `transient` and a handle for each protocol
#   4 `openssl list -providers` finds p11tls from the packaged example openssl.cnf;
#     `man p11tls` and `man p11tls-tool` render from the package
#   5 step 5 with the same example files: nginx (a configuration of the test's that
#     includes the example env and server files as they are; OPENSSL_CONF from the
#     example systemd drop-in's Environment= line) serves the example curl.sh
#   6 clean-up: nginx stopped by PID, the token deleted, the package purged: none of
#     its files is left; /etc/p11tls and the group membership undone
set -euo pipefail
src=${P11TLS_SOURCE_DIR:?}
build=${P11TLS_BUILD_DIR:?}
. "$src/tests/lib/tap.sh"
WORK=$(mktemp -d /tmp/p11tls-admin.XXXXXX)
chmod 755 "$WORK"
PIN=4711-p11tls
NGX_PID=
ADDED_GROUP=0
TOKEN_MADE=0
cleanup() {
  set +e
  if [ -n "$NGX_PID" ] && kill -0 "$NGX_PID" 2>/dev/null; then
    kill -QUIT "$NGX_PID"
    for _ in $(seq 50); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$NGX_PID" 2>/dev/null
  fi
  [ "$TOKEN_MADE" = 1 ] && softhsm2-util --delete-token --token web >/dev/null 2>&1
  [ "$ADDED_GROUP" = 1 ] && gpasswd -d www-data softhsm >/dev/null 2>&1
  dpkg -s p11tls >/dev/null 2>&1 && dpkg --purge p11tls >/dev/null 2>&1
  [ -f "$WORK/saved-p11tls.so" ] && mv "$WORK/saved-p11tls.so" "$modules/p11tls.so"
  rm -rf /etc/p11tls "$WORK"
}
trap cleanup EXIT

# ------------------------------------------------------------ 0 preconditions
if [ "$(id -u)" != 0 ] || [ -e /etc/p11tls ] || dpkg -s p11tls >/dev/null 2>&1 ||
  softhsm2-util --show-slots 2>/dev/null | grep -q 'Label: *web *$'; then
  not_ok "a machine without p11tls installed, /etc/p11tls or a SoftHSM2 token 'web' (as root)"
  tap_finish
fi
id -nG www-data | grep -qw softhsm || ADDED_GROUP=1
modules=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
[ -f "$modules/p11tls.so" ] && mv "$modules/p11tls.so" "$WORK/saved-p11tls.so"

# ------------------------------------------------------------ 1 package
if deb=$(bash "$src/scripts/package.sh" "$build/deb" 2>"$WORK/package.err" | tail -1) && [ -f "$deb" ]; then
  ok "scripts/package.sh builds $(basename "$deb"); lintian: no error"
else
  not_ok "scripts/package.sh builds the package and lintian reports no error"
  sed 's/^/#   /' "$WORK/package.err" >&2
  tap_finish
fi
grep -E '^[EW]: ' "$WORK/package.err" | sed 's/^/# lintian: /' || true
cp "$deb" "$WORK/"

# ------------------------------------------------------------ 2 the user's token
softhsm2-util --init-token --free --label web --pin "$PIN" --so-pin "so-$PIN" >/dev/null
TOKEN_MADE=1
p11tool --login --set-pin="$PIN" --generate-privkey=rsa --bits=2048 --label=web-key \
  'pkcs11:token=web' >"$WORK/p11tool.out" 2>&1
check "p11tool made the RSA key 'web-key' in token 'web'" \
  bash -c "p11tool --login --set-pin='$PIN' --list-privkeys 'pkcs11:token=web' 2>/dev/null | grep -q 'object=web-key'"

# ------------------------------------------------------------ 3 the README's steps
sed -n '/^<!-- steps:begin -->$/,/^<!-- steps:end -->$/p' "$src/README.md" | sed '1,2d;$d' | sed '$d' >"$WORK/steps.sh"
check "the README's steps block is found ($(wc -l <"$WORK/steps.sh") lines)" [ "$(wc -l <"$WORK/steps.sh")" -ge 10 ]
rc=0
(cd "$WORK" && PIN=$PIN PATH=/usr/sbin:/usr/bin:/sbin:/bin bash -e "$WORK/steps.sh") >"$WORK/steps.out" 2>&1 || rc=$?
check_eq "the README's steps run as they stand (exit status)" 0 "$rc"
[ "$rc" = 0 ] || sed 's/^/#   /' "$WORK/steps.out" >&2
check "step 4: check says level transient" grep -q "assurance transient" "$WORK/steps.out"
n=$(grep -c 'ok: libssl holds a handle' "$WORK/steps.out" || true)
check_eq "step 4: check finds a handle where libssl thinks each protocol's secret is" 4 "$n"
check "step 4: check: P-256's key share in the token" grep -q "TLS 1.3, P-256 .*are in the token" "$WORK/steps.out"
check "step 4: check's result is ok" grep -q "^result: ok" "$WORK/steps.out"
check "the PIN file is root and www-data's only (640)" bash -c "[ \"\$(stat -c %a:%G /etc/p11tls/web.pin)\" = 640:www-data ]"
check "the PIN appears in no output of the steps" bash -c "! grep -qF '$PIN' '$WORK/steps.out'"

# ------------------------------------------------------------ 4 the package's files
check "the package put p11tls.so in OpenSSL's modules directory" [ -f "$modules/p11tls.so" ]
list=$(OPENSSL_CONF=/usr/share/doc/p11tls/examples/openssl.cnf openssl list -providers 2>&1 || true)
check "openssl list -providers finds p11tls from the packaged example openssl.cnf" \
  grep -q "p11tls: token 'web', assurance transient" <<<"$list"
for page in p11tls p11tls-tool; do
  check "man $page renders from the package" bash -c "MANWIDTH=80 man $page 2>/dev/null | grep -q '^NAME'"
done

# ------------------------------------------------------------ 5 nginx, curl
ex=/usr/share/doc/p11tls/examples
conf_env=$(sed -n 's/^Environment=OPENSSL_CONF=//p' "$ex/systemd/p11tls.conf")
check "the systemd drop-in sets OPENSSL_CONF ($conf_env)" [ "$conf_env" = /etc/p11tls/openssl.cnf ]
mkdir -p "$WORK/ngx"
cat >"$WORK/ngx/nginx.conf" <<EOF
# the test's main configuration: Debian's, less its default site; the examples as they are
user www-data;
worker_processes 2;
pid $WORK/ngx/nginx.pid;
error_log $WORK/ngx/error.log info;
include $ex/nginx/p11tls-env.conf;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $WORK/ngx/tmp;
    include $ex/nginx/p11tls-site.conf;
}
EOF
if OPENSSL_CONF=$conf_env nginx -c "$WORK/ngx/nginx.conf" 2>"$WORK/ngx/start.err"; then
  for _ in $(seq 50); do [ -s "$WORK/ngx/nginx.pid" ] && break; sleep 0.1; done
  NGX_PID=$(cat "$WORK/ngx/nginx.pid")
  ok "nginx starts with the example files (master PID $NGX_PID)"
  body=$(sh "$ex/curl.sh" 2>&1 || true)
  check_eq "the example curl.sh gets the page" "hello from p11tls" "$body"
  body=$(curl -sS --cacert /etc/p11tls/web.pem --resolve web.example:8443:127.0.0.1 --tls-max 1.2 \
    https://web.example:8443/ 2>&1 || true)
  check_eq "a plain curl over TLS 1.2 gets the page" "hello from p11tls" "$body"
  [ "$body" = "hello from p11tls" ] || sed 's/^/#   /' "$WORK/ngx/error.log" | tail -20 >&2
  kill -QUIT "$NGX_PID"
  for _ in $(seq 50); do kill -0 "$NGX_PID" 2>/dev/null || break; sleep 0.1; done
  check "nginx stopped" bash -c "! kill -0 $NGX_PID 2>/dev/null"
else
  not_ok "nginx starts with the example files"
  sed 's/^/#   /' "$WORK/ngx/start.err" "$WORK/ngx/error.log" >&2 || true
fi

# ------------------------------------------------------------ 6 removal
dpkg -L p11tls | while read -r f; do if [ -f "$f" ]; then echo "$f"; fi; done >"$WORK/files"
check "the package installed files ($(wc -l <"$WORK/files"))" [ "$(wc -l <"$WORK/files")" -ge 8 ]
dpkg --purge p11tls >/dev/null
left=$(while read -r f; do if [ -e "$f" ]; then echo "$f"; fi; done <"$WORK/files")
check_eq "dpkg --purge leaves none of its files" "" "$left"
softhsm2-util --delete-token --token web >/dev/null && TOKEN_MADE=0
check "the token 'web' is deleted" bash -c "! softhsm2-util --show-slots | grep -q 'Label: *web *$'"
tap_finish
