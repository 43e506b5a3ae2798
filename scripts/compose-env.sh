#!/usr/bin/env bash
# Writes .env for `docker compose up` from .env.example, a fresh random value
# (64 hex digits) for every secret left empty there. Never overwrites an
# existing .env: its secrets sign the tokens, key the students' pseudonyms
# and open the database, so they must outlive any one run.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:-$ROOT/.env}
if [[ -e $target ]]; then
  echo "$target exists: kept as it is"
  exit 0
fi
umask 077
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^[A-Z_]+=$ ]]; then
    printf '%s%s\n' "$line" "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  else
    printf '%s\n' "$line"
  fi
done <"$ROOT/.env.example" >"$target"
echo "wrote $target (mode 600): keep it, and back it up with the database"
