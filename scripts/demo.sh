#!/usr/bin/env bash
# The run command (README): the real stack, the three services built and started,
# sample feedback loaded, URLs and how to sign in printed.
#
#   scripts/demo.sh                  start (or restart) the demo in identity-provider
#                                    mode: the pages sign in through the stack's
#                                    Keycloak (realm `feedback`, its demo users)
#   scripts/demo.sh --shared-secret  the same in shared-secret mode: tokens minted
#                                    with var/demo/jwt-secret and printed, pasted
#                                    into the pages (also FEEDBACK_DEMO_MODE=secret)
#   scripts/demo.sh stop             stop the three services (the stack stays up)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Where cargo puts the binaries (CARGO_TARGET_DIR, when set, moves them).
RELEASE=${CARGO_TARGET_DIR:-$ROOT/target}/release
cd "$ROOT"
DEMO=$ROOT/var/demo
SERVICES=(ingest aggregator query)
say() { printf '[demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

stop_services() {
  for svc in "${SERVICES[@]}"; do
    local pidfile=$DEMO/$svc.pid
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      say "stopping $svc (pid $(cat "$pidfile"))"
      kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
      # Ingest may take ~13 s (in-flight requests, a last delivery, the spool).
      for _ in $(seq 1 200); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "$svc still running after 20 s: SIGKILL"
        kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
        sleep 0.5
      fi
    fi
    rm -f "$pidfile"
  done
}

MODE=${FEEDBACK_DEMO_MODE:-oidc}
case ${1:-} in
  stop) stop_services; exit 0 ;;
  --shared-secret) MODE=secret ;;
  "") ;;
  *) echo "usage: $0 [--shared-secret | stop]" >&2; exit 2 ;;
esac
case $MODE in
  oidc | idp) MODE=oidc ;;
  secret | shared-secret) MODE=secret ;;
  *) echo "FEEDBACK_DEMO_MODE is '$MODE': oidc (the default) or secret" >&2; exit 2 ;;
esac
# Where scripts/infra.sh runs Keycloak, and what deploy/keycloak/feedback-realm.json sets up.
ISSUER=http://127.0.0.1:8180/realms/feedback

scripts/infra.sh up
mkdir -p "$DEMO"

# Built before the running demo stops, so it is down only for the restart.
say "building the services (cargo build --release)"
cargo build --release --bin ingest --bin aggregator --bin query
stop_services

# A port still taken now is another program's (a demo of another checkout, say):
# the new service could not bind it, and its tokens would not fit that one.
for port in 8080 8081 8082; do
  if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    holder=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*' | head -n1 | cut -d'(' -f3 || true)
    say "error: port $port is taken${holder:+ by $holder}; stop it (another checkout's demo: its scripts/demo.sh stop) and run again" >&2
    exit 1
  fi
done

# Secrets: one of each per checkout, kept in var/demo (mode 600), so
# students keep their pseudonyms, and printed tokens stay valid, across restarts.
secret_file() {
  [[ -s $DEMO/$1 ]] || (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n/+=' >"$DEMO/$1")
  chmod 600 "$DEMO/$1"
  cat "$DEMO/$1"
}
# Only what this mode sets reaches the services, whatever the calling shell exported.
unset FEEDBACK_JWT_SECRET FEEDBACK_OIDC_ISSUER FEEDBACK_OIDC_AUDIENCE FEEDBACK_OIDC_CLIENT_ID FEEDBACK_STUDENT_KEY_SECRET
# The key of the students' pseudonyms: ingest's alone (never query's), so it
# goes into ingest's environment only. Given in both modes, so a student is
# the same pseudonym whichever mode the demo ran in.
STUDENT_KEY=$(secret_file student-key-secret)
if [[ $MODE == oidc ]]; then
  # Tokens come from Keycloak (scripts/infra.sh up started it, realm imported);
  # no service holds a key that can sign one.
  export FEEDBACK_OIDC_ISSUER=$ISSUER FEEDBACK_OIDC_AUDIENCE=feedback-api FEEDBACK_OIDC_CLIENT_ID=feedback-pages
else
  export FEEDBACK_JWT_SECRET
  FEEDBACK_JWT_SECRET=$(secret_file jwt-secret)
fi
echo "$MODE" >"$DEMO/mode"
export FEEDBACK_SPOOL_DIR=$ROOT/var/demo/spool
export FEEDBACK_SENSITIVE_WORDS_FILE=${FEEDBACK_SENSITIVE_WORDS_FILE:-$ROOT/config/sensitive-words.txt}

for svc in "${SERVICES[@]}"; do
  say "starting $svc (log: var/demo/$svc.log)"
  if [[ $svc == ingest ]]; then
    FEEDBACK_STUDENT_KEY_SECRET=$STUDENT_KEY setsid nohup "$RELEASE/$svc" >"$DEMO/$svc.log" 2>&1 </dev/null &
  else
    setsid nohup "$RELEASE/$svc" >"$DEMO/$svc.log" 2>&1 </dev/null &
  fi
  echo $! >"$DEMO/$svc.pid"
done

wait_ready() {
  local name=$1 url=$2 waited=0
  printf '[demo %s] waiting for %s ' "$(date +%H:%M:%S)" "$name"
  until curl -fsS "$url" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$DEMO/$name.pid")" 2>/dev/null; then
      echo; say "$name exited; last lines of var/demo/$name.log:"; tail -n 20 "$DEMO/$name.log"; exit 1
    fi
    (( waited < 120 )) || { echo; say "$name not ready after 60s"; exit 1; }
    printf '.'; sleep 0.5; waited=$((waited + 1))
  done
  echo " ok"
}
wait_ready ingest http://127.0.0.1:8080/healthz
wait_ready aggregator http://127.0.0.1:8081/healthz
wait_ready query http://127.0.0.1:8082/healthz

if [[ $MODE == secret && -x $RELEASE/ingest ]] && "$RELEASE/ingest" --help 2>/dev/null | grep -q mint-token; then
  STUDENT_TOKEN=$("$RELEASE/ingest" mint-token --sub demo-student --role student --ttl-hours 24)
  ADMIN_TOKEN=$("$RELEASE/ingest" mint-token --sub demo-admin --role admin --ttl-hours 24)
fi
if [[ -x scripts/demo-load.sh ]]; then scripts/demo-load.sh; fi

cat <<INFO

The demo is running (stop it with: scripts/demo.sh stop; the stack with: scripts/infra.sh down)
  student form      http://127.0.0.1:8080/
  admin dashboard   http://127.0.0.1:8082/admin
  health            http://127.0.0.1:8080/readyz  http://127.0.0.1:8081/readyz  http://127.0.0.1:8082/readyz
  metrics           http://127.0.0.1:8080/metrics (and :8081, :8082)
  logs              var/demo/*.log
INFO
if [[ $MODE == oidc ]]; then
  cat <<INFO
  identity provider Keycloak, realm feedback: $ISSUER

Sign in on the page (the form and the dashboard send you to Keycloak's login):
  student           student / student
  instructor        instructor / instructor
  admin             admin / admin
  (and sample01 .. sample24 / sample, the students of the sample feedback)
Keycloak's admin console: http://127.0.0.1:8180/admin (admin / admin, realm master)

For the README's curl examples, in your shell (a token lasts 5 minutes: run the export again for fresh ones):
  kc_token() { curl -fsS $ISSUER/protocol/openid-connect/token -d grant_type=password -d client_id=feedback-loader -d "username=\$1" -d "password=\$2" | sed -E 's/.*"access_token":"([^"]+)".*/\\1/'; }
  export STUDENT_TOKEN=\$(kc_token student student) ADMIN_TOKEN=\$(kc_token admin admin)
INFO
elif [[ -n ${STUDENT_TOKEN:-} ]]; then
  cat <<INFO
  student token     $STUDENT_TOKEN
  admin token       $ADMIN_TOKEN

For the README's curl examples, in your shell:
  export STUDENT_TOKEN=$STUDENT_TOKEN
  export ADMIN_TOKEN=$ADMIN_TOKEN
INFO
fi
