#!/usr/bin/env bash
# boundary_audit_nginx.sh - the boundary audit (boundary_audit.sh) with Debian's
# nginx as the server and curl as the client.
P11TLS_AUDIT_SERVER=nginx exec bash "$(dirname "${BASH_SOURCE[0]}")/boundary_audit.sh" "$@"
