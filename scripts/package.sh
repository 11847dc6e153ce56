#!/usr/bin/env bash
# package.sh [BUILD-DIR] - builds p11tls's Debian package with CPack's DEB generator
# (from this tree, in BUILD-DIR, default build-deb/) and checks it with lintian.
# Prints the package's path last. CPack rather than debian/ + dpkg-buildpackage: the
# package is made from the same CMake install rules that `cmake --install` uses, with
# no second build description to keep in step; dpkg-shlibdeps still computes the
# library dependencies. Needs: cmake, dpkg-dev, lintian (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-deb}
modules=$(openssl version -m | sed -n 's/^MODULESDIR: "\(.*\)"$/\1/p')
[ -n "$modules" ] || { echo "package.sh: cannot find OpenSSL's modules directory" >&2; exit 1; }
cmake -S . -B "$out" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DP11TLS_WERROR=ON \
  -DCMAKE_INSTALL_PREFIX=/usr -DP11TLS_MODULES_DIR="$modules" \
  -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >"$out.log" 2>&1 ||
  { cat "$out.log" >&2; exit 1; }
cmake --build "$out" -j "$(nproc)" --target p11tls p11tls-tool man_gz changelog_gz >>"$out.log" 2>&1 ||
  { tail -30 "$out.log" >&2; exit 1; }
rm -f "$out"/p11tls_*.deb
log=$(cd "$(dirname "$out.log")" && pwd)/$(basename "$out.log")
(cd "$out" && cpack -G DEB >>"$log" 2>&1) || { tail -30 "$log" >&2; exit 1; }
deb=$(ls "$out"/p11tls_*.deb)
# lintian: errors fail the package; warnings and notes are printed
lintian --fail-on error --display-level '>=warning' "$deb" >&2
echo "$deb"
