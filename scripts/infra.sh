#!/usr/bin/env bash
# The real stack on loopback, without Docker: Kafka (single-node KRaft), Redis,
# MariaDB, and Keycloak as the OIDC identity provider (realm `feedback`).
#
#   scripts/infra.sh up|down|status
#   scripts/infra.sh jars           (Kafka's jars, Keycloak's zip into the cache; nothing started)
#   scripts/infra.sh start|stop|kill kafka|redis|mysql|keycloak     (kill = SIGKILL)
#   scripts/infra.sh cluster up|down|status   (a 3-node Redis Cluster on 7101-7103, not part of `up`)
#
# `up` installs what is missing (apt for Redis and MariaDB, Maven Central for
# Kafka's jars and Keycloak's distribution, cached outside the repo), starts
# each service and waits until it answers a real request. Idempotent: a second
# `up` finds everything answering and changes nothing. Data lives in var/infra/
# (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The stack listens on fixed ports, so it is the machine's, not the checkout's:
# a pointer file says which checkout's var/infra the running stack lives in, so
# `stop|start|kill` from a second checkout (a fresh clone running the tests)
# restarts the same broker on the same data instead of formatting a new one.
POINTER=/tmp/feedback-infra-9092.state
STATE=${FEEDBACK_INFRA_DIR:-$ROOT/var/infra}
if [[ -z ${FEEDBACK_INFRA_DIR:-} && -s $POINTER ]] && [[ -d $(cat "$POINTER") ]] &&
  ss -Hltn 'sport = :9092 or sport = :6379 or sport = :3306 or sport = :8180' 2>/dev/null | grep -q .; then
  STATE=$(cat "$POINTER")
fi
KAFKA_VERSION=4.1.1
KAFKA_CACHE=${FEEDBACK_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/feedback/kafka-$KAFKA_VERSION}
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
REDIS_PORT=6379
MYSQL_PORT=3306
# Keycloak 24 (the last release line that runs on Java 17), the quarkus
# distribution from Maven Central. 24 serves everything, health included, on
# its one HTTP port (the separate management port came with 25).
KEYCLOAK_VERSION=24.0.5
KEYCLOAK_SHA1=785edd96e7eaa3d84ab22f91c504a0cf25d52552
KEYCLOAK_CACHE=${FEEDBACK_KEYCLOAK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/feedback/keycloak-$KEYCLOAK_VERSION}
KEYCLOAK_PORT=8180
KEYCLOAK_REALM=feedback
KEYCLOAK_ISSUER=http://127.0.0.1:$KEYCLOAK_PORT/realms/$KEYCLOAK_REALM
# Short socket path: unix sockets are limited to about 107 bytes.
MYSQL_SOCKET=/tmp/feedback-mysqld-$MYSQL_PORT.sock

say() { printf '[infra %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- probes ----
redis_ping() { timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }
mysql_ping() { mariadb -h 127.0.0.1 -P "$MYSQL_PORT" -u root --connect-timeout=2 -N -e 'SELECT 1' >/dev/null 2>&1; }
kafka_ping() { python3 "$ROOT/scripts/lib/kafka_probe.py" "127.0.0.1:$KAFKA_PORT" >/dev/null 2>&1; }
# The realm's discovery document: the server is up and the realm imported.
keycloak_ping() { curl -fsS -m 3 -o /dev/null "$KEYCLOAK_ISSUER/.well-known/openid-configuration" 2>/dev/null; }

# wait_for NAME SECONDS [PID]: polls NAME's probe once a second, printing
# progress; gives up at once when PID (the process just started) has exited.
wait_for() {
  local name=$1 limit=$2 pid=${3:-} waited=0
  while ! "${name}_ping"; do
    if (( waited >= limit )); then
      echo
      die "$name did not answer within ${limit}s (log: $(log_file "$name"))"
    fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      echo
      exited "$name"
    fi
    if (( waited == 0 )); then printf '[infra %s] waiting for %s ' "$(date +%H:%M:%S)" "$name"; fi
    printf '.'
    sleep 1
    waited=$((waited + 1))
  done
  if (( waited > 0 )); then printf ' %ss\n' "$waited"; fi
}

log_file() { echo "$STATE/$1/$1.log"; }

# NAME's process exited while starting: say so with the end of its log.
exited() {
  say "$1 exited while starting; the end of $(log_file "$1"):"
  tail -n 15 "$(log_file "$1")" 2>/dev/null | sed 's/^/    /' >&2 || true
  die "$1 did not start"
}

# Refuses to start NAME when something else holds its port without answering
# as NAME (a system service the package install started, another program).
require_free_port() {
  local name=$1 port holder
  port=$(port_of "$name")
  holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*' | head -n1 | cut -d'(' -f3 || true)
  if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    die "port $port is taken${holder:+ by $holder}, which does not answer as $name here; stop it (a system service: 'systemctl stop' it, or 'service ... stop') and run again"
  fi
}
pid_file() { echo "$STATE/$1/$1.pid"; }
port_of() {
  case $1 in
    kafka) echo $KAFKA_PORT ;; redis) echo $REDIS_PORT ;; mysql) echo $MYSQL_PORT ;; keycloak) echo $KEYCLOAK_PORT ;;
  esac
}

# The pid of the process listening on NAME's port (whoever started it), else the pid file's.
pid_of() {
  local pid
  pid=$(ss -Hltnp "sport = :$(port_of "$1")" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2 || true)
  if [[ -z $pid && -f $(pid_file "$1") ]]; then
    pid=$(cat "$(pid_file "$1")")
    kill -0 "$pid" 2>/dev/null || pid=""
  fi
  echo "$pid"
}

# -------------------------------------------------------------- installs ----
APT_UPDATED=0
apt_update() {
  if [[ $APT_UPDATED == 0 ]]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    APT_UPDATED=1
  fi
}
apt_install() {
  apt_update
  say "apt-get install $*"
  # The packages must not start their own system services (on a machine with
  # an init system they would take 3306 and 6379 with other settings): a
  # policy-rc.d that refuses, for the length of the install.
  # Marked as ours, so one left behind by an interrupted run is recognised
  # and removed; removed on any exit.
  local policy=/usr/sbin/policy-rc.d marker='# placed by feedback scripts/infra.sh'
  if [[ -e $policy ]] && grep -qF "$marker" "$policy"; then rm -f "$policy"; fi
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$marker" >"$policy" && chmod +x "$policy" &&
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" || rc=$?
  if grep -qF "$marker" "$policy" 2>/dev/null; then rm -f "$policy"; trap - EXIT; fi
  ((rc == 0)) || die "apt-get install failed"
}

# Java 17 where the release has it (bookworm), else the release's default JRE
# (Java 21 on trixie; Kafka 4.1 runs on both). After apt_update.
java_package() {
  if apt-cache show openjdk-17-jre-headless >/dev/null 2>&1; then
    echo openjdk-17-jre-headless
  else
    echo default-jre-headless
  fi
}

install_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v mariadbd >/dev/null || missing+=(mariadb-server)
  command -v mariadb >/dev/null || missing+=(mariadb-client)
  if ! command -v java >/dev/null; then
    apt_update
    missing+=("$(java_package)")
  fi
  command -v mvn >/dev/null || missing+=(maven)
  command -v ss >/dev/null || missing+=(iproute2)
  command -v curl >/dev/null || missing+=(curl)
  command -v unzip >/dev/null || missing+=(unzip)
  # promtool checks and unit-tests the alert rules (scripts/test.sh); Debian
  # ships it with the server, which is not started.
  command -v promtool >/dev/null || missing+=(prometheus)
  # cargo builds librdkafka from source (rdkafka-sys: ./configure, make, a C compiler).
  { command -v cc && command -v make; } >/dev/null || missing+=(build-essential)
  # scripts/test.sh makes a venv for its schema checks: Debian's python3 needs python3-venv.
  if ! command -v python3 >/dev/null; then
    missing+=(python3 python3-venv)
  elif ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    missing+=(python3-venv)
  fi
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
}

install_kafka() {
  if [[ -f $KAFKA_CACHE/lib/kafka_2.13-$KAFKA_VERSION.jar && -f $KAFKA_CACHE/complete ]]; then return; fi
  say "assembling Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_CACHE"
  mkdir -p "$KAFKA_CACHE"
  # Maven prints one line per downloaded artifact: that is the progress.
  (cd "$ROOT/scripts/kafka" && mvn -B -ntp -Dstyle.color=never dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$KAFKA_CACHE/lib") |
    grep --line-buffered -E 'Copying|BUILD|ERROR' | sed -u 's/^/    /' || true
  [[ -f $KAFKA_CACHE/lib/kafka_2.13-$KAFKA_VERSION.jar ]] || die "Kafka jars did not resolve"
  touch "$KAFKA_CACHE/complete"
  say "Kafka jars cached ($(ls "$KAFKA_CACHE/lib" | wc -l) files)"
}

# Keycloak's distribution zip from Maven Central, checked against the SHA-1
# pinned above (and the one Maven Central publishes), unpacked once into the cache.
install_keycloak() {
  if [[ -f $KEYCLOAK_CACHE/complete ]]; then return; fi
  local base=https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$KEYCLOAK_VERSION
  local zip=$KEYCLOAK_CACHE.zip published
  mkdir -p "$(dirname "$KEYCLOAK_CACHE")"
  if [[ ! -f $zip ]] || ! echo "$KEYCLOAK_SHA1  $zip" | sha1sum -c --status; then
    say "downloading Keycloak $KEYCLOAK_VERSION from Maven Central (about 176 MB)"
    curl -fL --progress-bar -o "$zip.part" "$base/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip" ||
      die "Keycloak download failed"
    mv "$zip.part" "$zip"
  fi
  published=$(curl -fsS "$base/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip.sha1" | cut -c1-40 || true)
  [[ -z $published || $published == "$KEYCLOAK_SHA1" ]] ||
    die "Maven Central publishes SHA-1 $published for Keycloak $KEYCLOAK_VERSION, not the pinned $KEYCLOAK_SHA1"
  echo "$KEYCLOAK_SHA1  $zip" | sha1sum -c --status ||
    { rm -f "$zip"; die "the Keycloak zip does not match SHA-1 $KEYCLOAK_SHA1 (removed; run again)"; }
  say "unpacking Keycloak into $KEYCLOAK_CACHE"
  rm -rf "$KEYCLOAK_CACHE" "$KEYCLOAK_CACHE.tmp"
  mkdir -p "$KEYCLOAK_CACHE.tmp"
  unzip -q "$zip" -d "$KEYCLOAK_CACHE.tmp" || die "unzip of $zip failed"
  mv "$KEYCLOAK_CACHE.tmp/keycloak-$KEYCLOAK_VERSION" "$KEYCLOAK_CACHE"
  rmdir "$KEYCLOAK_CACHE.tmp"
  touch "$KEYCLOAK_CACHE/complete"
}

# ---------------------------------------------------------------- starts ----
start_redis() {
  if redis_ping; then
    local databases
    databases=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get databases 2>/dev/null | tail -n1)
    if [[ $databases =~ ^[0-9]+$ ]] && ((databases < 256)); then
      die "the Redis on 127.0.0.1:$REDIS_PORT has $databases databases, and the tests use 256 (one each): stop it (a system service?) and run again"
    fi
    say "redis already answering on 127.0.0.1:$REDIS_PORT"
    return
  fi
  require_free_port redis
  mkdir -p "$STATE/redis"
  # A pid file of an earlier run (a reboot, an OOM kill) would read as "exited".
  rm -f "$(pid_file redis)"
  # A cache: no persistence, so a restart comes back empty, as in production after a loss.
  # 256 databases so parallel tests each take their own.
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE/redis" \
    --pidfile "$(pid_file redis)" --logfile "$(log_file redis)" --save '' --appendonly no \
    --databases 256 --protected-mode yes ||
    exited redis
  # The daemon writes its pid file a moment after forking.
  local waited=0
  while [[ ! -s $(pid_file redis) ]] && ((waited < 20)); do sleep 0.1; waited=$((waited + 1)); done
  wait_for redis 30 "$(cat "$(pid_file redis)" 2>/dev/null || true)"
}

start_mysql() {
  if mysql_ping; then say "mysql already answering on 127.0.0.1:$MYSQL_PORT"; return; fi
  require_free_port mysql
  local data=$STATE/mysql/data
  mkdir -p "$STATE/mysql"
  if [[ ! -d $data/mysql ]]; then
    say "initialising MariaDB data directory in $data"
    mariadb-install-db --no-defaults --user=root --datadir="$data" \
      --auth-root-authentication-method=socket --skip-test-db >"$STATE/mysql/install.log" 2>&1 ||
      die "mariadb-install-db failed (see $STATE/mysql/install.log)"
  fi
  setsid nohup mariadbd --no-defaults --user=root --datadir="$data" \
    --bind-address=127.0.0.1 --port="$MYSQL_PORT" --socket="$MYSQL_SOCKET" \
    --pid-file="$(pid_file mysql)" --log-error="$(log_file mysql)" \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci \
    --innodb-buffer-pool-size=256M --max-connections=500 --skip-name-resolve \
    >/dev/null 2>&1 </dev/null &
  local pid=$! waited=0
  until mariadb --socket="$MYSQL_SOCKET" -u root -e 'SELECT 1' >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || exited mysql
    sleep 1; waited=$((waited + 1)); (( waited < 60 )) || die "mysql did not start (log: $(log_file mysql))"
  done
  # Local development only: root over TCP from loopback without a password (compose sets one).
  mariadb --socket="$MYSQL_SOCKET" -u root -e "
    CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
    GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
    FLUSH PRIVILEGES;"
  wait_for mysql 60
}

kafka_properties() {
  local dir=$STATE/kafka
  mkdir -p "$dir/data" "$dir/logs"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
# A week of events, as the services set on the feedback topic they create.
log.retention.hours=168
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

start_kafka() {
  if kafka_ping; then say "kafka already answering on 127.0.0.1:$KAFKA_PORT"; return; fi
  # Started by an earlier `up` and still booting: wait for it, never a second broker.
  local booting
  booting=$(cat "$(pid_file kafka)" 2>/dev/null || true)
  if [[ -n $booting ]] && kill -0 "$booting" 2>/dev/null &&
    grep -q 'kafka.Kafka' "/proc/$booting/cmdline" 2>/dev/null; then
    say "kafka is starting (pid $booting)"
    wait_for kafka 90 "$booting"
    return
  fi
  require_free_port kafka
  install_kafka
  local dir=$STATE/kafka cp="$KAFKA_CACHE/lib/*"
  kafka_properties
  if [[ ! -f $dir/data/meta.properties ]]; then
    [[ -f $dir/cluster.id ]] || java -cp "$cp" kafka.tools.StorageTool random-uuid >"$dir/cluster.id"
    say "formatting Kafka storage (cluster $(cat "$dir/cluster.id"))"
    java -cp "$cp" kafka.tools.StorageTool format --standalone --ignore-formatted \
      -t "$(cat "$dir/cluster.id")" -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
      die "Kafka storage format failed (see $dir/format.log)"
  fi
  setsid nohup java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/scripts/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$dir/logs" -cp "$cp" kafka.Kafka "$dir/server.properties" \
    >"$(log_file kafka)" 2>&1 </dev/null &
  echo $! >"$(pid_file kafka)"
  wait_for kafka 90 "$(cat "$(pid_file kafka)")"
}

# Keycloak writes its build (lib/quarkus, redone by `start-dev` when options
# change) and its data into its own directory, so it runs from a copy in the
# state dir: the jars (lib/lib, never written) hard-linked to the cache where
# the file system allows, the rest copied; `data` (the H2 database, the import
# directory) a link to $STATE/keycloak/data, which outlives a version change.
# A copy that never answered (its first start interrupted, maybe in the middle
# of writing its build) is made again.
keycloak_home() {
  local home=$STATE/keycloak/keycloak-$KEYCLOAK_VERSION
  if [[ ! -f $home/complete || ! -f $home/answered ]]; then
    rm -rf "$home"
    mkdir -p "$home/lib" "$STATE/keycloak/data"
    cp -al "$KEYCLOAK_CACHE/lib/lib" "$home/lib/lib" 2>/dev/null || cp -a "$KEYCLOAK_CACHE/lib/lib" "$home/lib/lib"
    local entry
    for entry in "$KEYCLOAK_CACHE"/* "$KEYCLOAK_CACHE"/lib/*; do
      case $entry in "$KEYCLOAK_CACHE/lib" | "$KEYCLOAK_CACHE/lib/lib" | "$KEYCLOAK_CACHE/complete") continue ;; esac
      cp -a "$entry" "$home/${entry#"$KEYCLOAK_CACHE"/}"
    done
    ln -sfn ../data "$home/data"
    touch "$home/complete"
  fi
  echo "$home"
}

start_keycloak() {
  if keycloak_ping; then say "keycloak already answering on 127.0.0.1:$KEYCLOAK_PORT"; return; fi
  # Running, but without the realm (deleted through the admin console): import it again.
  if curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$KEYCLOAK_PORT/realms/master/.well-known/openid-configuration" 2>/dev/null; then
    say "keycloak answers on 127.0.0.1:$KEYCLOAK_PORT without realm $KEYCLOAK_REALM: importing it"
    keycloak_create_realm
    wait_for keycloak 30
    return
  fi
  # Started by an earlier `up` and still booting: wait for it, never a second server.
  local booting
  booting=$(cat "$(pid_file keycloak)" 2>/dev/null || true)
  if [[ -n $booting ]] && kill -0 "$booting" 2>/dev/null &&
    grep -qa "keycloak-$KEYCLOAK_VERSION" "/proc/$booting/cmdline" 2>/dev/null; then
    say "keycloak is starting (pid $booting)"
    wait_for keycloak 300 "$booting"
    return
  fi
  require_free_port keycloak
  install_keycloak
  local dir=$STATE/keycloak home
  home=$(keycloak_home)
  # `--import-realm` imports data/import/*.json at start and skips a realm that
  # already exists, so the realm file counts only on the first start (edits
  # after that: delete the realm in the admin console, or var/infra/keycloak/data).
  mkdir -p "$dir/data/import"
  cp "$ROOT/deploy/keycloak/feedback-realm.json" "$dir/data/import/feedback-realm.json"
  rm -f "$(pid_file keycloak)"
  # start-dev: plain HTTP, the H2 file database under data/h2, local caches,
  # no hostname set, so the issuer is whatever address a client asked by
  # (http://127.0.0.1:8180/realms/feedback here). H2's default AUTO_SERVER=TRUE
  # would open a TCP server for the database on every interface (and a
  # well-known password): turned off. Bound to loopback only,
  # which is also why the master realm's bootstrap admin can be admin/admin
  # (created on the first start only). A 512 MiB heap: the machine is shared.
  # The first start builds Keycloak's Quarkus application (lib/quarkus), a
  # minute or more on 2 cores; later starts reuse it.
  if [[ -f $home/answered ]]; then
    say "starting keycloak $KEYCLOAK_VERSION"
  else
    say "starting keycloak $KEYCLOAK_VERSION for the first time here: its build and the realm import take a minute or two"
  fi
  KEYCLOAK_ADMIN=admin KEYCLOAK_ADMIN_PASSWORD=admin \
    JAVA_OPTS_KC_HEAP="-XX:MinHeapFreeRatio=10 -XX:MaxHeapFreeRatio=20 -Xms64m -Xmx512m" \
    setsid nohup "$home/bin/kc.sh" start-dev --http-host=127.0.0.1 --http-port="$KEYCLOAK_PORT" \
    --db-url-properties=';AUTO_SERVER=FALSE' --import-realm >"$(log_file keycloak)" 2>&1 </dev/null &
  echo $! >"$(pid_file keycloak)"
  wait_for keycloak 300 "$(cat "$(pid_file keycloak)")"
  touch "$home/answered"
}

# A master-realm admin token (admin-cli, the bootstrap admin), for the admin REST API.
keycloak_admin_token() {
  curl -fsS -m 10 "http://127.0.0.1:$KEYCLOAK_PORT/realms/master/protocol/openid-connect/token" \
    -d grant_type=password -d client_id=admin-cli -d username=admin -d password=admin |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

# The realm file through the admin REST API, into a running server. Its
# `${VAR:default}` placeholders (the compose site's redirect URI) are filled
# by Keycloak's import at start only; the admin API would refuse one as "not
# a valid URI", so they get their defaults here, as an import with the
# variable unset would.
keycloak_create_realm() {
  local token
  token=$(keycloak_admin_token) || die "no admin token from Keycloak's master realm (admin/admin)"
  python3 -c 'import re,sys; sys.stdout.write(re.sub(r"\$\{[A-Za-z0-9_.]+:([^}]*)\}", r"\1", sys.stdin.read()))' \
    <"$ROOT/deploy/keycloak/feedback-realm.json" |
    curl -fsS -m 60 -o /dev/null -X POST "http://127.0.0.1:$KEYCLOAK_PORT/admin/realms" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      --data-binary @- || die "importing realm $KEYCLOAK_REALM failed"
}

start_one() {
  case $1 in
    kafka) start_kafka ;;
    redis) start_redis ;;
    mysql) start_mysql ;;
    keycloak) start_keycloak ;;
    *) die "unknown service '$1' (kafka, redis, mysql or keycloak)" ;;
  esac
}

# --------------------------------------------------------- redis cluster ----
# A local Redis Cluster for the cluster-mode tests (feedback_tests::cluster
# runs `cluster up`): three masters, no replicas, no persistence. Its ports
# are fixed like the stack's, so it is the machine's: one lock file for every
# checkout, and its data (the nodes' cluster config) next to the stack's.
CLUSTER_PORTS=(7101 7102 7103)
CLUSTER_LOCK=/tmp/feedback-redis-cluster.lock
cluster_dir() { echo "$STATE/redis-cluster/$1"; }
node_ping() { timeout 3 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }
# Every node answers, with all slots served.
cluster_ping() {
  local port
  for port in "${CLUSTER_PORTS[@]}"; do
    timeout 3 redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
}

start_cluster_node() {
  local port=$1 dir holder
  dir=$(cluster_dir "$port")
  if node_ping "$port"; then return; fi
  if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*' | head -n1 | cut -d'(' -f3 || true)
    die "port $port is taken${holder:+ by $holder}, which does not answer as Redis"
  fi
  mkdir -p "$dir"
  rm -f "$dir/redis.pid"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save '' --appendonly no 9>&- ||
    die "redis-server on $port did not start (log: $dir/redis.log)"
  local waited=0
  until node_ping "$port"; do
    ((waited < 100)) || die "redis-server on $port did not answer within 10s (log: $dir/redis.log)"
    sleep 0.1; waited=$((waited + 1))
  done
}

stop_cluster_node() {
  local port=$1 waited=0
  node_ping "$port" || return 0
  redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
  while ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; do
    sleep 0.1; waited=$((waited + 1))
    ((waited < 300)) || die "port $port still taken 30 s after its shutdown"
  done
}

cluster_up() {
  if cluster_ping; then say "redis cluster already answering on 127.0.0.1:${CLUSTER_PORTS[0]}-${CLUSTER_PORTS[-1]}"; return; fi
  local port nodes=()
  for port in "${CLUSTER_PORTS[@]}"; do start_cluster_node "$port"; nodes+=("127.0.0.1:$port"); done
  # Nodes restarted from their nodes.conf rejoin by themselves; give them the node timeout.
  local waited=0
  while ! cluster_ping && ((waited < 60)); do
    # Never formed: each node knows only itself. Then create the cluster.
    if [[ $(redis-cli -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster nodes 2>/dev/null | wc -l) == 1 ]]; then break; fi
    sleep 0.1; waited=$((waited + 1))
  done
  if ! cluster_ping && [[ $(redis-cli -h 127.0.0.1 -p "${CLUSTER_PORTS[0]}" cluster nodes 2>/dev/null | wc -l) != 1 ]]; then
    # Half formed or broken (a node's data lost): it is a test cache, start it afresh.
    say "redis cluster in a broken state: recreating it"
    for port in "${CLUSTER_PORTS[@]}"; do stop_cluster_node "$port"; rm -rf "$(cluster_dir "$port")"; done
    for port in "${CLUSTER_PORTS[@]}"; do start_cluster_node "$port"; done
  fi
  if ! cluster_ping; then
    say "creating the redis cluster ${nodes[*]}"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null ||
      die "redis-cli --cluster create failed"
  fi
  waited=0
  until cluster_ping; do
    ((waited < 300)) || die "the redis cluster did not reach cluster_state:ok within 30s"
    sleep 0.1; waited=$((waited + 1))
  done
  say "redis cluster up: FEEDBACK_REDIS_URL=$(cluster_url)"
}

cluster_url() {
  local port urls=()
  for port in "${CLUSTER_PORTS[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  (IFS=,; echo "${urls[*]}")
}

cluster_command() {
  case ${1:-} in
    up)
      if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then install_packages; fi
      # The lock is fd 9, closed for the servers it starts (a daemon holding
      # it would block every later `cluster up`).
      exec 9>"$CLUSTER_LOCK"
      flock 9
      cluster_up
      ;;
    down)
      exec 9>"$CLUSTER_LOCK"
      flock 9
      local port
      for port in "${CLUSTER_PORTS[@]}"; do stop_cluster_node "$port"; rm -rf "$(cluster_dir "$port")"; done
      say "redis cluster stopped"
      ;;
    status)
      if cluster_ping; then
        printf '  %-8s up    %s\n' cluster "$(cluster_url)"
      else
        printf '  %-8s down  127.0.0.1:%s-%s\n' cluster "${CLUSTER_PORTS[0]}" "${CLUSTER_PORTS[-1]}"
        return 1
      fi
      ;;
    *) die "usage: $0 cluster up|down|status" ;;
  esac
}

# ----------------------------------------------------------------- stops ----
stop_one() {
  local name=$1 signal=${2:-TERM} pid waited=0
  pid=$(pid_of "$name")
  if [[ -z $pid ]]; then say "$name is not running"; return; fi
  say "stopping $name (pid $pid, SIG$signal)"
  # Keycloak's kc.sh runs its build step in a child JVM before it becomes the
  # server: stopped during that step, the child goes too (setsid made the
  # script its process group's leader, so the group is signalled).
  if [[ $name == keycloak && $(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]]; then
    kill -s "$signal" -- "-$pid" 2>/dev/null || true
  else
    kill -s "$signal" "$pid" 2>/dev/null || true
  fi
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.2; waited=$((waited + 1))
    if (( waited == 150 )); then say "$name still running after 30s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  done
  # Wait until the port is free so an immediate start binds it again (at most
  # 30 s: a supervisor such as systemd may have started it again).
  waited=0
  while ss -Hltn "sport = :$(port_of "$name")" | grep -q .; do
    sleep 0.2; waited=$((waited + 1))
    ((waited < 150)) || die "port $(port_of "$name") is still taken 30 s after $name stopped (restarted by a supervisor?)"
  done
  rm -f "$(pid_file "$name")"
}

status_one() {
  local name=$1 detail=""
  if "${name}_ping"; then
    [[ $name == kafka ]] && detail=" brokers $(python3 "$ROOT/scripts/lib/kafka_probe.py" "127.0.0.1:$KAFKA_PORT")"
    [[ $name == keycloak ]] && detail=" issuer $KEYCLOAK_ISSUER"
    printf '  %-8s up    127.0.0.1:%s pid %s%s\n' "$name" "$(port_of "$name")" "$(pid_of "$name")" "$detail"
    return 0
  fi
  printf '  %-8s down  127.0.0.1:%s\n' "$name" "$(port_of "$name")"
  return 1
}

status_all() {
  local rc=0
  for name in kafka redis mysql keycloak; do status_one "$name" || rc=1; done
  return $rc
}

# ------------------------------------------------------------------ main ----
check_name() { case ${1:-} in kafka | redis | mysql | keycloak) ;; *) die "usage: $0 $2 kafka|redis|mysql|keycloak" ;; esac; }

# Whoever starts a service records where the stack's data is.
case ${1:-} in up | start) mkdir -p "$STATE" && echo "$STATE" >"$POINTER" ;; esac

case ${1:-} in
  up)
    install_packages
    start_redis
    start_mysql
    start_kafka
    start_keycloak
    say "stack is up:"
    status_all
    echo "  kafka    FEEDBACK_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
    echo "  redis    FEEDBACK_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
    echo "  mysql    FEEDBACK_MYSQL_URL=mysql://root@127.0.0.1:$MYSQL_PORT/feedback"
    echo "  keycloak FEEDBACK_OIDC_ISSUER=$KEYCLOAK_ISSUER"
    ;;
  down)
    for name in kafka redis mysql keycloak; do stop_one "$name"; done
    # The cluster-mode tests' Redis Cluster, when they started one.
    if node_ping "${CLUSTER_PORTS[0]}"; then cluster_command down; fi
    ;;
  jars)
    # Kafka's jars and Keycloak's distribution into the cache, nothing started
    # (scripts/compose-check.sh builds its Kafka and Keycloak images from them).
    install_packages
    install_kafka
    install_keycloak
    ;;
  status)
    status_all
    ;;
  start)
    check_name "${2:-}" start
    install_packages
    start_one "$2"
    ;;
  stop)
    check_name "${2:-}" stop
    stop_one "$2"
    ;;
  kill)
    check_name "${2:-}" kill
    stop_one "$2" KILL
    ;;
  cluster)
    cluster_command "${2:-}"
    ;;
  *)
    echo "usage: $0 up|down|status|jars | start|stop|kill kafka|redis|mysql|keycloak | cluster up|down|status" >&2
    exit 2
    ;;
esac
