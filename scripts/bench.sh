#!/usr/bin/env bash
# The benchmark table: ingest, aggregator and query under load, each figure
# beside a ceiling measured on this machine in this run (ingest's and query's
# own /healthz, MariaDB's plain multi-row INSERT rate), with its target.
#
#   scripts/bench.sh [ingest] [aggregator] [query]
#
# With no argument every section runs; name sections to run only those (query
# reads the statistics the aggregator section writes, so it brings it along).
#
# Knobs (environment): BENCH_SECONDS (10, per load run), BENCH_CONNECTIONS
# (64), BENCH_INGEST_CONNECTIONS (128, the submission runs),
# BENCH_HALF_CONNECTIONS (64, the fixed-rate runs), BENCH_HALF_REPEATS (5
# fixed-rate runs each of stats and /healthz, medians), BENCH_WARMUP_SECONDS
# (8, ingest's warm-up), BENCH_THREADS (2), BENCH_TOKENS (2000 student tokens), BENCH_EVENTS
# (100000 events prefilled for the aggregator), BENCH_FRESH_RATE (5000/s),
# BENCH_FRESH_SECONDS (10), BENCH_FRESH_COURSES (50).
#
# It runs its own ingest, aggregator and query from target/release (or
# $CARGO_TARGET_DIR/release) on
# resources of its own (topics bench-<stamp>-*, database fbbench_<stamp>,
# Redis db 253, a temp spool, ports from 18080), never the demo's (topic
# feedback-events, database feedback, Redis db 0) or the tests'. It stops
# Kafka for the spooled run and always starts it again on exit. The services
# log to a tmpfs while they run (see RUN_LOGS); the last 16 MiB of each log
# of the last run stay in var/bench/ (each run replaces the previous run's).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

LOAD_SECONDS=${BENCH_SECONDS:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
# The fixed-rate (half load) runs use 64 connections. Stats p99 at 26k/s, runs
# taking turns on one query: 16 connections 4.6 and 6.4 ms (requests waited
# for a free connection whenever query paused), 32 1.7-4.1 ms (median 3.0),
# 64 1.3-16.6 ms (median 1.7), 128 2.2-4.7 ms.
HALF_CONNECTIONS=${BENCH_HALF_CONNECTIONS:-64}
# Each half-load p99 is the median of this many 10 s runs, stats and /healthz
# taking turns: on these two shared cores, one run's p99 ranged from about 1.3
# to 17 ms for the same build, so a single run said more about the moment than the build.
HALF_REPEATS=${BENCH_HALF_REPEATS:-5}
# A submission is answered only once Kafka acknowledged it, so each connection
# waits a broker round trip (2-4 ms here) per request: at 64 connections the
# submission runs measured that wait, not ingest (the machine still had idle
# CPU), and 256 gave no more than 128. The submission runs use 128; their
# ceiling is the better of /healthz at 64 and at 128 connections.
INGEST_CONNECTIONS=${BENCH_INGEST_CONNECTIONS:-128}
WARMUP_SECONDS=${BENCH_WARMUP_SECONDS:-8}
THREADS=${BENCH_THREADS:-2}
TOKENS=${BENCH_TOKENS:-2000}
EVENTS=${BENCH_EVENTS:-100000}
FRESH_RATE=${BENCH_FRESH_RATE:-5000}
FRESH_SECONDS=${BENCH_FRESH_SECONDS:-10}
FRESH_COURSES=${BENCH_FRESH_COURSES:-50}
STATS_COURSES=20
[[ $HALF_REPEATS =~ ^[1-9][0-9]*$ ]] || die "BENCH_HALF_REPEATS must be a whole number of at least 1"
# The aggregator's lanes (its own default unless FEEDBACK_SINK_LANES is set).
LANES=${FEEDBACK_SINK_LANES:-3}

STAMP=$(date +%Y%m%d%H%M%S)
TOPIC_INGEST=bench-$STAMP-ingest
TOPIC_AGG=bench-$STAMP-agg
TOPIC_FLOOR=bench-$STAMP-floor
DB=fbbench_$STAMP
MYSQL_URL=mysql://root@127.0.0.1:3306/$DB
REDIS_DB=253
REDIS_URL=redis://127.0.0.1:6379/$REDIS_DB
LOGS=$ROOT/var/bench
# Where the services write their logs while they run: a tmpfs when there is
# room, and the end of each log is kept in $LOGS at cleanup. Under load they
# write gigabytes of access lines, and the writeback of those to this disk
# stalled every process on the shared cores, the load generator included:
# query's tail then measured the disk (docs/benchmarks.md). The spool stays
# on disk, in $WORK: its fsyncs are ingest's own cost.
RUN_LOGS=$LOGS
# A run killed with -9 leaves its directory behind, in memory; one bench runs
# at a time (it stops the shared Kafka), so any such directory is stale.
rm -rf /dev/shm/feedback-bench-logs.*
if [[ -d /dev/shm && -w /dev/shm ]] && (($(df -Pk /dev/shm | awk 'NR == 2 { print $4 }') >= 4 * 1024 * 1024)); then
  RUN_LOGS=$(mktemp -d /dev/shm/feedback-bench-logs.XXXXXX)
fi
# What cleanup keeps of each log.
KEPT_LOG_BYTES=$((16 * 1024 * 1024))
WORK=$(mktemp -d /tmp/feedback-bench.XXXXXX)
# Where cargo puts the binaries (CARGO_TARGET_DIR, when set, moves them).
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
BENCH=$RELEASE/feedback-bench
# 48 random characters: the services refuse secrets under 32 bytes.
SECRET=$(head -c 64 /dev/urandom | base64 | tr -d '\n/+=' | head -c 48)
export FEEDBACK_KAFKA_BROKERS=127.0.0.1:9092 RUST_LOG=${RUST_LOG:-info}
BENCH_STARTED=$SECONDS
mkdir -p "$LOGS"
rm -f "$LOGS"/*.log

# ---------------------------------------------------------------- cleanup ----
PIDS=()
KAFKA_STOPPED=0
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ $KAFKA_STOPPED == 1 ]]; then
    say "starting Kafka again"
    scripts/infra.sh start kafka
  fi
  mariadb -h 127.0.0.1 -P 3306 -u root -e "DROP DATABASE IF EXISTS \`$DB\`" 2>/dev/null
  redis-cli -h 127.0.0.1 -p 6379 -n "$REDIS_DB" FLUSHDB >/dev/null 2>&1
  if [[ -x $BENCH ]]; then
    timeout 30 "$BENCH" delete-topics "$TOPIC_INGEST" "$TOPIC_AGG" "$TOPIC_FLOOR" "$TOPIC_INGEST.dlq" \
      "$TOPIC_AGG.dlq" >/dev/null 2>&1
  fi
  rm -rf "$WORK"
  local log kept=""
  if [[ $RUN_LOGS != "$LOGS" ]]; then
    for log in "$RUN_LOGS"/*.log; do
      [[ -e $log ]] && tail -c "$KEPT_LOG_BYTES" "$log" >"$LOGS/${log##*/}"
    done
    rm -rf "$RUN_LOGS"
    kept=" (the last $((KEPT_LOG_BYTES >> 20)) MiB of each)"
  fi
  say "cleaned up (database $DB dropped, Redis db $REDIS_DB flushed, bench topics deleted; logs in ${LOGS#"$ROOT"/}$kept)"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null
}

# ---------------------------------------------------------------- helpers ----
# kv FILE KEY: the value of KEY in a key=value file (empty when absent).
kv() { sed -n "s/^$2=//p" "$1" | head -n1; }

# median KEY FILE...: the median of KEY over the key=value FILEs (the lower
# middle one of an even count).
median() {
  local key=$1 f
  shift
  for f in "$@"; do kv "$f" "$key"; done | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# values KEY FILE...: KEY of each FILE, as "a, b, c" (ms, two decimals).
values() {
  local key=$1 f sep=''
  shift
  for f in "$@"; do printf '%s%s' "$sep" "$(calc "$(kv "$f" "$key")")"; sep=', '; done
}

# calc EXPR: floating-point arithmetic.
calc() { awk "BEGIN { printf \"%.${2:-2}f\", ($1) }"; }

free_port() {
  local port=$1
  while ss -Hltn "sport = :$port" | grep -q .; do port=$((port + 1)); done
  echo "$port"
}

# start NAME LOGNAME ENV...: runs $RELEASE/NAME with ENV, remembers its pid in PID_<LOGNAME>.
start() {
  local name=$1 log=$2
  shift 2
  env "$@" "$RELEASE/$name" >"$RUN_LOGS/$log.log" 2>&1 </dev/null &
  PIDS+=($!)
  printf -v "PID_$log" '%s' $!
}

# wait_http NAME URL PID: until URL answers 200, or NAME's process exits.
wait_http() {
  local name=$1 url=$2 pid=$3 waited=0
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "$name exited; last lines of its log:"; tail -n 20 "$RUN_LOGS/$name.log"; exit 1
    fi
    (( waited < 600 )) || die "$name did not answer $url within 60s"
    sleep 0.1; waited=$((waited + 1))
  done
}

# load NAME URL SCRIPT ARGS...: one wrk run, its key=value report in $WORK/NAME.out.
load() {
  local name=$1 url=$2 script=$3
  shift 3
  cpu_start "$LOAD_WHO"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${LOAD_SECONDS}s" --timeout 5s \
    -s "scripts/bench/$script" "$url" -- "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" ||
    { cat "$WORK/$name.err" >&2; die "wrk $name failed"; }
  say "  $name: $(kv "$WORK/$name.out" rps) req/s, p50 $(kv "$WORK/$name.out" p50_ms) ms," \
    "p99 $(kv "$WORK/$name.out" p99_ms) ms, $(kv "$WORK/$name.out" failed) failed"
  local answered
  answered=$(kv "$WORK/$name.out" requests)
  echo "machine_us=$(calc "($answered > 0) ? $(machine_cpu_seconds) * 1000000 / $answered : 0" 1)" >>"$WORK/$name.out"
  say "    cpu: $(cpu_report)"
}

# rss PID: "VmHWM VmRSS" in MiB.
rss() {
  awk '/^VmHWM/ { h = $2 } /^VmRSS/ { r = $2 } END { printf "%.1f %.1f", h / 1024, r / 1024 }' "/proc/$1/status"
}

# CPU use over a phase, per process, so a slow figure says where the cores went.
# cpu_start NAME=PID...: remember each process's CPU time and the machine's.
declare -A CPU_AT=()
CPU_WHO=()
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
# steal_ticks: the time the hypervisor ran something else on this machine's
# CPUs (/proc/stat), in ticks.
steal_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }
listener() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2; }
# settle WHAT: waits (at most 30 s) until the machine is under 10 % busy over
# a second, so a measurement starts on idle cores, not during the tail of the
# previous one.
settle() {
  local waited=0 a b busy dirty
  # What earlier sections wrote (Kafka's log, the spool, MariaDB's files) and
  # the page cache still holds is written back during the next runs, and its
  # writeback stalled the processes on these cores (docs/benchmarks.md):
  # written out now, before the measurement.
  dirty=$(awk '/^Dirty:/ { print int($2 / 1024) }' /proc/meminfo)
  sync
  while (( waited < 30 )); do
    read -r -a a <<<"$(machine_ticks)"; sleep 1; read -r -a b <<<"$(machine_ticks)"
    waited=$((waited + 1))
    busy=$(calc "100 * (${b[0]} - ${a[0]}) / (${b[1]} - ${a[1]} + 0.0001)" 0)
    (( busy < 10 )) && break
  done
  say "  machine ${busy}% busy before $1 (waited ${waited}s, after writing back ${dirty} MiB)"
}

cpu_start() {
  CPU_WHO=("$@" "kafka=$(listener 9092)" "mariadb=$(listener 3306)" "redis=$(listener 6379)")
  local who
  for who in "${CPU_WHO[@]}"; do CPU_AT[$who]=$(ticks "${who#*=}"); done
  CPU_AT[machine]=$(machine_ticks)
  CPU_AT[steal]=$(steal_ticks)
  CPU_AT[time]=$(date +%s.%N)
}
# cpu_report: "ingest 81%, kafka 56%, ... of one core; machine 97% busy; 0 ms
# stolen" since cpu_start. Stolen time is the hypervisor's: a vCPU it stops
# stalls whatever runs on it, and the tail of a run with some can show it.
cpu_report() {
  local hz seconds out="" who busy0 total0 busy1 total1
  hz=$(getconf CLK_TCK)
  seconds=$(calc "$(date +%s.%N) - ${CPU_AT[time]}" 3)
  for who in "${CPU_WHO[@]}"; do
    [[ -n ${who#*=} ]] || continue
    out+="${who%%=*} $(calc "($(ticks "${who#*=}") - ${CPU_AT[$who]}) / $hz / $seconds * 100" 0)%, "
  done
  read -r busy0 total0 <<<"${CPU_AT[machine]}"
  read -r busy1 total1 <<<"$(machine_ticks)"
  echo "${out%, } of one core; machine $(calc "($busy1 - $busy0) / ($total1 - $total0) * 100" 0)% busy;" \
    "$(calc "($(steal_ticks) - ${CPU_AT[steal]}) * 1000 / $hz" 0) ms stolen"
}

# cpu_seconds NAME: the CPU seconds NAME (one of cpu_start's NAME=PID) used since cpu_start.
cpu_seconds() {
  local who
  for who in "${CPU_WHO[@]}"; do
    if [[ ${who%%=*} == "$1" && -n ${who#*=} ]]; then
      calc "($(ticks "${who#*=}") - ${CPU_AT[$who]}) / $(getconf CLK_TCK)" 3
      return
    fi
  done
  echo 0
}

# machine_cpu_seconds: the CPU seconds all processes on the machine used since
# cpu_start, both cores together: the generator, the kernel and every service.
machine_cpu_seconds() {
  local busy0 total0 busy1 total1
  read -r busy0 total0 <<<"${CPU_AT[machine]}"
  read -r busy1 total1 <<<"$(machine_ticks)"
  calc "($busy1 - $busy0) / $(getconf CLK_TCK)" 3
}

# cpu_per COUNT: MariaDB's and the whole machine's CPU per item (µs) since
# cpu_start, as key=value lines for a run's .out file.
cpu_per() {
  echo "mariadb_us=$(calc "$(cpu_seconds mariadb) * 1000000 / $1" 1)"
  echo "machine_us=$(calc "$(machine_cpu_seconds) * 1000000 / $1" 1)"
}

readyz() { curl -s -m 2 "http://127.0.0.1:$INGEST_PORT/readyz" || true; }

# post: one feedback submission; prints the HTTP status and the answer's status field.
post() {
  curl -s -m 10 -o "$WORK/post.json" -w '%{http_code}' -X POST "http://127.0.0.1:$INGEST_PORT/v1/feedback" \
    -H "Authorization: Bearer $(head -n1 "$WORK/students.txt")" -H 'Content-Type: application/json' \
    -d '{"course_id":"BENCH-I000","rating":5,"comment":"warm-up"}' || true
  printf ' %s\n' "$(jq -r '.status // empty' "$WORK/post.json" 2>/dev/null)"
}

# ------------------------------------------------------------------ tools ----
install_tools() {
  command -v jq >/dev/null && command -v curl >/dev/null && command -v wrk >/dev/null && return
  say "apt-get install wrk jq curl"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk jq curl
}

# rate_run NAME RATE URL TOKEN|- PATH...: a fixed-rate run with feedback-bench
# rate, after a second's warm-up at the same rate, into $WORK/NAME.out. Open
# loop: each answer is timed from when its request was due (a wait for a free
# connection counts), and also from when it was sent. It replaced oha, which
# took 51-56 % of a core at 26k stats/s here. In one batch of runs taking
# turns on one query at 26k/s, 32 connections, three each: oha p50 0.52-0.60
# ms, p99 2.0-3.1 ms; feedback-bench rate, requests released each 0.5 ms, CPU
# 46-49 %, p50 0.37-0.38 ms, p99 1.3-2.6 ms; released each 0.2 ms, CPU
# 64-66 %, p99 1.4-12.7 ms (every wake-up of the generator is CPU query does
# not get); each 1 ms, CPU 38-40 %, p50 0.56-0.59 ms (26 requests at once).
rate_run() {
  local name=$1 rate=$2 url=$3 token=$4 args=() path
  shift 4
  [[ $token == - ]] || args+=(--token "$token")
  for path in "$@"; do args+=(--path "$path"); done
  cpu_start "$LOAD_WHO"
  "$BENCH" rate --url "$url" --rate "$rate" --seconds "$LOAD_SECONDS" --connections "$HALF_CONNECTIONS" \
    "${args[@]}" >"$WORK/$name.out" 2>"$WORK/$name.err" || { cat "$WORK/$name.err" >&2; die "rate $name failed"; }
  say "  $name at $rate/s: p50 $(kv "$WORK/$name.out" p50_ms) ms, p99 $(kv "$WORK/$name.out" p99_ms) ms" \
    "(from send: $(kv "$WORK/$name.out" sent_p99_ms) ms), $(kv "$WORK/$name.out" errors) errors;" \
    "the pacer late p99 $(kv "$WORK/$name.out" pacer_late_p99_ms) ms, max $(kv "$WORK/$name.out" pacer_late_max_ms) ms"
  say "    cpu: $(cpu_report); the generator $(kv "$WORK/$name.out" generator_cpu_pct)%"
}

# route_buckets URL ROUTE: the cumulative counts of ROUTE's latency histogram
# on URL/metrics, one "le count" line per bucket.
route_buckets() {
  curl -fsS "$1/metrics" | grep -F "http_request_duration_seconds_bucket{route=\"$2\"" |
    sed -E 's/.*le="([^"]+)".* ([0-9]+)$/\1 \2/'
}

# bucket_p99 BEFORE AFTER: from two snapshots of route_buckets, the upper bound
# (ms) of the bucket holding the 99th percentile of the requests in between.
bucket_p99() {
  paste -d' ' "$1" "$2" | awk '{ le[NR] = $1; n[NR] = $4 - $2 } END {
    total = n[NR]; if (total <= 0) { print "n/a"; exit }
    for (i = 1; i <= NR; i++) if (n[i] >= 0.99 * total) {
      if (le[i] == "+Inf") print "inf"; else printf "%g\n", le[i] * 1000; exit } }'
}

# batch_steps URL: the aggregator's mean milliseconds per batch step so far
# (aggregator_batch_step_seconds on URL/metrics), one "step=ms" line each, in
# the order a batch takes them.
batch_steps() {
  curl -fsS "$1/metrics" | awk '
    /^aggregator_batch_step_seconds_(sum|count)\{/ {
      match($0, /step="[^"]+"/); step = substr($0, RSTART + 6, RLENGTH - 7)
      if ($0 ~ /_sum\{/) sum[step] = $NF; else count[step] = $NF }
    END { n = split("begin courses_lock offsets_lock history counting current_write stats offsets_record commit redis", order, " ")
      for (i = 1; i <= n; i++) if (count[order[i]] > 0) printf "%s=%.2f\n", order[i], sum[order[i]] / count[order[i]] * 1000 }'
}

# steps_line FILE: "begin 0.12, courses_lock 0.20, history 1.20, ..." from batch_steps' output.
steps_line() {
  awk -F= '{ printf "%s%s %s", sep, $1, $2; sep = ", " }' "$1"
}

# ---------------------------------------------------------------- sections ----
prepare() {
  say "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)," \
    "$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
  scripts/infra.sh up
  install_tools
  say "building (cargo build --release -p ingest -p aggregator -p query -p feedback-bench)"
  cargo build --release -p ingest -p aggregator -p query -p feedback-bench
  INGEST_PORT=$(free_port 18080)
  AGG_PORT=$(free_port $((INGEST_PORT + 1)))
  QUERY_PORT=$(free_port $((AGG_PORT + 1)))
  redis-cli -h 127.0.0.1 -p 6379 -n "$REDIS_DB" FLUSHDB >/dev/null
  "$BENCH" tokens --count "$TOKENS" --role student --secret "$SECRET" >"$WORK/students.txt"
  ADMIN_TOKEN=$("$BENCH" tokens --count 1 --role admin --secret "$SECRET")
  say "run $STAMP: topics $TOPIC_INGEST and $TOPIC_AGG, database $DB, Redis db $REDIS_DB," \
    "ports $INGEST_PORT/$AGG_PORT/$QUERY_PORT, $TOKENS student tokens, the services' logs in $RUN_LOGS"
}

# The spool may grow well past its default here: the spooled run measures
# the rate, and a fast run filled the default before its end, after which
# ingest rightly answered 503 (docs/benchmarks.md).
start_ingest() {
  local spool_max=$((2 << 30))
  say "starting ingest on :$INGEST_PORT (rate limits off, spool $WORK/spool, up to $((spool_max >> 30)) GiB)"
  start ingest ingest FEEDBACK_INGEST_ADDR="127.0.0.1:$INGEST_PORT" FEEDBACK_KAFKA_TOPIC="$TOPIC_INGEST" \
    FEEDBACK_SPOOL_DIR="$WORK/spool" FEEDBACK_SPOOL_MAX_BYTES="$spool_max" FEEDBACK_JWT_SECRET="$SECRET" \
    FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN=0 FEEDBACK_RATE_LIMIT_IP_PER_MIN=0
  wait_http ingest "http://127.0.0.1:$INGEST_PORT/healthz" "$PID_ingest"
  # Until the topic exists and a submission goes straight to Kafka.
  local waited=0
  until [[ $(post) == "202 accepted" ]]; do
    (( waited < 60 )) || die "ingest did not accept a submission within 30s: $(readyz)"
    sleep 0.5; waited=$((waited + 1))
  done
}

bench_ingest() {
  local url=http://127.0.0.1:$INGEST_PORT
  LOAD_WHO=ingest=$PID_ingest
  say "ingest: warm-up, then /healthz (ceiling) and /v1/feedback with Kafka up, ${LOAD_SECONDS}s each"
  # Long enough for the broker's JIT: right after Kafka starts, its CPU per
  # message is about twice what it is once warm.
  LOAD_SECONDS=$WARMUP_SECONDS CONNECTIONS=$INGEST_CONNECTIONS \
    load ingest_warmup "$url" submit.lua "$WORK/students.txt" >/dev/null
  settle "ingest's runs"
  load ingest_health "$url/healthz" get.lua -
  CONNECTIONS=$INGEST_CONNECTIONS load ingest_health_wide "$url/healthz" get.lua -
  CONNECTIONS=$INGEST_CONNECTIONS load ingest_up "$url" submit.lua "$WORK/students.txt"
  read -r RSS_UP_HWM RSS_UP <<<"$(rss "$PID_ingest")"
  say "  ingest memory: VmRSS $RSS_UP MiB, VmHWM $RSS_UP_HWM MiB"
  bench_kafka_floor
}

# bench_kafka_floor: ingest's real limit, the same load as its submission run
# on feedback-bench kafka-floor, which produces the same bytes with ingest's
# producer settings and waits for each acknowledgement, and does nothing else
# (no token, parsing, policy, idempotency, rate limits or access log).
bench_kafka_floor() {
  local port url
  port=$(free_port $((QUERY_PORT + 1)))
  url=http://127.0.0.1:$port
  say "ingest's Kafka floor: feedback-bench kafka-floor on :$port (topic $TOPIC_FLOOR), the same load"
  "$BENCH" kafka-floor --topic "$TOPIC_FLOOR" --addr "127.0.0.1:$port" >"$RUN_LOGS/kafka-floor.log" 2>&1 </dev/null &
  PIDS+=($!)
  PID_floor=$!
  wait_http kafka-floor "$url/healthz" "$PID_floor"
  LOAD_WHO=floor=$PID_floor
  # Its producer connects and learns the topic's leaders on the first requests.
  LOAD_SECONDS=2 CONNECTIONS=$INGEST_CONNECTIONS load ingest_floor_warmup "$url" submit.lua "$WORK/students.txt" >/dev/null
  settle "the floor's run"
  CONNECTIONS=$INGEST_CONNECTIONS load ingest_floor "$url" submit.lua "$WORK/students.txt"
  stop_pid "$PID_floor"
  LOAD_WHO=ingest=$PID_ingest
}

# ceiling_runs WHEN: plain INSERTs on one connection and on $LANES, into
# $WORK/ceiling_WHEN_<connections>.out, with MariaDB's CPU per row.
ceiling_runs() {
  local c
  for c in 1 "$LANES"; do
    cpu_start
    "$BENCH" insert-ceiling --mysql-url "$MYSQL_URL" --rows "$EVENTS" --batch 100 --connections "$c" \
      >"$WORK/ceiling_$1_$c.out"
    cpu_per "$EVENTS" >>"$WORK/ceiling_$1_$c.out"
  done
  say "  $(kv "$WORK/ceiling_$1_1.out" rate) rows/s on one connection, $(kv "$WORK/ceiling_$1_$LANES.out" rate) on $LANES;" \
    "MariaDB CPU per row $(kv "$WORK/ceiling_$1_1.out" mariadb_us) and $(kv "$WORK/ceiling_$1_$LANES.out" mariadb_us) µs," \
    "the whole machine's $(kv "$WORK/ceiling_$1_1.out" machine_us) and $(kv "$WORK/ceiling_$1_$LANES.out" machine_us) µs"
}

bench_aggregator() {
  say "aggregator: prefilling $TOPIC_AGG with $EVENTS events (200 courses, 20000 students)"
  "$BENCH" prefill --topic "$TOPIC_AGG" --count "$EVENTS" --courses 200 --students 20000 >"$WORK/prefill.out"
  say "  produced at $(kv "$WORK/prefill.out" rate)/s"
  # The ceiling runs before and after the drain and the table uses the mean of
  # the two: on this VM one run of it swung between 34k and 90k rows/s within
  # minutes (the drain between 19k and 34k events/s), so one reading taken
  # before the drain could flatter or sink the ratio on its own. Each time it
  # runs on one connection and on as many as the aggregator has lanes (all
  # into one table, as the lanes write one history), and the ceiling is the
  # better of the two, as ingest's is the better of two connection counts.
  settle "the aggregator ceiling"
  say "aggregator ceiling: MariaDB plain INSERTs, 100 rows each, one transaction per batch, $EVENTS rows"
  ceiling_runs before
  say "starting the aggregator on :$AGG_PORT; measuring from its first recorded offset"
  start aggregator aggregator FEEDBACK_AGGREGATOR_ADDR="127.0.0.1:$AGG_PORT" FEEDBACK_KAFKA_TOPIC="$TOPIC_AGG" \
    FEEDBACK_CONSUMER_GROUP="bench-$STAMP" FEEDBACK_MYSQL_URL="$MYSQL_URL" FEEDBACK_REDIS_URL="$REDIS_URL"
  cpu_start "aggregator=$PID_aggregator"
  "$BENCH" drain --mysql-url "$MYSQL_URL" --topic "$TOPIC_AGG" --count "$EVENTS" >"$WORK/drain.out"
  say "  $(kv "$WORK/drain.out" rate) events/s over $(kv "$WORK/drain.out" seconds)s" \
    "(start-up and group join before it: $(kv "$WORK/drain.out" startup_seconds)s)"
  say "    cpu: $(cpu_report)"
  cpu_per "$EVENTS" >>"$WORK/drain.out"
  say "    CPU per event: MariaDB $(kv "$WORK/drain.out" mariadb_us) µs, the whole machine $(kv "$WORK/drain.out" machine_us) µs"
  batch_steps "http://127.0.0.1:$AGG_PORT" >"$WORK/steps.out"
  say "  a batch's mean ms per step: $(steps_line "$WORK/steps.out")"
  say "aggregator ceiling again, right after the drain (the aggregator idle)"
  ceiling_runs after
  local c one many
  for c in 1 "$LANES"; do
    { echo "rate=$(calc "($(kv "$WORK/ceiling_before_$c.out" rate) + $(kv "$WORK/ceiling_after_$c.out" rate)) / 2" 0)"
      echo "mariadb_us=$(calc "($(kv "$WORK/ceiling_before_$c.out" mariadb_us) + $(kv "$WORK/ceiling_after_$c.out" mariadb_us)) / 2" 1)"
      echo "machine_us=$(calc "($(kv "$WORK/ceiling_before_$c.out" machine_us) + $(kv "$WORK/ceiling_after_$c.out" machine_us)) / 2" 1)"
    } >"$WORK/ceiling_$c.out"
  done
  one=$(kv "$WORK/ceiling_1.out" rate) many=$(kv "$WORK/ceiling_$LANES.out" rate)
  echo "rate=$(calc "($one > $many) ? $one : $many" 0)" >"$WORK/ceiling.out"
  say "  means: $one rows/s on one connection, $many on $LANES; the ceiling is $(kv "$WORK/ceiling.out" rate) rows/s"
  say "freshness: $FRESH_RATE events/s for ${FRESH_SECONDS}s over $FRESH_COURSES courses, produce to visible in Redis"
  cpu_start "aggregator=$PID_aggregator"
  "$BENCH" freshness --topic "$TOPIC_AGG" --mysql-url "$MYSQL_URL" --redis-url "$REDIS_URL" \
    --rate "$FRESH_RATE" --seconds "$FRESH_SECONDS" --courses "$FRESH_COURSES" >"$WORK/fresh.out"
  say "  p50 $(kv "$WORK/fresh.out" p50_ms) ms, p99 $(kv "$WORK/fresh.out" p99_ms) ms," \
    "$(kv "$WORK/fresh.out" visible) of $(kv "$WORK/fresh.out" produced) visible," \
    "backlog $(kv "$WORK/fresh.out" backlog_at_end) when producing stopped"
  say "    cpu: $(cpu_report)"
  read -r RSS_AGG_HWM RSS_AGG <<<"$(rss "$PID_aggregator")"
  say "  aggregator memory: VmRSS $RSS_AGG MiB, VmHWM $RSS_AGG_HWM MiB (the drain and the freshness run)"
  stop_pid "$PID_aggregator"
}

bench_query() {
  local url=http://127.0.0.1:$QUERY_PORT paths=() warm=0
  say "starting query on :$QUERY_PORT"
  start query query FEEDBACK_QUERY_ADDR="127.0.0.1:$QUERY_PORT" FEEDBACK_MYSQL_URL="$MYSQL_URL" \
    FEEDBACK_REDIS_URL="$REDIS_URL" FEEDBACK_JWT_SECRET="$SECRET"
  wait_http query "$url/healthz" "$PID_query"
  LOAD_WHO=query=$PID_query
  for i in $(seq 0 $((STATS_COURSES - 1))); do paths+=("$(printf '/v1/courses/BENCH-C%04d/stats' "$i")"); done
  # Read each twice: a miss fills Redis, so the second answer must come from the cache.
  for path in "${paths[@]}"; do
    curl -fsS -o /dev/null -H "Authorization: Bearer $ADMIN_TOKEN" "$url$path"
    [[ $(curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "$url$path" | jq -r .source) == cache ]] && warm=$((warm + 1))
  done
  say "query: $warm of $STATS_COURSES courses answered from Redis; /healthz (ceiling) and stats, ${LOAD_SECONDS}s each"
  (( warm == STATS_COURSES )) || say "  warning: some stats are not cache hits"
  LOAD_SECONDS=2 load query_warmup "$url" get.lua "$ADMIN_TOKEN" "${paths[@]}" >/dev/null
  settle "query's runs"
  load query_health "$url/healthz" get.lua -
  load query_stats "$url" get.lua "$ADMIN_TOKEN" "${paths[@]}"
  HALF_RATE=$(calc "$(kv "$WORK/query_stats.out" rps) / 2" 0)
  say "query at half load ($HALF_RATE req/s, fixed rate with feedback-bench rate): stats, then /healthz as its floor," \
    "$HALF_REPEATS times"
  local route="/v1/courses/{course_id}/stats" r
  for r in $(seq 1 "$HALF_REPEATS"); do
    route_buckets "$url" "$route" >"$WORK/query_half.before"
    rate_run "query_half_$r" "$HALF_RATE" "$url" "$ADMIN_TOKEN" "${paths[@]}"
    route_buckets "$url" "$route" >"$WORK/query_half.after"
    # What query itself took (its own histogram): the rest of the p99 is the
    # kernel, the scheduler and the load generator on the same cores.
    echo "inside_p99_ms=$(bucket_p99 "$WORK/query_half.before" "$WORK/query_half.after")" >>"$WORK/query_half_$r.out"
    say "  inside query (its latency histogram): p99 <= $(kv "$WORK/query_half_$r.out" inside_p99_ms) ms"
    rate_run "query_half_health_$r" "$HALF_RATE" "$url" - /healthz
  done
  read -r RSS_QUERY_HWM RSS_QUERY <<<"$(rss "$PID_query")"
  say "  query memory: VmRSS $RSS_QUERY MiB, VmHWM $RSS_QUERY_HWM MiB"
  stop_pid "$PID_query"
}

bench_spooled() {
  local url=http://127.0.0.1:$INGEST_PORT waited=0 t0 t1 depth
  LOAD_WHO=ingest=$PID_ingest
  say "ingest with Kafka down: stopping Kafka (it is started again right after, and on exit)"
  KAFKA_STOPPED=1
  scripts/infra.sh stop kafka
  until [[ $(readyz | jq -r '.checks.kafka.breaker // empty' 2>/dev/null) == open ]]; do
    (( waited < 60 )) || die "the breaker did not open within 60 submissions: $(readyz)"
    post >/dev/null; waited=$((waited + 1))
  done
  say "  breaker open after $waited submissions; /v1/feedback spooled for ${LOAD_SECONDS}s"
  CONNECTIONS=$INGEST_CONNECTIONS load ingest_spooled "$url" submit.lua "$WORK/students.txt"
  read -r RSS_HWM RSS_SPOOLED <<<"$(rss "$PID_ingest")"
  SPOOL_DEPTH=$(readyz | jq -r '.checks.spool.depth')
  say "  spool depth $SPOOL_DEPTH; ingest memory VmRSS $RSS_SPOOLED MiB, VmHWM $RSS_HWM MiB; starting Kafka"
  LOAD_WHO=ingest=$PID_ingest
  t0=$(date +%s.%N)
  scripts/infra.sh start kafka
  KAFKA_STOPPED=0
  t1=$(date +%s.%N)
  cpu_start "$LOAD_WHO"
  KAFKA_START_S=$(calc "$t1 - $t0" 1)
  until depth=$(readyz | jq -r '.checks.spool.depth // empty' 2>/dev/null) && [[ $depth == 0 ]]; do
    (( $(calc "$(date +%s.%N) - $t1 > 300" 0) == 0 )) || die "the spool did not drain within 300s: $(readyz)"
    sleep 0.1
  done
  DRAIN_S=$(calc "$(date +%s.%N) - $t1" 1)
  say "  Kafka answered after ${KAFKA_START_S}s; spool drained ${DRAIN_S}s later"
  say "    cpu: $(cpu_report)"
  "$BENCH" topic-count --topic "$TOPIC_INGEST" >"$WORK/topic.out"
}

# ------------------------------------------------------------------ table ----
ROWS=()
# row MEASURE VALUE CEILING RATIO TARGET OK
row() { ROWS+=("$1|$2|$3|$4|$5|$6"); }

# times_of A B: "x<A/B>", or "-" when B is 0 (not measured).
times_of() { [[ $(calc "$2 > 0" 0) == 1 ]] && echo "x$(calc "$1 / $2" 1)" || echo -; }

# ratio_row MEASURE VALUE CEILING UNIT MIN: a rate against its ceiling, ok when value/ceiling >= MIN.
ratio_row() {
  local ratio ok
  ratio=$(calc "$2 / $3")
  ok=$([[ $(calc "$ratio >= $5" 0) == 1 ]] && echo yes || echo NO)
  row "$1" "$2 $4" "$3 $4" "$ratio" ">= $5" "$ok"
}

# latency_row MEASURE VALUE_MS FLOOR_MS MAX_MS: a latency beside the floor measured with it.
# latency_ratio_row MEASURE VALUE_MS FLOOR_MS MAX_RATIO: a latency beside the
# floor measured with it, ok when value/floor <= MAX_RATIO.
latency_ratio_row() {
  local ratio ok
  ratio=$(calc "$2 / $3" 2)
  ok=$([[ $(calc "$ratio <= $4" 0) == 1 ]] && echo yes || echo NO)
  row "$1" "$(calc "$2") ms" "$(calc "$3") ms" "x$ratio" "<= x$4" "$ok"
}

# rss_row MEASURE HWM_MIB RSS_MIB: a service's peak resident memory under the bench's load.
rss_row() {
  row "$1" "$2 MiB (VmRSS at the end $3)" - - "<= 64 MiB" "$([[ $(calc "$2 <= 64" 0) == 1 ]] && echo yes || echo NO)"
}

latency_row() {
  local ok=- ratio=- target=-
  [[ $3 != - ]] && ratio="x$(calc "$2 / $3" 1)"
  if [[ $4 != - ]]; then
    target="<= $4 ms"
    ok=$([[ $(calc "$2 <= $4" 0) == 1 ]] && echo yes || echo NO)
  fi
  row "$1" "$(calc "$2") ms" "$([[ $3 == - ]] && echo - || echo "$(calc "$3") ms")" "$ratio" "$target" "$ok"
}

failures_row() {
  local f=$WORK/$2.out statuses
  statuses=$(grep -E '^status_' "$f" | sed 's/^status_//; s/=/: /' | paste -sd, - | sed 's/,/, /g' || true)
  row "$1" "$(kv "$f" unexpected) of $(kv "$f" requests)${statuses:+ (HTTP $statuses)}, $(kv "$f" socket_errors) socket errors" \
    - - "0" "$([[ $(kv "$f" failed) == 0 ]] && echo yes || echo NO)"
}

table_ingest() {
  # h: /healthz at the submission runs' connections (their latency floor);
  # ceiling: the better /healthz rate of the two connection counts.
  local h=$WORK/ingest_health_wide.out up=$WORK/ingest_up.out sp=$WORK/ingest_spooled.out narrow wide ceiling
  narrow=$(kv "$WORK/ingest_health.out" rps) wide=$(kv "$h" rps)
  ceiling=$(calc "($narrow > $wide) ? $narrow : $wide" 0)
  ratio_row "ingest accepted, Kafka up (vs its Kafka floor)" "$(kv "$up" good_rps)" \
    "$(kv "$WORK/ingest_floor.out" good_rps)" "req/s" 0.8
  latency_row "  the Kafka floor's p50" "$(kv "$WORK/ingest_floor.out" p50_ms)" - -
  latency_row "  the Kafka floor's p99" "$(kv "$WORK/ingest_floor.out" p99_ms)" - -
  failures_row "  the Kafka floor's non-202" ingest_floor
  # Both runs keep the cores busy, so their rates stand in the inverse ratio
  # of what a request costs the whole machine (the generator, Kafka and the
  # kernel included): at 0.8, a submission may cost it at most 1.25 times
  # the floor's request.
  local m_up m_floor
  m_up=$(kv "$up" machine_us) m_floor=$(kv "$WORK/ingest_floor.out" machine_us)
  row "  the whole machine's CPU per request" "$m_up µs" "$m_floor µs" "$(times_of "$m_up" "$m_floor")" "<= x1.25" -
  ratio_row "ingest accepted, Kafka up (vs /healthz)" "$(kv "$up" good_rps)" "$ceiling" "req/s" 0.3
  latency_row "ingest p50, Kafka up" "$(kv "$up" p50_ms)" "$(kv "$h" p50_ms)" -
  latency_row "ingest p99, Kafka up" "$(kv "$up" p99_ms)" "$(kv "$h" p99_ms)" -
  failures_row "ingest non-202, Kafka up" ingest_up
  ratio_row "ingest spooled, Kafka down (vs /healthz)" "$(kv "$sp" good_rps)" "$ceiling" "req/s" 0.2
  latency_row "ingest p50, Kafka down" "$(kv "$sp" p50_ms)" "$(kv "$h" p50_ms)" -
  latency_row "ingest p99, Kafka down" "$(kv "$sp" p99_ms)" "$(kv "$h" p99_ms)" -
  failures_row "ingest non-202, Kafka down" ingest_spooled
  row "spool drain after Kafka is back" "$SPOOL_DEPTH in ${DRAIN_S} s ($(calc "$SPOOL_DEPTH / $DRAIN_S" 0)/s)" \
    "Kafka start ${KAFKA_START_S} s" - - -
  local accepted delivered
  local w=$WORK/ingest_warmup.out
  accepted=$(( $(kv "$w" requests) - $(kv "$w" unexpected) + $(kv "$up" requests) - $(kv "$up" unexpected) +
    $(kv "$sp" requests) - $(kv "$sp" unexpected) ))
  delivered=$(kv "$WORK/topic.out" messages)
  row "ingest topic after the drain" "$delivered events" "$accepted answered 202" - ">= 202s" \
    "$([[ $delivered -ge $accepted ]] && echo yes || echo NO)"
  local peak
  peak=$(calc "($RSS_HWM > $RSS_UP_HWM) ? $RSS_HWM : $RSS_UP_HWM" 1)
  row "ingest peak RSS (VmHWM; VmRSS up/down)" "$peak MiB ($RSS_UP/$RSS_SPOOLED)" - - "<= 64 MiB" \
    "$([[ $(calc "$peak <= 64" 0) == 1 ]] && echo yes || echo NO)"
}

table_aggregator() {
  local one many
  one=$(kv "$WORK/ceiling_1.out" rate) many=$(kv "$WORK/ceiling_$LANES.out" rate)
  ratio_row "aggregator events (vs MariaDB INSERTs)" "$(kv "$WORK/drain.out" rate)" "$(kv "$WORK/ceiling.out" rate)" "rows/s" 0.5
  row "  INSERTs on 1 and on $LANES connections" "$one; $many rows/s" - \
    "$(calc "$(kv "$WORK/drain.out" rate) / $one" 2); $(calc "$(kv "$WORK/drain.out" rate) / $many" 2)" - -
  # MariaDB's own CPU per drained event beside its CPU per ceiling row. Where
  # the ceiling is bound by MariaDB's CPU (on $LANES connections here), a ratio
  # of 0.5 allows the drain at most twice a plain row's MariaDB work per event,
  # and only with the cores to MariaDB alone as in the ceiling: the aggregator,
  # Kafka and Redis run on them too.
  local per_event=$(kv "$WORK/drain.out" mariadb_us) per_one=$(kv "$WORK/ceiling_1.out" mariadb_us)
  local per_many=$(kv "$WORK/ceiling_$LANES.out" mariadb_us)
  row "  MariaDB CPU per event; per INSERT row" "$per_event µs" "$per_one; $per_many µs" \
    "$(times_of "$per_event" "$per_one"); $(times_of "$per_event" "$per_many")" - -
  # What an event costs the whole machine (MariaDB, the aggregator, Kafka,
  # Redis, the kernel, the bench's own poller) against a ceiling row (MariaDB
  # and the inserting client), and the cores the drain would take at 0.5 of
  # the ceiling at that cost: more than the machine has means 0.5 cannot be
  # reached here by keeping the lanes busier, only by a cheaper event.
  local m_event m_one m_many
  m_event=$(kv "$WORK/drain.out" machine_us) m_one=$(kv "$WORK/ceiling_1.out" machine_us)
  m_many=$(kv "$WORK/ceiling_$LANES.out" machine_us)
  row "  the whole machine's CPU per event; per row" "$m_event µs" "$m_one; $m_many µs" \
    "$(times_of "$m_event" "$m_one"); $(times_of "$m_event" "$m_many")" - -
  row "  cores the drain takes at 0.5 of the ceiling" \
    "$(calc "$m_event * 0.5 * $(kv "$WORK/ceiling.out" rate) / 1000000" 2) cores" "$(nproc) cores" - - -
  # A one-connection ceiling batch is one INSERT and a commit, like the history
  # step. Redis is left out: a lane queues its deltas and goes on (one task
  # applies them).
  row "  drain batch: MySQL steps; the history" \
    "$(awk -F= '$1 != "redis" { t += $2 } END { printf "%.2f ms", t }' "$WORK/steps.out"); $(kv "$WORK/steps.out" history) ms" \
    "$(calc "100000 / $one" 2) ms a batch" - - -
  local fr=$WORK/fresh.out
  latency_row "freshness p50 @ $(kv "$fr" produce_rate)/s produced" "$(kv "$fr" p50_ms)" - -
  latency_row "freshness p99 @ $(kv "$fr" produce_rate)/s produced" "$(kv "$fr" p99_ms)" - 500
  latency_row "freshness max" "$(kv "$fr" max_ms)" - -
  row "freshness backlog when producing stopped" "$(kv "$fr" backlog_at_end) events" - - - -
  row "freshness events seen in Redis" "$(kv "$fr" visible) of $(kv "$fr" produced)" - - "all" \
    "$([[ $(kv "$fr" visible) == "$(kv "$fr" produced)" ]] && echo yes || echo NO)"
  rss_row "aggregator peak RSS (VmHWM)" "$RSS_AGG_HWM" "$RSS_AGG"
}

table_query() {
  local qh=$WORK/query_health.out qs=$WORK/query_stats.out
  ratio_row "query stats, cache hits (vs /healthz)" "$(kv "$qs" good_rps)" "$(kv "$qh" rps)" "req/s" 0.5
  latency_row "query stats p99, open loop" "$(kv "$qs" p99_ms)" "$(kv "$qh" p99_ms)" -
  failures_row "query stats non-200" query_stats
  local runs=() floors=() r bad=0
  for r in $(seq 1 "$HALF_REPEATS"); do
    runs+=("$WORK/query_half_$r.out") floors+=("$WORK/query_half_health_$r.out")
    bad=$((bad + $(kv "$WORK/query_half_$r.out" total) - $(kv "$WORK/query_half_$r.out" ok) + $(kv "$WORK/query_half_$r.out" errors)))
  done
  latency_row "query stats p50 @ $HALF_RATE/s (half)" "$(median p50_ms "${runs[@]}")" \
    "$(median p50_ms "${floors[@]}")" -
  latency_ratio_row "query stats p99 @ $HALF_RATE/s (half), median (vs /healthz)" "$(median p99_ms "${runs[@]}")" \
    "$(median p99_ms "${floors[@]}")" 1.5
  row "  p99 of each run: stats; /healthz" "$(values p99_ms "${runs[@]}") ms; $(values p99_ms "${floors[@]}") ms" - - - -
  row "  of which inside query (histogram)" "<= $(median inside_p99_ms "${runs[@]}") ms" - - - -
  row "  timed from send, not from due" "p50 $(median sent_p50_ms "${runs[@]}") ms, p99 $(median sent_p99_ms "${runs[@]}") ms" - - - -
  row "  the generator: CPU; its pacer late" \
    "$(median generator_cpu_pct "${runs[@]}")% of a core; p99 $(median pacer_late_p99_ms "${runs[@]}") ms, max $(median pacer_late_max_ms "${runs[@]}") ms" \
    - - - -
  row "query half-load answers not 200" "$bad" - - 0 "$([[ $bad == 0 ]] && echo yes || echo NO)"
  rss_row "query peak RSS (VmHWM)" "$RSS_QUERY_HWM" "$RSS_QUERY"
}

print_table() {
  echo
  echo "Benchmark $STAMP on $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1))."
  echo "The load generators (wrk -t$THREADS -c$CONNECTIONS and -c$INGEST_CONNECTIONS for submissions, feedback-bench,"
  echo "its fixed-rate runs -c$HALF_CONNECTIONS) run on the same cores as the services, Kafka, Redis and MariaDB: every ceiling is measured"
  echo "the same way in this run; ingest's is the better /healthz of -c$CONNECTIONS and -c$INGEST_CONNECTIONS."
  echo
  {
    echo "measure|value|ceiling|ratio|target|ok?"
    echo "-|-|-|-|-|-"
    printf '%s\n' "${ROWS[@]}"
  } | awk -F'|' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR }
    END {
      for (r = 1; r <= n; r++) {
        line = ""
        for (i = 1; i <= 6; i++) {
          c = cell[r, i]
          if (c == "-" && r == 2) { c = ""; while (length(c) < w[i]) c = c "-" }
          line = line (i > 1 ? " | " : "") sprintf("%-" w[i] "s", c)
        }
        print line
      }
    }'
  echo
  echo "ratio: value / ceiling for rates; for latencies, value / the same run's /healthz latency (x)."
  echo "Took $((SECONDS - BENCH_STARTED))s."
}

# ------------------------------------------------------------------- main ----
RUN_INGEST=0 RUN_AGGREGATOR=0 RUN_QUERY=0
(( $# > 0 )) || set -- ingest aggregator query
for section in "$@"; do
  case $section in
    ingest) RUN_INGEST=1 ;;
    aggregator) RUN_AGGREGATOR=1 ;;
    query) RUN_QUERY=1 RUN_AGGREGATOR=1 ;;
    *) die "unknown section '$section' (ingest, aggregator, query)" ;;
  esac
done
prepare
if [[ $RUN_INGEST == 1 ]]; then start_ingest; bench_ingest; fi
if [[ $RUN_AGGREGATOR == 1 ]]; then bench_aggregator; fi
if [[ $RUN_QUERY == 1 ]]; then bench_query; fi
if [[ $RUN_INGEST == 1 ]]; then bench_spooled; table_ingest; fi
if [[ $RUN_AGGREGATOR == 1 ]]; then table_aggregator; fi
if [[ $RUN_QUERY == 1 ]]; then table_query; fi
print_table
