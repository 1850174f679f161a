#!/usr/bin/env bash
# `loopai serve` over HTTPS vs plain HTTP on loopback, measured with wrk (same flags for
# both): POST /execute on keep-alive connections (requests/s, latency), then with
# `Connection: close` (one TCP connection, and with TLS one full handshake, per request:
# new connections/s). The server runs a one-rule program with one worker thread, so the
# figures show the cost of TLS itself, not of the program.
#
#   benches/conn/tls.sh [SECONDS]        (default 10 s per measurement)
#
# Needs: the release `loopai` in cargo's target directory (cargo build --release -p
# loopai-cli), wrk and openssl (apt-get install wrk openssl). Loopback only, bounded in
# time: every server is stopped at the end.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"   # cd to the repository; $target_dir

secs=${1:-10}
bin=${LOOPAI_BIN:-$target_dir/release/loopai}
for tool in wrk openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "$bin is missing: cargo build --release -p loopai-cli" >&2; exit 1; }

work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# A CA and a certificate for 127.0.0.1 (P-256, as most deployments use).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$work/key.pem" -out "$work/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 2 -extfile "$work/san.ext" -out "$work/cert.pem" 2>/dev/null

cat > "$work/program.json" <<'JSON'
{"format": "loopai.program/1", "task": "spam",
 "inputs": [{"name": "text", "path": "/text", "type": "text"}],
 "features": [{"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"], "case_insensitive": true}],
 "decide": {"op": "rules", "rules": [
   {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
   {"when": {"always": true}, "then": "ham", "confidence": 0.8}]},
 "output": {"kind": "label", "labels": ["spam", "ham"]}}
JSON
"$bin" artifacts install --task spam --data-dir "$work/data" "$work/program.json" >/dev/null
printf '%s\n' '{"input": {"text": "WIN a FREE prize, call now"}}' \
  '{"input": {"text": "see you at lunch tomorrow"}}' > "$work/bodies.jsonl"

# Starts the server (extra flags: $@), sets $server and $url.
start() {
  "$bin" serve --task spam --data-dir "$work/data" --port 0 --workers 1 "$@" \
    2> "$work/serve.log" &
  server=$!
  url=""
  for _ in $(seq 600); do
    url=$(sed -n 's/.*listening on \(https\{0,1\}:\/\/[0-9.:]*\).*/\1/p' "$work/serve.log" | head -n1)
    if [ -n "$url" ] && grep -q ready "$work/serve.log"; then return; fi
    sleep 0.1
  done
  echo "loopai serve did not start:" >&2; cat "$work/serve.log" >&2; exit 1
}

stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }

# One wrk run; prints "requests/s p50_us p99_us errors".
measure() {
  WRK_BODIES="$work/bodies.jsonl" wrk -t1 -c16 -d"${secs}s" --latency \
    -s benches/compare/wrk.lua "$@" "$url" |
    sed -n 's/^WRKJSON //p' |
    python3 -c 'import json,sys
r = json.load(sys.stdin); lat = r["latency_us"]
rps = r["requests"] / (r["duration_us"] / 1e6)
print("%.0f %d %d %d" % (rps, lat["p50"], lat["p99"], sum(r["errors"].values())))'
}

printf '%-7s %-22s %10s %9s %9s %7s\n' scheme connections req/s p50_us p99_us errors
for scheme in http https; do
  if [ "$scheme" = https ]; then
    start --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"
  else
    start
  fi
  read -r rps p50 p99 errs <<< "$(measure)"
  printf '%-7s %-22s %10s %9s %9s %7s\n' "$scheme" "keep-alive (16)" "$rps" "$p50" "$p99" "$errs"
  read -r rps p50 p99 errs <<< "$(measure -H 'Connection: close')"
  printf '%-7s %-22s %10s %9s %9s %7s\n' "$scheme" "new per request (16)" "$rps" "$p50" "$p99" "$errs"
  stop
done
