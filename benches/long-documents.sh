#!/usr/bin/env bash
# Long documents: for the SpamAssassin e-mails and the State of the Union passages,
# synthesizes a program from the train split and reports its size, its held-out accuracy,
# its latency on 5 KB texts (`latency`: Runtime::execute with logging, p50/p99) and, with
# valgrind installed, the instructions of one Program::evaluate on them (callgrind: the
# figure that does not move with the machine's load).
#   benches/long-documents.sh [DATA_DIR]
# DATA_DIR (default: datasets/ in cargo's target directory) holds NAME/spec.json and
# NAME/test.jsonl; missing ones are fetched by scripts/fetch_datasets.py. The 5 KB texts are
# the held-out texts in file order, each joined with the next ones until it has 5,000
# bytes, cut at 5,120 bytes (at a UTF-8 boundary): 300 of them per dataset.
set -euo pipefail
case ${1:-} in -h|--help) sed -n '2,11p' "$0"; exit 0 ;; esac
data=${1:-}
case $data in "" | /*) ;; *) data=$PWD/$data ;; esac  # relative to where this is run
. "$(dirname "$0")/../scripts/lib.sh"   # cd to the repository; $target_dir
data=${data:-$target_dir/datasets}
names="spamassassin sotu-era"
for name in $names; do
  if [ ! -f "$data/$name/spec.json" ]; then
    python3 scripts/fetch_datasets.py "$data" "$name"
  fi
done
echo "== building loopai and the benches (release)" >&2
cargo build --release --locked -p loopai-cli -p loopai-benches >&2
bin=$target_dir/release
for name in $names; do
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "== $name"
  "$bin/loopai" synth "$data/$name/spec.json" --data-dir "$work/d" --quiet | grep -E '^(\*| )|^chosen|^program:'
  "$bin/loopai" eval --data-dir "$work/d" --task "$name" "$data/$name/test.jsonl" | sed -n 2p
  program=$work/d/artifacts/$name/active/program.json
  echo "program: $(wc -c <"$program") bytes"
  python3 - "$data/$name/test.jsonl" "$work/5k.jsonl" <<'EOF'
import json, sys
texts = [json.loads(line)["input"]["text"] for line in open(sys.argv[1], encoding="utf-8")]
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for i in range(min(300, len(texts))):
        t, j = texts[i], i + 1
        while len(t.encode()) < 5000 and j < len(texts):
            t, j = t + "\n" + texts[j], j + 1
        t = t.encode()[:5120].decode("utf-8", "ignore")
        out.write(json.dumps({"input": {"text": t}}) + "\n")
EOF
  "$bin/latency" --program-file "$program" --inputs "$work/5k.jsonl" | sed "s/^5k /$name\/5k/"
  if command -v valgrind >/dev/null; then
    # Two runs, one more round in the second: the difference is the evaluations alone
    # (without the first calls' one-time set-up, such as compiling the fixed patterns).
    for rounds in 0 1; do
      valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.$rounds" \
        --toggle-collect='loopai_core::program::Program::evaluate' \
        "$bin/evaluate_calls" "$program" "$work/5k.jsonl" "$rounds" >/dev/null 2>&1
    done
    ir() { callgrind_annotate "$1" | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,; }
    n=$(wc -l <"$work/5k.jsonl")
    echo "instructions per evaluation (callgrind, 5 KB texts): $(( ($(ir "$work/callgrind.1") - $(ir "$work/callgrind.0")) / n ))"
  fi
  rm -rf "$work"
  trap - EXIT
done
