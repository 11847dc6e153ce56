#!/usr/bin/env bash
# Installs every Debian 12 package that p11tls's build, tests and demo need.
# Non-interactive and idempotent; run as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: must run as root (apt-get install)" >&2
  exit 1
fi
PKGS=(
  build-essential cmake pkg-config clang-format
  openssl libssl-dev
  p11-kit p11-kit-modules libp11-kit-dev
  softhsm2
  libnss3 libnss3-dev libnss3-tools
  libcunit1-dev
  nginx curl gnutls-bin
  gdb procps psmisc iproute2
  man-db groff-base lintian
  clang libclang-rt-14-dev llvm
)
apt-get update -q
apt-get install -y -q --no-install-recommends "${PKGS[@]}"
