#!/usr/bin/env bash
# The gateway's cross-language tests (tests/gateway/): the official `openai` Python SDK
# against the stand-in upstream LLM (loopai-benches stand_in_llm), against `loopai serve`
# with the gateway on in front of it, and wrapped in process by `loopai.wrap`. Every server
# listens on 127.0.0.1 with an ephemeral port and every wait is bounded.
#
# Needs: cargo, python3 with venv, PyPI (openai and pytest, in scripts/requirements-dev.txt;
# maturin for the loopai package). CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target=$PWD/$target ;; esac
cargo build --locked -q -p loopai-cli -p loopai-benches --bin loopai --bin stand_in_llm

venv=${GATEWAY_TEST_VENV:-$target/py-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt
# loopai.wrap's tests (test_wrap.py) need the package itself: maturin through pip, in
# CARGO_TARGET_DIR, so a build that scripts/test-python.sh made is reused.
"$venv/bin/python" -m pip install -q --disable-pip-version-check .

LOOPAI_BIN="$target/debug/loopai" STAND_IN_LLM="$target/debug/stand_in_llm" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/gateway
