#!/usr/bin/env bash
# bench.sh - p11tls benchmarks in one run: builds (Release, in build-bench/), makes the
# tokens in a temporary directory, runs tests/bench/p11tls-bench on each and prints
# one table (with PASS/MISS against the targets) and how long it all took.
#
# Usage: scripts/bench.sh [--quick] [--no-mem] [--keep]      (about 2.5 minutes on 2 CPUs)
#   --quick   fewer handshakes (a smoke test of the benchmark itself, ~15 s)
#   --no-mem  skip the 20,000-handshake memory/object runs
#   --keep    keep the temporary directory (tokens, raw results, logs)
#
# Tokens (scripts/make-token.sh, same RSA-2048 token key for (b) and (c)):
#   softhsm         SoftHSM2 in process
#   softhsm-remote  SoftHSM2 behind `p11-kit server` (stopped at the end, by its PID)
#   nss             NSS softoken, database made by make-token.sh (PIN-protected: NSS
#                   encrypts each private attribute with PBKDF2, 10,000 iterations)
#   nss-iter1       the same, with NSS_MAX_MP_PBE_ITERATION_COUNT=1 when the token is
#                   made: separates NSS's key-loading cost from p11tls's own
# Also: PKCS#11 calls per handshake (p11tls's call log, P11TLS_DEBUG=file), where the
# time goes (p11timer.so between p11tls and the module), memory and token objects
# over 20,000 handshakes, 1 vs 2 threads. The raw results (key value lines) are kept
# in build-bench/bench-results/.
# Environment: BENCH_RUNS (5), BENCH_FULL (200), BENCH_FULL_SLOW (40, nss),
# BENCH_RESUMED (1000), BENCH_MEM (20000), BENCH_THREADS (200; slow: 30), BENCH_KINDS
# (the tokens, default "softhsm softhsm-remote nss nss-iter1").
set -euo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$REPO/build-bench
QUICK=0 MEM=1 KEEP=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --no-mem) MEM=0 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done

RUNS=${BENCH_RUNS:-5}
FULL=${BENCH_FULL:-200}
FULL_SLOW=${BENCH_FULL_SLOW:-40}
RESUMED=${BENCH_RESUMED:-1000}
MEMN=${BENCH_MEM:-20000}
THREADS=${BENCH_THREADS:-200}
THREADS_SLOW=30
COUNT=20
if [ "$QUICK" = 1 ]; then
  RUNS=2 FULL=30 FULL_SLOW=5 RESUMED=100 MEMN=1000 THREADS=20 THREADS_SLOW=3 COUNT=5
fi

log() { echo "bench.sh: $*" >&2; }

WORK=$(mktemp -d /tmp/p11tls-bench.XXXXXX)
KINDS=(softhsm softhsm-remote nss nss-iter1)
if [ -n "${BENCH_KINDS:-}" ]; then
  read -r -a KINDS <<<"$BENCH_KINDS"
  for k in "${KINDS[@]}"; do
    case "$k" in softhsm | softhsm-remote | nss | nss-iter1) ;; *) echo "bench.sh: BENCH_KINDS: unknown token '$k'" >&2; exit 2 ;; esac
  done
fi
cleanup() {
  local pid
  for k in "${KINDS[@]}"; do
    if [ -f "$WORK/$k/p11-kit-server.pid" ]; then
      pid=$(tr -dc '0-9' <"$WORK/$k/p11-kit-server.pid")
      "$REPO/scripts/make-token.sh" --stop --dir "$WORK/$k" >/dev/null 2>&1 || true
      # make-token.sh stops it by its recorded PID; make sure of it.
      if [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q p11-kit "/proc/$pid/comm" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
      fi
    fi
  done
  if [ "$KEEP" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf -- "$WORK"
  fi
}
trap cleanup EXIT

# ------------------------------------------------------------------- build
log "building (Release) in $BUILD"
cmake -S "$REPO" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DP11TLS_WERROR=OFF >"$WORK/cmake.log" 2>&1 ||
  { cat "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target p11tls p11tls-tool p11tls-bench p11timer \
  >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; exit 1; }
BENCH=$BUILD/tests/bench/p11tls-bench
export P11TLS_TOOL=$BUILD/p11tls-tool P11TLS_PROVIDER_DIR=$BUILD/provider

# ------------------------------------------------------------------ tokens
MT_OPTS=()
if "$REPO/scripts/make-token.sh" --help 2>/dev/null | grep -q -- '--no-client'; then
  MT_OPTS+=(--no-client)
fi
for k in "${KINDS[@]}"; do
  kind=$k
  envs=()
  if [ "$k" = nss-iter1 ]; then
    kind=nss
    envs=(NSS_MAX_MP_PBE_ITERATION_COUNT=1 NSS_MIN_MP_PBE_ITERATION_COUNT=1)
  fi
  env "${envs[@]}" "$REPO/scripts/make-token.sh" --kind "$kind" --dir "$WORK/$k" "${MT_OPTS[@]}" \
    >"$WORK/$k.token.log" 2>&1 || { cat "$WORK/$k.token.log" >&2; exit 1; }
  log "token $k ready"
done

# Runs the bench for token $1 with the rest as arguments, in that token's environment.
bench() {
  local k=$1
  shift
  (
    # shellcheck disable=SC1090,SC1091
    . "$WORK/$k/env.sh"
    export P11TLS_BENCH_NAME=$k
    "$BENCH" "$@"
  )
}

# ---------------------------------------------------------------- timings
for k in "${KINDS[@]}"; do
  full=$FULL thr=$THREADS
  if [ "$k" = nss ]; then
    full=$FULL_SLOW thr=$THREADS_SLOW
  fi
  t0=$(date +%s)
  bench "$k" run --runs "$RUNS" --full "$full" --resumed "$RESUMED" --raw "$full" \
    --threads "$thr" >"$WORK/$k.run" 2>"$WORK/$k.run.err" ||
    { cat "$WORK/$k.run.err" >&2; exit 1; }
  log "$k: timings done ($(($(date +%s) - t0)) s)"
done
# PKCS#11 calls per handshake, from p11tls's own call log (P11TLS_DEBUG=file): separate
# runs, as the log costs time.
for k in "${KINDS[@]}"; do
  (
    export P11TLS_DEBUG=$WORK/$k.calls.log
    bench "$k" count --full "$COUNT" >"$WORK/$k.count" 2>"$WORK/$k.count.err"
  ) || { cat "$WORK/$k.count.err" >&2; exit 1; }
  rm -f -- "$WORK/$k.calls.log"
done
log "call counts done"

# Where the time goes: p11tls loaded with p11timer.so between it and the module.
for k in "${KINDS[@]}"; do
  pf=$((FULL * 3 / 2)) pr=$RESUMED
  if [ "$k" = nss ]; then
    pf=$FULL_SLOW pr=$((RESUMED / 5))
  fi
  bench "$k" profile --full "$pf" --resumed "$pr" >"$WORK/$k.prof" 2>"$WORK/$k.prof.err" ||
    { cat "$WORK/$k.prof.err" >&2; exit 1; }
done
log "profiles done"

# ------------------------------------------------- memory and token objects
# In parallel (no timing is taken from them), each in a fresh process. The NSS token
# with 10,000 PBKDF2 iterations is too slow for 20,000 handshakes here; nss-iter1
# runs the same code on the same module.
if [ "$MEM" = 1 ]; then
  t0=$(date +%s)
  pids=()
  for k in softhsm softhsm-remote nss-iter1; do
    bench "$k" mem --mem "$MEMN" --cpu -1 >"$WORK/$k.mem" 2>"$WORK/$k.mem.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" || log "a memory run failed (see $WORK/*.mem.err)"
  done
  log "memory runs done ($(($(date +%s) - t0)) s)"
fi

# ------------------------------------------------------------------ report
mkdir -p "$BUILD/bench-results"
files=()
for k in "${KINDS[@]}"; do
  cat "$WORK/$k.run" "$WORK/$k.count" "$WORK/$k.prof" >"$BUILD/bench-results/$k.txt"
  if [ -f "$WORK/$k.mem" ]; then
    cat "$WORK/$k.mem" >>"$BUILD/bench-results/$k.txt"
  fi
  cp -f "$WORK/$k.run.err" "$BUILD/bench-results/$k.err" 2>/dev/null || true
  files+=("$BUILD/bench-results/$k.txt")
done
"$BENCH" report "${files[@]}" | tee "$BUILD/bench-results/report.txt"
END=$(date +%s)
echo
echo "bench.sh: done in $((END - START)) s (raw results: $BUILD/bench-results/)"
