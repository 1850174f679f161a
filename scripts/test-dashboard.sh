#!/usr/bin/env bash
# The monitoring dashboard in a real headless browser (tests/dashboard/): `loopai cloud
# serve` seeded with 30 days x 10 versions of telemetry, heartbeats, rollouts, improvement
# attempts and an escalation, driven through the distribution's Chromium over the DevTools
# protocol (the `websockets` package; no browser is downloaded). Screenshots are kept in
# $target_dir/test-artifacts/dashboard/. Every server listens on 127.0.0.1 with an
# ephemeral port and every wait is bounded.
#
# Needs: cargo, python3 with venv, Chromium (scripts/install-deps.sh installs `chromium`;
# CHROMIUM=path picks another), PyPI (pytest, websockets: scripts/requirements-dev.txt).
# CARGO_TARGET_DIR is honoured (absolute, or relative to the directory this is run from).
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory

cargo build --locked -q -p loopai-cli --bin loopai

venv=${DASHBOARD_TEST_VENV:-$target_dir/py-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r scripts/requirements-dev.txt

# LOOPAI_BIN, when set, tests another binary (e.g. another branch's build).
LOOPAI_BIN="${LOOPAI_BIN:-$target_dir/debug/loopai}" \
ARTIFACTS_DIR="$target_dir/test-artifacts" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/dashboard
echo "screenshots: $target_dir/test-artifacts/dashboard/"
