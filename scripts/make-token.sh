#!/usr/bin/env bash
# make-token.sh - creates a ready-to-use PKCS#11 token for p11tls in a directory
# of its own, without touching the machine's tokens (/var/lib/softhsm, ~/.pki).
#
# Usage:
#   scripts/make-token.sh --kind KIND --dir DIR [--label LABEL] [--force] [--client | --no-client]
#                         [--key-backup FILE --passphrase-file P] [--server-key PEM]
#   scripts/make-token.sh --stop --dir DIR
#
# KIND is one of:
#   softhsm         SoftHSM2 token stored in DIR/tokens (DIR/softhsm2.conf).
#   softhsm-remote  the same SoftHSM2 token served by `p11-kit server` on the Unix
#                   socket DIR/p11kit.sock; clients load p11-kit-client.so with
#                   P11_KIT_SERVER_ADDRESS. The key is generated through the
#                   socket (proving that the remote path works). The server's PID
#                   is kept in DIR/p11-kit-server.pid; stop it with --stop.
#   nss             NSS softoken database in DIR/nssdb; its token objects live in
#                   the token labelled "NSS Certificate DB" (--label is ignored).
#
# What it makes in DIR:
#   user.pin, so.pin   random hex PINs (mode 0600; so.pin for SoftHSM2 only)
#   env.sh             `. DIR/env.sh` exports P11TLS_KIND, P11TLS_MODULE,
#                      P11TLS_INIT_ARGS, P11TLS_TOKEN_URI, P11TLS_KEY_URI,
#                      P11TLS_PIN_FILE, P11TLS_DIR and the token's own variables
#                      (SOFTHSM2_CONF, P11_KIT_SERVER_ADDRESS); it never sets
#                      OPENSSL_CONF.
#   an RSA-2048 key pair in the token: label "p11tls-key", id 01 (private key
#   sensitive and not extractable), made with p11tls-tool keygen (with --server-key,
#   the key in PEM imported with p11tls-tool import-key, decrypted with the passphrase
#   in P if it is encrypted: one server key in several tokens), and the
#   handle-wrapping key p11tls needs (p11tls-tool provision; with --key-backup the
#   key in FILE, encrypted under the passphrase in P, made and written there first if
#   FILE does not exist: tokens made with one backup share the handle key).
# When the p11tls provider is found (p11tls.so in $P11TLS_PROVIDER_DIR, else in
# OpenSSL's MODULESDIR from `openssl version -m`), also:
#   openssl.cnf        loads p11tls for this token (use with OPENSSL_CONF=...)
#   key.pem            the key's PKCS#11 URI wrapped as PEM "P11TLS KEY URI"
#   cert.pem           self-signed certificate for CN=localhost made with the key
#   and env.sh then also exports P11TLS_OPENSSL_CNF, P11TLS_KEY_PEM, P11TLS_CERT.
# and, for TLS client authentication (mutual TLS), unless --no-client is given:
#   a second RSA-2048 key pair in the token: label "p11tls-client", id 02
#   ca.pem, ca.key     a test CA (CN=p11tls test CA) in software: its key is an
#                      ordinary PEM file (mode 0600), never in the token
#   client.pem         certificate for CN=p11tls-client (clientAuth) issued by that
#                      CA to the token's client key (the request is signed in the
#                      token: `openssl req -new -key URI` with openssl.cnf)
#   client-key.pem     the client key's URI wrapped as PEM "P11TLS KEY URI"
#   and env.sh then also exports P11TLS_CA, P11TLS_CLIENT_CERT,
#   P11TLS_CLIENT_KEY_PEM and P11TLS_CLIENT_KEY_URI. A reused DIR keeps its CA and
#   client certificate while they still match (CA signature, token key).
#   E.g. curl --cert "$P11TLS_CLIENT_CERT" --key "$P11TLS_CLIENT_KEY_PEM" with
#   OPENSSL_CONF="$P11TLS_OPENSSL_CNF"; a server trusts clients with "$P11TLS_CA".
#   --client asks for this material explicitly (an error if the provider is not
#   found); --no-client skips it (no second key, no CA).
#
# Running it again on a ready DIR reuses the token and exits 0 (a stopped
# p11-kit server is restarted, a running one is restarted cleanly, and the
# provider files are added if the provider has appeared since). --force deletes
# the files this script made in DIR and creates a new token. Only those files are
# ever removed; DIR itself and anything else in it are left alone.
#
# p11tls-tool is taken from $P11TLS_TOOL, else from PATH, else from the repo's
# build/p11tls-tool. Module paths can be overridden with P11TLS_SOFTHSM_MODULE,
# P11TLS_P11KIT_CLIENT and P11TLS_NSS_MODULE. PINs are never printed (they are
# passed to softhsm2-util on its command line, as it cannot read them otherwise).
set -euo pipefail

PROG=make-token.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
KEY_LABEL=p11tls-key
KEY_ID=01
CLIENT_KEY_LABEL=p11tls-client
CLIENT_KEY_ID=02
PID_FILE_NAME=p11-kit-server.pid
SOCK_NAME=p11kit.sock
# Every file and directory this script creates in DIR (what --force removes).
OWN_FILES=(env.sh user.pin so.pin softhsm2.conf tokens nssdb openssl.cnf key.pem cert.pem
  "$SOCK_NAME" "$PID_FILE_NAME" p11-kit-server.out cert.log
  ca.pem ca.key client.pem client-key.pem client.csr client.ext client.log
  ca.pem.tmp ca.key.tmp client.pem.tmp)

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}
die() {
  echo "$PROG: error: $*" >&2
  exit 1
}
usage_error() {
  echo "$PROG: $*" >&2
  echo "try '$PROG --help'" >&2
  exit 2
}
note() { echo "$PROG: $*"; }

# ------------------------------------------------------------------ options
KIND='' DIR='' LABEL='' FORCE=0 STOP=0 CLIENT=default
KEY_BACKUP= PASSFILE= SERVER_KEY=
while [ $# -gt 0 ]; do
  case "$1" in
    --kind) [ $# -ge 2 ] || usage_error "--kind needs a value"; KIND=$2; shift 2 ;;
    --kind=*) KIND=${1#*=}; shift ;;
    --dir) [ $# -ge 2 ] || usage_error "--dir needs a value"; DIR=$2; shift 2 ;;
    --dir=*) DIR=${1#*=}; shift ;;
    --label) [ $# -ge 2 ] || usage_error "--label needs a value"; LABEL=$2; shift 2 ;;
    --label=*) LABEL=${1#*=}; shift ;;
    --force) FORCE=1; shift ;;
    --stop) STOP=1; shift ;;
    --key-backup) [ $# -ge 2 ] || usage_error "--key-backup needs a value"; KEY_BACKUP=$2; shift 2 ;;
    --passphrase-file) [ $# -ge 2 ] || usage_error "--passphrase-file needs a value"; PASSFILE=$2; shift 2 ;;
    --server-key) [ $# -ge 2 ] || usage_error "--server-key needs a value"; SERVER_KEY=$2; shift 2 ;;
    --client) CLIENT=yes; shift ;;
    --no-client) CLIENT=no; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
  esac
done
[ -n "$DIR" ] || usage_error "--dir is required"
case "$DIR" in
  *$'\n'* | *\'* | *\"* | *\\* | *'$'* | *'`'*)
    usage_error "--dir must not contain quotes, backslashes, '\$', backquotes or newlines" ;;
esac
# An absolute path: the files written here name DIR for other processes.
DIR=$(realpath -m -- "$DIR")
PID_FILE=$DIR/$PID_FILE_NAME
SOCK=$DIR/$SOCK_NAME

# ------------------------------------------------------------------ helpers
# Single-quoted for sh: safe to source from sh or bash.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
# RFC 7512 percent-encoding of a path attribute value (everything but unreserved).
pct() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case "$c" in
      [A-Za-z0-9._~-]) out+=$c ;;
      *) out+=$(printf '%%%02X' "'$c") ;;
    esac
  done
  printf '%s' "$out"
}
# A value for openssl.cnf: double-quoted (with \ and " escaped) when it holds
# characters OpenSSL's config parser would otherwise interpret.
cnfq() {
  local v=$1
  case "$v" in
    *[\'\"\\\$\#\;]* | ' '* | *' ')
      v=${v//\\/\\\\}
      v=${v//\"/\\\"}
      printf '"%s"' "$v" ;;
    *) printf '%s' "$v" ;;
  esac
}
random_pin() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }
# Writes a fresh random PIN into a 0600 file (created under umask 077, no newline).
write_pin() {
  (umask 077 && rm -f -- "$1" && random_pin >"$1")
  chmod 600 -- "$1"
}

find_tool() {
  if [ -n "${P11TLS_TOOL:-}" ]; then
    [ -x "$P11TLS_TOOL" ] || die "P11TLS_TOOL=$P11TLS_TOOL is not an executable"
    TOOL=$P11TLS_TOOL
  elif TOOL=$(command -v p11tls-tool 2>/dev/null); then
    :
  elif [ -x "$REPO_DIR/build/p11tls-tool" ]; then
    TOOL=$REPO_DIR/build/p11tls-tool
  else
    die "p11tls-tool not found: build it (cmake --build build --target p11tls-tool) or set P11TLS_TOOL"
  fi
}

first_existing() {
  local f
  for f in "$@"; do
    if [ -e "$f" ]; then
      printf '%s' "$f"
      return 0
    fi
  done
  return 1
}

# ------------------------------------------------------- p11-kit server
# Prints the recorded PID if it is a live p11-kit server serving our socket.
server_pid() {
  local pid state
  [ -f "$PID_FILE" ] || return 1
  pid=$(tr -dc '0-9' <"$PID_FILE")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)
  [ "$state" != Z ] && [ -n "$state" ] || return 1
  # The daemon runs as /usr/libexec/p11-kit/p11-kit-server with argv[0] "server".
  case "$(readlink "/proc/$pid/exe" 2>/dev/null || true) $(cat "/proc/$pid/comm" 2>/dev/null || true)" in
    *p11-kit*) ;;
    *) return 1 ;;
  esac
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -xF -- "$SOCK" >/dev/null || return 1
  printf '%s' "$pid"
}

# PIDs of live p11-kit processes whose arguments include exactly this DIR's socket.
orphan_servers() {
  local d pid state
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    case "$(cat "$d/comm" 2>/dev/null || true)" in *p11-kit*) ;; *) continue ;; esac
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$d/status" 2>/dev/null || true)
    [ -n "$state" ] && [ "$state" != Z ] || continue
    tr '\0' '\n' <"$d/cmdline" 2>/dev/null | grep -qxF -- "$SOCK" && echo "$pid"
  done
  return 0
}

stop_server() {
  local pid i
  if [ ! -f "$PID_FILE" ]; then
    note "no p11-kit server recorded in $DIR"
  elif pid=$(server_pid); then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      server_pid >/dev/null || break
      sleep 0.1
    done
    if server_pid >/dev/null; then
      note "p11-kit server $pid ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        server_pid >/dev/null || break
        sleep 0.1
      done
      server_pid >/dev/null && die "p11-kit server $pid does not exit"
    fi
    note "stopped p11-kit server $pid"
  else
    note "the recorded p11-kit server is not running (stale $PID_FILE_NAME removed)"
  fi
  # Any other p11-kit server still serving this directory's socket (one started
  # earlier whose PID was not recorded): found by its command line, stopped by PID.
  local p
  for p in $(orphan_servers); do
    kill -TERM "$p" 2>/dev/null || true
    note "stopped unrecorded p11-kit server $p serving $SOCK"
  done
  for ((i = 0; i < 50; i++)); do
    [ -z "$(orphan_servers)" ] && break
    sleep 0.1
  done
  for p in $(orphan_servers); do kill -KILL "$p" 2>/dev/null || true; done
  rm -f -- "$PID_FILE" "$SOCK"
}

start_server() {
  local out pid i
  if server_pid >/dev/null; then
    note "p11-kit server already running: restarting it"
  fi
  stop_server >/dev/null
  rm -f -- "$SOCK"
  out=$DIR/p11-kit-server.out
  # It forks a daemon and prints P11_KIT_SERVER_ADDRESS=...; P11_KIT_SERVER_PID=...;
  # (output to a file, not a pipe: the daemon would keep a pipe open).
  if ! SOFTHSM2_CONF=$DIR/softhsm2.conf p11-kit server --provider "$SOFTHSM_MODULE" \
    -n "$SOCK" "$TOKEN_URI" >"$out" 2>&1 </dev/null; then
    cat "$out" >&2
    die "p11-kit server failed to start"
  fi
  pid=$(sed -n 's/^P11_KIT_SERVER_PID=\([0-9]*\);.*/\1/p' "$out")
  [ -n "$pid" ] || {
    cat "$out" >&2
    die "p11-kit server did not print its PID"
  }
  echo "$pid" >"$PID_FILE"
  for ((i = 0; i < 50; i++)); do
    [ -S "$SOCK" ] && break
    sleep 0.1
  done
  [ -S "$SOCK" ] || die "p11-kit server $pid did not create $SOCK"
  server_pid >/dev/null || die "p11-kit server $pid is not running"
  rm -f -- "$out"
  note "p11-kit server $pid serves $TOKEN_URI on unix:path=$SOCK"
}

if [ "$STOP" = 1 ]; then
  [ -z "$KIND" ] && [ "$CLIENT" = default ] || usage_error "--stop takes only --dir"
  [ -d "$DIR" ] || die "$DIR does not exist"
  stop_server
  exit 0
fi

# ------------------------------------------------------------ kind set-up
LABEL_GIVEN=${LABEL:+1}
[ -n "$KIND" ] || usage_error "--kind is required (softhsm, softhsm-remote or nss)"
SOFTHSM_MODULE=${P11TLS_SOFTHSM_MODULE:-$(first_existing /usr/lib/softhsm/libsofthsm2.so \
  /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so || true)}
case "$KIND" in
  softhsm | softhsm-remote)
    [ -n "$SOFTHSM_MODULE" ] && [ -e "$SOFTHSM_MODULE" ] ||
      die "SoftHSM2 module not found (install softhsm2 or set P11TLS_SOFTHSM_MODULE)"
    command -v softhsm2-util >/dev/null || die "softhsm2-util not found (install softhsm2)"
    LABEL=${LABEL:-p11tls}
    MODULE=$SOFTHSM_MODULE
    MIN_ASSURANCE=transient
    if [ "$KIND" = softhsm-remote ]; then
      command -v p11-kit >/dev/null || die "p11-kit not found (install p11-kit)"
      MODULE=${P11TLS_P11KIT_CLIENT:-$(first_existing \
        /usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so \
        /usr/lib/pkcs11/p11-kit-client.so || true)}
      [ -n "$MODULE" ] && [ -e "$MODULE" ] ||
        die "p11-kit-client.so not found (install p11-kit-modules or set P11TLS_P11KIT_CLIENT)"
    fi
    ;;
  nss)
    command -v certutil >/dev/null || die "certutil not found (install libnss3-tools)"
    MODULE=${P11TLS_NSS_MODULE:-$(first_existing /usr/lib/x86_64-linux-gnu/libsoftokn3.so \
      /usr/lib/x86_64-linux-gnu/nss/libsoftokn3.so /usr/lib64/libsoftokn3.so || true)}
    [ -n "$MODULE" ] && [ -e "$MODULE" ] ||
      die "NSS softoken (libsoftokn3.so) not found (install libnss3 or set P11TLS_NSS_MODULE)"
    [ -z "$LABEL" ] || [ "$LABEL" = "NSS Certificate DB" ] ||
      note "--label is ignored for nss: its token is always \"NSS Certificate DB\""
    LABEL="NSS Certificate DB"
    MIN_ASSURANCE=sealed
    ;;
  *) usage_error "unknown --kind '$KIND' (softhsm, softhsm-remote or nss)" ;;
esac
[ "$(printf '%s' "$LABEL" | wc -c)" -le 32 ] || usage_error "--label: a token label has at most 32 bytes"
case "$LABEL" in *[![:print:]]*) usage_error "--label must be printable text" ;; esac

INIT_ARGS=
if [ "$KIND" = nss ]; then
  INIT_ARGS="configdir='sql:$DIR/nssdb' certPrefix='' keyPrefix='' secmod='secmod.db' flags="
fi
TOKEN_URI="pkcs11:token=$(pct "$LABEL")"
KEY_URI="$TOKEN_URI;id=%$KEY_ID;object=$KEY_LABEL;type=private"
PIN_FILE=$DIR/user.pin
ENV_FILE=$DIR/env.sh

mkdir -p -- "$DIR"
[ -w "$DIR" ] || die "$DIR is not writable"

if [ -f "$ENV_FILE" ] && [ "$FORCE" = 0 ]; then
  old_kind=$(sed -n "s/^export P11TLS_KIND='\(.*\)'$/\1/p" "$ENV_FILE")
  [ "$old_kind" = "$KIND" ] ||
    die "$DIR already holds a '${old_kind:-unknown}' token; use --force to replace it"
  old_uri=$(sed -n "s/^export P11TLS_TOKEN_URI='\(.*\)'$/\1/p" "$ENV_FILE")
  if [ -z "$LABEL_GIVEN" ] && [ -n "$old_uri" ]; then
    # No --label: keep the token this DIR already has.
    TOKEN_URI=$old_uri
    KEY_URI="$TOKEN_URI;id=%$KEY_ID;object=$KEY_LABEL;type=private"
    LABEL=${old_uri#pkcs11:token=}
  fi
  [ "$old_uri" = "$TOKEN_URI" ] ||
    die "$DIR already holds token $old_uri (not $TOKEN_URI); use --force to replace it"
  REUSE=1
else
  REUSE=0
fi

CLIENT_KEY_URI="$TOKEN_URI;id=%$CLIENT_KEY_ID;object=$CLIENT_KEY_LABEL;type=private"

if [ "$REUSE" = 0 ]; then
  # A fresh token: remove what an earlier (or unfinished) run of this script left.
  if [ "$KIND" = softhsm-remote ] || [ -f "$PID_FILE" ]; then
    stop_server >/dev/null
  fi
  for f in "${OWN_FILES[@]}"; do
    rm -rf -- "${DIR:?}/$f"
  done
  write_pin "$PIN_FILE"
  case "$KIND" in
    softhsm | softhsm-remote)
      write_pin "$DIR/so.pin"
      mkdir -p -- "$DIR/tokens"
      cat >"$DIR/softhsm2.conf" <<EOF
# SoftHSM2 configuration written by p11tls's make-token.sh
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
EOF
      export SOFTHSM2_CONF=$DIR/softhsm2.conf
      softhsm2-util --init-token --free --label "$LABEL" \
        --so-pin "$(cat "$DIR/so.pin")" --pin "$(cat "$PIN_FILE")" >/dev/null ||
        die "softhsm2-util could not initialise a token in $DIR/tokens"
      note "SoftHSM2 token '$LABEL' initialised in $DIR/tokens"
      ;;
    nss)
      mkdir -p -- "$DIR/nssdb"
      # -f names a file holding the password: the new database gets the user PIN.
      certutil -N -d "sql:$DIR/nssdb" -f "$PIN_FILE" >/dev/null ||
        die "certutil could not create an NSS database in $DIR/nssdb"
      note "NSS database created in $DIR/nssdb (token '$LABEL')"
      ;;
  esac
fi

case "$KIND" in
  softhsm | softhsm-remote) export SOFTHSM2_CONF=$DIR/softhsm2.conf ;;
esac
if [ "$KIND" = softhsm-remote ]; then
  start_server
  export P11_KIT_SERVER_ADDRESS=unix:path=$SOCK
fi

# ------------------------------------------------------------------ the key
find_tool
if [ -n "$SERVER_KEY" ]; then
  # one server key in several tokens (a pool's members): imported from its PEM file
  import_args=()
  [ -z "$PASSFILE" ] || import_args=(--passphrase-file "$PASSFILE")
  "$TOOL" import-key --module "$MODULE" --init-args "$INIT_ARGS" --token-uri "$TOKEN_URI" \
    --pin-file "$PIN_FILE" --key-file "$SERVER_KEY" "${import_args[@]}" --label "$KEY_LABEL" \
    --id "$KEY_ID" --if-missing >/dev/null || die "importing $SERVER_KEY failed in token '$LABEL'"
else
  "$TOOL" keygen --module "$MODULE" --init-args "$INIT_ARGS" --token-uri "$TOKEN_URI" \
    --pin-file "$PIN_FILE" --label "$KEY_LABEL" --id "$KEY_ID" --bits 2048 --if-missing ||
    die "key generation failed in token '$LABEL'"
fi
# The long-lived handle-wrapping key p11tls needs (it never creates it by itself); with
# --key-backup, the one in that backup file (a new one written there if it is missing).
backup_args=()
if [ -n "$KEY_BACKUP" ]; then
  [ -n "$PASSFILE" ] || die "--key-backup needs --passphrase-file"
  backup_args=(--key-backup "$KEY_BACKUP" --passphrase-file "$PASSFILE")
  [ -e "$KEY_BACKUP" ] || backup_args+=(--new)
fi
"$TOOL" provision --module "$MODULE" --init-args "$INIT_ARGS" --token-uri "$TOKEN_URI" \
  --pin-file "$PIN_FILE" "${backup_args[@]}" >/dev/null ||
  die "provisioning the handle key failed in token '$LABEL'"

# ------------------------------------------------------------ env.sh
write_env() {
  local tmp=$ENV_FILE.tmp
  {
    echo "# p11tls test token ($KIND), written by make-token.sh: . $(shq "$ENV_FILE")"
    case "$KIND" in
      softhsm | softhsm-remote) echo "export SOFTHSM2_CONF=$(shq "$DIR/softhsm2.conf")" ;;
    esac
    [ "$KIND" != softhsm-remote ] || echo "export P11_KIT_SERVER_ADDRESS=$(shq "unix:path=$SOCK")"
    echo "export P11TLS_KIND=$(shq "$KIND")"
    echo "export P11TLS_MODULE=$(shq "$MODULE")"
    echo "export P11TLS_INIT_ARGS=$(shq "$INIT_ARGS")"
    echo "export P11TLS_TOKEN_URI=$(shq "$TOKEN_URI")"
    echo "export P11TLS_KEY_URI=$(shq "$KEY_URI")"
    echo "export P11TLS_PIN_FILE=$(shq "$PIN_FILE")"
    echo "export P11TLS_DIR=$(shq "$DIR")"
    if [ -n "${CNF:-}" ]; then
      echo "export P11TLS_OPENSSL_CNF=$(shq "$CNF")"
      echo "export P11TLS_KEY_PEM=$(shq "$DIR/key.pem")"
      echo "export P11TLS_CERT=$(shq "$DIR/cert.pem")"
    fi
    if [ -n "${CLIENT_DONE:-}" ]; then
      echo "export P11TLS_CA=$(shq "$DIR/ca.pem")"
      echo "export P11TLS_CLIENT_CERT=$(shq "$DIR/client.pem")"
      echo "export P11TLS_CLIENT_KEY_PEM=$(shq "$DIR/client-key.pem")"
      echo "export P11TLS_CLIENT_KEY_URI=$(shq "$CLIENT_KEY_URI")"
    fi
  } >"$tmp"
  mv -f -- "$tmp" "$ENV_FILE"
}
# Written now so that the token counts as ready even if the provider step fails.
CNF='' CLIENT_DONE=''
write_env

# ------------------------------------------- client authentication material
# OpenSSL without p11tls (whatever OPENSSL_CONF the caller has): the software CA.
plain_openssl() { env -u OPENSSL_CONF openssl "$@"; }

# The CA pair in DIR is usable: both files there, and the key is the certificate's.
ca_usable() {
  [ -s "$DIR/ca.pem" ] && [ -s "$DIR/ca.key" ] || return 1
  [ "$(plain_openssl x509 -in "$DIR/ca.pem" -noout -pubkey 2>/dev/null)" = \
    "$(plain_openssl pkey -in "$DIR/ca.key" -pubout 2>/dev/null)" ]
}

# client.pem is current: issued by ca.pem, and for the token's client key.
client_cert_current() {
  local tokpub
  [ -s "$DIR/client.pem" ] || return 1
  plain_openssl verify -CAfile "$DIR/ca.pem" -purpose sslclient "$DIR/client.pem" >/dev/null 2>&1 ||
    return 1
  tokpub=$(OPENSSL_CONF=$CNF openssl pkey -in "$CLIENT_KEY_URI" -pubout 2>/dev/null) || return 1
  [ -n "$tokpub" ] && [ "$tokpub" = "$(plain_openssl x509 -in "$DIR/client.pem" -noout -pubkey)" ]
}

# The client key pair in the token, client-key.pem, the CA (ca.pem, ca.key) and
# client.pem. Needs openssl.cnf ($CNF): the request is signed by the token key.
make_client_material() {
  local serial
  "$TOOL" keygen --module "$MODULE" --init-args "$INIT_ARGS" --token-uri "$TOKEN_URI" \
    --pin-file "$PIN_FILE" --label "$CLIENT_KEY_LABEL" --id "$CLIENT_KEY_ID" --bits 2048 \
    --if-missing || die "client key generation failed in token '$LABEL'"
  "$TOOL" pem-uri --uri "$CLIENT_KEY_URI" --out "$DIR/client-key.pem" ||
    die "cannot write $DIR/client-key.pem"
  if [ "$REUSE" = 0 ] || ! ca_usable; then
    rm -f -- "$DIR/ca.pem" "$DIR/ca.key" "$DIR/ca.pem.tmp" "$DIR/ca.key.tmp" "$DIR/client.pem"
    if ! (umask 077 && plain_openssl req -x509 -newkey rsa:2048 -nodes -keyout "$DIR/ca.key.tmp" \
      -out "$DIR/ca.pem.tmp" -subj "/CN=p11tls test CA" -days 825 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" >"$DIR/client.log" 2>&1); then
      cat "$DIR/client.log" >&2
      rm -f -- "$DIR/ca.pem.tmp" "$DIR/ca.key.tmp" "$DIR/client.log"
      die "openssl could not make the test CA in $DIR"
    fi
    chmod 600 -- "$DIR/ca.key.tmp"
    chmod 644 -- "$DIR/ca.pem.tmp"
    mv -f -- "$DIR/ca.key.tmp" "$DIR/ca.key"
    mv -f -- "$DIR/ca.pem.tmp" "$DIR/ca.pem"
    rm -f -- "$DIR/client.log"
    note "test CA (CN=p11tls test CA, software key) written to $DIR/ca.pem and $DIR/ca.key"
  fi
  if [ "$REUSE" = 1 ] && client_cert_current; then
    return 0
  fi
  rm -f -- "$DIR/client.pem" "$DIR/client.pem.tmp" "$DIR/client.csr"
  # The request is signed in the token (the CA needs the key's public half).
  if ! OPENSSL_CONF=$CNF openssl req -new -key "$CLIENT_KEY_URI" -subj /CN=p11tls-client \
    -sha256 -out "$DIR/client.csr" >"$DIR/client.log" 2>&1; then
    sed 's/^/  /' "$DIR/client.log" >&2
    rm -f -- "$DIR/client.csr" "$DIR/client.log"
    die "openssl req could not make a request with the token's client key (OPENSSL_CONF=$CNF)"
  fi
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=clientAuth" "subjectKeyIdentifier=hash" \
    "authorityKeyIdentifier=keyid" >"$DIR/client.ext"
  serial=0x01$(od -An -tx1 -N15 /dev/urandom | tr -d ' \n')
  if ! plain_openssl x509 -req -in "$DIR/client.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
    -set_serial "$serial" -days 825 -sha256 -extfile "$DIR/client.ext" \
    -out "$DIR/client.pem.tmp" >"$DIR/client.log" 2>&1; then
    sed 's/^/  /' "$DIR/client.log" >&2
    rm -f -- "$DIR/client.csr" "$DIR/client.ext" "$DIR/client.log" "$DIR/client.pem.tmp"
    die "openssl x509 could not issue the client certificate"
  fi
  rm -f -- "$DIR/client.csr" "$DIR/client.ext" "$DIR/client.log"
  mv -f -- "$DIR/client.pem.tmp" "$DIR/client.pem"
  client_cert_current || die "$DIR/client.pem does not verify against $DIR/ca.pem for the token's client key"
  note "client certificate for CN=p11tls-client (issued by $DIR/ca.pem) written to $DIR/client.pem"
}

# ------------------------------------------------- provider files (optional)
PROVIDER_SO='' MODULE_LINE=''
if [ -n "${P11TLS_PROVIDER_DIR:-}" ]; then
  if [ -f "$P11TLS_PROVIDER_DIR/p11tls.so" ]; then
    PROVIDER_SO=$(realpath -- "$P11TLS_PROVIDER_DIR/p11tls.so")
    MODULE_LINE="module = $(cnfq "$PROVIDER_SO")"
  else
    note "P11TLS_PROVIDER_DIR=$P11TLS_PROVIDER_DIR holds no p11tls.so"
  fi
else
  mdir=$(openssl version -m 2>/dev/null | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
  if [ -n "$mdir" ] && [ -f "$mdir/p11tls.so" ]; then
    PROVIDER_SO=$mdir/p11tls.so
  fi
fi
if [ -z "$PROVIDER_SO" ]; then
  note "p11tls provider not found (set P11TLS_PROVIDER_DIR to the directory holding p11tls.so):" \
    "skipping openssl.cnf, key.pem and cert.pem"
  [ "$CLIENT" != yes ] ||
    die "--client needs the p11tls provider (the client certificate request is signed in the token)"
else
  CNF=$DIR/openssl.cnf
  {
    echo "# OpenSSL configuration for p11tls on this token (make-token.sh): OPENSSL_CONF=$CNF"
    echo "openssl_conf = openssl_init"
    echo "[openssl_init]"
    echo "providers = provider_sect"
    echo "alg_section = algorithm_sect"
    echo "[provider_sect]"
    echo "default = default_sect"
    echo "p11tls = p11tls_sect"
    echo "[default_sect]"
    echo "activate = 1"
    echo "[p11tls_sect]"
    [ -z "$MODULE_LINE" ] || echo "$MODULE_LINE"
    echo "pkcs11-module = $(cnfq "$MODULE")"
    [ -z "$INIT_ARGS" ] || echo "pkcs11-init-args = $(cnfq "$INIT_ARGS")"
    echo "token = $(cnfq "$TOKEN_URI")"
    echo "pin-source = $(cnfq "file:$PIN_FILE")"
    echo "min-assurance = $MIN_ASSURANCE"
    echo "activate = 1"
    echo "[algorithm_sect]"
    echo "default_properties = ?provider=p11tls"
  } >"$CNF.tmp"
  mv -f -- "$CNF.tmp" "$CNF"
  "$TOOL" pem-uri --uri "$KEY_URI" --out "$DIR/key.pem" || die "cannot write $DIR/key.pem"
  # OpenSSL skips a provider that fails to load from a config file without a word.
  if ! OPENSSL_CONF=$CNF openssl list -providers 2>/dev/null | grep -x '  p11tls' >/dev/null; then
    openssl list -providers -provider-path "$(dirname "$PROVIDER_SO")" -provider p11tls \
      >/dev/null || true
    die "p11tls ($PROVIDER_SO) does not load with $CNF (P11TLS_DEBUG=1 shows the token layer's log)"
  fi
  if [ ! -s "$DIR/cert.pem" ] || [ "$REUSE" = 0 ]; then
    rm -f -- "$DIR/cert.pem"
    # The key by its URI (the provider's pkcs11: store); if that fails, by key.pem.
    ok=0
    for keyarg in "$KEY_URI" "$DIR/key.pem"; do
      if OPENSSL_CONF=$CNF openssl req -new -x509 -key "$keyarg" -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -days 825 -sha256 \
        -out "$DIR/cert.pem.tmp" >"$DIR/cert.log" 2>&1; then
        ok=1
        break
      fi
      note "openssl req -key $keyarg failed:" >&2
      sed 's/^/  /' "$DIR/cert.log" >&2
    done
    if [ "$ok" = 0 ]; then
      rm -f -- "$DIR/cert.pem.tmp" "$DIR/cert.log"
      die "openssl req could not make a certificate with the token key (OPENSSL_CONF=$CNF)"
    fi
    mv -f -- "$DIR/cert.pem.tmp" "$DIR/cert.pem"
    rm -f -- "$DIR/cert.log"
    note "self-signed certificate for CN=localhost written to $DIR/cert.pem"
  fi
  if [ "$CLIENT" != no ]; then
    make_client_material
    CLIENT_DONE=1
  fi
  write_env
fi

note "token ready: . $ENV_FILE  (P11TLS_TOKEN_URI=$TOKEN_URI)"
