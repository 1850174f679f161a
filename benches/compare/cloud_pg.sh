#!/usr/bin/env bash
# The reference cloud on PostgreSQL: telemetry ingestion with 1 and 3 instances, an
# instance killed (SIGKILL) and restarted under load, and the time to ready with 1M stored
# batches. Prints one JSON line per measurement and writes them to
# compare/cloud_pg.jsonl in cargo's target directory.
#
#   benches/compare/cloud_pg.sh [--batches N] [--clients N] [--seed-batches N] [--dev]
#
# Defaults: 20000 batches of 10 execution summaries (+2 validations) each, 16 clients,
# 1000000 seeded batches. Starts its own PostgreSQL cluster (the Debian binaries,
# /usr/lib/postgresql/*/bin; fsync and synchronous_commit on, as in production) in a
# temporary directory, run as the postgres user when root, and removes it at the end.
# Builds `loopai` and `cloud_ingest` (loopai-benches) in release (--dev: the dev profile,
# quicker to build, slower to run: figures are then lower bounds).
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

batches=20000
clients=16
seed=1000000
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --batches) batches=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --seed-batches) seed=$2; shift 2 ;;
    --dev) profile=debug; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

if [ "$profile" = release ]; then
  cargo build --release --locked -p loopai-cli -p loopai-benches --bin loopai --bin cloud_ingest >&2
else
  cargo build --locked -p loopai-cli -p loopai-benches --bin loopai --bin cloud_ingest >&2
fi
loopai=$target_dir/$profile/loopai
ingest=$target_dir/$profile/cloud_ingest
out_dir=$target_dir/compare
mkdir -p "$out_dir"
results=$out_dir/cloud_pg.jsonl
: >"$results"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "no /usr/lib/postgresql/*/bin/initdb: run scripts/install-deps.sh" >&2; exit 1; }
work=$(mktemp -d /tmp/loopai-cloud-pg.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"${as_pg[@]}" "$bin/initdb" -D "$work/data" -U loopai --auth=trust -E UTF8 >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB" start >/dev/null
psql() { "$bin/psql" -X -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U loopai "$@"; }
url() { echo "postgres://loopai@127.0.0.1:$pg_port/$1"; }

# start_instance DB PORT: starts an instance (its pid in $last_pid), waits until /health
# answers.
start_instance() {
  local db=$1 port=$2 dir=$work/cloud-$port
  mkdir -p "$dir"
  LOOPAI_LOG=warn "$loopai" cloud serve --dir "$dir" --database "$(url "$db")" --port "$port" \
    >/dev/null 2>>"$work/cloud-$port.log" &
  last_pid=$!
  pids+=("$last_pid")
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return
    sleep 0.05
  done
  echo "instance on $port did not start; log:" >&2; cat "$work/cloud-$port.log" >&2; exit 1
}
# stop_instances: stops every instance started so far (between measurements).
stop_instances() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
record() { echo "{\"profile\": \"$profile\", ${1#\{}" | tee -a "$results"; }

# 1 and 3 instances.
for n in 1 3; do
  db=ingest$n
  psql -d postgres -c "CREATE DATABASE $db" >/dev/null
  urls=()
  for _ in $(seq "$n"); do
    port=$(free_port); start_instance "$db" "$port"; urls+=(--url "http://127.0.0.1:$port")
  done
  line=$("$ingest" "${urls[@]}" --clients "$clients" --batches "$batches")
  stored=$(psql -d "$db" -c "SELECT count(*) FROM telemetry_batches")
  record "{\"measure\": \"ingest\", \"stored\": $stored, \"result\": $line}"
  stop_instances
done

# 3 instances, one killed with SIGKILL and restarted on its port under load.
db=killed
psql -d postgres -c "CREATE DATABASE $db" >/dev/null
ports=(); kpids=(); urls=()
for i in 0 1 2; do
  ports[$i]=$(free_port); start_instance "$db" "${ports[$i]}"; kpids[$i]=$last_pid
  urls+=(--url "http://127.0.0.1:${ports[$i]}")
done
"$ingest" "${urls[@]}" --clients "$clients" --batches "$batches" >"$work/killed.json" &
gen=$!
until [ "$(psql -d "$db" -c "SELECT count(*) FROM telemetry_batches")" -ge $((batches / 3)) ]; do sleep 0.05; done
kill -9 "${kpids[1]}"
sleep 1
start_instance "$db" "${ports[1]}"
wait "$gen"
counts=$(psql -d "$db" -c "SELECT count(*), count(DISTINCT batch_id) FROM telemetry_batches")
summaries=$(psql -d "$db" -c "SELECT count(*) FROM execution_summaries")
stored=${counts%%|*}; distinct=${counts##*|}
stop_instances
record "{\"measure\": \"kill_restart\", \"sent\": $batches, \"stored\": $stored, \"lost\": $((batches - distinct)), \"duplicated_batches\": $((stored - distinct)), \"summaries\": $summaries, \"duplicated_summaries\": $((summaries - 10 * distinct)), \"result\": $(cat "$work/killed.json")}"

# Time to ready with SEED stored batches.
db=seeded
psql -d postgres -c "CREATE DATABASE $db" >/dev/null
port=$(free_port)
start_instance "$db" "$port"   # creates the schema
stop_instances
seed_start=$(date +%s.%N)
psql -d "$db" -c "INSERT INTO telemetry_batches (batch_id, task_id, deployment_id, received_at, day, batch)
  SELECT '00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'), 'task' || (g % 20), 'edge-' || (g % 50),
         now() - (g || ' seconds')::interval, (now() - (g || ' seconds')::interval)::date,
         jsonb_build_object('batch_id', g, 'task_id', 'task' || (g % 20), 'timestamp', 1)
  FROM generate_series(1, $seed) g" >/dev/null
psql -d "$db" -c "INSERT INTO telemetry_tasks (task_id) SELECT DISTINCT task_id FROM telemetry_batches; ANALYZE" >/dev/null
seed_s=$(python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))" "$(date +%s.%N)" "$seed_start")
start=$(date +%s.%N)
port=$(free_port)
start_instance "$db" "$port"
ready_s=$(python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 3))" "$(date +%s.%N)" "$start")
count=$(curl -sf "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["telemetry_batches"])')
record "{\"measure\": \"time_to_ready\", \"stored_batches\": $count, \"seconds_to_first_health\": $ready_s, \"seed_seconds\": $seed_s}"
