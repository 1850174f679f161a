#!/usr/bin/env bash
# The README quick start: build the `loopai` command, synthesize a program from the bundled
# spam task specification into a fresh data directory, execute it, and score it.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -q -p loopai-cli
loopai=target/release/loopai
data_dir=${LOOPAI_DATA_DIR:-$(mktemp -d)}

# Learn a program from the specification's examples and activate it as spam v1.
"$loopai" synth examples/spam/spec.json --data-dir "$data_dir"
# Execute it: one input, then a JSONL stream.
echo '{"text":"WIN a FREE prize, call now"}' | "$loopai" exec --data-dir "$data_dir" --task spam
"$loopai" exec --data-dir "$data_dir" --task spam < examples/spam/inputs.jsonl
# The hand-written example program is valid too.
"$loopai" program check examples/spam/program.json
"$loopai" stats --data-dir "$data_dir" --task spam
echo "data directory: $data_dir"
