"""Seeds a `loopai cloud serve` with a fleet's worth of data, deterministically: telemetry
batches of task `spam` over DAYS days x VERSIONS versions (plus a smaller task), rollout
events, heartbeats of three deployments (healthy, degraded, soon silent), and the
improvement engine's state and an escalation.

Used by the dashboard's browser test (test_dashboard.py) and by the task-page latency
benchmark (benches/compare/dashboard-latency.py). Standard library only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

DAYS = 30
VERSIONS = 10
TASK = "spam"
SMALL_TASK = "ticket-router"
VIEWER_KEY = "vk_dashboard_test_0123456789"
DEPLOYMENTS = {
    # deployment id -> its key
    "edge-eu-1": "dk_edge_eu_1_0123456789abcdef",
    "edge-us-2": "dk_edge_us_2_0123456789abcdef",
    "edge-ap-3": "dk_edge_ap_3_0123456789abcdef",
}
# What the degraded deployment reports: markup that must show as text.
HOSTILE_ERROR = "<script>alert('xss')</script> disk full on /var/lib/loopai"
ROLLBACK_REASON = "canary match rate 0.712 < stable 0.931 (confidence sequence excludes 0)"
ESCALATION_INPUT = "cheap meds <b>now</b>"


def write_keys(path: Path) -> None:
    lines = [json.dumps({"key": k, "role": "deployment", "deployment_id": d}) for d, k in DEPLOYMENTS.items()]
    lines.append(json.dumps({"key": VIEWER_KEY, "role": "viewer", "name": "dashboard-test"}))
    path.write_text("\n".join(lines) + "\n")


def write_engine_files(cloud_dir: Path) -> None:
    """The improvement engine's state of `spam` and one escalation, in its file formats."""
    (cloud_dir / "improvement").mkdir(parents=True, exist_ok=True)
    attempts = [
        {"at": "2026-11-02T03:00:00Z", "from_version": 7, "failure_rate": 0.21, "samples": 140,
         "version": 8, "outcome": "successful", "reason": None},
        {"at": "2026-11-09T03:00:00Z", "from_version": 8, "failure_rate": 0.18, "samples": 160,
         "version": 9, "outcome": "unsuccessful", "reason": "v9 failed 19.0% of 150 validations"},
        {"at": "2026-11-12T03:00:00Z", "from_version": 9, "failure_rate": 0.19, "samples": 150,
         "version": None, "outcome": "unsuccessful", "reason": "cross-validated accuracy 0.7612 below 0.8500"},
    ]
    (cloud_dir / "improvement" / f"{TASK}.json").write_text(json.dumps({"attempts": attempts}))
    escalation = {
        "task_id": TASK, "escalated_at": "2026-11-12T03:00:01Z",
        "consecutive_unsuccessful_attempts": 3, "spec_sha256": "ab" * 32, "attempts": attempts,
        "failing_examples": [
            {"input": {"text": ESCALATION_INPUT}, "output": "spam"},
            {"input": {"text": "meeting moved to 3pm"}, "output": "ham"},
        ],
    }
    with open(cloud_dir / "escalations.jsonl", "a") as f:
        f.write(json.dumps(escalation) + "\n")


def post(url: str, key: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}")


def batch(rng: random.Random, n: int, task: str, version: int, day: dt.date, deployment: str) -> dict:
    executions = 800 + rng.randrange(400)
    validations = 40 + rng.randrange(20)
    # Newer versions match the oracle better; a little seeded noise per day.
    rate = min(0.995, 0.78 + 0.018 * version + rng.uniform(-0.012, 0.012))
    matches = round(validations * rate)
    p50 = 0.004 + 0.0002 * version
    return {
        "format": "loopai.telemetry/1", "batch_id": f"seed-{task}-{n}", "deployment_id": deployment,
        "task_id": task, "program_version": version,
        "timestamp": f"{day.isoformat()}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00.000Z",
        "window_start": f"{day.isoformat()}T00:00:00.000Z", "window_end": f"{day.isoformat()}T23:59:00.000Z",
        "privacy_mode": "strict",
        "metrics": {
            "executions": executions,
            "by_status": {"success": executions - 3, "abstain": 2, "error": 1, "timeout": 0},
            "latency_ms": {"p50": p50, "p95": p50 * 3, "p99": p50 * 6, "mean": p50 * 1.2, "max": p50 * 20},
            "mean_confidence": 0.9, "sampled": validations, "validations": validations,
            "matches": matches, "match_rate": matches / validations, "outputs": {},
        },
        "execution_summaries": [],
        "sampled_validations": [
            {"execution_id": f"00000000-0000-4000-8000-{n:012d}", "program_version": version,
             "oracle_latency_ms": 350.0, "oracle_cost": 0.0004 * validations, "match": True,
             "similarity_score": 1.0, "comparison_method": "exact",
             "validated_at": f"{day.isoformat()}T12:00:00.000Z"}
        ],
    }


def heartbeat(deployment: str, task: str, version: int, interval: int, **extra) -> dict:
    hb = {
        "format": "loopai.heartbeat/1", "deployment_id": deployment, "task_id": task,
        "timestamp": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "interval_sec": interval, "status": "ok", "active_version": version, "rollout": None,
        "queues": {"dataset_pending": 0, "validation_queued": 1, "telemetry_spooled": 0,
                   "telemetry_pending_records": 12},
        "last_error": None,
    }
    hb.update(extra)
    return hb


def seed(url: str, days: int = DAYS, versions: int = VERSIONS, seed: int = 18) -> int:
    """Uploads the batches and heartbeats; returns the number of batches."""
    rng = random.Random(seed)
    today = dt.datetime.now(dt.timezone.utc).date()
    n = 0
    deployments = list(DEPLOYMENTS)
    for d in range(days):
        day = today - dt.timedelta(days=days - 1 - d)
        for version in range(1, versions + 1):
            dep = deployments[(d + version) % 2]
            b = batch(rng, n, TASK, version, day, dep)
            if version == versions and d == days - 2:
                b["rollout_events"] = [
                    {"at": f"{day.isoformat()}T09:00:00.000Z", "kind": "started", "stable_version": versions - 1,
                     "canary_version": versions, "stage": 0, "fraction": 0.01, "reason": "new version published"},
                    {"at": f"{day.isoformat()}T15:00:00.000Z", "kind": "rolled_back", "stable_version": versions - 1,
                     "canary_version": versions, "stage": 1, "fraction": 0.0, "reason": ROLLBACK_REASON},
                ]
            post(f"{url}/api/v1/telemetry", DEPLOYMENTS[dep], b)
            n += 1
    for d in range(3):
        day = today - dt.timedelta(days=2 - d)
        post(f"{url}/api/v1/telemetry", DEPLOYMENTS["edge-ap-3"], batch(rng, n, SMALL_TASK, 1, day, "edge-ap-3"))
        n += 1
    post(f"{url}/api/v1/heartbeats", DEPLOYMENTS["edge-eu-1"], heartbeat(
        "edge-eu-1", TASK, versions - 1, 30,
        rollout={"state": "in_progress", "stable_version": versions - 1, "canary_version": versions,
                 "stage": 1, "fraction": 0.05}))
    post(f"{url}/api/v1/heartbeats", DEPLOYMENTS["edge-us-2"], heartbeat(
        "edge-us-2", TASK, versions - 1, 30, status="degraded", last_error=HOSTILE_ERROR))
    # Reports every second: silent once a few seconds pass without news.
    post(f"{url}/api/v1/heartbeats", DEPLOYMENTS["edge-ap-3"], heartbeat("edge-ap-3", SMALL_TASK, 1, 1))
    return n


class CloudServer:
    """`loopai cloud serve` on an ephemeral port, stopped with SIGTERM (bounded waits)."""

    def __init__(self, loopai: str, cloud_dir: Path, keys: Path, *extra: str, argv: list[str] | None = None):
        """`argv` replaces the `loopai cloud serve ...` command (another server printing
        `listening on URL`)."""
        self.log = open(cloud_dir.parent / "cloud-serve.log", "w+")
        self.proc = subprocess.Popen(
            argv or [loopai, "cloud", "serve", "--dir", str(cloud_dir), "--port", "0",
                     "--api-keys", str(keys), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "LOOPAI_LOG": "info"})
        deadline = time.monotonic() + 60
        while True:
            self.log.seek(0)
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", self.log.read())
            if m:
                self.url = m.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"loopai cloud serve did not start:\n{self.log.read()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
