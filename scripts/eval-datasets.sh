#!/usr/bin/env bash
# Synthesizes programs for the real public datasets and scores them on their held-out
# splits through the `loopai` command: accuracy, per-class metrics, latency; then times
# the program on the held-out inputs over several rounds (steadier per-call percentiles
# than eval's single pass).
#   scripts/eval-datasets.sh [DATA_DIR]    (default: target/datasets; fetched when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-target/datasets}
fetch=../shared/data/fetch_datasets.py
for name in sms-spam spamassassin; do
  if [ ! -f "$data/$name/spec.json" ]; then
    python3 "$fetch" "$data" "$name"
  fi
done
cargo build --release --locked -q -p loopai-cli -p loopai-benches
loopai=target/release/loopai
for name in sms-spam spamassassin; do
  work=$(mktemp -d)
  echo "== $name"
  /usr/bin/time -f "synthesis wall time %e s" "$loopai" synth "$data/$name/spec.json" --data-dir "$work" --quiet | tail -4
  "$loopai" eval --data-dir "$work" --task "$name" "$data/$name/test.jsonl" | head -4
  target/release/program "$work" "$name" "$data/$name/test.jsonl" 10
  rm -rf "$work"
done
