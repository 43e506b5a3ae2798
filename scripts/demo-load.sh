#!/usr/bin/env bash
# Loads sample feedback into a running demo through ingest's real API (so it
# goes through validation, Kafka, the aggregator, MySQL and Redis), then waits
# until query shows it. Called by scripts/demo.sh; safe to run again (every
# run adds a new wave of submissions and resubmissions).
#
#   scripts/demo-load.sh [SUBMISSIONS]     default 300
#
# Needs FEEDBACK_JWT_SECRET (scripts/demo.sh exports it; otherwise it is read
# from var/demo/jwt-secret) and the services on their default ports.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TOTAL=${1:-300}
INGEST=${FEEDBACK_DEMO_INGEST:-http://127.0.0.1:8080}
QUERY=${FEEDBACK_DEMO_QUERY:-http://127.0.0.1:8082}
say() { printf '[demo-load %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [[ -z ${FEEDBACK_JWT_SECRET:-} ]]; then
  [[ -s var/demo/jwt-secret ]] || { say "no FEEDBACK_JWT_SECRET and no var/demo/jwt-secret: run scripts/demo.sh"; exit 1; }
  export FEEDBACK_JWT_SECRET
  FEEDBACK_JWT_SECRET=$(cat var/demo/jwt-secret)
fi
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/ingest
[[ -x $BIN ]] || BIN=$TARGET/debug/ingest
[[ -x $BIN ]] || { say "build the services first (scripts/demo.sh does)"; exit 1; }

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

STUDENTS=60
say "minting $STUDENTS student tokens"
declare -a TOKENS
for ((i = 0; i < STUDENTS; i++)); do
  TOKENS[i]=$("$BIN" mint-token --sub "demo-student-$i" --role student --ttl-hours 24)
done

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

ADMIN=$("$BIN" mint-token --sub demo-admin --role admin --ttl-hours 1)
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
