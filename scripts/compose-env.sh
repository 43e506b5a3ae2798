#!/usr/bin/env bash
# Writes .env for `docker compose up` from .env.example, a fresh random value
# (64 hex digits) for every secret left empty there. Never overwrites an
# existing .env: its secrets key the students' pseudonyms and open the
# databases and Keycloak's administration, so they must outlive any one run.
#
# A setting of .env.example (a line with a value) set in the environment is
# written with that value instead, and FEEDBACK_PUBLIC_URL is derived from
# FEEDBACK_SITE_ADDRESS and FEEDBACK_HTTPS_PORT unless it is given too:
#
#   FEEDBACK_SITE_ADDRESS=feedback.example.edu scripts/compose-env.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
target=${1:-$ROOT/.env}
if [[ -e $target ]]; then
  echo "$target exists: kept as it is"
  exit 0
fi

# The value a setting gets: the environment's, else the example's.
declare -A value=()
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^([A-Z_]+)=(.+)$ ]]; then
    name=${BASH_REMATCH[1]}
    value[$name]=${!name-${BASH_REMATCH[2]}}
  fi
done <"$ROOT/.env.example"
if [[ -z ${FEEDBACK_PUBLIC_URL-} ]]; then
  port=${value[FEEDBACK_HTTPS_PORT]:-443}
  value[FEEDBACK_PUBLIC_URL]=https://${value[FEEDBACK_SITE_ADDRESS]}$([[ $port == 443 ]] || echo ":$port")
fi

umask 077
changed=()
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^[A-Z_]+=$ ]]; then
    printf '%s%s\n' "$line" "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  elif [[ $line =~ ^([A-Z_]+)= ]]; then
    name=${BASH_REMATCH[1]}
    printf '%s=%s\n' "$name" "${value[$name]}"
    [[ ${value[$name]} == "${line#*=}" ]] || changed+=("$name=${value[$name]}")
  else
    printf '%s\n' "$line"
  fi
done <"$ROOT/.env.example" >"$target"
echo "wrote $target (mode 600): keep it, and back it up with the database"
if ((${#changed[@]})); then printf '  other than .env.example: %s\n' "${changed[@]}"; fi
