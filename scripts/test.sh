#!/usr/bin/env bash
# The test command (README, .ci/run): the real stack, then format, lints and every test.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

step "stack: scripts/infra.sh up"
scripts/infra.sh up

step "toolchain"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy
cargo --version

step "compose.yaml against the compose-spec schema"
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/feedback/venv
if [[ ! -x $VENV/bin/check-jsonschema ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q check-jsonschema
fi
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml

step "monitoring: Prometheus config, alert rules and their unit tests, dashboard queries"
scripts/lib/check-monitoring.sh

step "schemas/openapi.yaml against the OpenAPI 3.1 schema"
if [[ ! -x $VENV/bin/openapi-spec-validator ]]; then
  "$VENV/bin/pip" install -q openapi-spec-validator
fi
"$VENV/bin/openapi-spec-validator" schemas/openapi.yaml

step "leftovers of earlier test runs"
# Each test makes its own database; drop those of earlier runs (never the demo's `feedback`).
mariadb -h 127.0.0.1 -u root -N -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'fbtest\\_%'" |
  while read -r db; do mariadb -h 127.0.0.1 -u root -e "DROP DATABASE \`$db\`"; done
# And their files: spools, private MariaDB data directories, logs (feedback_tests::temp_root).
rm -rf "${TMPDIR:-/tmp}/feedback-tests"
# And their topics (`fbtest-…` and their `.dlq`, never the demo's or the
# bench's): thousands of partitions piled up and slowed every Kafka start.
printf 'topics of earlier test runs: '
cargo run -q -p feedback-bench -- delete-topics --prefix fbtest- |
  awk -F= '$1 == "deleted" { n++ } END { print n + 0 " deleted" }' ||
  echo "could not delete them (each test makes its own topic anyway)"
# And their realms on the identity provider (`fbtest-…`, never the demo's
# `feedback`): a test that failed before its end left its realm there.
printf 'identity-provider realms of earlier test runs: '
python3 scripts/lib/keycloak_realms.py delete-prefix fbtest- ||
  echo "could not delete them (each test makes its own realm anyway)"

step "cargo fmt --check"
cargo fmt --all --check

step "cargo deny: advisories (offline snapshot), licences, duplicates, sources"
scripts/lib/deny.sh

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace

step "the HTTP API against schemas/openapi.yaml: Schemathesis on live services (scripts/lib/fuzz-api.sh)"
scripts/lib/fuzz-api.sh

step "the pages in headless Chromium: the form and the dashboard against live services (scripts/lib/browser-tests.sh)"
scripts/lib/browser-tests.sh

echo
echo "scripts/test.sh: all green in $((SECONDS - started))s"
