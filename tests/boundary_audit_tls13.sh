#!/usr/bin/env bash
# boundary_audit_tls13.sh - boundary_audit.sh with TLS 1.3 handshakes (full, with a
# HelloRetryRequest, resumed): every secret of the clients' key schedules, recorded by
# the test provider tests/spy (the five keylog secrets, and the early, handshake and
# master secrets, "derived" salts, finished and binder keys, resumption master secret
# and ticket PSKs), is looked for in p11-kit's record of the PKCS#11 calls; sealed
# (NSS): none may appear, whole or in part; transient (SoftHSM2): each at most once
# (HMAC output), a ticket PSK used for a resumption at most 3 times.
P11TLS_AUDIT_PROTO=tls13 exec bash "$(dirname "${BASH_SOURCE[0]}")/boundary_audit.sh" "$@"
