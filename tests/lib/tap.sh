# tests/lib/tap.sh - the shell tests' checks, in TAP's words (sourced): ok, not_ok,
# check DESCRIPTION COMMAND..., check_eq DESCRIPTION EXPECTED ACTUAL, and tap_finish,
# which prints the counts and fails if any check did.
TAP_PASS=0
TAP_FAIL=0
ok() {
  TAP_PASS=$((TAP_PASS + 1))
  echo "ok - $*"
}
not_ok() {
  TAP_FAIL=$((TAP_FAIL + 1))
  echo "not ok - $*"
}
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}
check_eq() {
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1 (expected '$2', got '$3')"; fi
}
tap_finish() {
  echo "$TAP_PASS passed, $TAP_FAIL failed"
  [ "$TAP_FAIL" -eq 0 ]
}
