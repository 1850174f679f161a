#!/usr/bin/env python3
"""The dashboard's task page latency (issue #18's target: <= 200 ms with 30 days x 10
versions of data): starts `loopai cloud serve`, seeds it with tests/dashboard/seed.py (30
days x 10 versions of task `spam`, heartbeats, rollouts, improvement history, an
escalation), then times N sequential GETs of /tasks/spam (and, for comparison, of the
fleet page and the query API's daily list) over one keep-alive connection each. Prints
the percentiles; asserts nothing.

    benches/compare/dashboard-latency.py --loopai $CARGO_TARGET_DIR/release/loopai [-n 200]

On PostgreSQL (an empty database; the server is loopai-cloud's `serve_db` example):

    cargo build --release -p loopai-cloud --example serve_db
    benches/compare/dashboard-latency.py --serve-db $CARGO_TARGET_DIR/release/examples/serve_db \
        --database postgres://postgres@127.0.0.1:5432/bench

Standard library only. The server logs go to <tmp>/cloud-serve.log.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "dashboard"))
import seed  # noqa: E402


def measure(url: str, path: str, n: int) -> list[float]:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = {"Authorization": f"Bearer {seed.VIEWER_KEY}"}
    times = []
    for i in range(n + 5):
        start = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - start) * 1000
        if resp.status != 200:
            raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:200]!r}")
        if i >= 5:  # the first few warm the connection and the caches
            times.append(elapsed)
    conn.close()
    return times


def report(name: str, times: list[float]) -> None:
    q = statistics.quantiles(times, n=100)
    print(f"{name:34} n={len(times):4}  p50 {q[49]:7.2f} ms  p95 {q[94]:7.2f} ms  "
          f"p99 {q[98]:7.2f} ms  max {max(times):7.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loopai", help="the loopai binary (file storage)")
    ap.add_argument("--serve-db", help="the serve_db example binary (with --database)")
    ap.add_argument("--database", help="PostgreSQL URL of an empty database (with --serve-db)")
    ap.add_argument("-n", type=int, default=200, help="requests per page")
    args = ap.parse_args()
    if bool(args.serve_db) != bool(args.database) or bool(args.loopai) == bool(args.serve_db):
        ap.error("give --loopai, or --serve-db with --database")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cloud_dir = root / "data"
        cloud_dir.mkdir()
        keys = root / "keys.jsonl"
        seed.write_keys(keys)
        seed.write_engine_files(cloud_dir)
        argv = [args.serve_db, str(cloud_dir), str(keys), args.database] if args.serve_db else None
        server = seed.CloudServer(args.loopai, cloud_dir, keys, argv=argv)
        try:
            started = time.perf_counter()
            batches = seed.seed(server.url)
            print(f"storage: {'PostgreSQL' if args.serve_db else 'files'}; seeded {batches} batches "
                  f"({seed.DAYS} days x {seed.VERSIONS} versions of {seed.TASK}) in "
                  f"{time.perf_counter() - started:.1f} s")
            report(f"GET /tasks/{seed.TASK}", measure(server.url, f"/tasks/{seed.TASK}", args.n))
            report("GET /", measure(server.url, "/", args.n))
            report(f"GET /api/v1/query/tasks/{seed.TASK}/daily",
                   measure(server.url, f"/api/v1/query/tasks/{seed.TASK}/daily?limit=1000", args.n))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
