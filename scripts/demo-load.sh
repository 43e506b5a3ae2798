#!/usr/bin/env bash
# Loads sample feedback into a running demo through ingest's real API (so it
# goes through validation, Kafka, the aggregator, MySQL and Redis), then waits
# until query shows it. Called by scripts/demo.sh; safe to run again (every
# run adds a new wave of submissions and resubmissions).
#
#   scripts/demo-load.sh [SUBMISSIONS]     default 300
#
# The tokens: in identity-provider mode (FEEDBACK_OIDC_ISSUER set, as
# scripts/demo.sh does, or var/demo/mode saying `oidc`) the 24 sample students
# of deploy/keycloak/feedback-realm.json (sample01..sample24, password
# `sample`) each sign in with the password grant of the realm's
# `feedback-loader` client; in shared-secret mode 60 students' tokens are
# minted with FEEDBACK_JWT_SECRET (exported by scripts/demo.sh, else read
# from var/demo/jwt-secret). The services on their default ports.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOTAL=${1:-300}
INGEST=${FEEDBACK_DEMO_INGEST:-http://127.0.0.1:8080}
QUERY=${FEEDBACK_DEMO_QUERY:-http://127.0.0.1:8082}
say() { printf '[demo-load %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

MODE=secret
if [[ -n ${FEEDBACK_OIDC_ISSUER:-} ]] ||
  { [[ -z ${FEEDBACK_JWT_SECRET:-} ]] && [[ $(cat var/demo/mode 2>/dev/null) == oidc ]]; }; then
  MODE=oidc
  ISSUER=${FEEDBACK_OIDC_ISSUER:-http://127.0.0.1:8180/realms/feedback}
fi

# An access token of the realm's user $1 (password $2): the password grant of
# `feedback-loader`, a client for the demo and the tests only.
provider_token() {
  curl -fsS -m 30 "$ISSUER/protocol/openid-connect/token" -d grant_type=password \
    -d client_id=feedback-loader --data-urlencode "username=$1" --data-urlencode "password=$2" |
    sed -nE 's/.*"access_token":"([^"]+)".*/\1/p'
}

if [[ $MODE == secret ]]; then
  if [[ -z ${FEEDBACK_JWT_SECRET:-} ]]; then
    [[ -s var/demo/jwt-secret ]] || { say "no FEEDBACK_JWT_SECRET and no var/demo/jwt-secret: run scripts/demo.sh"; exit 1; }
    export FEEDBACK_JWT_SECRET
    FEEDBACK_JWT_SECRET=$(cat var/demo/jwt-secret)
  fi
  TARGET=${CARGO_TARGET_DIR:-target}
  BIN=$TARGET/release/ingest
  [[ -x $BIN ]] || BIN=$TARGET/debug/ingest
  [[ -x $BIN ]] || { say "build the services first (scripts/demo.sh does)"; exit 1; }
fi

COURSES=(CS101 CS102 MATH201 PHYS110 HIST210 ECON101 CHEM105 ART150)
COMMENTS=(
  "讲得很清楚，例子也很实用。"
  "作业太多了，希望能减少一点。"
  "老师很耐心，答疑及时。"
  "课程内容有点难，但收获很大。"
  "PPT 可以再详细一些，谢谢老师！"
  "Great lectures, the examples really helped."
  "Too much homework for a 3-credit course."
  "Clear explanations, fair exams."
  "The pace was a bit fast in the second half."
  "Labs were the best part, \"hands-on\" and useful."
  ""
)

declare -a TOKENS
if [[ $MODE == oidc ]]; then
  # The provider's tokens last 5 minutes: enough for one wave.
  STUDENTS=24
  printf '[demo-load %s] signing in %s sample students at %s ' "$(date +%H:%M:%S)" "$STUDENTS" "$ISSUER"
  for ((i = 0; i < STUDENTS; i++)); do
    TOKENS[i]=$(provider_token "$(printf 'sample%02d' $((i + 1)))" sample || true)
    [[ -n ${TOKENS[i]} ]] || { echo; say "no token for sample$(printf '%02d' $((i + 1))) (is Keycloak up with the realm? scripts/infra.sh up)"; exit 1; }
    printf '.'
  done
  echo " ok"
else
  STUDENTS=60
  say "minting $STUDENTS student tokens"
  for ((i = 0; i < STUDENTS; i++)); do
    TOKENS[i]=$("$BIN" mint-token --sub "demo-student-$i" --role student --ttl-hours 24)
  done
fi

say "posting $TOTAL submissions: each student rates up to 3 courses, many more than once (the latest counts)"
accepted=0 failed=0
for ((n = 1; n <= TOTAL; n++)); do
  student=$((RANDOM % STUDENTS))
  course=${COURSES[$(((student + RANDOM % 3) % ${#COURSES[@]}))]}
  # Skewed ratings so every course has its own shape.
  rating=$(((RANDOM % 5 + RANDOM % 5 + (${#course} % 3)) / 2 + 1))
  ((rating > 5)) && rating=5
  comment=${COMMENTS[$((RANDOM % ${#COMMENTS[@]}))]}
  body=$(printf '{"course_id":"%s","rating":%d,"comment":"%s"}' "$course" "$rating" "${comment//\"/\\\"}")
  status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$INGEST/v1/feedback" \
    -H "Authorization: Bearer ${TOKENS[$student]}" -H 'Content-Type: application/json' \
    --data-binary "$body" || echo 000)
  if [[ $status == 202 ]]; then accepted=$((accepted + 1)); else failed=$((failed + 1)); fi
  if ((n % 50 == 0 || n == TOTAL)); then say "  $n/$TOTAL sent ($accepted accepted, $failed refused)"; fi
done
# Refusals are expected only from the per-student rate limit (30 a minute).

if [[ $MODE == oidc ]]; then
  ADMIN=$(provider_token admin admin)
else
  ADMIN=$("$BIN" mint-token --sub demo-admin --role admin --ttl-hours 1)
fi
# Done when the totals stop moving (the aggregator has caught up).
printf '[demo-load %s] waiting for the aggregator ' "$(date +%H:%M:%S)"
previous=-1
for _ in $(seq 1 60); do
  total=$(curl -fsS "$QUERY/v1/courses?limit=200" -H "Authorization: Bearer $ADMIN" 2>/dev/null |
    python3 -c 'import json,sys; print(sum(c["responses"] for c in json.load(sys.stdin)["items"]))' 2>/dev/null || echo 0)
  ((total > 0 && total == previous)) && break
  previous=$total
  printf '.'; sleep 1
done
echo " ok"
say "courses now (responses = students with a current rating):"
curl -fsS "$QUERY/v1/courses?limit=20" -H "Authorization: Bearer $ADMIN" |
  python3 -c 'import json,sys
for c in json.load(sys.stdin)["items"]:
    avg = "-" if c["average"] is None else "%.2f" % c["average"]
    print("    %-8s %4d responses  average %s" % (c["course_id"], c["responses"], avg))'
