#!/usr/bin/env bash
# with-token.sh DIR COMMAND...: runs COMMAND with the token made by
# scripts/make-token.sh in DIR (its env.sh loaded). Fails if the token is not there.
set -euo pipefail
dir=$1
shift
if [ ! -f "$dir/env.sh" ]; then
  echo "with-token.sh: no token in $dir (scripts/make-token.sh did not run?)" >&2
  exit 1
fi
# shellcheck disable=SC1091
. "$dir/env.sh"
exec "$@"
