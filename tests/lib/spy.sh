# shellcheck shell=bash
# tests/lib/spy.sh - the configuration of the test provider tests/spy (sourced).
# tls_spy_cnf FILE: writes an OpenSSL configuration for a plain client that runs its
# TLS 1.3 key schedule through tests/spy/spy_provider.c (the default provider's KDF
# and HMAC, every secret recorded in $P11SPY_OUT; P11SPY_CORRUPT corrupts one MAC).
tls_spy_cnf() {
  local so=${P11TLS_BUILD_DIR:?}/tests/p11tls-spy.so
  [ -f "$so" ] || { echo "# $so is not built" >&2; return 1; }
  cat >"$1" <<CNF
openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
alg_section = algorithm_sect
[provider_sect]
default = default_sect
p11tls-spy = spy_sect
[default_sect]
activate = 1
[spy_sect]
module = $so
activate = 1
[algorithm_sect]
default_properties = ?provider=p11tls-spy
CNF
}
