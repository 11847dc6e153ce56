#!/usr/bin/env bash
# bench.sh - p11tls benchmarks in one run: builds (Release, in build-bench/), makes the
# tokens in a temporary directory, runs tests/bench/p11tls-bench on each and prints
# one table (with PASS/MISS against the targets) and how long it all took.
#
# Usage: scripts/bench.sh [--quick] [--no-mem] [--keep] [--pool-only]   (about 8 minutes on 2 CPUs)
#   --pool-only  only the pool's figures (and the in-process token against the base)
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
# A pool of tokens (with softhsm-remote, unless BENCH_POOL=0): two more SoftHSM2 tokens,
# each behind its own p11-kit server, with one handle key and one server key; full
# handshakes per second with 1 and 2 bench threads on a pool of one of them and of
# both (goal: 2 members >= 1.7 x 1 member, 2 threads). And the in-process token's rate
# with the pool code against the revision before it (BENCH_BASE, default: the parent
# of the commit that added pkcs11/pool.c), built in build-bench-base/, interleaved.
# Environment: BENCH_RUNS (5), BENCH_FULL (200), BENCH_FULL_SLOW (40, nss),
# BENCH_RESUMED (1000), BENCH_MEM (20000), BENCH_THREADS (200; slow: 30), BENCH_KINDS
# (the tokens, default "softhsm softhsm-remote nss nss-iter1"), BENCH_POOL, BENCH_BASE.
set -euo pipefail

START=$(date +%s)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$REPO/build-bench
QUICK=0 MEM=1 KEEP=0 POOL_ONLY=0
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --no-mem) MEM=0 ;;
    --keep) KEEP=1 ;;
    --pool-only) POOL_ONLY=1 ;;
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
POOL_MODS=()
cleanup() {
  local pid
  for d in "$WORK"/pool-a "$WORK"/pool-b; do
    [ ! -f "$d/p11-kit-server.pid" ] || "$REPO/scripts/make-token.sh" --stop --dir "$d" >/dev/null 2>&1 || true
  done
  rm -f "${POOL_MODS[@]}"
  [ ! -d "${BASE_SRC:-}" ] || git -C "$REPO" worktree remove --force "$BASE_SRC" >/dev/null 2>&1 || true
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
if [ "$POOL_ONLY" = 0 ]; then
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

fi # POOL_ONLY

# ------------------------------------------------------------------ pool
POOL=${BENCH_POOL:-1}
[[ " ${KINDS[*]} " == *" softhsm-remote "* ]] || POOL=0
if [ "$POOL" = 1 ]; then
  P=$WORK/pool
  mkdir -p "$P"
  printf 'bench pool %s\n' "$RANDOM$RANDOM" >"$P/pass"
  chmod 600 "$P/pass"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null |
    openssl pkcs8 -topk8 -v2 aes-256-cbc -passout "file:$P/pass" -out "$P/server.key"
  openssl req -new -x509 -days 2 -subj /CN=localhost -key "$P/server.key" -passin "file:$P/pass" \
    -out "$P/server.pem" 2>/dev/null
  members=()
  for m in a b; do
    "$REPO/scripts/make-token.sh" --kind softhsm-remote --dir "$WORK/pool-$m" --label "bench-pool-$m" \
      "${MT_OPTS[@]}" --key-backup "$P/handle.backup" --passphrase-file "$P/pass" \
      --server-key "$P/server.key" >"$WORK/pool-$m.token.log" 2>&1 ||
      { cat "$WORK/pool-$m.token.log" >&2; exit 1; }
    mod=p11tls-bench-$$-$m
    mkdir -p /etc/pkcs11/modules
    POOL_MODS+=("/etc/pkcs11/modules/$mod.module")
    printf 'remote: unix:path=%s\n' "$WORK/pool-$m/p11kit.sock" >"/etc/pkcs11/modules/$mod.module"
    members+=("$mod|pkcs11:token=bench-pool-$m|$WORK/pool-$m/user.pin")
  done
  pool_cnf() { # pool_cnf FILE MEMBER...
    local f=$1 i=0 m mod uri pin
    shift
    {
      printf 'openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n'
      printf 'alg_section = algorithm_sect\n[provider_sect]\ndefault = default_sect\n'
      printf 'p11tls = p11tls_sect\n[default_sect]\nactivate = 1\n[p11tls_sect]\n'
      printf 'module = %s\nmin-assurance = transient\nactivate = 1\n' "$BUILD/provider/p11tls.so"
      for m in "$@"; do i=$((i + 1)); printf 'member%d = member%d_sect\n' $i $i; done
      i=0
      for m in "$@"; do
        i=$((i + 1))
        IFS='|' read -r mod uri pin <<<"$m"
        printf '[member%d_sect]\npkcs11-module = %s\ntoken = %s\npin-source = file:%s\n' $i "$mod" "$uri" "$pin"
      done
      printf '[algorithm_sect]\ndefault_properties = ?provider=p11tls\n'
    } >"$f"
  }
  pool_cnf "$P/one.cnf" "${members[0]}"
  pool_cnf "$P/two.cnf" "${members[@]}"
  t0=$(date +%s)
  P11TLS_KEY_URI="pkcs11:object=p11tls-key;id=%01;type=private" P11TLS_CERT=$P/server.pem \
    P11TLS_BENCH_NAME=pool "$BENCH" pool --cnf1 "$P/one.cnf" --cnf2 "$P/two.cnf" --runs 3 \
    --threads "$THREADS" >"$WORK/pool.run" 2>"$WORK/pool.run.err" || { cat "$WORK/pool.run.err" >&2; exit 1; }
  log "pool: 1 and 2 remote members done ($(($(date +%s) - t0)) s)"
  # The in-process token with and without the pool code, interleaved.
  BASE=${BENCH_BASE:-$(git -C "$REPO" log --diff-filter=A --format=%H -- pkcs11/pool.c | tail -1)}
  [ -z "$BASE" ] || BASE=$(git -C "$REPO" rev-parse "$BASE^")
  if [[ " ${KINDS[*]} " == *" softhsm "* ]] && [ -n "$BASE" ]; then
    BASE_SRC=$WORK/base-src
    rm -rf -- "$BUILD-base" # (its cache names the previous run's worktree)
    git -C "$REPO" worktree prune
    git -C "$REPO" worktree add --detach "$BASE_SRC" "$BASE" >"$WORK/base.log" 2>&1 &&
      cmake -S "$BASE_SRC" -B "$BUILD-base" -DCMAKE_BUILD_TYPE=Release -DP11TLS_WERROR=OFF >>"$WORK/base.log" 2>&1 &&
      cmake --build "$BUILD-base" -j "$(nproc)" --target p11tls >>"$WORK/base.log" 2>&1 ||
      { tail -n 30 "$WORK/base.log" >&2; exit 1; }
    sed "s|^module = .*|module = $BUILD-base/provider/p11tls.so|" "$WORK/softhsm/openssl.cnf" >"$WORK/softhsm/base.cnf"
    : >"$WORK/base.run"
    for r in 1 2 3; do
      for which in base now; do
        cnf=$WORK/softhsm/openssl.cnf
        [ "$which" = now ] || cnf=$WORK/softhsm/base.cnf
        (. "$WORK/softhsm/env.sh" && P11TLS_OPENSSL_CNF=$cnf P11TLS_BENCH_NAME=softhsm \
          "$BENCH" run --only c --runs 1 --full "$FULL" --resumed 100 --raw 0 --threads 0 \
          >"$WORK/base.one" 2>>"$WORK/base.err") || { cat "$WORK/base.err" >&2; exit 1; }
        sed -n "s/^c\.\(rsa\|tls13\)\.full /$which.\1 /p" "$WORK/base.one" >>"$WORK/base.run"
      done
    done
  fi
fi

# ------------------------------------------------------------------ report
mkdir -p "$BUILD/bench-results"
files=()
REPORT_KINDS=("${KINDS[@]}")
[ "$POOL_ONLY" = 0 ] || REPORT_KINDS=()
for k in "${REPORT_KINDS[@]}"; do
  cat "$WORK/$k.run" "$WORK/$k.count" "$WORK/$k.prof" >"$BUILD/bench-results/$k.txt"
  if [ -f "$WORK/$k.mem" ]; then
    cat "$WORK/$k.mem" >>"$BUILD/bench-results/$k.txt"
  fi
  cp -f "$WORK/$k.run.err" "$BUILD/bench-results/$k.err" 2>/dev/null || true
  files+=("$BUILD/bench-results/$k.txt")
done
if [ "$POOL_ONLY" = 0 ]; then
  "$BENCH" report "${files[@]}" | tee "$BUILD/bench-results/report.txt"
else
  : >"$BUILD/bench-results/report.txt"
fi
if [ -s "${WORK}/pool.run" ]; then
  cp -f "$WORK/pool.run" "$BUILD/bench-results/pool.txt"
  {
    echo
    echo "Pool of tokens (SoftHSM2 behind p11-kit server, one server per member; full handshakes/s):"
    for t in rsa tls13; do
      awk -v t="$t" '
        $1 == "thr.pool1." t { for (i = 2; i <= NF; i++) { split($i, kv, "="); one[kv[1]] = kv[2] } }
        $1 == "thr.pool2." t { for (i = 2; i <= NF; i++) { split($i, kv, "="); two[kv[1]] = kv[2] } }
        END {
          name = (t == "rsa") ? "TLS 1.2 RSA kx" : "TLS 1.3      "
          r = (one["t2_hs_s"] > 0) ? two["t2_hs_s"] / one["t2_hs_s"] : 0
          # idle CPUs: 2 threads on 2 members, each thread at its service time (on a CPU
          # or blocked on its member, never waiting for a CPU), against 1 member measured
          e = (two["svc2_us"] > 0 && one["t2_hs_s"] > 0) ? 2e6 / two["svc2_us"] / one["t2_hs_s"] : 0
          printf "  %s  1 member: 1 thread %6.1f, 2 threads %6.1f | 2 members: 1 thread %6.1f, 2 threads %6.1f\n", name, one["t1_hs_s"], one["t2_hs_s"], two["t1_hs_s"], two["t2_hs_s"]
          printf "                 2 threads, 2 members vs 1: x%.2f %s; idle-CPU estimate x%.2f (blocked per handshake: 1 member %.0f us, 2 members %.0f us)\n",
            r, (r >= 1.7 ? "PASS" : "MISS (goal x1.7)"), e, one["blocked2_us"], two["blocked2_us"]
        }' "$WORK/pool.run"
    done
    if [ -s "$WORK/base.run" ]; then
      echo "In-process SoftHSM2 (c), the pool code against $(git -C "$REPO" rev-parse --short "$BASE") (median of 3 interleaved runs, hs/s):"
      for t in rsa tls13; do
        mb=$(awk -v t="base.$t" '$1 == t { split($2, kv, "="); print kv[2] }' "$WORK/base.run" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
        mw=$(awk -v t="now.$t" '$1 == t { split($2, kv, "="); print kv[2] }' "$WORK/base.run" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
        all=$(awk -v t="$t" '$1 ~ "\\." t "$" { split($2, kv, "="); printf "%s%s %s", (n++ ? ", " : ""), $1, kv[2] }' "$WORK/base.run")
        awk -v t="$t" -v b="$mb" -v w="$mw" -v a="$all" 'BEGIN {
          printf "  %-6s before %7.1f, with the pool code %7.1f (%+.1f%%)   [%s]\n", t, b, w, (b > 0 ? 100 * (w - b) / b : 0), a }'
      done
    fi
  } | tee -a "$BUILD/bench-results/report.txt"
fi
END=$(date +%s)
echo
echo "bench.sh: done in $((END - START)) s (raw results: $BUILD/bench-results/)"
