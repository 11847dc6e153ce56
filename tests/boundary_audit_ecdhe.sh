#!/usr/bin/env bash
# boundary_audit_ecdhe.sh - boundary_audit.sh with ECDHE on the NIST curves (P-256,
# P-384, P-521; the server takes only those): TLS 1.3 (full, HelloRetryRequest from
# X25519, resumed with psk_dhe_ke) and then TLS 1.2 ECDHE-RSA. Every secret the clients
# derived (tests/spy: the shared secret as the key schedule's input, and all that
# follows) is looked for in p11-kit's record of the PKCS#11 calls. sealed (NSS): none
# crosses, a key pair per handshake is generated in the token, the shared secret is
# derived there (CKM_ECDH1_DERIVE) and nothing is imported; transient (SoftHSM2): the
# same key pairs and derivations, and the shared secret crosses in no call, whole or 16
# bytes of it (TLS 1.3 digests it with C_DigestKey, TLS 1.2 keys HMAC with it), but for
# TLS 1.2 with a SHA-384 suite over P-256, where it is read out once (pkcs11/ecdh.c):
# that read-out is checked to be seen, as a positive control.
set -u
here=$(dirname "${BASH_SOURCE[0]}")
rc=0
P11TLS_AUDIT_PROTO=ecdhe13 bash "$here/boundary_audit.sh" "$@" || rc=1
P11TLS_AUDIT_PROTO=ecdhe12 bash "$here/boundary_audit.sh" "$@" || rc=1
exit $rc
