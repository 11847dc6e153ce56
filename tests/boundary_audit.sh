#!/usr/bin/env bash
# boundary_audit.sh - what crosses the PKCS#11 boundary during TLS 1.2 handshakes
# (P11TLS_AUDIT_PROTO=tls13: TLS 1.3 handshakes), as recorded by p11-kit's call log
# (an independent record, not p11tls's own).
#
# Run with a token: tests/with-token.sh DIR bash tests/boundary_audit.sh (as root:
# it writes /etc/pkcs11/modules/p11tls-audit-PID.module, removed at exit).
#
# The token is registered with p11-kit (`log-calls: yes`, and `x-init-reserved`
# for NSS) and the server's p11tls loads p11-kit's proxy module, which loads the
# registered modules managed and logs every call with its IN and OUT values to
# the server's stderr. 20 full handshakes (the three ciphers in turn) from a
# plain OpenSSL client with -keylogfile give the real master secrets; each is
# then looked for in every byte buffer of the log, and counted as crossings. With
# TLS 1.3 the values are every secret the client's keylog holds (client and server
# handshake and application traffic secrets, the exporter secret: five per
# handshake, 32 or 48 bytes), the three TLS 1.3 suites in turn, and every other
# secret of the client's key schedule, recorded by the client through the test
# provider tests/spy (early, handshake and master secrets, the "derived" salts,
# finished keys, binder keys, resumption master secret, ticket PSKs; the early
# secret without a PSK and its salt are public constants and are left out):
# a buffer that holds it whole is one crossing, and so are buffers that hold
# it only in pieces (P_hash blocks) when together they cover all of it:
#   sealed (nss):         no master secret may appear, whole or in part;
#   transient (softhsm):  each may cross at most once (it leaves the token once,
#                         as HMAC output), except a TLS 1.3 ticket PSK that is
#                         used: at most 3 times (made; then, in the resumption,
#                         read back from its handle with C_Decrypt and given to
#                         C_Sign as the input of the early secret's HMAC).
# p11-kit logs no attribute values: a secret going in through C_CreateObject
# (CKA_VALUE) is invisible here. p11-kit prints a byte buffer as a quoted string
# (printable ASCII as is, \t \n \r, other bytes as \xHH, cut after 119
# characters with "..."); as a byte 0x5C is printed bare, that is not reversible,
# so each value is escaped the same way and searched for in that form; a cut
# buffer matches when what is visible of the value (16 bytes or more) agrees.
# The server's wrapped handles (its keylog; TLS 1.3: those of the application traffic
# and exporter secrets) must be found too: a positive control of
# the search. When a secret crosses too often, the calls that carried it are
# shown. p11-kit's log also holds the PIN (C_Login): it lives only in the
# test's temporary directory and is removed.
#
# Two details of the set-up:
#  - p11tls loads its module with p11_kit_module_load(), which refuses the
#    p11-kit-proxy.so module itself ("refusing to load the p11-kit-proxy.so module
#    as a registered module"). The first check records whether that is still so;
#    the audit then loads a byte-identical copy of the proxy library from the
#    temporary directory, which p11-kit does not recognise as its own proxy.
#  - Debian registers SoftHSM2 with p11-kit (/usr/share/p11-kit/modules/
#    softhsm2.module), and p11-kit merges two registrations of one library into
#    one, dropping our log-calls. For SoftHSM2 the audit module is therefore a
#    copy of the library too, with priority 100 so its slots come first.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/lib/tls.sh
. "$HERE/lib/tls.sh"
tls_init

HANDSHAKES=${P11TLS_AUDIT_HANDSHAKES:-20}
PROTO=${P11TLS_AUDIT_PROTO:-tls12}
# ecdhe13 / ecdhe12: TLS 1.3 / TLS 1.2 ECDHE-RSA handshakes on the NIST curves the token
# can do (the server takes only those), the clients' shared secrets among the values
EC=0
case "$PROTO" in
  ecdhe13) PROTO=tls13 EC=1 ;;
  ecdhe12) PROTO=tls12 EC=1 ;;
esac
EC_GROUPS=(P-256 P-384 P-521)
if [ "$PROTO" = tls13 ]; then
  CIPHERS=(TLS_AES_128_GCM_SHA256 TLS_AES_256_GCM_SHA384 TLS_CHACHA20_POLY1305_SHA256)
  PER_HS=5 # keylog secrets per handshake
else
  CIPHERS=(AES128-GCM-SHA256 AES256-GCM-SHA384 ECDHE-RSA-AES128-GCM-SHA256)
  [ "$EC" = 1 ] && CIPHERS=(ECDHE-RSA-AES128-GCM-SHA256 ECDHE-RSA-AES256-GCM-SHA384)
  PER_HS=1
fi
SPY_OUT=$WORK/spy.out
: >"$SPY_OUT"
if [ "$PROTO" = tls13 ] || [ "$EC" = 1 ]; then
  # the clients record every secret of their key schedule (tests/spy)
  tls_spy_cnf "$WORK/spy.cnf"
  export P11SPY_OUT=$SPY_OUT
  TLS_CLIENT_CNF=$WORK/spy.cnf
fi
PROXY=${P11TLS_P11KIT_PROXY:-/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so}
MODDIR=/etc/pkcs11/modules
MODFILE=$MODDIR/p11tls-audit-$$.module
MADE_DIRS=()

echo "# token kind: $P11TLS_KIND, protocol: $PROTO$([ "$EC" = 1 ] && echo ", ECDHE on ${EC_GROUPS[*]}")"
case "$P11TLS_KIND" in
  nss) LEVEL=sealed ;;
  *) LEVEL=transient ;;
esac

remove_module_file() {
  local d
  rm -f -- "$MODFILE"
  # Directories this script created, innermost first, if nothing else is in them.
  for ((d = ${#MADE_DIRS[@]} - 1; d >= 0; d--)); do
    rmdir -- "${MADE_DIRS[d]}" 2>/dev/null || true
  done
}
tls_on_exit remove_module_file

if [ ! -e "$PROXY" ]; then
  not_ok "p11-kit proxy module $PROXY exists (install p11-kit-modules)"
  tls_finish
  exit
fi

# --------------------------------------------------------- the registration
for d in /etc/pkcs11 "$MODDIR"; do
  if [ ! -d "$d" ]; then
    mkdir -- "$d" 2>/dev/null || true
    [ ! -d "$d" ] || MADE_DIRS+=("$d")
  fi
done
AUDIT_LIB=$P11TLS_MODULE
case "$(basename "$(readlink -f "$P11TLS_MODULE")")" in
  libsofthsm2.so*)
    AUDIT_LIB=$WORK/libsofthsm2-audit.so
    cp -- "$(readlink -f "$P11TLS_MODULE")" "$AUDIT_LIB"
    ;;
esac
if ! {
  echo "# p11tls tests/boundary_audit.sh (PID $$): removed when it exits"
  echo "module: $AUDIT_LIB"
  echo "log-calls: yes"
  echo "priority: 100"
  [ -z "${P11TLS_INIT_ARGS:-}" ] || echo "x-init-reserved: $P11TLS_INIT_ARGS"
} >"$MODFILE" 2>/dev/null; then
  not_ok "write $MODFILE (the audit needs root)"
  tls_finish
  exit
fi
ok "registered the token with p11-kit in $MODFILE (log-calls: yes)"

# The server's configuration: the token's, with p11-kit's proxy as the module
# (p11-kit passes x-init-reserved, so no pkcs11-init-args).
proxy_cnf() {
  sed -e "s#^pkcs11-module = .*#pkcs11-module = $1#" -e '/^pkcs11-init-args *=/d' \
    "$P11TLS_OPENSSL_CNF" >"$2"
}

# Does p11tls take p11-kit-proxy.so itself?
proxy_cnf "$PROXY" "$WORK/proxy.cnf"
rc=0
OPENSSL_CONF=$WORK/proxy.cnf P11TLS_DEBUG=1 timeout -s KILL "$TLS_CMD_TIMEOUT" \
  openssl list -providers >"$WORK/proxy-list.out" 2>"$WORK/proxy-list.err" || rc=$?
if grep -q "^ *name: p11tls: token '.*', assurance " "$WORK/proxy-list.out"; then
  ok "p11tls loads pkcs11-module = $PROXY"
else
  not_ok "p11tls loads pkcs11-module = $PROXY ($(grep -a -m1 -o 'pkcs11-module: cannot load[^;]*' \
    "$WORK/proxy-list.err" "$WORK/proxy-list.out" | head -n 1 | sed 's/^[^:]*://' || true); status $rc)"
fi
rm -f -- "$WORK/proxy-list.err" # p11-kit logged its calls there, the PIN included

# The proxy library under another name: p11-kit loads it as an ordinary module.
cp -- "$(readlink -f "$PROXY")" "$WORK/p11-kit-proxy-audit.so"
SERVER_CNF=$WORK/server.cnf
proxy_cnf "$WORK/p11-kit-proxy-audit.so" "$SERVER_CNF"
if grep -q "^pkcs11-module = $WORK/p11-kit-proxy-audit.so\$" "$SERVER_CNF" &&
  ! grep -q '^pkcs11-init-args' "$SERVER_CNF"; then
  ok "server configuration loads the token through p11-kit's proxy"
else
  not_ok "server configuration loads the token through p11-kit's proxy"
fi

# What the provider reports through the proxy.
rc=0
OPENSSL_CONF=$SERVER_CNF timeout -s KILL "$TLS_CMD_TIMEOUT" openssl list -providers \
  >"$WORK/list.out" 2>/dev/null || rc=$?
check_grep "through the proxy p11tls is usable at assurance $LEVEL" "$WORK/list.out" \
  "^ *name: p11tls: token '.*', assurance $LEVEL"

# -------------------------------------------------------------- handshakes
SERVER=${P11TLS_AUDIT_SERVER:-s_server}
: >"$WORK/client.keylog"
good=0
if [ "$SERVER" = nginx ]; then
  # Debian's nginx (workers as root, so they can load the copied modules from the
  # temporary directory); nginx sends its stderr, p11-kit's call log with it, to
  # its error log. nginx keeps no keylog: the handles' control is not available.
  # shellcheck source=scripts/lib/nginx.sh
  . "$HERE/../scripts/lib/nginx.sh"
  NGX=$WORK/nginx
  : >"$WORK/hsdesc"
  mkdir -p "$NGX"
  nginx_cleanup() { ngx_stop "$NGX"; }
  tls_on_exit nginx_cleanup
  NGX_PORT=$(p11_free_port)
  ngx_write_conf "$NGX" "$NGX_PORT" user=root
  if ! ngx_start "$NGX" "$SERVER_CNF"; then
    not_ok "nginx starts with the token behind p11-kit's proxy"
    tls_finish
    exit
  fi
  ok "nginx starts with the token behind p11-kit's proxy"
  for ((i = 0; i < HANDSHAKES; i++)); do
    cipher=${CIPHERS[i % ${#CIPHERS[@]}]}
    if [ "$PROTO" = tls13 ]; then
      popt=(--tlsv1.3 --tls13-ciphers "$cipher")
    else
      popt=(--tlsv1.2 --tls-max 1.2 --ciphers "$cipher")
    fi
    echo "# $i $cipher full" >>"$SPY_OUT"
    echo "$cipher full" >>"$WORK/hsdesc"
    body=$(OPENSSL_CONF=${TLS_CLIENT_CNF:-/dev/null} SSLKEYLOGFILE=$WORK/client.keylog curl -sS --cacert "$P11TLS_CERT" \
      --resolve "localhost:$NGX_PORT:127.0.0.1" "${popt[@]}" \
      "https://localhost:$NGX_PORT/" 2>&1 || true)
    if [ "$body" = "hello from p11tls" ]; then
      good=$((good + 1))
    else
      echo "# handshake $i ($cipher) failed: $body" >&2
    fi
  done
  check_eq "$HANDSHAKES full handshakes through nginx (3 ciphers in turn) fetch the page" \
    "$HANDSHAKES" "$good"
  ngx_stop "$NGX"
  LOG=$NGX/error.log
  : >"$WORK/server.keylog"
else
  # TLS 1.3: the server takes only X25519, so a client that offers a P-256 key share
  # first gets a HelloRetryRequest
  if [ "$PROTO" = tls13 ]; then sproto=(-tls1_3 -groups X25519); else sproto=(-tls1_2); fi
  # ECDHE: only the token's curves; a client whose first key share is X25519 gets a
  # HelloRetryRequest for one of them
  [ "$EC" = 1 ] && sproto=("${sproto[0]}" -groups "$(
    IFS=:
    echo "${EC_GROUPS[*]}"
  )")
  if ! OPENSSL_CONF=$SERVER_CNF tls_start_server s_server "" -key "$P11TLS_KEY_URI" \
    -cert "$P11TLS_CERT" "${sproto[@]}" -www -keylogfile "$WORK/server.keylog"; then
    not_ok "s_server starts with the token behind p11-kit's proxy"
    tls_finish
    exit
  fi
  ok "s_server starts with the token behind p11-kit's proxy"
  LOG=$SERVER_ERR # p11-kit's call log (the server's stderr)
  : >"$WORK/hsdesc"
  for ((i = 0; i < HANDSHAKES; i++)); do
    out=$WORK/hs$i.out
    rc=0
    kind=New
    if [ "$PROTO" = tls13 ]; then
      # in threes: a full handshake (its session saved), one with a HelloRetryRequest,
      # one resumed with the first one's ticket (PSK and binder)
      cipher=${CIPHERS[(i / 3) % ${#CIPHERS[@]}]}
      copt=(-tls1_3 -ciphersuites "$cipher")
      case $((i % 3)) in
      0) copt+=(-sess_out "$WORK/sess$i") desc="full" ;;
      1) copt+=(-groups P-256:X25519 -msg) desc="full, HRR" ;;
      2) copt+=(-sess_in "$WORK/sess$((i - 2))") desc="resumed" kind=Reused ;;
      esac
      if [ "$EC" = 1 ]; then # the token's curves, in turn; the HRR one from X25519 to P-384
        g=${EC_GROUPS[(i / 3) % 3]}
        [ $((i % 3)) = 1 ] && g=X25519:P-384
        copt=("${copt[@]/#-groups/-groups}")
        [ $((i % 3)) = 1 ] && copt=(-tls1_3 -ciphersuites "$cipher" -msg)
        copt+=(-groups "$g")
        desc="$desc, ${g##*:}"
      fi
      pname=TLSv1.3
    else
      cipher=${CIPHERS[i % ${#CIPHERS[@]}]}
      copt=(-tls1_2 -cipher "$cipher")
      pname=TLSv1.2
      desc=full
      [ "$EC" = 1 ] && copt+=(-groups "${EC_GROUPS[i % 3]}") desc="full, ${EC_GROUPS[i % 3]}"
    fi
    echo "$cipher $desc" >>"$WORK/hsdesc"
    echo "# $i $cipher $desc" >>"$SPY_OUT"
    tls_client "$out" -ign_eof "${copt[@]}" -keylogfile "$WORK/client.keylog" || rc=$?
    if [ "$rc" = 0 ] && grep -aq "^$kind, ${pname/./\\.}, Cipher is $cipher\$" "$out" &&
      grep -aq '^HTTP/1\.0 200 ok' "$out"; then
      good=$((good + 1))
    else
      echo "# handshake $i ($cipher, $desc) failed (status $rc)" >&2
      tls_show "$out"
      tls_show "$out.err"
    fi
    if [ "$desc" = "full, HRR" ]; then
      nsh=$(grep -c '<<< TLS 1.3, Handshake \[length [0-9a-f]*\], ServerHello' "$out" || true)
      [ "$nsh" = 2 ] || { echo "# handshake $i: no HelloRetryRequest ($nsh ServerHello)" >&2; good=$((good - 1)); }
    fi
  done
  if [ "$PROTO" = tls13 ]; then
    check_eq "$HANDSHAKES handshakes (full, with HelloRetryRequest, resumed; 3 suites) fetch the page" \
      "$HANDSHAKES" "$good"
  else
    check_eq "$HANDSHAKES full handshakes (3 ciphers in turn) fetch the page" "$HANDSHAKES" "$good"
  fi
  tls_stop "$SERVER_PID"
fi

# -------------------------------------------------------------- the audit
# the values: TLS 1.2's master secret (CLIENT_RANDOM lines), TLS 1.3's secrets
if [ "$PROTO" = tls13 ]; then
  LABELS_RE='^(CLIENT|SERVER)_(HANDSHAKE_TRAFFIC_SECRET|TRAFFIC_SECRET_0)$|^EXPORTER_SECRET$'
else
  LABELS_RE='^CLIENT_RANDOM$'
fi
keylog_values() {
  awk -v re="$LABELS_RE" 'NF == 3 && $1 ~ re { print tolower($3) }' "$1"
}
keylog_values "$WORK/client.keylog" >"$WORK/secrets"
awk -v re="$LABELS_RE" 'NF == 3 && $1 ~ re { print $1 }' "$WORK/client.keylog" >"$WORK/labels"
keylog_values "$WORK/server.keylog" >"$WORK/handles"
awk -v re="$LABELS_RE" 'NF == 3 && $1 ~ re { print $1 }' "$WORK/server.keylog" >"$WORK/handle-labels"
nsec=$(grep -c -E '^([0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{132})$' "$WORK/secrets" || true)
nhandles=$(grep -c -E '^([0-9a-f]{64}|[0-9a-f]{96})$' "$WORK/handles" || true)
check_eq "client keylog: $PER_HS secret(s) per handshake" "$((HANDSHAKES * PER_HS))" "$nsec"
[ "$SERVER" = nginx ] || check_eq "server keylog: $PER_HS handle(s) per handshake" "$((HANDSHAKES * PER_HS))" "$nhandles"
if [ "$(sort -u "$WORK/secrets" | wc -l)" = "$nsec" ] &&
  [ -z "$(sort "$WORK/secrets" "$WORK/handles" | uniq -d)" ]; then
  ok "all secrets are distinct and none is a handle"
else
  not_ok "all secrets are distinct and none is a handle"
fi
# one description per value: its handshake's cipher and kind
for ((i = 0; i < nsec; i++)); do sed -n "$((i / PER_HS + 1))p" "$WORK/hsdesc"; done >"$WORK/descs"
if [ -n "${TLS_CLIENT_CNF:-}" ]; then
  # Every secret the clients' key schedules made (tests/spy), once each, with its label
  # and handshake; what leaves the token by design (record keys and IVs) is not a
  # secret here, and an early secret or salt made in several handshakes (no PSK) is a
  # public constant.
  awk '
    /^# / { hs = $2; desc = $3 " " $4; for (i = 5; i <= NF; i++) desc = desc " " $i; next }
    NF == 2 && $1 != "key" && $1 != "iv" && $1 != "exporter" {
      v = tolower($2)
      if (!(v in lab)) { lab[v] = $1; d[v] = desc; order[n++] = v }
      if (!((v, hs) in seen)) { seen[v, hs] = 1; nhs[v]++ }
    }
    END {
      for (i = 0; i < n; i++) {
        v = order[i]
        if (nhs[v] > 1 && (lab[v] == "extract" || lab[v] == "derived"))
          print "const", lab[v], v, d[v] > "/dev/stderr"
        else print v, lab[v], d[v]
      }
    }' "$SPY_OUT" >"$WORK/spy-values" 2>"$WORK/spy-consts"
  nspy=$(wc -l <"$WORK/spy-values")
  echo "# the clients' key schedules (tests/spy): $nspy secrets; left out as public constants:" \
    "$(awk '{print $2}' "$WORK/spy-consts" | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
  if [ "$PROTO" = tls13 ]; then min=12 spied="extract derived finished res_master resumption"; else min=2 spied="pms master"; fi
  [ "$EC" = 1 ] && [ "$PROTO" = tls13 ] && spied="$spied ikm"
  check "the spy recorded the clients' secrets ($nspy; at least $min per handshake)" \
    [ "$nspy" -ge $((HANDSHAKES * min)) ]
  missing=$(awk '{print $1}' "$WORK/spy-values" | sort | comm -13 - <(sort "$WORK/secrets") | wc -l)
  check_eq "control: every keylog secret is among the spy's values" 0 "$missing"
  for l in $spied; do
    check "the audited values include the spy's '$l' secrets" grep -q " $l " "$WORK/spy-values"
  done
  awk '{print $1}' "$WORK/spy-values" >"$WORK/secrets"
  awk '{print $2}' "$WORK/spy-values" >"$WORK/labels"
  cut -d' ' -f3- "$WORK/spy-values" >"$WORK/descs"
  nsec=$nspy
fi

if [ -s "$LOG" ]; then
  ok "p11-kit's call log is not empty ($(wc -l <"$LOG") lines)"
else
  not_ok "p11-kit's call log is not empty"
fi
if [ "$PROTO" = tls13 ] || [ "$EC" = 1 ]; then fns="C_Login C_Sign"; else fns="C_Login C_UnwrapKey C_Sign"; fi
for fn in $fns; do
  check_grep "p11-kit's call log records $fn calls" "$LOG" "^$fn\$"
done
if [ "$EC" = 1 ]; then
  # ECDHE: a key pair per handshake generated in the token, the secret derived there;
  # p11-kit logs no attribute values, so an imported secret (C_CreateObject) would be
  # invisible above: none may be imported (the all-zero TLS 1.3 input key of each
  # hash is made once per process)
  ngen=$(grep -c '^C_GenerateKeyPair$' "$LOG" || true)
  ncreate=$(grep -c '^C_CreateObject$' "$LOG" || true)
  necdh=$(grep -c 'CKM_ECDH1_DERIVE' "$LOG" || true)
  echo "# ECDHE calls in the log: C_GenerateKeyPair $ngen (NSS: 6 of them at activation, the probe), CKM_ECDH1_DERIVE $necdh, C_CreateObject $ncreate"
  check "$LEVEL: a key pair per handshake was generated in the token ($ngen >= $HANDSHAKES)" [ "$ngen" -ge "$HANDSHAKES" ]
  check "$LEVEL: the shared secrets were derived in the token (CKM_ECDH1_DERIVE: $necdh >= $HANDSHAKES)" [ "$necdh" -ge "$HANDSHAKES" ]
  if [ "$LEVEL" = sealed ]; then
    check "sealed: no secret was imported (C_CreateObject: $ncreate <= 2)" [ "$ncreate" -le 2 ]
  else
    # transient: TLS 1.3 takes the secret as HMAC data through C_DigestKey, TLS 1.2 as
    # the PRF's HMAC key; the audit below finds it in no call (but one case)
    ndk=$(grep -c '^C_DigestKey$' "$LOG" || true)
    [ "$PROTO" = tls13 ] &&
      check "transient: each handshake secret's HMAC took the shared secret by C_DigestKey ($ndk >= $HANDSHAKES)" [ "$ndk" -ge "$HANDSHAKES" ]
  fi
fi

# Look for each value in every byte buffer of the log. p11-kit's escaping is
# not reversible (a byte 0x5C is printed as a bare backslash), so each value is
# escaped the way p11-kit does it and searched for in that form. One line per
# value: "<crossings> <whole> <partial> <pieces> <hextext>" where
#   whole     = buffers that hold the whole value (for a cut buffer: what is
#               visible of the value, 16 bytes or more, agrees with it);
#   partial   = other buffers holding 16 or more consecutive bytes of it;
#   pieces    = 1 if those partial buffers together cover every byte of it (a
#               value that crossed in pieces, e.g. as two P_hash blocks), else 0;
#   crossings = whole + pieces: how many times the value crossed the boundary;
#   hextext   = times its hex text (any case) appears anywhere in the log.
# With AUDIT_EXPLAIN=1 the calls that carried each value go to stderr.
audit() {
  perl -e '
    use strict; use warnings;
    # p11-kit log.c log_some_bytes(): \t \n \r, printable ASCII as is, else \xHH.
    sub esc {
      my $o = "";
      for my $c (unpack("C*", $_[0])) {
        $o .= $c == 9 ? "\\t" : $c == 10 ? "\\n" : $c == 13 ? "\\r"
            : ($c >= 32 && $c < 127) ? chr($c) : sprintf("\\x%02X", $c);
      }
      return $o;
    }
    my ($log, $vals) = @ARGV;
    open(my $v, "<", $vals) or die "$vals: $!";
    my @vals = map { chomp; pack("H*", $_) } grep { /^([0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{132})$/ } <$v>;
    close $v;
    my @bufs; my $text = ""; my $fn = "?";
    open(my $l, "<:raw", $log) or die "$log: $!";
    while (my $line = <$l>) {
      $text .= lc $line;
      $fn = $1 if $line =~ /^(C_\w+)$/;
      next unless $line =~ /\((\d+)\) "(.*)"\s*$/;
      my ($n, $raw) = ($1, $2);
      # p11-kit writes at most 119 characters, then "..." over whatever followed
      # (even a part of an escape); a shorter string is the whole buffer.
      my $cut = 0;
      if (length($raw) >= 119 && $raw =~ /\.\.\.$/) {
        $raw = substr($raw, 0, 119);
        $cut = 1;
      }
      my $where = $line =~ /^\s*(IN|OUT): (\w+)/ ? "$1 $2" : ($line =~ /^\s*(\w+):/ ? $1 : "?");
      push @bufs, [$raw, $cut, "$fn $where ($n bytes)"];
    }
    close $l;
    for my $val (@vals) {
      my ($whole, $partial) = (0, 0);
      my $vlen = length $val;
      my $e = esc($val);
      my $e16 = length esc(substr($val, 0, 16));
      my @win = map { esc(substr($val, $_, 16)) } 0 .. $vlen - 16;
      my @covered = (0) x $vlen;
      for my $buf (@bufs) {
        my ($r, $cut, $ctx) = @$buf;
        my $hit = index($r, $e) >= 0;
        if (!$hit && $cut) {
          # The value may start in the buffer and run past the cut: the visible
          # rest of the buffer is a prefix of its escaped form.
          my $head = substr($e, 0, 4);
          for (my $j = index($r, $head); !$hit && $j >= 0; $j = index($r, $head, $j + 1)) {
            my $tail = substr($r, $j);
            last if length($tail) < $e16;
            $hit = 1 if substr($e, 0, length $tail) eq $tail;
          }
        }
        if ($hit) {
          $whole++;
          print STDERR "#   whole value in $ctx\n" if $ENV{AUDIT_EXPLAIN};
          next;
        }
        my $part = 0;
        for my $k (0 .. $#win) {
          next if index($r, $win[$k]) < 0;
          $part = 1;
          $covered[$_] = 1 for $k .. $k + 15;
        }
        $partial += $part;
        print STDERR "#   part of it in $ctx\n" if $part && $ENV{AUDIT_EXPLAIN};
      }
      my $pieces = (grep { !$_ } @covered) ? 0 : 1;
      my $hex = unpack("H*", $val);
      my $hextext = () = $text =~ /\Q$hex\E/g;
      printf "%d %d %d %d %d\n", $whole + $pieces, $whole, $partial, $pieces, $hextext;
    }
  ' "$1" "$2"
}

if ! audit "$LOG" "$WORK/secrets" >"$WORK/secret-counts" 2>"$WORK/audit.err" ||
  ! audit "$LOG" "$WORK/handles" >"$WORK/handle-counts" 2>>"$WORK/audit.err"; then
  not_ok "decoding p11-kit's log"
  tls_show "$WORK/audit.err"
fi

# Positive control: every handle crossed the boundary (C_WrapKey or C_Encrypt output).
if [ "$SERVER" != nginx ]; then
  if [ "$PROTO" = tls13 ]; then
    # wrapped handles (C_WrapKey output): the application traffic and exporter secrets;
    # the handshake traffic secrets' handles are random, resolved only by the
    # process's cache (used during the handshake only): they never cross
    paste -d' ' "$WORK/handle-labels" "$WORK/handle-counts" >"$WORK/handle-lc"
    nw=$(grep -vc '_HANDSHAKE_TRAFFIC_SECRET ' "$WORK/handle-lc" || true)
    found=$(awk '$1 !~ /_HANDSHAKE_TRAFFIC_SECRET$/ && $3 >= 1' "$WORK/handle-lc" | wc -l)
    check_eq "positive control: each of the $nw wrapped handles (traffic, exporter) is found whole in the log" "$nw" "$found"
    nl=$(grep -c '_HANDSHAKE_TRAFFIC_SECRET ' "$WORK/handle-lc" || true)
    found=$(awk '$1 ~ /_HANDSHAKE_TRAFFIC_SECRET$/ && $3 >= 1' "$WORK/handle-lc" | wc -l)
    check_eq "the $nl handshake traffic secrets' handles (local, no wrap) never cross" 0 "$found"
  else
    found=$(awk '$2 >= 1' "$WORK/handle-counts" | wc -l)
    check_eq "positive control: each of the $nhandles handles is found whole in the log" "$nhandles" "$found"
  fi
fi

echo "# secrets in p11-kit's log, one line each (cipher, secret, crossings = whole + pieces):"
for ((i = 0; i < nsec; i++)); do
  read -r sec <&3
  read -r c w p pc hx <&4
  read -r label <&5
  read -r desc <&6 || desc=
  printf '#   %-40s %-31s %s...  crossings=%s (whole=%s, in pieces=%s; partial buffers=%s) hex-text=%s\n' \
    "${desc:-?}" "$label" "${sec:0:16}" "$c" "$w" "$pc" "$p" "$hx"
done 3<"$WORK/secrets" 4<"$WORK/secret-counts" 5<"$WORK/labels" 6<"$WORK/descs"
cross0=$(awk '$1 == 0' "$WORK/secret-counts" | wc -l)
cross1=$(awk '$1 == 1' "$WORK/secret-counts" | wc -l)
crossmore=$(awk '$1 > 1' "$WORK/secret-counts" | wc -l)
partial=$(awk '$3 > 0' "$WORK/secret-counts" | wc -l)
hextext=$(awk '$5 > 0' "$WORK/secret-counts" | wc -l)
echo "# counts ($LEVEL, $nsec secrets): crossed 0 times: $cross0, once: $cross1, more than once: $crossmore; with 16+ bytes in some buffer: $partial; as hex text: $hextext"
check_eq "no secret appears as hex text in the log" 0 "$hextext"
if [ "$LEVEL" = sealed ]; then
  check_eq "sealed: no secret crosses the boundary (count 0 for all $nsec)" "$nsec" "$cross0"
  check_eq "sealed: no part (16+ bytes) of a secret crosses the boundary" 0 "$partial"
else
  # p11-kit logs no attribute values, so C_CreateObject(CKA_VALUE) is not seen here.
  # Allowed: once each; a used TLS 1.3 ticket PSK 3 times (see the top). An ECDHE
  # shared secret made in the token (TLS 1.3's "ikm", TLS 1.2's "pms"): never, but
  # TLS 1.2 with a SHA-384 suite over P-256, whose PRF SoftHSM2 cannot key with a
  # 32-byte secret: once (read out with C_Decrypt, padded, put back; pkcs11/ecdh.c).
  paste -d' ' "$WORK/labels" "$WORK/secret-counts" "$WORK/descs" |
    awk -v ec="$EC" '{
      max = $1 == "resumption" ? 3 : 1
      if (ec == 1 && ($1 == "ikm" || $1 == "pms"))
        max = ($0 ~ /SHA384 full, P-256$/) ? 1 : 0
      print ($2 > max) ? 1 : 0 }' >"$WORK/over"
  if [ "$EC" = 1 ]; then
    zs=$(paste -d' ' "$WORK/labels" "$WORK/secret-counts" | awk '$1 == "ikm" || $1 == "pms"' | wc -l)
    zc=$(paste -d' ' "$WORK/labels" "$WORK/secret-counts" "$WORK/descs" | awk '($1 == "ikm" || $1 == "pms") && $2 > 0' | wc -l)
    zok=$(paste -d' ' "$WORK/labels" "$WORK/secret-counts" "$WORK/descs" | awk '($1 == "ikm" || $1 == "pms") && ($2 > 0 || $4 > 0) && $0 !~ /SHA384 full, P-256$/' | wc -l)
    echo "# transient: ECDHE shared secrets that crossed: $zc of $zs (TLS 1.2 SHA-384 over P-256 only, by design)"
    if [ "$PROTO" = tls12 ]; then
      # the one read-out, seen: C_Decrypt (AES-ECB) of the CBC wrap shows the first 16
      # bytes as they are (the rest is chained: XORed here, so all of it is in memory)
      zn=$(paste -d' ' "$WORK/labels" "$WORK/secret-counts" "$WORK/descs" | awk '$1 == "pms" && $0 ~ /SHA384 full, P-256$/' | wc -l)
      zr=$(paste -d' ' "$WORK/labels" "$WORK/secret-counts" "$WORK/descs" | awk '$1 == "pms" && $0 ~ /SHA384 full, P-256$/ && ($2 > 0 || $4 > 0)' | wc -l)
      check "transient: TLS 1.2 SHA-384 over P-256 reads the shared secret out, as documented ($zr of $zn seen)" \
        [ "$zn" -ge 1 -a "$zr" = "$zn" ]
    fi
    check_eq "transient: no ECDHE shared secret crosses the boundary, whole or 16 bytes of it (but TLS 1.2 SHA-384 over P-256)" 0 "$zok"
    check "transient: the audit holds the ECDHE shared secrets ($zs >= $HANDSHAKES)" [ "$zs" -ge "$HANDSHAKES" ]
  fi
  over=$(grep -c '^1$' "$WORK/over" || true)
  psk3=$(paste -d' ' "$WORK/labels" "$WORK/secret-counts" | awk '$1 == "resumption" && $2 > 1' | wc -l)
  [ "$PROTO" = tls13 ] && echo "# transient: ticket PSKs that crossed more than once (used for a resumption): $psk3"
  if [ "$over" = 0 ]; then
    ok "transient: each secret crosses the boundary no more often than expected ($cross1 of $nsec once, $crossmore more often)"
  else
    not_ok "transient: each secret crosses the boundary no more often than expected ($over of $nsec crossed more often)"
    echo "# the calls that carried the first such secret:" >&2
    bad=$(sed -n "$(grep -n '^1$' "$WORK/over" | head -1 | cut -d: -f1)p" "$WORK/secrets")
    echo "$bad" >"$WORK/bad-secret"
    AUDIT_EXPLAIN=1 audit "$LOG" "$WORK/bad-secret" >/dev/null || true
  fi
fi

# p11-kit's log holds the PIN (C_Login IN): remove it now, not only at exit.
rm -f -- "$LOG"
if [ ! -e "$LOG" ]; then
  ok "p11-kit's call log (it holds the PIN) is removed"
else
  not_ok "p11-kit's call log (it holds the PIN) is removed"
fi
remove_module_file
if [ ! -e "$MODFILE" ]; then
  ok "$MODFILE is removed"
else
  not_ok "$MODFILE is removed"
fi

tls_finish
