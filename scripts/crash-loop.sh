#!/usr/bin/env bash
# The long crash loop: kills a durable `loopai exec` with SIGKILL N times (default 200)
# and checks that every reported execution is on disk and every line parses.
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository (a relative CARGO_TARGET_DIR made absolute)
LOOPAI_CRASH_ITERATIONS=${1:-200} cargo test --release -p loopai-cli --test crash -- --nocapture
