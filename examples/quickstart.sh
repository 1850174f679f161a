#!/usr/bin/env bash
# The README quick start: build the `loopai` command, install the bundled spam program
# into a fresh data directory, and execute it on a few messages.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -q -p loopai-cli
loopai=target/release/loopai
data_dir=${LOOPAI_DATA_DIR:-$(mktemp -d)}

"$loopai" program check examples/spam/program.json
"$loopai" artifacts install --data-dir "$data_dir" --task spam \
  --spec examples/spam/spec.json examples/spam/program.json
echo '{"text":"WIN a FREE prize, call now"}' | "$loopai" exec --data-dir "$data_dir" --task spam
"$loopai" exec --data-dir "$data_dir" --task spam < examples/spam/inputs.jsonl
echo "data directory: $data_dir"
