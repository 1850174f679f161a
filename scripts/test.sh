#!/usr/bin/env bash
# Runs every check and test of the repository. This is the README's test command and
# what CI (.ci/run) calls after installing the toolchain pieces it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "quick start (README)"
examples/quickstart.sh >/dev/null

echo
echo "all checks passed"
