#!/usr/bin/env bash
# Fuzzes the HTTP API against schemas/openapi.yaml with Schemathesis: starts
# ingest, the aggregator and query (debug builds) on free ports with a topic,
# database and Redis database of their own, runs Schemathesis against each
# service's operations with a valid token, and fails on any finding: a 5xx,
# an answer or status the document does not allow, a request that matches
# the document refused, or one that does not accepted. Settings in
# scripts/lib/schemathesis.toml. scripts/test.sh runs it; it runs alone too
# (the stack up: scripts/infra.sh up).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/feedback/venv
say() { printf 'fuzz-api: %s\n' "$*"; }

if [[ $("$VENV/bin/schemathesis" --version 2>/dev/null) != "schemathesis, version $SCHEMATHESIS_VERSION" ]]; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  [[ -x $VENV/bin/pip ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh
# Whatever the way out, the services and their resources go; after a
# failure the services' logs stay in $WORK and their ends are shown.
fuzzer=
cleanup() {
  local status=$?
  [[ -z $fuzzer ]] || kill "$fuzzer" 2>/dev/null || true
  services_stop "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The fuzzer sends a few thousand requests as one student.
export FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN=0 FEEDBACK_RATE_LIMIT_IP_PER_MIN=0
services_start schemathesis
mkdir -p "$WORK/hypothesis"

token() { "$BIN/ingest" mint-token --sub "$1" --role "$2" --ttl-hours 1; }
STUDENT_TOKEN=$(token fuzz-student student)
ADMIN_TOKEN=$(token fuzz-admin admin)

# A few students' feedback for the document's example course, so query's
# answers have items, averages and a next page to check, not zeros alone.
for i in 1 2 3 4 5; do
  curl -fsS -o /dev/null -X POST "http://127.0.0.1:$INGEST_PORT/v1/feedback" \
    -H "Authorization: Bearer $(token "fuzz-seed-$i" student)" -H 'Content-Type: application/json' \
    -d "{\"course_id\": \"CS101\", \"rating\": $i, \"comment\": \"=SUM(A$i) 第$i条 \\\"quoted\\\"\"}"
done

failed=()
fuzz() { # NAME URL TOKEN SCHEMATHESIS-FILTERS...
  local name=$1 url=$2 token=$3
  shift 3
  say "schemathesis against $name ($url)"
  local -a auth=()
  [[ -z $token ]] || auth=(-H "Authorization: Bearer $token")
  # In the background, waited for: a signal then stops the run at once
  # (bash runs a trap only after its foreground command ends).
  HYPOTHESIS_STORAGE_DIRECTORY=$WORK/hypothesis "$VENV/bin/schemathesis" \
    --config-file scripts/lib/schemathesis.toml --no-color \
    run schemas/openapi.yaml --url "$url" "${auth[@]}" "$@" &
  fuzzer=$!
  wait "$fuzzer" || failed+=("$name")
  fuzzer=
}

started=$SECONDS
# The stateful phase follows the document's links, and only query's
# operations have one (a comment page to the next).
# GET /v1/catalog is fuzzed against query: its path also has query's POST,
# which ingest does not serve, so ingest's 405 would never list the methods
# the document gives the path (its GET has no parameters; ingest's tests
# check its answer).
fuzz ingest "http://127.0.0.1:$INGEST_PORT" "$STUDENT_TOKEN" \
  --include-tag ingest --include-tag probes --exclude-operation-id listCatalog \
  --phases examples,coverage,fuzzing

# Query reads what the aggregator made of those submissions: wait until it
# has applied them all (the history stops growing).
last=-1
for ((i = 0; i < 60; i++)); do
  count=$(mariadb -h 127.0.0.1 -u root -N -e "SELECT COUNT(*) FROM \`$DATABASE\`.feedback_events" 2>/dev/null || echo 0)
  ((count > 0 && count == last)) && break
  last=$count
  sleep 1
done
say "the aggregator has applied $count submissions"

fuzz query "http://127.0.0.1:$QUERY_PORT" "$ADMIN_TOKEN" --include-tag query --include-tag probes
fuzz "the aggregator's probes" "http://127.0.0.1:$AGGREGATOR_PORT" "" \
  --include-tag probes --phases examples,coverage,fuzzing
say "schemathesis took $((SECONDS - started)) s"

if ((${#failed[@]})); then
  say "findings against: ${failed[*]} (each above, with a curl line to reproduce it)"
  exit 1
fi
say "no findings"
