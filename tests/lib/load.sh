# load.sh - background load generators of the nginx tests, stopped by PID.
# Sourced (bash).

# load_stop STOPFILE SECONDS PID...: asks each generator to stop (creates STOPFILE,
# which their loops test), waits up to SECONDS for each, then kills it and reaps it.
load_stop() {
  local stopfile=$1 tenths=$(($2 * 10)) p i
  shift 2
  : > "$stopfile" 2>/dev/null || true
  for p in "$@"; do
    for i in $(seq 1 "$tenths"); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
