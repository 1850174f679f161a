#!/usr/bin/env bash
# The gateway's cross-language tests (tests/gateway/): the official `openai` Python SDK
# against the stand-in upstream LLM (loopai-benches stand_in_llm), against `loopai serve`
# with the gateway on in front of it, and wrapped in process by `loopai.wrap`. Every server
# listens on 127.0.0.1 with an ephemeral port and every wait is bounded.
#
# Needs: cargo, python3 with venv, PyPI (openai and pytest, in scripts/requirements-dev.txt;
# maturin for the loopai package). CARGO_TARGET_DIR is honoured (absolute, or relative to
# the directory this is run from).
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory

cargo build --locked -q -p loopai-cli -p loopai-benches --bin loopai --bin stand_in_llm

venv=${GATEWAY_TEST_VENV:-$target_dir/py-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt
# loopai.wrap's tests (test_wrap.py) need the package itself: maturin through pip, in
# CARGO_TARGET_DIR, so a build that scripts/test-python.sh made is reused.
"$venv/bin/python" -m pip install -q --disable-pip-version-check .

# LOOPAI_BIN / STAND_IN_LLM, when set, test other binaries (e.g. another branch's build).
LOOPAI_BIN="${LOOPAI_BIN:-$target_dir/debug/loopai}" \
STAND_IN_LLM="${STAND_IN_LLM:-$target_dir/debug/stand_in_llm}" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/gateway
