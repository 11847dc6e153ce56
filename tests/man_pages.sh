#!/usr/bin/env bash
# man_pages.sh - p11tls(7) and p11tls-tool(1) (docs/, roff) render without a groff
# warning, `man -l` shows their sections, and p11tls(7) documents every option p11tls
# reads (provider/config.c's list) and every command of p11tls-tool.
set -euo pipefail
src=${P11TLS_SOURCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
. "$src/tests/lib/tap.sh"
for page in "$src/docs/p11tls.7" "$src/docs/p11tls-tool.1"; do
  name=$(basename "$page")
  warnings=$(groff -man -z -ww "$page" 2>&1 || echo "groff exit status $?")
  check_eq "$name: groff -man -z -ww prints no warning" "" "$warnings"
  text=$(MANWIDTH=80 man -l "$page" 2>&1)
  for sect in NAME SYNOPSIS DESCRIPTION "SEE ALSO"; do
    check "$name: man -l shows $sect" grep -q "^$sect" <<< "$text"
  done
done
text=$(MANWIDTH=200 man -l "$src/docs/p11tls.7" 2>&1)
opts=$(sed -n '/own_keys\[\] = {/,/};/p' "$src/provider/config.c" | grep -o '"[a-z0-9-]*"' | tr -d '"')
check "config.c lists options ($(wc -w <<< "$opts"))" [ "$(wc -w <<< "$opts")" -ge 10 ]
for o in $opts pkcs11-module-path pkcs11-module-init-args pkcs11-module-token-pin; do
  check "p11tls(7) documents option $o" grep -qE "^ +$o( |$)|Alias: *$o|Alias: $o|^ +$o$|$o \(" <<< "$text"
done
for v in P11TLS_DEBUG OPENSSL_CONF; do
  check "p11tls(7) documents $v" grep -q "^ *$v" <<< "$text"
done
tooltext=$(MANWIDTH=200 man -l "$src/docs/p11tls-tool.1" 2>&1)
for cmd in keygen provision import-key pem-uri info check; do
  check "p11tls-tool(1) documents '$cmd'" grep -qE "^ +$cmd( |$)" <<< "$tooltext"
  check "p11tls-tool --help lists '$cmd'" grep -q "p11tls-tool $cmd" <<< "$("${P11TLS_TOOL:-p11tls-tool}" --help)"
done
tap_finish
