#!/usr/bin/env bash
# `cargo deny --offline check` against the RustSec snapshot beside the repo
# (../shared/advisory-db; these machines cannot fetch the database).
# Installs cargo-deny when missing; called by scripts/test.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
snapshot=${FEEDBACK_ADVISORY_DB:-$ROOT/../shared/advisory-db}
[[ -d $snapshot/crates ]] || { echo "deny: no advisory snapshot at $snapshot" >&2; exit 1; }

if ! command -v cargo-deny >/dev/null; then
  echo "deny: installing cargo-deny (cargo install, a few minutes)"
  cargo install cargo-deny --locked -q
fi

# cargo-deny reads the database from db-path, in the directory its URL
# hashes to, as a git repository; a fresh copy each run keeps it in step with
# the snapshot.
db=$ROOT/target/advisory-dbs/advisory-db-3157b0e258782691
rm -rf "$db"
mkdir -p "$(dirname "$db")"
cp -r "$snapshot" "$db"
chmod -R u+w "$db"
git -C "$db" init -q
git -C "$db" -c user.name=deny -c user.email=deny@localhost add -A
git -C "$db" -c user.name=deny -c user.email=deny@localhost commit -q -m snapshot
echo "deny: the advisory snapshot $(tr '\n' ' ' <"$snapshot/../ADVISORY-DB.md" 2>/dev/null |
  grep -o 'commit `[0-9a-f]*` of [0-9-]*' || echo "in $snapshot")"

# cargo metadata, offline, needs every platform's crates on disk.
cargo fetch -q
cargo deny --offline check advisories licenses bans sources
