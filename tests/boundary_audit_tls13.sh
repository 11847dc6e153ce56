#!/usr/bin/env bash
# boundary_audit_tls13.sh - boundary_audit.sh with TLS 1.3 handshakes: every secret of
# the client's keylog (handshake and application traffic secrets, exporter secret)
# is looked for in p11-kit's record of the PKCS#11 calls; sealed (NSS): none may
# appear, whole or in part; transient (SoftHSM2): each at most once (HMAC output).
P11TLS_AUDIT_PROTO=tls13 exec bash "$(dirname "${BASH_SOURCE[0]}")/boundary_audit.sh" "$@"
