# shellcheck shell=bash
# Sourced, not run: starts ingest, the aggregator and query (debug builds)
# on free ports with a Kafka topic, a MariaDB database and a Redis database
# of their own, in shared-secret mode, for the checks that drive the real
# services from outside (scripts/lib/fuzz-api.sh, scripts/lib/browser-tests.sh).
#
#   services_start NAME   builds the binaries, makes the resources, starts the
#                         services and waits until each answers /readyz; sets
#                         BIN, WORK, TOPIC, DATABASE, INGEST_PORT,
#                         AGGREGATOR_PORT, QUERY_PORT and exports the
#                         services' FEEDBACK_* settings (FEEDBACK_JWT_SECRET
#                         among them, for `ingest mint-token`).
#   services_stop STATUS  stops them and removes what services_start made; after
#                         a failure (STATUS not 0) the logs stay in $WORK and
#                         their last lines are shown.
#
# The resources are named `fbtest…`, so that scripts/test.sh's leftovers step
# removes whatever a killed run left behind. The caller defines `say` (its
# progress lines). Settings already in the environment (RUST_LOG, the rate
# limits) are passed on.

services_pids=()
services_redis_db=

services_start() {
  local name=$1
  say "building ingest, aggregator, query and feedback-bench (debug)"
  cargo build -q --bin ingest --bin aggregator --bin query --bin feedback-bench
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug

  local run_id
  run_id=$(od -An -N5 -tx1 /dev/urandom | tr -d ' \n')
  TOPIC=fbtest-$name-$run_id
  DATABASE=fbtest_${name//-/_}_$run_id
  WORK=${TMPDIR:-/tmp}/feedback-tests/$name-$run_id
  mkdir -p "$WORK/spool"
  # The tests' own allocator of Redis databases (feedback_tests::fresh_redis_database).
  services_redis_db=$((1 + $(redis-cli -h 127.0.0.1 -n 255 INCR feedback-tests:next-db) % 200))
  redis-cli -h 127.0.0.1 -n "$services_redis_db" FLUSHDB >/dev/null
  mariadb -h 127.0.0.1 -u root -e "CREATE DATABASE \`$DATABASE\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
  read -r INGEST_PORT AGGREGATOR_PORT QUERY_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

  export FEEDBACK_JWT_SECRET="$name-$run_id-a-secret-of-at-least-32-bytes"
  export FEEDBACK_KAFKA_TOPIC=$TOPIC
  export FEEDBACK_CONSUMER_GROUP=$TOPIC
  export FEEDBACK_MYSQL_URL=mysql://root@127.0.0.1:3306/$DATABASE
  export FEEDBACK_REDIS_URL=redis://127.0.0.1:6379/$services_redis_db
  export FEEDBACK_SPOOL_DIR=$WORK/spool
  export FEEDBACK_INGEST_ADDR=127.0.0.1:$INGEST_PORT
  export FEEDBACK_AGGREGATOR_ADDR=127.0.0.1:$AGGREGATOR_PORT
  export FEEDBACK_QUERY_ADDR=127.0.0.1:$QUERY_PORT
  export RUST_LOG=${RUST_LOG:-info}

  say "ingest :$INGEST_PORT, aggregator :$AGGREGATOR_PORT, query :$QUERY_PORT; topic $TOPIC, database $DATABASE, Redis db $services_redis_db; logs in $WORK"
  local service port i
  for service in ingest aggregator query; do
    "$BIN/$service" >"$WORK/$service.log" 2>&1 &
    services_pids+=($!)
  done
  for port in "$INGEST_PORT" "$AGGREGATOR_PORT" "$QUERY_PORT"; do
    for ((i = 0; ; i++)); do
      curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
      ((i < 120)) || { say "nothing ready on :$port after 60 s"; return 1; }
      sleep 0.5
    done
  done
}

services_stop() {
  local status=$1 pid service
  for pid in "${services_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${services_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${WORK:-} ]] && ((status != 0)); then
    for service in ingest aggregator query; do
      [[ -f $WORK/$service.log ]] || continue
      printf '\n--- the last lines of %s (%s) ---\n' "$service" "$WORK/$service.log"
      tail -n 30 "$WORK/$service.log"
    done
  fi
  [[ -z ${DATABASE:-} ]] || mariadb -h 127.0.0.1 -u root -e "DROP DATABASE IF EXISTS \`$DATABASE\`" || true
  # The topic and any made after its name (`.dlq`).
  [[ -z ${TOPIC:-} ]] || "$BIN/feedback-bench" delete-topics --prefix "$TOPIC" >/dev/null 2>&1 || true
  [[ -z $services_redis_db ]] || redis-cli -h 127.0.0.1 -n "$services_redis_db" FLUSHDB >/dev/null 2>&1 || true
  [[ -z ${WORK:-} ]] || ((status != 0)) || rm -rf "$WORK"
}
