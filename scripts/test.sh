#!/usr/bin/env bash
# test.sh - the README's test command: installs the Debian packages, builds p11tls
# with warnings as errors, and runs every test (unit suites and integration tests
# against real tokens, nginx and curl) with ctest. Run as root on Debian 12.
#   scripts/test.sh [ctest arguments...]      e.g. scripts/test.sh -L unit
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
build=${P11TLS_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DP11TLS_WERROR=ON
cmake --build "$build" -j "$(nproc)"
cd "$build"
ctest --output-on-failure --timeout 1200 "$@"
