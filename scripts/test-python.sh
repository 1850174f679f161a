#!/usr/bin/env bash
# Tests the Python package `loopai-runtime` the way a user gets it: a fresh virtualenv, one
# `pip install <repo>` (pip runs maturin in build isolation and compiles loopai-py in
# release mode), the installed `loopai` command, then pytest, the stub check
# (mypy.stubtest), mypy on the tests, and ruff.
#
# Needs: a Rust toolchain, python3 (>= 3.9) with the venv module, and PyPI.
# Environment: PYTHON (default python3); CARGO_TARGET_DIR is honoured, so repeated runs
# rebuild incrementally.
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory

step() { printf '\n== %s\n' "$*"; }

python=${PYTHON:-python3}
venv=$target_dir/py-test-venv
rm -rf "$venv"
"$python" -m venv "$venv"
py=$venv/bin/python
pipq=("$py" -m pip install -q --disable-pip-version-check)

step "pip install . (maturin through pip's build isolation)"
"${pipq[@]}" --upgrade pip
"${pipq[@]}" -r python/requirements-test.txt
"${pipq[@]}" .
# From a neutral directory: the installed package, not the source tree, must be imported.
(cd /tmp && "$py" -c 'import loopai, sys; print("loopai", loopai.__version__, "from", loopai.__file__); sys.exit("imported from the source tree" if "site-packages" not in loopai.__file__ else 0)')

step "the wheel's loopai command"
(cd /tmp && "$(dirname "$py")/loopai" --version && "$py" -m loopai --version)

step "pytest"
"$py" -m pytest -q -p no:cacheprovider python/tests

step "stub check (mypy.stubtest loopai)"
(cd /tmp && "$py" -m mypy.stubtest loopai)

step "mypy --strict (the package and its tests, against the installed stub)"
"$py" -m mypy --strict --cache-dir=/dev/null python/loopai/__init__.py python/tests

step "ruff"
"$py" -m ruff check --no-cache .
"$py" -m ruff format --check --no-cache .
