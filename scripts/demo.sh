#!/usr/bin/env bash
# demo.sh - the README's first command: shows p11tls at work on this machine.
#
# Run as root on Debian 12:  scripts/demo.sh
#
# It installs the Debian packages (scripts/install-deps.sh), builds p11tls into
# build/ and installs it (`cmake --install build`: p11tls.so into OpenSSL's
# modules directory, p11tls-tool into /usr/local/bin), makes two tokens with
# scripts/make-token.sh --force (a SoftHSM2 token and an NSS softoken database)
# in $P11TLS_DEMO_DIR (default /var/tmp/p11tls-demo), and for each token:
#   - shows what p11tls reports for it (`openssl list -providers -verbose`):
#     the assurance level and the master-secret strategy;
#   - runs Debian's nginx with p11tls (two workers as www-data, 127.0.0.1 only,
#     TLS 1.2, shared session cache and session tickets) and fetches pages with
#     curl, RSA key exchange and ECDHE-RSA: a full handshake, then resumptions,
#     with the nginx worker that served each connection;
#   - runs `openssl s_server -keylogfile` with the token against a plain
#     `openssl s_client -keylogfile`: for the same CLIENT_RANDOM the server logs a
#     handle, the client the real master secret;
#   - runs handshakes with the token behind p11-kit's proxy module with
#     `log-calls: yes` (a temporary /etc/pkcs11/modules registration, removed
#     afterwards) and counts how often each client master secret appears in
#     that independent record of the PKCS#11 calls.
# Everything it starts is stopped by PID when it ends, also on failure or ^C.
# It exits 0 only if every step and check passed. The full output of every
# step is in DEMO_DIR/demo.log.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=${P11TLS_DEMO_DIR:-/var/tmp/p11tls-demo}
LOG=$DEMO/demo.log
CIPHERS=(AES128-GCM-SHA256 ECDHE-RSA-AES128-GCM-SHA256)
NGX_CONNS=4  # connections per cipher through nginx: 1 full handshake + 3 resumed
AUDIT_HS=6   # handshakes through p11-kit's logging proxy (the ciphers in turn)
PROXY=/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so
MODDIR=/etc/pkcs11/modules
MODFILE=$MODDIR/p11tls-demo-$$.module
T0=$SECONDS

# ------------------------------------------------------------ bookkeeping
NGX_DIRS=()      # nginx instances we started (ngx_stop DIR)
PIDS=()          # other processes we started (s_server)
MADE_DIRS=()     # /etc/pkcs11 and /etc/pkcs11/modules if we made them
SECRET_FILES=()  # p11-kit call logs (they hold the PIN): removed at exit
FAILS=()         # what failed, for the summary
SUMMARY=()       # one line per token
CLEANED=0

if [ -t 1 ]; then
  B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'
else
  B='' G='' R='' D='' N=''
fi

say() { printf '%s\n' "$*"; }
okword() { printf '%sok%s' "$G" "$N"; }
failword() { printf '%sFAIL%s' "$R" "$N"; }
fail() { FAILS+=("$*"); }
# line LABEL TEXT: an aligned report line.
line() { printf '    %-18s %s\n' "$1" "$2"; }
# verdict TEXT STATUS(0 = ok): an aligned check line; records a failure.
verdict() {
  if [ "$2" = 0 ]; then
    printf '    %-66s %s\n' "$1" "$(okword)"
  else
    printf '    %-66s %s\n' "$1" "$(failword)"
    fail "$CUR_TOKEN: $1"
  fi
}
header() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }

stop_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null)" != Z ] || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  local d p i
  [ "$CLEANED" = 1 ] && return 0
  CLEANED=1
  for d in "${NGX_DIRS[@]}"; do ngx_stop "$d" 2>/dev/null; done
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  rm -f -- "$MODFILE" "${SECRET_FILES[@]}"
  for ((i = ${#MADE_DIRS[@]} - 1; i >= 0; i--)); do rmdir -- "${MADE_DIRS[i]}" 2>/dev/null; done
  return 0
}
# shellcheck disable=SC2317  # invoked by the EXIT trap
on_exit() {
  local rc=$?
  cleanup
  exit "$rc"
}
trap on_exit EXIT
trap 'echo; echo "demo.sh: interrupted" >&2; exit 130' INT
trap 'echo; echo "demo.sh: terminated" >&2; exit 143' TERM

die() {
  printf '\n%sdemo.sh: %s%s\n' "$R" "$*" "$N" >&2
  [ ! -f "$LOG" ] || echo "demo.sh: the full output is in $LOG" >&2
  exit 1
}

# step TITLE COMMAND...: runs COMMAND with its output in the log; fatal on failure.
step() {
  local title=$1 t=$SECONDS
  shift
  printf '  %-58s ' "$title"
  printf '\n===== %s: %s\n' "$title" "$*" >>"$LOG"
  if "$@" >>"$LOG" 2>&1 </dev/null; then
    printf '%s (%ds)\n' "$(okword)" $((SECONDS - t))
  else
    printf '%s\n' "$(failword)"
    tail -n 25 "$LOG" | sed 's/^/      | /'
    die "step failed: $title"
  fi
}

# ------------------------------------------------------------ preparation
[ "$(id -u)" = 0 ] || { echo "demo.sh: run it as root (it installs packages and runs nginx)" >&2; exit 1; }
case "$DEMO" in
  /*) ;;
  *) DEMO=$(pwd)/$DEMO ;;
esac
mkdir -p -- "$DEMO" || exit 1
chmod 755 "$DEMO"
: >"$LOG"
# This demo's own settings only: nothing from the caller's environment.
unset OPENSSL_CONF P11TLS_PROVIDER_DIR P11TLS_TOOL SOFTHSM2_CONF P11_KIT_SERVER_ADDRESS

say "${B}p11tls demo: TLS 1.2 handshake secrets kept in a PKCS#11 token${N}"
say "  (all output of the steps below: $LOG)"
header "Install and build"
step "Debian packages (scripts/install-deps.sh)" bash "$REPO/scripts/install-deps.sh"
OSSL_MODULES=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
[ -n "$OSSL_MODULES" ] || die "cannot find OpenSSL's modules directory (openssl version -m)"
# P11TLS_MODULES_DIR is given explicitly: the provider must land in OpenSSL's
# modules directory also when build/ was configured before.
step "configure (cmake -B build)" cmake -S "$REPO" -B "$REPO/build" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DP11TLS_MODULES_DIR="$OSSL_MODULES"
step "build p11tls.so and p11tls-tool" cmake --build "$REPO/build" -j "$(nproc)" \
  --target p11tls p11tls-tool
step "install (cmake --install build)" cmake --install "$REPO/build"
[ -f "$OSSL_MODULES/p11tls.so" ] || die "$OSSL_MODULES/p11tls.so is not there after cmake --install"
TOOL=$(command -v p11tls-tool) || die "p11tls-tool is not on PATH after cmake --install"
line "provider" "$OSSL_MODULES/p11tls.so"
line "tool" "$TOOL"

. "$REPO/scripts/lib/nginx.sh"

header "Tokens (scripts/make-token.sh --force)"
step "SoftHSM2 token in $DEMO/softhsm" \
  bash "$REPO/scripts/make-token.sh" --kind softhsm --dir "$DEMO/softhsm" --force
step "NSS softoken token in $DEMO/nss" \
  bash "$REPO/scripts/make-token.sh" --kind nss --dir "$DEMO/nss" --force

# Loads one token's env.sh (and nothing left from another token).
token_env() {
  unset SOFTHSM2_CONF P11_KIT_SERVER_ADDRESS P11TLS_KIND P11TLS_MODULE P11TLS_INIT_ARGS \
    P11TLS_TOKEN_URI P11TLS_KEY_URI P11TLS_PIN_FILE P11TLS_DIR P11TLS_OPENSSL_CNF \
    P11TLS_KEY_PEM P11TLS_CERT
  # shellcheck disable=SC1090,SC1091
  . "$1/env.sh"
}

# ----------------------------------------------------- openssl s_server
# start_s_server NAME CNF ARGS...: openssl s_server on 127.0.0.1 with OPENSSL_CONF=CNF;
# sets SRV_PID, SRV_PORT; stdout in RUN/NAME.out, stderr in RUN/NAME.err.
start_s_server() {
  local name=$1 cnf=$2 attempt i port pid
  shift 2
  for ((attempt = 0; attempt < 5; attempt++)); do
    port=$(p11_free_port) || return 1
    OPENSSL_CONF=$cnf timeout -s TERM 300 openssl s_server -accept "127.0.0.1:$port" "$@" \
      >"$RUN/$name.out" 2>"$RUN/$name.err" </dev/null &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 300; i++)); do
      grep -q '^ACCEPT' "$RUN/$name.out" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if grep -q '^ACCEPT' "$RUN/$name.out" 2>/dev/null; then
      SRV_PID=$pid SRV_PORT=$port
      return 0
    fi
    stop_pid "$pid"
    grep -qi 'in use' "$RUN/$name.err" || break
  done
  echo "openssl s_server did not start:" >>"$LOG"
  sed -e 's/\(pPin = ([0-9]*)\).*/\1 <masked>/' "$RUN/$name.err" | tail -n 20 >>"$LOG"
  return 1
}

# s_client OUT ARGS...: a plain OpenSSL client (no p11tls) sending one GET.
s_client() {
  local out=$1
  shift
  printf 'GET / HTTP/1.0\r\n\r\n' | env -u OPENSSL_CONF timeout -s KILL 30 openssl s_client \
    -connect "127.0.0.1:$SRV_PORT" -servername localhost "${PROTO_FLAG:--tls1_2}" -ign_eof "$@" \
    >"$out" 2>&1
}

# The CLIENT_RANDOM lines of a keylog: "random secret", lowercase.
keylog_pairs() { awk '$1 == "CLIENT_RANDOM" { print tolower($2), tolower($3) }' "$1"; }

# --------------------------------------------------- the call-log search
# count_in_log CALLLOG VALUES: for each 48-byte value (hex, one a line) prints
# "crossings whole pieces partial hextext", where
#   whole     buffers of the log that hold the whole value,
#   pieces    1 if buffers holding 16+ byte pieces of it together cover all of
#             it (a value that crossed in parts, e.g. as two HMAC outputs),
#   crossings whole + pieces,
#   partial   buffers holding a piece (16+ consecutive bytes) but not all of it,
#   hextext   times its hex text appears anywhere in the log.
# p11-kit writes a byte buffer as "(LEN) \"...\"": printable ASCII as is, \t \n
# \r, any other byte as \xHH, cut after 119 characters with "...". A bare
# backslash is ambiguous, so values are escaped the same way and searched for
# in that form; in a cut buffer a value counts as whole when the visible rest
# of the buffer (16 bytes of it or more) is the start of the value.
count_in_log() {
  perl -e '
    use strict; use warnings;
    sub esc {
      return join "", map {
        $_ == 9 ? "\\t" : $_ == 10 ? "\\n" : $_ == 13 ? "\\r"
          : ($_ >= 32 && $_ <= 126) ? chr($_) : sprintf("\\x%02X", $_)
      } unpack("C*", $_[0]);
    }
    my ($logf, $valf) = @ARGV;
    my (@bufs, $all);
    open(my $lf, "<:raw", $logf) or die "$logf: $!\n";
    while (my $l = <$lf>) {
      $all .= lc $l;
      next unless $l =~ /\(\d+\) "(.*)"\s*$/;
      my ($txt, $cut) = ($1, 0);
      if (length($txt) >= 122 && substr($txt, -3) eq "...") {
        $txt = substr($txt, 0, 119);
        $cut = 1;
      }
      push @bufs, [$txt, $cut];
    }
    close $lf;
    $all //= "";
    open(my $vf, "<", $valf) or die "$valf: $!\n";
    while (my $hex = <$vf>) {
      chomp $hex;
      next unless $hex =~ /^[0-9a-f]{96}$/;
      my $v = pack("H*", $hex);
      my $e = esc($v);
      my $min = length esc(substr($v, 0, 16));
      my @win = map { esc(substr($v, $_, 16)) } 0 .. 32;
      my @covered = (0) x 48;
      my ($whole, $partial) = (0, 0);
      for my $b (@bufs) {
        my ($txt, $cut) = @$b;
        my $hit = index($txt, $e) >= 0;
        for (my $j = 0; !$hit && $cut && $j + $min <= length $txt; $j++) {
          my $rest = substr($txt, $j);
          $hit = 1 if substr($e, 0, length $rest) eq $rest;
        }
        if ($hit) { $whole++; next; }
        my $any = 0;
        for my $k (0 .. 32) {
          next if index($txt, $win[$k]) < 0;
          $any = 1;
          $covered[$_] = 1 for $k .. $k + 15;
        }
        $partial += $any;
      }
      my $pieces = (grep { !$_ } @covered) ? 0 : 1;
      my $hextext = () = $all =~ /\Q$hex\E/g;
      print join(" ", $whole + $pieces, $whole, $pieces, $partial, $hextext), "\n";
    }
  ' "$1" "$2"
}

# ------------------------------------------------------------- one token
# demo_token DIR TITLE EXPECTED_LEVEL
demo_token() {
  local tdir=$1 title=$2 expect=$3
  local info name status level strategy port ngx w users c out codes body n i
  local pid proto cipher reused st first_w kind_fail=${#FAILS[@]}
  CUR_TOKEN=$title
  RUN=$DEMO/run-$(basename "$tdir")
  rm -rf -- "$RUN"
  mkdir -p -- "$RUN"
  chmod 755 "$RUN"
  token_env "$tdir"

  header "$title: $tdir"
  # What the provider says about this token.
  info=$(OPENSSL_CONF=$P11TLS_OPENSSL_CNF openssl list -providers -verbose 2>>"$LOG")
  printf '%s\n' "$info" >"$RUN/providers.txt"
  name=$(printf '%s\n' "$info" | sed -n 's/^ *name: \(p11tls: .*\)$/\1/p' | head -n 1)
  status=$(printf '%s\n' "$info" | awk '/^  p11tls$/ { p = 1; next } /^  [^ ]/ { p = 0 }
    p && $1 == "status:" { print $2; exit }')
  level=$(printf '%s' "$name" | sed -n 's/.*, assurance \([a-z]*\) (.*/\1/p')
  LEVEL=$level
  strategy=$(printf '%s' "$name" | sed -n 's/.*, assurance [a-z]* (TLS 1.2: \([^;]*\);.*/\1/p')
  line "openssl.cnf" "$P11TLS_OPENSSL_CNF"
  line "provider says" "${name:-(no p11tls line in openssl list -providers)}"
  line "status" "${status:-?}"
  line "assurance" "${level:-?}"
  line "strategy" "${strategy:-?}"
  verdict "p11tls active at the expected level for this token ($expect)" \
    "$([ "$status" = active ] && [ "$level" = "$expect" ] && echo 0 || echo 1)"
  verdict "openssl.cnf uses the installed provider (no module= line)" \
    "$(grep -q '^module *=' "$P11TLS_OPENSSL_CNF" && echo 1 || echo 0)"
  if [ "$status" != active ]; then
    summary_row "$title" "${level:-not usable}" - - - "$(failword)"
    return 0
  fi

  # ------------------------------------------------------------ nginx
  say ""
  say "  ${B}nginx${N} (2 workers as www-data, TLS 1.2, shared session cache + tickets)"
  ngx_grant_token_access www-data >>"$LOG" 2>&1
  ngx=$RUN/nginx
  mkdir -p -- "$ngx"
  port=$(p11_free_port)
  ngx_write_conf "$ngx" "$port" workers=2 tickets=on user=www-data \
    ciphers="AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
  NGX_DIRS+=("$ngx")
  if ! ngx_start "$ngx" >>"$LOG" 2>&1; then
    verdict "nginx starts with the token (see $ngx/error.log)" 1
    summary_row "$title" "$level ($strategy)" FAILED - - "$(failword)"
    ngx_stop "$ngx"
    return 0
  fi
  for ((i = 0; i < 50; i++)); do
    [ "$(ngx_workers "$ngx" | wc -l)" -ge 2 ] && break
    sleep 0.1
  done
  w=$(ngx_workers "$ngx" | tr '\n' ' ')
  users=$(for p in $w; do ps -o user= -p "$p" | tr -d ' '; done | sort -u | tr '\n' ' ')
  line "nginx.conf" "$ngx/nginx.conf"
  line "listening" "https://localhost:$port/ (127.0.0.1 only)"
  line "master PID" "$(cat "$ngx/master.pid") (root)"
  line "worker PIDs" "${w% } (user: ${users% })"
  local ngx_ok=0
  for c in "${CIPHERS[@]}"; do
    local urls=()
    for ((i = 0; i < NGX_CONNS; i++)); do urls+=("https://localhost:$port/"); done
    : >"$ngx/access.log"
    out=$(curl -sS --max-time 30 --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" \
      --tlsv1.2 --tls-max 1.2 --ciphers "$c" -H 'Connection: close' --rate 5/s \
      -w 'HTTP %{http_code}\n' "${urls[@]}" 2>&1)
    printf '%s\n' "curl $c:" "$out" >>"$LOG"
    codes=$(printf '%s\n' "$out" | sed -n 's/^HTTP \([0-9]*\)$/\1/p')
    body=$(printf '%s\n' "$out" | grep -c '^hello from p11tls$')
    say "    curl --ciphers $c, $NGX_CONNS URLs, -H 'Connection: close' (a new connection each)"
    say "    curl got HTTP $(printf '%s\n' "$codes" | tr '\n' ' ')(and $body x 'hello from p11tls')"
    say "    nginx's access log (in the order nginx logged them):"
    n=0
    first_w=$(awk '$4 == "." { print $1; exit }' "$ngx/access.log")
    local good=1 full=0 resumed=0
    while read -r pid proto cipher reused st _; do
      n=$((n + 1))
      local what where
      [ "$reused" = r ] && what="resumed" || what="full handshake"
      [ "$reused" = r ] && resumed=$((resumed + 1))
      [ "$reused" = . ] && full=$((full + 1))
      where="worker $pid"
      [ "$reused" = r ] && [ "$pid" != "$first_w" ] && where="$where (not the full handshake's)"
      printf '      #%d  %-4s %-8s %-28s %-15s %s\n' "$n" "$st" "$proto" "$cipher" "$what" "$where"
      [ "$st" = 200 ] && [ "$cipher" = "$c" ] && [ "$proto" = TLSv1.2 ] || good=0
    done <"$ngx/access.log"
    [ "$n" = "$NGX_CONNS" ] && [ "$full" = 1 ] && [ "$resumed" = $((NGX_CONNS - 1)) ] || good=0
    [ "$body" = "$NGX_CONNS" ] && [ "$(printf '%s\n' "$codes" | grep -cx 200)" = "$NGX_CONNS" ] ||
      good=0
    printf '%s\n' "$out" | grep '^curl: ' | head -n 3 | sed 's/^/      /'
    verdict "$c: $(printf '%s\n' "$codes" | grep -cx 200)/$NGX_CONNS HTTP 200, $full full + $resumed resumed" \
      "$((1 - good))"
    [ "$good" = 1 ] || ngx_ok=1
  done
  line "access log" "$ngx/access.log (\$pid \$ssl_protocol \$ssl_cipher \$ssl_session_reused \$status)"
  ngx_stop "$ngx"

  # ------------------------------------------------------------ keylogs
  say ""
  say "  ${B}keylog${N}: openssl s_server with this token (-keylogfile) <- plain openssl s_client (-keylogfile)"
  local kl_ok=0 cr sec hnd
  if start_s_server keylog-server "$P11TLS_OPENSSL_CNF" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" -tls1_2 -www -keylogfile "$RUN/server.keylog"; then
    for c in "${CIPHERS[@]}"; do
      : >"$RUN/client-one.keylog"
      if ! s_client "$RUN/s_client-$c.out" -cipher "$c" -keylogfile "$RUN/client-one.keylog" ||
        ! grep -aq "^New, TLSv1.2, Cipher is $c\$" "$RUN/s_client-$c.out"; then
        verdict "$c: s_client handshake with s_server" 1
        kl_ok=1
        continue
      fi
      cat "$RUN/client-one.keylog" >>"$RUN/client.keylog"
      read -r cr sec < <(keylog_pairs "$RUN/client-one.keylog" | tail -n 1)
      hnd=$(keylog_pairs "$RUN/server.keylog" | awk -v r="$cr" '$1 == r { print $2 }' | tail -n 1)
      say "    $c"
      line "  CLIENT_RANDOM" "${cr:0:32}..."
      line "  client logged" "${sec:0:32}...  (the real master secret)"
      line "  server logged" "${hnd:0:32}...  (what libssl holds: a handle)"
      verdict "  same CLIENT_RANDOM, the server's value differs from the secret" \
        "$([ -n "$sec" ] && [ -n "$hnd" ] && [ "$sec" != "$hnd" ] && echo 0 || echo 1)"
      [ -n "$sec" ] && [ -n "$hnd" ] && [ "$sec" != "$hnd" ] || kl_ok=1
    done
    stop_pid "$SRV_PID"
    line "keylogs" "$RUN/server.keylog, $RUN/client.keylog"
  else
    verdict "openssl s_server starts with the token" 1
    kl_ok=1
  fi
  # TLS 1.3 (what clients get by default): five secrets per handshake, all handles.
  say "    TLS 1.3 (s_client's default suite)"
  if start_s_server keylog13-server "$P11TLS_OPENSSL_CNF" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" -www -keylogfile "$RUN/server13.keylog"; then
    : >"$RUN/client13.keylog"
    local n13=0 l
    if PROTO_FLAG=-tls1_3 s_client "$RUN/s_client-tls13.out" -keylogfile "$RUN/client13.keylog" &&
      grep -aq "^New, TLSv1.3" "$RUN/s_client-tls13.out"; then
      for l in CLIENT_HANDSHAKE_TRAFFIC_SECRET SERVER_HANDSHAKE_TRAFFIC_SECRET \
        CLIENT_TRAFFIC_SECRET_0 SERVER_TRAFFIC_SECRET_0 EXPORTER_SECRET; do
        sec=$(awk -v l="$l" '$1 == l { print tolower($3) }' "$RUN/client13.keylog" | tail -n 1)
        hnd=$(awk -v l="$l" '$1 == l { print tolower($3) }' "$RUN/server13.keylog" | tail -n 1)
        line "  $l" "client ${sec:0:16}...  server ${hnd:0:16}..."
        [ -n "$sec" ] && [ -n "$hnd" ] && [ "$sec" != "$hnd" ] && n13=$((n13 + 1))
      done
      verdict "  TLS 1.3: the server logged handles, not the secrets ($n13 of 5 differ)" \
        "$([ "$n13" = 5 ] && echo 0 || echo 1)"
      [ "$n13" = 5 ] || kl_ok=1
    else
      verdict "TLS 1.3: s_client handshake with s_server" 1
      kl_ok=1
    fi
    stop_pid "$SRV_PID"
  else
    verdict "openssl s_server starts with the token (TLS 1.3)" 1
    kl_ok=1
  fi

  # ------------------------------------------------------------ boundary audit
  say ""
  say "  ${B}boundary audit${N}: $AUDIT_HS handshakes with the token behind p11-kit's proxy (log-calls: yes)"
  audit_token

  local result
  if [ "${#FAILS[@]}" = "$kind_fail" ]; then result=$(okword); else result=$(failword); fi
  summary_row "$title" "$level ($strategy)" "$([ "$ngx_ok" = 0 ] && echo ok || echo FAILED)" \
    "$([ "$kl_ok" = 0 ] && echo ok || echo FAILED)" "$AUDIT_SUMMARY" "$result"
}

# summary_row TOKEN LEVEL NGINX KEYLOG AUDIT RESULT
summary_row() { SUMMARY+=("$(printf '%-9s %-36s %-11s %-14s %-17s %s' "$@")"); }

# audit_token: the boundary audit for the loaded token; sets AUDIT_SUMMARY.
audit_token() {
  local d auditlib cnf i c out nsec nhnd ctl cross whole pieces partial hext sec maxc=0
  local over=0 zero=0 anypart=0 anyhex=0
  AUDIT_SUMMARY="FAILED"
  if [ ! -e "$PROXY" ]; then
    verdict "p11-kit's proxy module $PROXY is installed" 1
    return 1
  fi
  for d in /etc/pkcs11 "$MODDIR"; do
    if [ ! -d "$d" ]; then
      mkdir -- "$d" && MADE_DIRS+=("$d")
    fi
  done
  # p11-kit merges two registrations of one library (Debian registers SoftHSM2
  # itself), which would drop log-calls: SoftHSM2 is registered as a copy.
  auditlib=$P11TLS_MODULE
  case "$(basename "$(readlink -f "$P11TLS_MODULE")")" in
    libsofthsm2.so*)
      auditlib=$RUN/libsofthsm2-audit.so
      cp -- "$(readlink -f "$P11TLS_MODULE")" "$auditlib"
      ;;
  esac
  {
    echo "# p11tls scripts/demo.sh (PID $$): removed when it exits"
    echo "module: $auditlib"
    echo "log-calls: yes"
    echo "priority: 100"
    [ -z "${P11TLS_INIT_ARGS:-}" ] || echo "x-init-reserved: $P11TLS_INIT_ARGS"
  } >"$MODFILE" || { verdict "write $MODFILE" 1; return 1; }
  # As in tests/boundary_audit.sh, p11tls loads a byte-identical copy of p11-kit's
  # proxy library (p11-kit does not accept its own proxy as a registered module).
  cp -- "$(readlink -f "$PROXY")" "$RUN/p11-kit-proxy-audit.so"
  cnf=$RUN/audit-openssl.cnf
  sed -e "s#^pkcs11-module = .*#pkcs11-module = $RUN/p11-kit-proxy-audit.so#" \
    -e '/^pkcs11-init-args *=/d' "$P11TLS_OPENSSL_CNF" >"$cnf"
  line "registration" "$MODFILE (temporary)"
  line "openssl.cnf" "$cnf (pkcs11-module = a copy of p11-kit-proxy.so)"
  line "through proxy" "$(OPENSSL_CONF=$cnf openssl list -providers 2>/dev/null |
    sed -n 's/^ *name: \(p11tls: .*\)$/\1/p' | head -n 1)"

  # The server's stderr is p11-kit's call log; it holds the PIN (C_Login).
  SECRET_FILES+=("$RUN/audit-server.err")
  (umask 077 && : >"$RUN/audit-server.err")
  if ! start_s_server audit-server "$cnf" -key "$P11TLS_KEY_URI" -cert "$P11TLS_CERT" \
    -tls1_2 -www -keylogfile "$RUN/audit-server.keylog"; then
    rm -f -- "$RUN/audit-server.err"
    verdict "openssl s_server starts with the token behind p11-kit's proxy" 1
    return 1
  fi
  : >"$RUN/audit-client.keylog"
  local ciphers_used=() good=0
  for ((i = 0; i < AUDIT_HS; i++)); do
    c=${CIPHERS[i % ${#CIPHERS[@]}]}
    out=$RUN/audit-client-$i.out
    if s_client "$out" -cipher "$c" -keylogfile "$RUN/audit-client.keylog" &&
      grep -aq "^New, TLSv1.2, Cipher is $c\$" "$out" && grep -aq '^HTTP/1.0 200' "$out"; then
      good=$((good + 1))
      ciphers_used+=("$c")
    fi
  done
  stop_pid "$SRV_PID"
  rm -f -- "$MODFILE" "$RUN/p11-kit-proxy-audit.so" "$RUN/libsofthsm2-audit.so"
  verdict "$good/$AUDIT_HS handshakes through the proxy fetched the page" \
    "$([ "$good" = "$AUDIT_HS" ] && echo 0 || echo 1)"

  awk '$1 == "CLIENT_RANDOM" { print tolower($3) }' "$RUN/audit-client.keylog" >"$RUN/audit-secrets"
  awk '$1 == "CLIENT_RANDOM" { print tolower($3) }' "$RUN/audit-server.keylog" >"$RUN/audit-handles"
  awk '$1 == "RSA" { print tolower($3) }' "$RUN/audit-client.keylog" >"$RUN/audit-pms"
  nsec=$(wc -l <"$RUN/audit-secrets")
  nhnd=$(wc -l <"$RUN/audit-handles")
  if ! count_in_log "$RUN/audit-server.err" "$RUN/audit-secrets" >"$RUN/audit-secret-counts" ||
    ! count_in_log "$RUN/audit-server.err" "$RUN/audit-handles" >"$RUN/audit-handle-counts" ||
    ! count_in_log "$RUN/audit-server.err" "$RUN/audit-pms" >"$RUN/audit-pms-counts"; then
    rm -f -- "$RUN/audit-server.err"
    verdict "searching p11-kit's call log" 1
    return 1
  fi
  line "call log" "$(wc -l <"$RUN/audit-server.err") lines; C_Login $(grep -ac '^C_Login$' \
    "$RUN/audit-server.err"), C_UnwrapKey $(grep -ac '^C_UnwrapKey$' "$RUN/audit-server.err"), C_Sign $(grep -ac '^C_Sign$' "$RUN/audit-server.err") calls"
  # The log holds the PIN: gone as soon as it has been searched.
  rm -f -- "$RUN/audit-server.err"

  ctl=$(awk '$2 >= 1' "$RUN/audit-handle-counts" | wc -l)
  verdict "control: each server handle is found whole in the log ($ctl of $nhnd)" \
    "$([ "$nhnd" -gt 0 ] && [ "$ctl" = "$nhnd" ] && echo 0 || echo 1)"
  say "    each client master secret (client keylog) in p11-kit's call log:"
  i=0
  while read -r sec <&3 && read -r cross whole pieces partial hext <&4; do
    local how=""
    if [ "$whole" -gt 0 ] && [ "$pieces" = 1 ]; then
      how=" ($whole whole + once in pieces)"
    elif [ "$whole" -gt 0 ]; then
      how=" (whole)"
    elif [ "$pieces" = 1 ]; then
      how=" (in pieces: two HMAC outputs)"
    fi
    [ "$partial" -gt 0 ] && [ "$pieces" = 0 ] && how="$how (16+ bytes of it in $partial buffer(s))"
    printf '      #%d  %-28s %s...  appears %d time(s)%s\n' $((i + 1)) "${ciphers_used[i]:-?}" \
      "${sec:0:16}" "$cross" "$how"
    [ "$cross" -gt "$maxc" ] && maxc=$cross
    [ "$cross" -gt 1 ] && over=$((over + 1))
    [ "$cross" = 0 ] && zero=$((zero + 1))
    [ "$partial" -gt 0 ] && anypart=$((anypart + 1))
    [ "$hext" -gt 0 ] && anyhex=$((anyhex + 1))
    i=$((i + 1))
  done 3<"$RUN/audit-secrets" 4<"$RUN/audit-secret-counts"
  local pms_n pms_seen
  pms_n=$(wc -l <"$RUN/audit-pms")
  pms_seen=$(awk '$1 > 0 || $4 > 0' "$RUN/audit-pms-counts" | wc -l)
  line "pre-master" "RSA key exchange: $pms_seen of $pms_n pre-master secrets (client keylog 'RSA' lines) appear"
  verdict "no secret appears as hex text in the log" "$([ "$anyhex" = 0 ] && echo 0 || echo 1)"
  if [ "$LEVEL" = sealed ]; then
    verdict "sealed: no master secret crosses, whole or in part ($zero of $nsec: 0)" \
      "$([ "$nsec" -gt 0 ] && [ "$zero" = "$nsec" ] && [ "$anypart" = 0 ] && [ "$pms_seen" = 0 ] && echo 0 || echo 1)"
  else
    verdict "transient: each master secret crosses at most once (max seen: $maxc)" \
      "$([ "$nsec" -gt 0 ] && [ "$over" = 0 ] && [ "$pms_seen" = 0 ] && echo 0 || echo 1)"
    say "    ${D}(at transient the secret leaves the token once as HMAC output and goes back in"
    say "     as C_CreateObject's CKA_VALUE, which p11-kit does not log)${N}"
  fi
  if [ "$nsec" -gt 0 ] && [ "$good" = "$AUDIT_HS" ] && [ "$anyhex" = 0 ] &&
    { { [ "$LEVEL" = sealed ] && [ "$zero" = "$nsec" ] && [ "$anypart" = 0 ]; } ||
      { [ "$LEVEL" != sealed ] && [ "$over" = 0 ]; }; }; then
    AUDIT_SUMMARY="max $maxc"
  else
    AUDIT_SUMMARY="max $maxc FAILED"
    return 1
  fi
}

# ------------------------------------------------------------- the tokens
demo_token "$DEMO/softhsm" "SoftHSM2" transient
demo_token "$DEMO/nss" "NSS" sealed

cleanup
left=""
for d in "${NGX_DIRS[@]}"; do [ ! -f "$d/master.pid" ] || left="$left nginx:$d"; done
for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
[ ! -e "$MODFILE" ] || left="$left $MODFILE"

header "Summary"
say "  $(printf '%-9s %-36s %-11s %-14s %-17s %s' token "assurance (strategy)" nginx+curl "keylog differs" "audit: crossings" result)"
for s in "${SUMMARY[@]}"; do say "  $s"; done
say ""
line "tokens" "$DEMO/softhsm, $DEMO/nss (env.sh, openssl.cnf, key.pem, cert.pem)"
line "runs" "$DEMO/run-softhsm, $DEMO/run-nss (nginx.conf, logs, keylogs)"
line "log" "$LOG"
if [ -z "$left" ]; then
  line "stopped" "every nginx and openssl s_server started here; $MODDIR entry removed"
else
  line "still there" "$left"
  fail "left behind:$left"
fi
line "time" "$((SECONDS - T0)) s"
if [ "${#FAILS[@]}" -gt 0 ]; then
  say ""
  say "${R}${#FAILS[@]} check(s) failed:${N}"
  for f in "${FAILS[@]}"; do say "  - $f"; done
  exit 1
fi
say ""
say "${G}All checks passed.${N}"
exit 0
