#!/usr/bin/env bash
# run.sh [SECONDS] - builds p11tls's libFuzzer targets (tests/fuzz, clang, ASan +
# UBSan, in their own build directory) and runs each for a bounded time.
#
#   SECONDS      time per target (default 20); fuzz_config, whose slow inputs open
#                the token once each, gets a quarter of it (at least 5 s)
#   env:
#   P11TLS_FUZZ_BUILD    build directory (default: <repo>/build-fuzz); configured
#                        once (cmake -S tests/fuzz -DCMAKE_C_COMPILER=clang), then
#                        rebuilt incrementally at every run
#   P11TLS_FUZZ_TARGETS  targets to run (default: fuzz_uri fuzz_pem_uri fuzz_kdf fuzz_tls13 fuzz_config fuzz_ecpoint)
#   P11TLS_FUZZ_ARGS     extra libFuzzer arguments (e.g. -jobs=4, -seed=1)
#
# The token: run under tests/with-token.sh DIR (a SoftHSM2 token made by
# scripts/make-token.sh, as ctest does); otherwise a SoftHSM2 token is made once in
# $P11TLS_FUZZ_BUILD/token.
#
# Corpora: tests/fuzz/corpus/<target>/ holds the seeds and every input that once
# crashed or leaked (crash-<description>): each run replays them all first, so a
# finding fails every run until it is fixed. New inputs go to the build directory's
# corpus/<target>/ (kept between runs, never into the source tree). A crash or leak
# leaves its input in $P11TLS_FUZZ_BUILD/artifacts/<target>/: copy it to
# tests/fuzz/corpus/<target>/crash-<short-description> to keep it.
#
# Exit status: 0 if no target crashed or leaked; 1 otherwise (each target still runs).
set -euo pipefail

SECS=${1:-20}
case "$SECS" in '' | *[!0-9]*) echo "run.sh: SECONDS must be a number" >&2; exit 2 ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${P11TLS_FUZZ_BUILD:-$ROOT/build-fuzz}
TARGETS=${P11TLS_FUZZ_TARGETS:-fuzz_uri fuzz_pem_uri fuzz_kdf fuzz_tls13 fuzz_config fuzz_ecpoint}
CC_FUZZ=${P11TLS_FUZZ_CC:-$(command -v clang || command -v clang-14 || true)}
[ -n "$CC_FUZZ" ] || { echo "run.sh: clang not found (scripts/install-deps.sh installs it)" >&2; exit 1; }

mkdir -p "$BUILD"
# ----------------------------------------------------------------- build
# One build at a time (ctest and a manual run may overlap).
exec 9>"$BUILD/.run.lock"
flock 9
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$HERE" -B "$BUILD" -DCMAKE_C_COMPILER="$CC_FUZZ" >"$BUILD/configure.log" 2>&1 || {
    cat "$BUILD/configure.log" >&2
    echo "run.sh: configuring $BUILD failed" >&2
    exit 1
  }
fi
if ! cmake --build "$BUILD" -j"$(nproc)" >"$BUILD/build.log" 2>&1; then
  tail -n 50 "$BUILD/build.log" >&2
  echo "run.sh: building the fuzzers failed (log: $BUILD/build.log)" >&2
  exit 1
fi

# ----------------------------------------------------------------- token
if [ -z "${P11TLS_TOKEN_URI:-}" ]; then
  tokdir=$BUILD/token
  if [ ! -f "$tokdir/env.sh" ]; then
    # p11tls-tool (unsanitized, built above) for the key; no provider files needed.
    mkdir -p "$BUILD/no-provider"
    P11TLS_TOOL=$BUILD/p11tls-tool P11TLS_PROVIDER_DIR=$BUILD/no-provider \
      "$ROOT/scripts/make-token.sh" --kind softhsm --dir "$tokdir" >"$BUILD/token.log" 2>&1 || {
      cat "$BUILD/token.log" >&2
      echo "run.sh: could not make a SoftHSM2 token in $tokdir" >&2
      exit 1
    }
  fi
  # shellcheck disable=SC1091
  . "$tokdir/env.sh"
fi
flock -u 9

# ------------------------------------------------------------------ run
# Leaks: LeakSanitizer checks the whole process at exit (every target), and also
# after each input that allocated more than it freed for fuzz_uri. The token
# targets do not check per input: SoftHSM2 keeps every session object it ever
# created until C_Finalize (reachable, not a leak; ~240 bytes each), so nearly
# every input allocates more than it frees and a whole-heap scan per input would
# cut the speed 20-fold. When the exit check finds a leak, the corpus is replayed
# with per-input checks to find (and keep) the input that leaks.
# A smaller quarantine: p11tls wipes freed heap at `transient` (p11_scrub_heap),
# which floods ASan's quarantine.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:quarantine_size_mb=64}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$HERE/lsan.supp:print_suppressions=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export P11TLS_FUZZ_PROVIDER=$BUILD/provider/p11tls.so
# Scratch files of the targets (fuzz_config's PIN files) stay in the build directory.
export TMPDIR=$BUILD/tmp
rm -rf "$TMPDIR"
mkdir -p "$TMPDIR"
unset P11TLS_DEBUG OPENSSL_CONF

declare -A MAXLEN=([fuzz_uri]=4096 [fuzz_pem_uri]=4096 [fuzz_kdf]=1024 [fuzz_config]=512)
declare -A PER_INPUT_LEAKS=([fuzz_uri]=1)
status=0
summary=()
for t in $TARGETS; do
  secs=$SECS
  if [ "$t" = fuzz_config ]; then
    secs=$((SECS / 4))
    [ "$secs" -ge 5 ] || secs=5
  fi
  seeds=$HERE/corpus/$t
  work=$BUILD/corpus/$t
  art=$BUILD/artifacts/$t
  log=$BUILD/logs/$t.log
  mkdir -p "$seeds" "$work" "$art" "$(dirname "$log")"
  dict=()
  [ ! -f "$HERE/$t.dict" ] || dict=(-dict="$HERE/$t.dict")
  echo "== $t: ${secs}s (log: $log)"
  rc=0
  # libFuzzer writes new inputs into the first corpus directory only.
  (cd "$art" && "$BUILD/$t" -max_total_time="$secs" -timeout=25 -rss_limit_mb=4096 \
    -max_len="${MAXLEN[$t]:-4096}" -detect_leaks="${PER_INPUT_LEAKS[$t]:-0}" \
    -print_final_stats=1 -artifact_prefix="$art/" \
    "${dict[@]}" ${P11TLS_FUZZ_ARGS:-} "$work" "$seeds") >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] && grep -q 'LeakSanitizer: detected memory leaks' "$log" &&
    ! grep -q 'Test unit written to' "$log"; then
    echo "   leak found at exit: replaying the corpus with a check after each input"
    (cd "$art" && timeout 300 "$BUILD/$t" -runs=0 -detect_leaks=1 -timeout=25 -rss_limit_mb=4096 \
      -artifact_prefix="$art/" "$work" "$seeds") >"$log.replay" 2>&1 || true
    sed -n 's/.*Test unit written to /   leaking input: /p' "$log.replay"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1) || true
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1) || true
  cov=$( (grep -oE '(DONE|INITED|pulse|NEW|REDUCE) +cov: [0-9]+ ft: [0-9]+' "$log" || true) |
    tail -n1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+)/cov \1, ft \2/') || true
  if [ "$rc" -ne 0 ]; then
    status=1
    what=$(grep -m1 -E '^(==[0-9]+==ERROR|==FUZZ INVARIANT FAILED==|SUMMARY:|.*runtime error:)' "$log" || true)
    input=$(sed -n 's/.*Test unit written to //p' "$log" | tail -n1) || true
    [ -n "$input" ] || input=$(sed -n 's/^Running: //p' "$log" | tail -n1) || true
    echo "!! $t FAILED (exit $rc): ${what:-see log}"
    echo "   input: ${input:-unknown}"
    # A known finding kept in the corpus (crash-<description>) names itself.
    if [ -n "$input" ] && [ -f "$input" ]; then
      sum=$(sha1sum <"$input" | cut -d' ' -f1)
      for f in "$seeds"/*; do
        if [ -f "$f" ] && [ "$(sha1sum <"$f" | cut -d' ' -f1)" = "$sum" ]; then
          echo "   = known finding, kept in the corpus: ${f#"$ROOT"/}"
        fi
      done
    fi
    (grep -E -A25 '^(==[0-9]+==ERROR|==FUZZ INVARIANT FAILED==)|runtime error:' "$log" || true) |
      head -n 40 | sed 's/^/   | /' || true
    summary+=("$t: FAILED (${what:-exit $rc}); ${execs:-?} execs, ${rate:-?}/s, ${cov:-cov ?}")
  else
    echo "   ok: ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-cov ?}"
    summary+=("$t: ok; ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-cov ?}")
  fi
done
echo "== summary"
printf '   %s\n' "${summary[@]}"
exit $status
