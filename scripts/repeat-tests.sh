#!/usr/bin/env bash
# Runs the README's test command (scripts/test.sh) N times in a row, to catch flaky tests:
#
#   scripts/repeat-tests.sh [N]        (default 20)
#
# Stops at the first failing run. Each run's output is kept in
# $target_dir/test-repeat/run-K.log; a line per run says whether it passed and how long it took,
# and the last line says how many runs passed in a row. Builds are shared between runs (the
# same CARGO_TARGET_DIR), so only the first run compiles; the later ones exercise the tests.
# Run it on a quiet machine: a test that fails only when the machine is starved is worth fixing
# too, but a loaded machine makes every run slower and the loop long.
set -euo pipefail
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory

runs=${1:-20}
case $runs in
  '' | *[!0-9]* | 0) echo "usage: $0 [N]  (N: how many runs, a whole number ≥ 1; got '$runs')" >&2; exit 2 ;;
esac

logs=$target_dir/test-repeat
mkdir -p "$logs"
for ((k = 1; k <= runs; k++)); do
  start=$(date +%s)
  if scripts/test.sh >"$logs/run-$k.log" 2>&1; then
    echo "run $k/$runs: passed in $(($(date +%s) - start)) s"
  else
    status=$?
    echo "run $k/$runs: FAILED (exit $status) after $(($(date +%s) - start)) s; log: $logs/run-$k.log" >&2
    grep -n -m 20 -E 'FAILED|failed|panicked|Error|error\[' "$logs/run-$k.log" >&2 || true
    echo "$((k - 1)) run(s) passed in a row before the failure" >&2
    exit 1
  fi
done
echo "$runs run(s) of scripts/test.sh passed in a row (logs: $logs)"
