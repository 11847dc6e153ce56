#!/bin/sh
# curl through p11tls: its TLS secrets and its P-256 key share in the token too
# (any curl works as a client of the server; this one keeps its own secrets there).
exec env OPENSSL_CONF=/etc/p11tls/openssl.cnf curl -sS --cacert /etc/p11tls/web.pem \
    --curves P-256 --resolve web.example:8443:127.0.0.1 https://web.example:8443/
