#!/usr/bin/env bash
# Runs the compose deployment for real on this machine and checks it end to
# end, then takes it down (`down -v`). No image registry is needed: the
# three services' binaries are built here, and the public images compose.yaml
# names (Kafka, MariaDB, Redis, Caddy, Keycloak, Prometheus, Grafana) are
# swapped for local stand-ins built from Debian packages, Maven jars and
# Keycloak's distribution from Maven Central
# (deploy/local/compose.local.yaml; compose.yaml itself is unchanged).
# The checks themselves: scripts/lib/compose_check.py.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
started=$SECONDS
step() { printf '\n==> %s\n' "$*"; }

step "Kafka's jars and Keycloak's distribution (for their stand-in images): scripts/infra.sh jars"
scripts/infra.sh jars

step "the services' binaries: cargo build --release"
cargo build --release --locked --bin ingest --bin aggregator --bin query

step "Docker engine, Compose v2, base image, local images: scripts/lib/docker-local.sh all"
scripts/lib/docker-local.sh all

step "the deployment, end to end"
# PyYAML reads the alert rules; test.sh's venv (made here when missing) has it.
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/feedback/venv
[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import yaml' 2>/dev/null || "$VENV/bin/pip" install -q pyyaml
"$VENV/bin/python" scripts/lib/compose_check.py

echo
echo "scripts/compose-check.sh: all green in $((SECONDS - started))s"
