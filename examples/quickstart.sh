#!/usr/bin/env bash
# The README quick start: build the `loopai` command, synthesize a program from the bundled
# spam task specification into a fresh data directory, execute it, and score it.
#
# The results go to stdout; the build's progress and the synthesis table go to stderr. The
# binary is found in cargo's target directory, wherever CARGO_TARGET_DIR (absolute or
# relative to where this is run) or a .cargo/config.toml puts it.
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"

loopai=$target_dir/release/loopai
echo "== building the loopai command (cargo build --release -p loopai-cli) into $target_dir" >&2
if [ ! -x "$loopai" ]; then
  echo "   the first build compiles every dependency in release mode: it takes several minutes" >&2
fi
cargo build --release --locked -p loopai-cli
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
