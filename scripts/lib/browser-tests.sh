#!/usr/bin/env bash
# The pages in a real browser: Debian's headless Chromium, driven by
# Playwright for Python, against ingest, the aggregator and query started on
# fresh resources (scripts/lib/services.sh). The tests (tests/browser/) submit
# through the form and read the dashboard as students, an instructor and an
# admin would, compare what the pages show with the API's answers, check both
# pages at 390 px and scan them with axe-core (no critical or serious
# violation), and leave screenshots in target/screenshots/. scripts/test.sh
# runs it; it runs alone too (the stack up: scripts/infra.sh up), and
# arguments go to pytest (`scripts/lib/browser-tests.sh -k withheld`).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

PLAYWRIGHT_VERSION=1.65.3
AXE_PLAYWRIGHT_VERSION=0.1.8   # bundles axe-core 4.12
PYTEST_VERSION=8.4.2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=$TARGET/browser-venv
SCREENSHOTS=$TARGET/screenshots
CHROMIUM=/usr/bin/chromium
say() { printf 'browser-tests: %s\n' "$*"; }

# Playwright drives the system's Chromium: it downloads no browser of its own.
if [[ ! -x $CHROMIUM ]]; then
  say "installing Debian's chromium"
  # A fresh machine's package lists may be stale or empty: refresh once then.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  }
fi
wanted="playwright==$PLAYWRIGHT_VERSION axe-playwright-python==$AXE_PLAYWRIGHT_VERSION pytest==$PYTEST_VERSION"
if [[ $(cat "$VENV/.pinned" 2>/dev/null) != "$wanted" ]]; then
  say "installing $wanted into $VENV"
  [[ -x $VENV/bin/pip ]] || python3 -m venv "$VENV"
  # shellcheck disable=SC2086 # the pins, one word each
  "$VENV/bin/pip" install -q $wanted
  echo "$wanted" >"$VENV/.pinned"
fi

# shellcheck source=scripts/lib/services.sh
source scripts/lib/services.sh
tests=
cleanup() {
  local status=$?
  [[ -z $tests ]] || kill "$tests" 2>/dev/null || true
  services_stop "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The tests send a few dozen submissions as a handful of students at once.
export FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN=0 FEEDBACK_RATE_LIMIT_IP_PER_MIN=0
services_start browser

rm -rf "$SCREENSHOTS"
started=$SECONDS
say "pytest tests/browser with $("$CHROMIUM" --version 2>/dev/null | head -n1)"
# In the background, waited for: a signal then stops the run at once.
BROWSER_TESTS_INGEST_URL=http://127.0.0.1:$INGEST_PORT \
BROWSER_TESTS_QUERY_URL=http://127.0.0.1:$QUERY_PORT \
BROWSER_TESTS_BIN=$BIN \
BROWSER_TESTS_SCREENSHOTS=$SCREENSHOTS \
BROWSER_TESTS_CHROMIUM=$CHROMIUM PYTHONDONTWRITEBYTECODE=1 \
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir tests/browser tests/browser "$@" &
tests=$!
wait "$tests"
tests=
say "the browser tests took $((SECONDS - started)) s; screenshots in $SCREENSHOTS"
