#!/usr/bin/env bash
# Runs every check and test of the repository. This is the README's test command and
# what CI (.ci/run) calls after installing the toolchain pieces it needs.
#
# CARGO_TARGET_DIR is honoured (absolute, or relative to the directory this is run from).
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory

step() { printf '\n== %s\n' "$*"; }

# System packages for the bindings' tests (Go, C#) are installed when missing and possible.
scripts/install-deps.sh

# Python tools live in a private virtualenv so that the checks need nothing preinstalled.
venv=$target_dir/py-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "module layering (scripts/check_layers.py: no import cycle, no file's non-test part over 1,200 lines)"
# loopai-serve is left out while its gateway and state modules import each other.
"$venv/bin/python" scripts/check_layers.py loopai-core/src loopai-serve/src loopai-cloud/src loopai-http/src loopai-ffi/src

step "cargo test"
cargo test --workspace --locked

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "program JSON Schema (docs/program.schema.json)"
"$venv/bin/python" scripts/check_program_schema.py

step "deploy/ (scripts/check_deploy.py: Kubernetes manifest, Dockerfile, flags)"
"$venv/bin/python" scripts/check_deploy.py --loopai "$target_dir/debug/loopai"

step "scripts/tests: the dataset fetcher (split, spec shape, cache; no network), crate packages (LICENSE)"
"$venv/bin/python" -m pytest -q -p no:cacheprovider scripts/tests

step "C ABI, Go and C# bindings (scripts/test-bindings.sh)"
scripts/test-bindings.sh

step "Python package (scripts/test-python.sh: fresh virtualenv, pip install ., pytest, stubtest, ruff)"
scripts/test-python.sh

step "dashboard in headless Chromium (scripts/test-dashboard.sh: seeded loopai cloud serve, DevTools protocol, screenshots)"
scripts/test-dashboard.sh

step "gateway with the official openai SDK (scripts/test-gateway.sh: stand-in upstream, loopai serve)"
scripts/test-gateway.sh

step "quick start (README)"
repo=$PWD
elsewhere=$(mktemp -d)
LOOPAI_DATA_DIR=$elsewhere/data examples/quickstart.sh >/dev/null
# Again from another directory, with CARGO_TARGET_DIR relative to it: a link to the same
# target directory, so nothing is rebuilt, but a script that hard-coded the default target directory
# or resolved CARGO_TARGET_DIR against the repository would fail. (.ci/run sets
# CARGO_TARGET_DIR to target/ci, so the first run is not in target/ either.)
ln -s "$target_dir" "$elsewhere/build"
(cd "$elsewhere" && CARGO_TARGET_DIR=build LOOPAI_DATA_DIR=$elsewhere/data2 "$repo/examples/quickstart.sh" >/dev/null)
rm -rf "$elsewhere"

echo
echo "all checks passed"
