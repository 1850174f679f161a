#!/usr/bin/env bash
# Runs every check and test of the repository. This is the README's test command and
# what CI (.ci/run) calls after installing the toolchain pieces it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

# System packages for the bindings' tests (Go, C#) are installed when missing and possible.
scripts/install-deps.sh

# Python tools live in a private virtualenv so that the checks need nothing preinstalled.
venv=target/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "program JSON Schema (docs/program.schema.json)"
"$venv/bin/python" scripts/check_program_schema.py

step "deploy/ (scripts/check_deploy.py: Kubernetes manifest, Dockerfile, flags)"
"$venv/bin/python" scripts/check_deploy.py --loopai "${CARGO_TARGET_DIR:-target}/debug/loopai"

step "C ABI, Go and C# bindings (scripts/test-bindings.sh)"
scripts/test-bindings.sh

step "Python package (scripts/test-python.sh: fresh virtualenv, pip install ., pytest, stubtest, ruff)"
scripts/test-python.sh

step "gateway with the official openai SDK (scripts/test-gateway.sh: stand-in upstream, loopai serve)"
scripts/test-gateway.sh

step "quick start (README)"
examples/quickstart.sh >/dev/null

echo
echo "all checks passed"
