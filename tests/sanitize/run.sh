#!/usr/bin/env bash
# run.sh - p11tls under the sanitizers (ctest labels `asan` and `tsan`). Each mode has a
# clang build of the whole project of its own, next to the main build:
#
#   run.sh build asan|tsan   configure and build it (incrementally), then stop
#   run.sh asan [SUITE...] [--nginx]
#       AddressSanitizer + UndefinedBehaviorSanitizer + LeakSanitizer (P11TLS_SANITIZE=ON).
#       Runs each CUnit SUITE of that build (test_uri, test_tls12, ...) and, when a
#       token is loaded (tests/with-token.sh DIR): p11tls-tool; Debian's unmodified
#       `openssl s_server` and `s_client` with the ASan runtime preloaded and the
#       ASan-built p11tls.so (RSA key exchange and ECDHE, SHA-256 and SHA-384 PRF, EMS on
#       and off, resumption by ticket and by session ID, a client that uses p11tls too,
#       an exporter compared between the ends, a start with a wrong PIN and one with a
#       missing token); thread_handshakes (2000 handshakes, 4 threads); with --nginx,
#       nginx (2 workers) with the ASan provider serving curl, stopped gracefully so that
#       its processes check for leaks at exit.
#   run.sh tsan
#       ThreadSanitizer: thread_handshakes, 8 threads doing 10,000 handshakes
#       (P11TLS_TSAN_HANDSHAKES, P11TLS_TSAN_THREADS) against one server SSL_CTX whose
#       key is in the token (tests/with-token.sh DIR).
#
# Every run first checks that its sanitizer reports the deliberate bugs of
# `thread_handshakes --canary`. Any sanitizer report (every process writes its reports to
# the run's reports/ directory; they are printed after each step), any failed check and
# any failed suite fails the run. Suppressions: tests/sanitize/{lsan,asan,tsan}.supp,
# for defects of nginx and p11-kit themselves, never a p11tls frame; each entry says why.
#
# Environment (ctest sets the first four):
#   P11TLS_BUILD_DIR     the main build (default <repo>/build); the sanitizer builds are
#                        its subdirectories asan/ and tsan/ unless P11TLS_SAN_BUILD_ROOT
#                        says otherwise
#   P11TLS_PROVIDER_DIR, P11TLS_TOOL, P11TLS_SOURCE_DIR
#                        passed on unchanged: test_token re-runs make-token.sh on the
#                        shared token, which must keep naming the main build's provider
#   P11TLS_SAN_CC        the compiler (default clang)
#   P11TLS_SAN_OPTIONS   more ASAN_OPTIONS, e.g. fast_unwind_on_malloc=0 for whole stacks
#                        through libraries built without frame pointers (much slower)
#   KEEP_WORK=1          keep the work directory (logs, reports) of the run
#
# Why the builds are made the way they are:
#   asan: the runtime is the shared one (-shared-libsan), because Debian's openssl and
#     nginx get it with LD_PRELOAD and p11tls.so must bind to that same runtime (and
#     provider/CMakeLists.txt links the module with --no-undefined).
#   tsan: clang 14's shared TSan runtime crashes at start on this kernel (28 bits of mmap
#     randomness), so the executable has the static runtime and exports it; p11tls.so
#     takes its __tsan_* symbols from the executable, hence -Wl,-z,undefs at the end of
#     every link line (CMAKE_C_STANDARD_LIBRARIES), overriding --no-undefined.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MAIN_BUILD=${P11TLS_BUILD_DIR:-$ROOT/build}
SAN_ROOT=${P11TLS_SAN_BUILD_ROOT:-$MAIN_BUILD}
CC_SAN=${P11TLS_SAN_CC:-$(command -v clang || command -v clang-14 || true)}
T_START=$(date +%s.%N)

die() {
  echo "run.sh: $*" >&2
  exit 1
}
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[ $# -ge 1 ] || usage
MODE=$1
shift
case "$MODE" in
  build)
    [ $# -eq 1 ] || usage
    SAN=$1
    shift
    ;;
  asan | tsan) SAN=$MODE ;;
  *) usage ;;
esac
case "$SAN" in asan | tsan) ;; *) usage ;; esac
BUILD=$SAN_ROOT/$SAN

# ------------------------------------------------------------------ build
[ -n "$CC_SAN" ] || die "clang not found (scripts/install-deps.sh installs it)"
RT_DIR=$("$CC_SAN" -print-runtime-dir)
ASAN_RT=$RT_DIR/libclang_rt.asan-x86_64.so
[ -f "$ASAN_RT" ] || die "$ASAN_RT not found (Debian package libclang-rt-14-dev)"
[ -f "$RT_DIR/libclang_rt.tsan-x86_64.a" ] || die "the TSan runtime is not in $RT_DIR (libclang-rt-14-dev)"
SYMBOLIZER=$(command -v llvm-symbolizer || command -v llvm-symbolizer-14 || true)
[ -n "$SYMBOLIZER" ] || die "llvm-symbolizer not found (Debian package llvm)"

build() {
  local t0 cfg=() targets=()
  t0=$(date +%s.%N)
  mkdir -p "$BUILD"
  exec 8>"$BUILD/.run.lock"
  flock 8
  case "$SAN" in
    asan)
      local l="-shared-libsan -Wl,-rpath,$RT_DIR"
      cfg=(-DP11TLS_SANITIZE=ON "-DCMAKE_EXE_LINKER_FLAGS=$l" "-DCMAKE_SHARED_LINKER_FLAGS=$l"
        "-DCMAKE_MODULE_LINKER_FLAGS=$l")
      targets=(all thread_handshakes)
      ;;
    tsan)
      local f="-fsanitize=thread -fno-omit-frame-pointer"
      cfg=("-DCMAKE_C_FLAGS=$f" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread"
        "-DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread" "-DCMAKE_MODULE_LINKER_FLAGS=-fsanitize=thread"
        "-DCMAKE_C_STANDARD_LIBRARIES=-Wl,-z,undefs")
      targets=(p11tls thread_handshakes)
      ;;
  esac
  # Configured at every run (cheap): a changed flag above reaches an existing build.
  if ! cmake -S "$ROOT" -B "$BUILD" -DCMAKE_C_COMPILER="$CC_SAN" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DP11TLS_WERROR=OFF "${cfg[@]}" >"$BUILD/configure.log" 2>&1; then
    tail -n 40 "$BUILD/configure.log" >&2
    die "configuring $BUILD failed (log: $BUILD/configure.log)"
  fi
  if ! cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}" >"$BUILD/build.log" 2>&1; then
    grep -E 'error|Error' "$BUILD/build.log" | head -n 40 >&2 || true
    die "building $BUILD failed (log: $BUILD/build.log)"
  fi
  flock -u 8
  exec 8>&-
  # The module really is instrumented (a plain one would make every check pass vacuously).
  if ! nm -D "$BUILD/provider/p11tls.so" 2>/dev/null | grep "__${SAN}_init" >/dev/null; then
    die "$BUILD/provider/p11tls.so has no __${SAN}_init: not a $SAN build"
  fi
  echo "== $SAN build: $BUILD ($(elapsed "$t0") s)"
}

build
[ "$MODE" != build ] || exit 0

# ------------------------------------------------------------------ common set-up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/p11tls-$SAN.XXXXXX")
LOGS=$WORK/reports
mkdir -p "$LOGS"
# nginx's workers run as www-data and write their reports here too.
chmod 755 "$WORK"
chmod 1777 "$LOGS"
PIDS=()
NGINX_DIRS=()
# shellcheck source=tests/lib/tap.sh
. "$HERE/../lib/tap.sh"
DONE=0
cleanup() {
  local rc=$? p d
  set +e
  for d in "${NGINX_DIRS[@]}"; do ngx_stop "$d" >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  if [ "$DONE" = 0 ]; then
    echo "not ok - run.sh stopped early (exit status $rc)"
    rc=1
  fi
  if [ -n "${KEEP_WORK:-}" ]; then
    echo "# work directory kept: $WORK"
  else
    rm -rf -- "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show() {
  [ -f "$1" ] || return 0
  echo "# --- last lines of $(basename "$1"):"
  tail -n 20 -- "$1" | awk '{ print "#   " $0 }'
}

# Sanitizer options for every process of the run (inherited by children). Reports go to
# $LOGS/report.<pid>, whatever process they come from, and are judged after each step.
export ASAN_SYMBOLIZER_PATH=$SYMBOLIZER
export TSAN_SYMBOLIZER_PATH=$SYMBOLIZER
# A smaller quarantine: p11tls wipes freed heap after a secret went through the module
# (p11_scrub_heap, ~600 allocations each time), which would fill the default one.
# The suppression files say, entry by entry, why each is not p11tls's.
san_options() {
  local logs=$1
  export ASAN_OPTIONS=detect_leaks=1:log_path=$logs/report:suppressions=$HERE/asan.supp:quarantine_size_mb=64:malloc_context_size=30:check_initialization_order=1${P11TLS_SAN_OPTIONS:+:$P11TLS_SAN_OPTIONS}
  export LSAN_OPTIONS=suppressions=$HERE/lsan.supp:print_suppressions=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$logs/report
  export TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1:log_path=$logs/report:suppressions=$HERE/tsan.supp
}
san_options "$LOGS"
unset P11TLS_DEBUG

# Reports so far: a file with an error in it (a file listing only the suppressions
# that matched is not one). Prints them; returns 1 if there were any.
REPORTED=()
judge_reports() {
  local f r bad=0 seen
  for f in "$LOGS"/*; do
    [ -f "$f" ] || continue
    seen=0
    for r in "${REPORTED[@]}"; do [ "$r" != "$f" ] || seen=1; done
    [ "$seen" = 0 ] || continue
    REPORTED+=("$f")
    if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|ThreadSanitizer)|WARNING: ThreadSanitizer|runtime error:|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer)' "$f"; then
      bad=1
      echo "# ======== sanitizer report $(basename "$f") (during: ${CURRENT_STEP:-?})"
      sed 's/^/#   /' "$f"
    fi
  done
  return $bad
}

# Suppressed leaks, summed over the run (from print_suppressions=1).
suppressed_summary() {
  cat "$LOGS"/* 2>/dev/null | awk '
    /^Suppressions used:/ { on = 1; next }
    on && /^ *count +bytes +template/ { next }
    on && /^ *[0-9]+ +[0-9]+ +/ { c[$3] += $1; b[$3] += $2; next }
    { on = 0 }
    END { for (k in c) printf "#   %-40s %6d allocations %9d bytes\n", k, c[k], b[k] }' | sort
}

# A copy of the token's openssl.cnf whose provider is this build's p11tls.so.
write_cnf() {
  local out=$1 mod=$BUILD/provider/p11tls.so
  awk -v mod="$mod" '
    /^[[:space:]]*module[[:space:]]*=/ && sect { next }
    { print }
    /^\[p11tls_sect\]/ { print "module = " mod; sect = 1; next }
    /^\[/ { sect = 0 }' "$P11TLS_OPENSSL_CNF" >"$out"
  grep -qxF "module = $mod" "$out" || die "could not point $out at $mod"
}

step() {
  CURRENT_STEP=$1
  STEP_T0=$(date +%s.%N)
  echo "== $1"
}
step_end() {
  echo "   ($(elapsed "$STEP_T0") s)"
}

# ------------------------------------------------------------------ CUnit suites
run_suite() {
  local s=$1 exe=$BUILD/tests/$1 rc=0
  step "$SAN: $s${P11TLS_KIND:+ on $P11TLS_KIND}"
  [ -x "$exe" ] || {
    not_ok "$s: $exe was built"
    return 0
  }
  "$exe" >"$WORK/$s.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    ok "$s passed ($(grep -E '^ +tests ' "$WORK/$s.log" | awk '{print $3 "/" $2}') tests)"
  else
    not_ok "$s (exit status $rc)"
    { grep -E 'FAILED|Failed|failed|^ +[0-9]+\. ' "$WORK/$s.log" || true; } | head -n 20 | sed 's/^/#   /'
    show "$WORK/$s.log"
  fi
  step_end
}

# ------------------------------------------------------------------ p11tls-tool
# The ASan-built tool on the token: info, keygen of the key that is there already (left
# alone: the shared token is not changed), pem-uri.
run_tool() {
  local tool=$BUILD/p11tls-tool rc=0
  local tok=(--module "$P11TLS_MODULE" --init-args "${P11TLS_INIT_ARGS:-}" --token-uri "$P11TLS_TOKEN_URI")
  step "$SAN: p11tls-tool on $P11TLS_KIND"
  "$tool" info "${tok[@]}" --pin-file "$P11TLS_PIN_FILE" >"$WORK/tool-info.out" 2>&1 || rc=$?
  check "p11tls-tool info: exit status 0 (got $rc), a level" grep -qE '^level: (sealed|transient)$' "$WORK/tool-info.out"
  rc=0
  "$tool" keygen "${tok[@]}" --pin-file "$P11TLS_PIN_FILE" --label p11tls-key --id 01 --if-missing \
    >"$WORK/tool-keygen.out" 2>&1 || rc=$?
  check "p11tls-tool keygen --if-missing on the existing key: exit status 0 (got $rc)" test "$rc" = 0
  rc=0
  "$tool" pem-uri --uri "$P11TLS_KEY_URI" --out "$WORK/key.pem" >"$WORK/tool-pem.out" 2>&1 || rc=$?
  check "p11tls-tool pem-uri: the token's key.pem again (exit status $rc)" cmp -s "$WORK/key.pem" "$P11TLS_KEY_PEM"
  step_end
}

# ------------------------------------------------------------------ openssl s_server / s_client
PORT_BASE=$((20000 + $(od -An -tu2 -N2 /dev/urandom | tr -d ' ') % 30000))
PORT_N=0
next_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    PORT_N=$((PORT_N + 1))
    p=$((PORT_BASE + PORT_N))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# asan_openssl CNF ARGS...: Debian's openssl with the ASan runtime, p11tls from CNF.
# (The runtime is preloaded into openssl only, not into timeout: an uninstrumented tool
# with LeakSanitizer at its exit would report its own leaks.)
asan_openssl() {
  local cnf=$1
  shift
  timeout -s KILL 60 env LD_PRELOAD="$ASAN_RT" OPENSSL_CONF="$cnf" openssl "$@"
}

# start_server NAME CNF ARGS...: s_server on a free port; sets SRV_PID, SRV_PORT, SRV_OUT.
start_server() {
  local name=$1 cnf=$2 i
  shift 2
  SRV_OUT=$WORK/$name.out
  SRV_PORT=$(next_port) || die "no free port"
  timeout -s TERM 120 env LD_PRELOAD="$ASAN_RT" OPENSSL_CONF="$cnf" openssl s_server \
    -accept "127.0.0.1:$SRV_PORT" -key "$P11TLS_KEY_URI" -cert "$P11TLS_CERT" -tls1_2 "$@" \
    >"$SRV_OUT" 2>"$WORK/$name.err" <"$NEVER" &
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  for ((i = 0; i < 300; i++)); do
    grep -q '^ACCEPT' "$SRV_OUT" 2>/dev/null && break
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.05
  done
  grep -q '^ACCEPT' "$SRV_OUT" 2>/dev/null || {
    show "$WORK/$name.err"
    return 1
  }
  # s_server (timeout's child) holds this build's p11tls.so, not the main build's.
  grep -qF "$BUILD/provider/p11tls.so" "/proc/$(pgrep -P "$SRV_PID" | head -n1)/maps" 2>/dev/null
}

# client OUT [--p11tls] ARGS...: s_client sending a GET; plain OpenSSL unless --p11tls
# (then the client's own master secrets are in the token, through the ASan provider).
client() {
  local out=$1
  shift
  if [ "${1:-}" = --p11tls ]; then
    shift
    printf 'GET / HTTP/1.0\r\n\r\n' | timeout -s KILL 60 env LD_PRELOAD="$ASAN_RT" \
      OPENSSL_CONF="$CNF" openssl s_client -connect "127.0.0.1:$SRV_PORT" -tls1_2 "$@" >"$out" 2>&1
  else
    printf 'GET / HTTP/1.0\r\n\r\n' | env -u OPENSSL_CONF timeout -s KILL 60 \
      openssl s_client -connect "127.0.0.1:$SRV_PORT" -tls1_2 "$@" >"$out" 2>&1
  fi
}

# wait_exit PID: waits (bounded) for a server that exits by itself (-naccept); its status.
wait_exit() {
  local pid=$1 i rc=0
  for ((i = 0; i < 600; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  wait "$pid" || rc=$?
  return "$rc"
}

keymat() {
  sed -n 's/^[[:space:]]*Keying material: *\([0-9A-Fa-f]*\)[[:space:]]*$/\1/p' "$1" | tail -n 1
}

tls_ems() {
  local ems=$1 cnf=$CNF word=yes cfg=() d rc
  if [ "$ems" = off ]; then
    cnf=$WORK/noems.cnf
    word=no
    cfg=(-ssl_config p11tls_noems)
    awk '{ print } /^\[openssl_init\]$/ { print "ssl_conf = p11tls_ssl_module" }' "$CNF" >"$cnf"
    printf '%s\n' '[p11tls_ssl_module]' 'p11tls_noems = p11tls_noems_sect' \
      '[p11tls_noems_sect]' 'Options = -ExtendedMasterSecret' >>"$cnf"
  fi
  d=$WORK/ems-$ems
  mkdir -p "$d"
  step "$SAN: openssl s_server with p11tls on $P11TLS_KIND, EMS $ems"
  # Five connections, then s_server exits by itself (LeakSanitizer runs at exit).
  if ! start_server "www-$ems" "$cnf" -www -naccept 5 "${cfg[@]}"; then
    not_ok "EMS $ems: s_server starts with the ASan p11tls.so loaded"
    return 0
  fi
  ok "EMS $ems: s_server starts with the ASan p11tls.so loaded"
  local srv=$SRV_PID
  client "$d/1" -ign_eof -cipher AES128-GCM-SHA256 -sess_out "$d/s1.pem" -keymatexport EXPERIMENTAL-p11tls -keymatexportlen 20 || true
  check "EMS $ems: RSA key exchange AES128-GCM-SHA256, plain client" \
    grep -q '^New, TLSv1.2, Cipher is AES128-GCM-SHA256$' "$d/1"
  check "EMS $ems: extended master secret: $word" grep -qE "^ *Extended master secret: $word\$" "$d/1"
  check "EMS $ems: HTTP 200" grep -q '^HTTP/1.0 200 ok' "$d/1"
  check "EMS $ems: the client printed an exporter value" test -n "$(keymat "$d/1")"
  client "$d/2" -ign_eof -sess_in "$d/s1.pem" || true
  check "EMS $ems: resumption by ticket" grep -q '^Reused, TLSv1.2, Cipher is AES128-GCM-SHA256$' "$d/2"
  client "$d/3" --p11tls -ign_eof -no_ticket -cipher ECDHE-RSA-AES128-GCM-SHA256 -sess_out "$d/s3.pem" || true
  check "EMS $ems: ECDHE-RSA-AES128-GCM-SHA256, client with p11tls (ASan) too" \
    grep -q '^New, TLSv1.2, Cipher is ECDHE-RSA-AES128-GCM-SHA256$' "$d/3"
  client "$d/4" --p11tls -ign_eof -no_ticket -sess_in "$d/s3.pem" || true
  check "EMS $ems: resumption by session ID, client with p11tls" \
    grep -q '^Reused, TLSv1.2, Cipher is ECDHE-RSA-AES128-GCM-SHA256$' "$d/4"
  client "$d/5" -ign_eof -cipher AES256-GCM-SHA384 || true
  check "EMS $ems: AES256-GCM-SHA384 (SHA-384 PRF)" \
    grep -q '^New, TLSv1.2, Cipher is AES256-GCM-SHA384$' "$d/5"
  rc=0
  wait_exit "$srv" || rc=$?
  check "EMS $ems: s_server exits with status 0 after 5 connections (got $rc)" test "$rc" = 0
  [ "$rc" = 0 ] || show "$WORK/www-$ems.err"

  # The exporter on both ends (s_server prints it only without -www).
  if ! start_server "km-$ems" "$cnf" -naccept 1 -keymatexport EXPERIMENTAL-p11tls -keymatexportlen 32 "${cfg[@]}"; then
    not_ok "EMS $ems: exporter s_server starts"
    return 0
  fi
  srv=$SRV_PID
  client "$d/km" -cipher AES128-GCM-SHA256 -keymatexport EXPERIMENTAL-p11tls -keymatexportlen 32 || true
  rc=0
  wait_exit "$srv" || rc=$?
  check "EMS $ems: exporter s_server exits with status 0 (got $rc)" test "$rc" = 0
  local kc ks
  kc=$(keymat "$d/km")
  ks=$(keymat "$WORK/km-$ems.out")
  check "EMS $ems: the server's exporter (token PRF) equals the client's ('$ks' '$kc')" \
    test -n "$kc" -a "$kc" = "$ks"
  step_end
}

# Start-up failures: a wrong PIN, a token that is not there. The server must not start,
# and the provider must say why, without crashing or leaking.
tls_failures() {
  local rc
  step "$SAN: start-up failures on $P11TLS_KIND"
  printf 'wrong-%s' "$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" >"$WORK/wrong.pin"
  awk -v pin="file:$WORK/wrong.pin" '/^pin-source[[:space:]]*=/ { print "pin-source = " pin; next } { print }' \
    "$CNF" >"$WORK/wrongpin.cnf"
  awk '/^token[[:space:]]*=/ { print "token = pkcs11:token=p11tls-no-such-token"; next } { print }' \
    "$CNF" >"$WORK/notoken.cnf"
  # One wrong-PIN login attempt only (a token may count them).
  rc=0
  asan_openssl "$WORK/wrongpin.cnf" s_server -accept "127.0.0.1:$(next_port)" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" -tls1_2 -naccept 1 </dev/null >"$WORK/wrongpin.out" 2>&1 || rc=$?
  check "wrong PIN: s_server does not start (exit status $rc)" test "$rc" = 1
  check "wrong PIN: the error says the PIN was refused" grep -q 'PIN was refused' "$WORK/wrongpin.out"
  [ "$rc" = 1 ] || show "$WORK/wrongpin.out"
  rc=0
  asan_openssl "$WORK/notoken.cnf" list -providers -verbose >"$WORK/notoken-list.out" 2>&1 || rc=$?
  check "missing token: openssl list says p11tls is NOT USABLE" \
    grep -q "name: p11tls: NOT USABLE: .*no token matches" "$WORK/notoken-list.out"
  rc=0
  asan_openssl "$WORK/notoken.cnf" s_server -accept "127.0.0.1:$(next_port)" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" -tls1_2 -naccept 1 </dev/null >"$WORK/notoken.out" 2>&1 || rc=$?
  check "missing token: s_server does not start (exit status $rc)" test "$rc" = 1
  check "missing token: the error names the token" grep -q 'no token matches' "$WORK/notoken.out"
  step_end
}

# ------------------------------------------------------------------ nginx
tls_nginx() {
  local ngx=$WORK/nginx port good=0 c i w m out rc
  step "$SAN: nginx (2 workers) with the ASan p11tls.so on $P11TLS_KIND"
  command -v nginx >/dev/null || {
    not_ok "nginx is installed"
    return 0
  }
  # ngx_grant_token_access, ngx_write_conf, ngx_workers, ngx_stop
  # shellcheck source=scripts/lib/nginx.sh
  . "$ROOT/scripts/lib/nginx.sh"
  ngx_grant_token_access www-data
  mkdir -p "$ngx"
  chmod 755 "$ngx"
  port=$(next_port)
  ngx_write_conf "$ngx" "$port"
  # Started here rather than with ngx_start: the runtime goes into nginx only.
  NGINX_DIRS+=("$ngx")
  : >"$ngx/error.log"
  env LD_PRELOAD="$ASAN_RT" OPENSSL_CONF="$CNF" nginx -c "$ngx/nginx.conf" -g 'daemon off;' \
    >"$ngx/stdout.log" 2>&1 &
  m=$!
  echo "$m" >"$ngx/master.pid"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$m" 2>/dev/null || break
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.05
  done
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    not_ok "nginx starts with the ASan p11tls.so"
    show "$ngx/stdout.log"
    show "$ngx/error.log"
    return 0
  fi
  w=$(ngx_workers "$ngx" | head -n1) || true
  check "nginx starts; its worker $w holds the ASan p11tls.so" \
    grep -qF "$BUILD/provider/p11tls.so" "/proc/$w/maps"
  for c in AES128-GCM-SHA256 ECDHE-RSA-AES128-GCM-SHA256 AES256-GCM-SHA384; do
    for ((i = 0; i < 8; i++)); do
      out=$(curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" --tlsv1.2 \
        --tls-max 1.2 --ciphers "$c" "https://localhost:$port/" 2>&1 || true)
      [ "$out" != "hello from p11tls" ] || good=$((good + 1))
    done
  done
  check "nginx: 24/24 curl requests answered, 3 ciphers (got $good)" test "$good" = 24
  # Ten connections in one curl run: a full handshake, then resumptions (either worker).
  local urls=()
  for ((i = 0; i < 10; i++)); do urls+=("https://localhost:$port/"); done
  out=$(curl -sS --cacert "$P11TLS_CERT" --resolve "localhost:$port:127.0.0.1" --tlsv1.2 \
    --tls-max 1.2 -H 'Connection: close' "${urls[@]}" 2>&1 || true)
  check "nginx: 10 requests in one curl run answered" \
    test "$(grep -c 'hello from p11tls' <<<"$out")" = 10
  for ((i = 0; i < 40; i++)); do
    [ "$(wc -l <"$ngx/access.log")" -lt 34 ] || break
    sleep 0.05
  done
  check "nginx: resumed sessions in its access log" grep -q ' r 200 ' "$ngx/access.log"
  # Graceful stop (SIGQUIT): workers and master leave through exit(), where LeakSanitizer
  # checks them.
  kill -QUIT "$m" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$m" 2>/dev/null || break
    sleep 0.05
  done
  rc=0
  wait "$m" 2>/dev/null || rc=$?
  check "nginx: stops gracefully with status 0 (got $rc)" test "$rc" = 0
  rm -f "$ngx/master.pid"
  if grep -E '\[(alert|emerg|crit)\]' "$ngx/error.log" >/dev/null; then
    not_ok "nginx: no alert in its error log"
    { grep -E '\[(alert|emerg|crit)\]' "$ngx/error.log" | head -n 10 | sed 's/^/#   /'; } || true
  else
    ok "nginx: no alert in its error log"
  fi
  step_end
}

# ------------------------------------------------------------------ thread_handshakes
run_threads() {
  local threads=$1 n=$2 rc=0
  step "$SAN: thread_handshakes, $threads threads, $n handshakes${P11TLS_KIND:+ on $P11TLS_KIND}"
  env -u OPENSSL_CONF "$BUILD/tests/thread_handshakes" --threads "$threads" --handshakes "$n" \
    >"$WORK/threads.log" 2>&1 || rc=$?
  sed 's/^/   /' "$WORK/threads.log" | head -n 30 || true
  check "thread_handshakes: $n handshakes in $threads threads, all checked (exit status $rc)" \
    test "$rc" = 0
  step_end
}

# ------------------------------------------------------------------ canary
# The sanitizer must report the deliberate bugs of `thread_handshakes --canary` (a leak
# for LeakSanitizer, a data race for ThreadSanitizer): otherwise this run proves nothing.
canary() {
  local d=$WORK/canary rc=0 want
  step "$SAN: the sanitizer reports a deliberate bug (thread_handshakes --canary)"
  mkdir -p "$d"
  case "$SAN" in
    asan) want='ERROR: LeakSanitizer: detected memory leaks' ;;
    tsan) want='WARNING: ThreadSanitizer: data race' ;;
  esac
  san_options "$d"
  env -u OPENSSL_CONF "$BUILD/tests/thread_handshakes" --canary >"$d/out" 2>&1 || rc=$?
  san_options "$LOGS"
  if [ "$rc" != 0 ] && grep -qs "$want" "$d"/*; then
    ok "canary: '$want' reported, exit status $rc"
  else
    not_ok "canary: '$want' reported, and a non-zero exit status (got $rc)"
    { cat "$d"/* 2>/dev/null | head -n 20 | sed 's/^/#   /'; } || true
  fi
  step_end
}

# ------------------------------------------------------------------ main
NGINX=0
SUITES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nginx) NGINX=1 ;;
    -*) die "unknown option $1" ;;
    *) [ "$SAN" = asan ] || die "suites run under asan only"; SUITES+=("$1") ;;
  esac
  shift
done

echo "# $SAN: build $BUILD, token ${P11TLS_KIND:-(none)}, reports in $LOGS"
if [ -n "${P11TLS_KIND:-}" ]; then
  if [ -z "${P11TLS_OPENSSL_CNF:-}" ] || [ ! -f "$P11TLS_OPENSSL_CNF" ]; then
    die "the token has no openssl.cnf (make-token.sh did not find the provider)"
  fi
  CNF=$WORK/openssl.cnf
  write_cnf "$CNF"
  # The suites and thread_handshakes load p11tls through P11TLS_OPENSSL_CNF.
  export P11TLS_OPENSSL_CNF=$CNF
  mkfifo "$WORK/never.fifo"
  exec {NEVER_FD}<>"$WORK/never.fifo"
  NEVER=/dev/fd/$NEVER_FD
fi

canary
case "$SAN" in
  asan)
    for s in "${SUITES[@]}"; do
      run_suite "$s"
      judge_reports || not_ok "no sanitizer report from $s"
    done
    if [ -n "${P11TLS_KIND:-}" ]; then
      run_tool
      judge_reports || not_ok "no sanitizer report from p11tls-tool"
      tls_ems on
      tls_ems off
      tls_failures
      judge_reports || not_ok "no sanitizer report from openssl s_server/s_client"
      run_threads 4 "${P11TLS_ASAN_HANDSHAKES:-2000}"
      judge_reports || not_ok "no sanitizer report from thread_handshakes"
      if [ "$NGINX" = 1 ]; then
        tls_nginx
        judge_reports || not_ok "no sanitizer report from nginx"
      fi
    elif [ "${#SUITES[@]}" = 0 ]; then
      die "nothing to run: no suite named and no token loaded"
    fi
    ;;
  tsan)
    [ -n "${P11TLS_KIND:-}" ] || die "tsan needs a token: run it under tests/with-token.sh DIR"
    run_threads "${P11TLS_TSAN_THREADS:-8}" "${P11TLS_TSAN_HANDSHAKES:-10000}"
    judge_reports || not_ok "no ThreadSanitizer report"
    ;;
esac

if [ -n "$(suppressed_summary)" ]; then
  echo "# leaks suppressed by lsan.supp (not p11tls's; see the comments there):"
  suppressed_summary
fi
DONE=1
echo "# $SAN${P11TLS_KIND:+ on $P11TLS_KIND}: $TAP_PASS passed, $TAP_FAIL failed, $(elapsed "$T_START") s in all"
[ "$TAP_FAIL" = 0 ]
