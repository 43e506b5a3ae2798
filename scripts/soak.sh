#!/usr/bin/env bash
# The soak: steady submissions through two ingest replicas into two
# aggregators and one query for a set time, while it kills, one after
# another, Kafka, an aggregator, an ingest replica, Redis and MySQL (each
# with SIGKILL, then started again); then exact counts, the 5xx answered,
# how long the pipeline took to be in step again after each fault, and the
# services' memory at the start and at the end. Not part of scripts/test.sh
# or CI: it takes ten minutes and stops the shared stack's servers.
#
#   scripts/soak.sh
#
# Knobs (environment):
#   SOAK_SECONDS (600)          how long the load runs
#   SOAK_FAULTS ("kafka aggregator ingest redis mysql")
#                               the faults, in order, spread evenly over the run
#                               (any of those names, repeats allowed, "" for none)
#   SOAK_DOWN_SECONDS (15)      how long each killed thing stays down
#   SOAK_WARMUP_SECONDS (30)    load before the first fault and the first memory reading
#   SOAK_RATE (100)             submissions per second, over both replicas
#   SOAK_STUDENTS (2000), SOAK_COURSES (40)
#   SOAK_REPLICA_RETRY_PCT (5)  accepted submissions sent again to the other replica
#   SOAK_IN_STEP_MS (1000)      in step: every course's numbers at most this far behind the load
#   SOAK_RSS_GROWTH_PCT (15), SOAK_RSS_GROWTH_MIB (5)
#                               memory growth over the run's second half past both fails it
#   SOAK_KEEP (0)               1 keeps the database, topic and Redis db even on success
#
# It runs its own services from target/release (or $CARGO_TARGET_DIR/release)
# on resources of its own: topic soak-<stamp>-events (6 partitions, as the
# services create it), database fbsoak_<stamp>, Redis db 252 (the demo has 0,
# the tests 1 to 200 and 255, the benchmark 253), ports from 18180, consumer
# group soak-<stamp>; shared-secret tokens, so Keycloak plays no part. Logs
# and the ingest replicas' spools are in var/soak/ (each run replaces the
# previous one's). Whatever shared server the soak stopped is started again
# on exit, however it ends. The method: docs/soak.md.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

DURATION=${SOAK_SECONDS:-600}
read -r -a FAULTS <<<"${SOAK_FAULTS-kafka aggregator ingest redis mysql}"
DOWN=${SOAK_DOWN_SECONDS:-15}
WARMUP=${SOAK_WARMUP_SECONDS:-30}
RATE=${SOAK_RATE:-100}
STUDENTS=${SOAK_STUDENTS:-2000}
COURSES=${SOAK_COURSES:-40}
REPLICA_RETRY_PCT=${SOAK_REPLICA_RETRY_PCT:-5}
IN_STEP_MS=${SOAK_IN_STEP_MS:-1000}
RSS_GROWTH_PCT=${SOAK_RSS_GROWTH_PCT:-15}
RSS_GROWTH_MIB=${SOAK_RSS_GROWTH_MIB:-5}
KEEP=${SOAK_KEEP:-0}
for knob in DURATION DOWN WARMUP RATE STUDENTS COURSES REPLICA_RETRY_PCT IN_STEP_MS RSS_GROWTH_PCT RSS_GROWTH_MIB; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || die "$knob must be a whole number (got '${!knob}')"
done
for fault in "${FAULTS[@]}"; do
  case $fault in kafka | aggregator | ingest | redis | mysql) ;; *) die "unknown fault '$fault' in SOAK_FAULTS (kafka aggregator ingest redis mysql)" ;; esac
done
# Each fault gets an equal slot after the warm-up: killed at its start, up
# again DOWN seconds later, the rest of the slot to get back in step under load.
SLOT=$(( ${#FAULTS[@]} > 0 ? (DURATION - WARMUP) / ${#FAULTS[@]} : 0 ))
if (( ${#FAULTS[@]} > 0 && SLOT < DOWN + 20 )); then
  die "SOAK_SECONDS=$DURATION leaves ${SLOT}s per fault after the ${WARMUP}s warm-up: give each at least SOAK_DOWN_SECONDS + 20 = $((DOWN + 20))s"
fi

STAMP=$(date +%Y%m%d%H%M%S)
TOPIC=soak-$STAMP-events
GROUP=soak-$STAMP
DB=fbsoak_$STAMP
MYSQL_URL=mysql://root@127.0.0.1:3306/$DB
REDIS_DB=252
REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB
LOGS=$ROOT/var/soak
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
BENCH=$RELEASE/feedback-bench
WORK=$(mktemp -d /tmp/feedback-soak.XXXXXX)
# 48 random characters each: the services refuse secrets under 32 bytes.
secret() { head -c 64 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48; }
SECRET=$(secret)
# Both replicas derive a retried submission's feedback_id with this key, so they share it.
STUDENT_KEY=$(secret)
SERVICES=(ingest-1 ingest-2 aggregator-1 aggregator-2 query)
# The instance each service fault kills: the other one of each keeps its
# process for the whole run, so its memory at the end compares with its start.
declare -A VICTIM=([aggregator]=aggregator-2 [ingest]=ingest-2)
# Only what the soak sets reaches the services, whatever the calling shell exported.
unset FEEDBACK_OIDC_ISSUER FEEDBACK_OIDC_AUDIENCE FEEDBACK_OIDC_CLIENT_ID FEEDBACK_JWT_SECRET \
  FEEDBACK_STUDENT_KEY_SECRET FEEDBACK_SPOOL_DIR FEEDBACK_CONSUMER_GROUP
export FEEDBACK_KAFKA_BROKERS=127.0.0.1:9092 RUST_LOG=${RUST_LOG:-info}

declare -A PID=() PORT=() DOWN_NOW=() REPORTED_DEAD=() RSS_START=() RSS_START_NOTE=() RSS_MID=()
INFRA_STOPPED=()
UNEXPECTED=()
DRIVER_PID=
SOAK_OK=0

# ---------------------------------------------------------------- cleanup ----
stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
}

cleanup() {
  local rc=$? name
  set +e
  exec 3>&-
  [[ -n $DRIVER_PID ]] && stop_pid "$DRIVER_PID"
  for name in "${SERVICES[@]}"; do [[ -n ${PID[$name]:-} ]] && stop_pid "${PID[$name]}"; done
  for name in "${INFRA_STOPPED[@]}"; do
    say "starting $name again (the soak stopped it)"
    scripts/infra.sh start "$name"
  done
  if [[ $SOAK_OK == 1 && $KEEP != 1 ]]; then
    mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS \`$DB\`" 2>/dev/null
    redis-cli -h 127.0.0.1 -p 6379 -n "$REDIS_DB" FLUSHDB >/dev/null 2>&1
    [[ -x $BENCH ]] && timeout 30 "$BENCH" delete-topics "$TOPIC" "$TOPIC.dlq" >/dev/null 2>&1
    say "cleaned up: database $DB dropped, Redis db $REDIS_DB flushed, topic $TOPIC deleted; logs in var/soak/"
  else
    say "kept for a post-mortem: database $DB, topic $TOPIC (and .dlq), Redis db $REDIS_DB; logs and spools in var/soak/"
    say "  remove them with: mariadb -h 127.0.0.1 -u root -e 'DROP DATABASE \`$DB\`';" \
      "redis-cli -n $REDIS_DB FLUSHDB; $BENCH delete-topics $TOPIC $TOPIC.dlq"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A write to the pipe of a driver that died ends the run through the cleanup
# (a handler, not an ignored signal, which every child would inherit).
trap 'die "the load driver is gone"' PIPE

# ---------------------------------------------------------------- helpers ----
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.${2:-1}f\", ($1) }"; }

free_port() {
  local port=$1
  while ss -Hltn "sport = :$port" | grep -q .; do port=$((port + 1)); done
  echo "$port"
}

# rss PID: "VmRSS VmHWM" in MiB, or "- -" when the process is gone.
rss() {
  awk '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 } END { printf "%.1f %.1f", r / 1024, h / 1024 }' \
    "/proc/$1/status" 2>/dev/null || echo "- -"
}

binary_of() { echo "${1%-[0-9]}"; }

# start_service NAME: runs NAME (ingest-1, aggregator-2, query, ...) on its
# port with its settings, appending to var/soak/NAME.log.
start_service() {
  local name=$1 port=${PORT[$1]}
  local settings=(FEEDBACK_KAFKA_TOPIC="$TOPIC" FEEDBACK_MYSQL_URL="$MYSQL_URL" FEEDBACK_REDIS_URL="$REDIS_URL")
  case $name in
    # Every submission comes from 127.0.0.1: the per-IP limit would refuse
    # the load itself. The per-student one stays at its default.
    ingest-*) settings+=(FEEDBACK_INGEST_ADDR="127.0.0.1:$port" FEEDBACK_SPOOL_DIR="$LOGS/$name.spool"
      FEEDBACK_JWT_SECRET="$SECRET" FEEDBACK_STUDENT_KEY_SECRET="$STUDENT_KEY" FEEDBACK_RATE_LIMIT_IP_PER_MIN=0) ;;
    aggregator-*) settings+=(FEEDBACK_AGGREGATOR_ADDR="127.0.0.1:$port" FEEDBACK_CONSUMER_GROUP="$GROUP") ;;
    query) settings+=(FEEDBACK_QUERY_ADDR="127.0.0.1:$port" FEEDBACK_JWT_SECRET="$SECRET") ;;
  esac
  printf '\n===== soak: %s started at %s =====\n' "$name" "$(date +%T)" >>"$LOGS/$name.log"
  env "${settings[@]}" "$RELEASE/$(binary_of "$name")" >>"$LOGS/$name.log" 2>&1 </dev/null &
  PID[$name]=$!
  # Killed with SIGKILL on purpose: no job notice from bash for it.
  disown "${PID[$name]}"
}

# wait_http NAME PATH SECONDS: until NAME answers 200 on PATH; fails when NAME exits.
wait_http() {
  local name=$1 path=$2 limit=$3 waited=0
  until curl -fsS -m 2 -o /dev/null "http://127.0.0.1:${PORT[$name]}$path" 2>/dev/null; do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      say "$name exited; the end of var/soak/$name.log:"; tail -n 20 "$LOGS/$name.log" >&2; exit 1
    fi
    (( waited < limit * 10 )) || die "$name did not answer 200 on $path within ${limit}s (var/soak/$name.log)"
    sleep 0.1; waited=$((waited + 1))
  done
}

# check_alive: says once about each of the soak's services that died without being killed.
check_alive() {
  local name
  for name in "${SERVICES[@]}"; do
    if [[ -z ${DOWN_NOW[$name]:-} && -z ${REPORTED_DEAD[$name]:-} ]] && ! kill -0 "${PID[$name]}" 2>/dev/null; then
      REPORTED_DEAD[$name]=1
      UNEXPECTED+=("$name")
      say "error: $name (pid ${PID[$name]}) exited without being killed; the end of var/soak/$name.log:"
      tail -n 10 "$LOGS/$name.log" | sed 's/^/    /'
    fi
  done
  if ! kill -0 "$DRIVER_PID" 2>/dev/null; then die "the load driver exited early"; fi
}

# rss_trend: every 30 s, each service's VmRSS as a line of var/soak/rss.tsv,
# so a growth at the end can be told from a plateau reached early.
NEXT_TREND=0
rss_trend() {
  local t name
  t=$(now)
  [[ $(calc "$t >= $NEXT_TREND" 0) == 1 ]] || return 0
  NEXT_TREND=$(calc "$t + 30" 3)
  [[ -s $LOGS/rss.tsv ]] || printf 'seconds\t%s\n' "$(IFS=$'\t'; echo "${SERVICES[*]}")" >"$LOGS/rss.tsv"
  {
    printf '%s' "$(calc "$t - $T0" 0)"
    for name in "${SERVICES[@]}"; do printf '\t%s' "$(rss "${PID[$name]}" | cut -d' ' -f1)"; done
    echo
  } >>"$LOGS/rss.tsv"
}

# sleep_until EPOCH: waits, checking the services every second.
sleep_until() {
  local left
  while left=$(calc "$1 - $(now)" 1) && [[ $(calc "$left > 0" 0) == 1 ]]; do
    check_alive
    rss_trend
    rss_mid
    sleep "$(calc "$left < 1 ? $left : 1" 1)"
  done
}

# tell WORDS: a line to the driver (it timestamps the fault marks itself).
tell() {
  kill -0 "$DRIVER_PID" 2>/dev/null || die "the load driver is gone"
  echo "$*" >&3
}

remember_rss() {
  local name=$1 note=$2
  read -r RSS_START["$name"] _ <<<"$(rss "${PID[$name]}")"
  RSS_START_NOTE[$name]=$note
  # Restarted in the second half: a new process, still filling its caches,
  # so it is shown but not judged.
  [[ $(calc "$(now) >= $MID_AT" 0) == 1 ]] && unset "RSS_MID[$name]"
  return 0
}

# rss_mid: once, at half time, each running service's VmRSS. Caches (sled's,
# the allocator's arenas, the limiter's table) fill in the first minutes and
# then stay; a leak goes on growing: so the verdict weighs the second half.
rss_mid() {
  local name
  [[ -z ${MID_TAKEN:-} && $(calc "$(now) >= $MID_AT" 0) == 1 ]] || return 0
  MID_TAKEN=1
  for name in "${SERVICES[@]}"; do
    [[ -n ${DOWN_NOW[$name]:-} ]] || read -r RSS_MID["$name"] _ <<<"$(rss "${PID[$name]}")"
  done
}

# ----------------------------------------------------------------- faults ----
# kill_fault FAULT: SIGKILL; the name the driver knows it by.
kill_fault() {
  local fault=$1 victim
  case $fault in
    kafka | redis | mysql)
      INFRA_STOPPED+=("$fault")
      scripts/infra.sh kill "$fault"
      ;;
    aggregator | ingest)
      victim=${VICTIM[$fault]}
      DOWN_NOW[$victim]=1
      kill -KILL "${PID[$victim]}"
      say "killed $victim (pid ${PID[$victim]}) with SIGKILL"
      ;;
  esac
}

# restart_fault FAULT: starts it again and waits until it answers.
restart_fault() {
  local fault=$1 victim kept=() name
  case $fault in
    kafka | redis | mysql)
      scripts/infra.sh start "$fault"
      for name in "${INFRA_STOPPED[@]}"; do [[ $name == "$fault" ]] || kept+=("$name"); done
      INFRA_STOPPED=("${kept[@]}")
      ;;
    aggregator | ingest)
      victim=${VICTIM[$fault]}
      start_service "$victim"
      wait_http "$victim" /healthz 60
      unset "DOWN_NOW[$victim]"
      say "$victim answers again (pid ${PID[$victim]}$([[ $fault == ingest ]] && echo ", the same spool"))"
      ;;
  esac
}

# ------------------------------------------------------------------ start ----
say "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM;" \
  "${DURATION}s at $RATE/s, faults: ${FAULTS[*]:-none} (${SLOT}s apart, each down ${DOWN}s), warm-up ${WARMUP}s"
scripts/infra.sh up
command -v curl >/dev/null || die "curl is needed"
say "building (cargo build --release -p ingest -p aggregator -p query -p feedback-bench)"
cargo build --release -p ingest -p aggregator -p query -p feedback-bench

mkdir -p "$LOGS"
rm -rf "$LOGS"/*.log "$LOGS"/*.spool "$LOGS"/report.txt "$LOGS"/rss.tsv
# From here on everything printed is also in var/soak/soak.log. tee ignores
# Ctrl-C, so it still carries what the cleanup prints (and the cleanup's
# scripts/infra.sh, which stops at a failed write, still has its stdout).
exec > >(trap '' INT TERM; exec tee -a "$LOGS/soak.log") 2>&1

port=18180
for name in "${SERVICES[@]}"; do
  port=$(free_port "$port"); PORT[$name]=$port; port=$((port + 1))
done
redis-cli -h 127.0.0.1 -p 6379 -n "$REDIS_DB" FLUSHDB >/dev/null
say "run $STAMP: topic $TOPIC, database $DB, Redis db $REDIS_DB, group $GROUP"
for name in "${SERVICES[@]}"; do
  start_service "$name"
  say "  $name on :${PORT[$name]} (pid ${PID[$name]}, log var/soak/$name.log)"
done
for name in "${SERVICES[@]}"; do wait_http "$name" /readyz 90; done
say "every service ready"

mkfifo "$WORK/control"
ingest_urls=()
for name in ingest-1 ingest-2; do ingest_urls+=(--ingest "http://127.0.0.1:${PORT[$name]}"); done
"$BENCH" soak "${ingest_urls[@]}" --query "http://127.0.0.1:${PORT[query]}" --mysql-url "$MYSQL_URL" \
  --secret "$SECRET" --rate "$RATE" --students "$STUDENTS" --courses "$COURSES" \
  --replica-retry-pct "$REPLICA_RETRY_PCT" --in-step-ms "$IN_STEP_MS" --run "soak-$STAMP" <"$WORK/control" >"$LOGS/report.txt" &
DRIVER_PID=$!
exec 3>"$WORK/control"
T0=$(now)
END_AT=$(calc "$T0 + $DURATION" 3)
MID_AT=$(calc "$T0 + $DURATION / 2" 3)

# ------------------------------------------------------------------- run ----
sleep_until "$(calc "$T0 + $WARMUP" 3)"
for name in "${SERVICES[@]}"; do remember_rss "$name" "after the warm-up"; done
say "memory after the warm-up (VmRSS MiB): $(for n in "${SERVICES[@]}"; do printf '%s %s  ' "$n" "${RSS_START[$n]}"; done)"

for i in "${!FAULTS[@]}"; do
  fault=${FAULTS[$i]}
  kill_at=$(calc "$T0 + $WARMUP + $i * $SLOT" 3)
  next_at=$(calc "$kill_at + $SLOT" 3)
  sleep_until "$kill_at"
  say "fault $((i + 1))/${#FAULTS[@]}: $fault (SIGKILL, ${DOWN}s down)"
  tell kill "$fault"
  kill_fault "$fault"
  sleep_until "$(calc "$kill_at + $DOWN" 3)"
  say "restarting $fault"
  tell restart "$fault"
  restart_fault "$fault"
  tell up "$fault"
  # A restarted service's memory is measured from its own warm-up, if its slot allows.
  if [[ $fault == aggregator || $fault == ingest ]]; then
    victim=${VICTIM[$fault]}
    at=$(calc "$(now) + $WARMUP" 3)
    if [[ $(calc "$at < $next_at - 1" 0) == 1 ]]; then
      sleep_until "$at"
      remember_rss "$victim" "${WARMUP}s after its restart"
    else
      remember_rss "$victim" "right after its restart"
    fi
  fi
done
sleep_until "$END_AT"

# ------------------------------------------------------------------- end ----
declare -A RSS_END=() HWM_END=()
for name in "${SERVICES[@]}"; do read -r RSS_END["$name"] HWM_END["$name"] <<<"$(rss "${PID[$name]}")"; done
say "stopping the load; the driver waits for every answer, then for the pipeline to settle"
tell end
exec 3>&-
driver_rc=0
wait "$DRIVER_PID" || driver_rc=$?
DRIVER_PID=
cat "$LOGS/report.txt"

# Redis against MySQL, with the aggregator's own hand tool (a dry run).
reconcile=$(FEEDBACK_KAFKA_TOPIC=$TOPIC FEEDBACK_MYSQL_URL=$MYSQL_URL FEEDBACK_REDIS_URL=$REDIS_URL \
  timeout 60 "$RELEASE/aggregator" reconcile --all 2>/dev/null | tail -n 1 || true)
redis_ok=0
[[ $reconcile =~ ^[0-9]+\ courses\ checked,\ 0\ not\ in\ step ]] && redis_ok=1
printf '  %s Redis = MySQL (aggregator reconcile --all, dry run): %s\n' \
  "$([[ $redis_ok == 1 ]] && echo 'ok  ' || echo FAIL)" "${reconcile:-no answer}"

echo
echo "Memory (VmRSS, MiB; a growth over the second half past ${RSS_GROWTH_PCT} % and ${RSS_GROWTH_MIB} MiB fails):"
rss_ok=1
rows=("service|pid|start|measured|half time|end|peak (VmHWM)|growth|second half")
# pct FROM TO: the growth in percent, or - when either reading is missing.
pct() { [[ $1 =~ ^[0-9] && $2 =~ ^[0-9] ]] && echo "$(calc "($2 - $1) / $1 * 100" 1) %" || echo -; }
for name in "${SERVICES[@]}"; do
  start=${RSS_START[$name]:--} mid=${RSS_MID[$name]:--} end=${RSS_END[$name]:--} flag=
  if [[ $mid =~ ^[0-9] && $end =~ ^[0-9] ]] &&
    [[ $(calc "($end - $mid) / $mid * 100 > $RSS_GROWTH_PCT && $end - $mid > $RSS_GROWTH_MIB" 0) == 1 ]]; then
    flag=" GROWTH"; rss_ok=0
  fi
  rows+=("$name|${PID[$name]}|$start|${RSS_START_NOTE[$name]:-}|$mid|$end|${HWM_END[$name]:-}|$(pct "$start" "$end")|$(pct "$mid" "$end")$flag")
done
printf '%s\n' "${rows[@]}" | column -t -s '|' -o ' | ' | sed 's/^/  /'
echo "  (every 30 s in var/soak/rss.tsv)"

echo
ok=1
if [[ $driver_rc != 0 ]]; then ok=0; say "the driver's checks failed (above)"; fi
if [[ $redis_ok != 1 ]]; then ok=0; say "Redis and MySQL differ after the run"; fi
if [[ $rss_ok != 1 ]]; then ok=0; say "a service's memory grew beyond the noise"; fi
if (( ${#UNEXPECTED[@]} > 0 )); then ok=0; say "exited without being killed: ${UNEXPECTED[*]}"; fi
check_alive_end() {
  local name dead=()
  for name in "${SERVICES[@]}"; do kill -0 "${PID[$name]}" 2>/dev/null || dead+=("$name"); done
  if (( ${#dead[@]} > 0 )); then say "not running at the end: ${dead[*]}"; return 1; fi
}
check_alive_end || ok=0
if [[ $ok == 1 ]]; then
  SOAK_OK=1
  say "soak passed in $(calc "$(now) - $T0" 0)s"
else
  say "soak FAILED; logs in var/soak/"
  exit 1
fi
