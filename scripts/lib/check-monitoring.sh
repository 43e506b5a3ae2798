#!/usr/bin/env bash
# Checks the monitoring files offline with promtool: Prometheus's config, the
# alert rules and their unit tests, and that every dashboard query parses.
# One line per step; exits non-zero at the first failure, with promtool's output.
#
#   scripts/lib/check-monitoring.sh        (from any directory; scripts/test.sh calls it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

command -v promtool >/dev/null || {
  echo "check-monitoring: promtool missing (Debian: apt-get install prometheus)" >&2
  exit 1
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Runs a step quietly; on failure shows what it printed.
run() {
  local what=$1
  shift
  if "$@" >"$scratch/out" 2>&1; then
    printf 'ok    %s\n' "$what"
  else
    printf 'FAIL  %s\n' "$what"
    sed 's/^/      /' "$scratch/out"
    exit 1
  fi
}

run "prometheus.yml: promtool check config" \
  promtool check config deploy/prometheus/prometheus.yml
run "alerts.yml: promtool check rules" \
  promtool check rules deploy/prometheus/alerts.yml
run "alerts_test.yml: promtool test rules" \
  promtool test rules deploy/prometheus/alerts_test.yml

# Grafana queries are not rules, but written as recording rules promtool parses them.
run "dashboards: extract the queries" \
  sh -c 'python3 scripts/lib/promql.py --only dashboards --format rules >"$1"' sh "$scratch/dashboards.rules.yml"
run "dashboards: $(grep -c '"record"' "$scratch/dashboards.rules.yml") queries parse (promtool check rules)" \
  promtool check rules "$scratch/dashboards.rules.yml"
