#!/usr/bin/env python3
"""The gateway's replay benchmark (issue #16).

    gateway_replay.py --data DIR [--loopai BIN] [--stand-in BIN] [--json OUT] [options]

DIR holds a labelled set: spec.json (a task specification) and test.jsonl (held-out rows
`{"input": {...}, "output": LABEL}`), as scripts/fetch_datasets.py writes them. The task is
registered from the spec with NO examples (`loopai tasks add`), `loopai serve` runs with the
gateway on in front of the stand-in upstream LLM (loopai-benches `stand_in_llm`), which
answers every input's true label after `--latency-ms`. The labelled rows (the spec's
examples and test.jsonl, `--stream all`; or test.jsonl alone, `--stream test`) are replayed
once, in an order shuffled with `--seed`, through the gateway with the official `openai` SDK
(`--concurrency` calls in flight, in stream order). Reported per block of `--block` calls:
the share answered locally (`X-Loopai-Source: program`), disagreement of local answers with
the upstream's (the true label), upstream calls and tokens (from the upstream's `usage`);
and for the whole stream the upstream's own request and token counters (which include the
gateway's background validations of sampled local answers).

With `--seeds 16,1,2,3,4` the replay runs once per seed (a fresh gateway and stand-in each,
the stream shuffled and `learn.seed` set with that seed; wrk only with the first) and a
summary gives a line per replay and in how many the three replay targets are met: the
figures vary from run to run, since background learning races the stream, so judge a
change on several replays, not one.

Then (unless `--no-overhead`) latency on loopback with wrk, one connection per 100 req/s
each pausing 10 ms between requests (wrk's `delay`), for every rate of `--rates`:
  - forwarded calls: wrk against the stand-in directly (no latency) and through a gateway
    whose task stays in shadow; the gateway's overhead is the difference (p50, p99);
  - locally answered calls: wrk against the replay's gateway with the inputs it answered
    locally during the replay (checked again with the SDK first), end to end over HTTP;
  - the loopback floor: wrk against the same gateway's `GET /ready` (no work) at the same
    rate, so that what the machine adds (loopback, scheduling, wrk itself) is shown next
    to what a local answer adds.
wrk cannot hold a rate exactly: the achieved rate is reported next to each figure. Speed
needs a quiet machine: figures from a loaded one are not figures to quote.

Writes a JSON result (`--json`, default ${CARGO_TARGET_DIR:-target}/compare/
gateway_replay.json) and prints tables. Needs python3 with `openai` installed, wrk for
the latency part (`apt-get install wrk`), and the two binaries (`cargo build --release
-p loopai-cli -p loopai-benches --bin loopai --bin stand_in_llm`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
START_TIMEOUT = 120.0
MODEL = "gpt-4o-mini"


class Server:
    """A started server process; its base URL is read from what it prints."""

    def __init__(self, args: list[str], url_pattern: str, log: Path, env: dict[str, str]):
        self.args = args
        self.log = log
        self.url = ""
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **env},
        )
        found = threading.Event()
        pattern = re.compile(url_pattern)

        def read() -> None:
            assert self.proc.stdout is not None
            with open(log, "w") as f:
                for line in self.proc.stdout:
                    f.write(line)
                    f.flush()
                    m = pattern.search(line)
                    if m and not found.is_set():
                        self.url = m.group(1)
                        found.set()
            found.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not found.wait(START_TIMEOUT) or not self.url:
            self.stop()
            sys.exit(f"{args[0]} did not start; its output is in {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def load_rows(data: Path, stream: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec_path, test_path = data / "spec.json", data / "test.jsonl"
    for p in (spec_path, test_path):
        if not p.is_file():
            sys.exit(f"{p}: missing (fetch the data set first: scripts/fetch_datasets.py)")
    spec = json.loads(spec_path.read_text())
    rows: list[dict[str, Any]] = []
    if stream == "all":
        rows.extend(spec.get("examples") or [])
    for n, line in enumerate(test_path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append({"input": row["input"], "output": row["output"]})
            except (ValueError, KeyError, TypeError) as e:
                sys.exit(f"{test_path}:{n}: not a labelled row ({e})")
    seen: set[str] = set()
    unique = []
    for row in rows:
        key = canonical(row["input"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return spec, unique


def shuffled(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    import random

    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


def labels_of(spec: dict[str, Any]) -> list[str]:
    return [str(x) for x in (spec.get("output_schema") or {}).get("enum") or []]


def text_input(spec: dict[str, Any]) -> bool:
    """Whether the program's input is `{"text": ...}` (else the user message is JSON)."""
    props = (spec.get("input_schema") or {}).get("properties") or {}
    return set(props) == {"text"}


def messages_for(spec: dict[str, Any], row: dict[str, Any]) -> list[dict[str, str]]:
    labels = labels_of(spec)
    system = spec.get("description", "")
    if labels:
        system += " Answer with exactly one of: " + ", ".join(labels) + "."
    user = row["input"]["text"] if text_input(spec) else json.dumps(row["input"])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def answer_text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))


def start_stand_in(
    bin_: Path, rows: list[dict[str, Any]], work: Path, name: str, latency_ms: float
) -> Server:
    answers = work / f"{name}-answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Server(
        [str(bin_), "--answers", str(answers), "--latency-ms", str(latency_ms)],
        r"listening on (http://\S+/v1)",
        work / f"{name}.log",
        {},
    )


def start_gateway(
    loopai: Path,
    spec: dict[str, Any],
    work: Path,
    name: str,
    upstream: str,
    args: argparse.Namespace,
    min_examples: int,
    seed: int | None = None,
) -> tuple[Server, Path]:
    data = work / name
    (data / "config").mkdir(parents=True)
    spec_path = work / f"{name}-spec.json"
    spec_path.write_text(json.dumps({**spec, "examples": []}))
    done = subprocess.run(
        [str(loopai), "tasks", "add", "--data-dir", str(data), str(spec_path)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    if done.returncode != 0:
        sys.exit(f"loopai tasks add failed:\n{done.stderr}")
    task = spec["name"]
    mode = "text" if text_input(spec) else "json"
    config = (
        "gateway:\n"
        "  upstream:\n"
        f"    base_url: {upstream}\n"
        "    timeout_ms: 60000\n"
        f"  max_disagreement: {args.max_disagreement}\n"
        "  tasks:\n"
        f"    {json.dumps(task)}:\n"
        "      input:\n"
        f"        mode: {mode}\n"
        "learn:\n"
        f"  min_examples: {min_examples}\n"
        f"  seed: {args.seed if seed is None else seed}\n"
    )
    if args.sampling_rate is not None:
        config += f"sampling:\n  rate: {args.sampling_rate}\n"
    (data / "config" / "deployment.yaml").write_text(config)
    server = Server(
        [str(loopai), "serve", "--data-dir", str(data), "--port", "0"],
        r"listening on (http://[0-9.:]+)",
        work / f"{name}.log",
        {"RUST_LOG": os.environ.get("RUST_LOG", "info")},
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(server.url + "/ready", timeout=5) as r:
                if r.status == 200:
                    return server, data
        except OSError:
            pass
        if time.monotonic() > deadline or server.proc.poll() is not None:
            server.stop()
            sys.exit(f"loopai serve did not get ready; its output is in {server.log}")
        time.sleep(0.1)


def replay(
    client: openai.OpenAI,
    spec: dict[str, Any],
    rows: list[dict[str, Any]],
    concurrency: int,
    block: int,
    health_url: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The result of every call, in stream order, and the task's state at each block's end."""
    task = spec["name"]

    def call(row: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=messages_for(spec, row),  # type: ignore[arg-type]
                extra_headers={"X-Loopai-Task": task},
            )
        except openai.APIError as e:
            return {"source": "error", "error": f"{type(e).__name__}: {e}", "ms": 0.0}
        ms = (time.perf_counter() - t0) * 1000
        completion = raw.parse()
        usage = completion.usage
        return {
            "source": raw.headers.get("x-loopai-source", ""),
            "content": completion.choices[0].message.content,
            "truth": answer_text(row["output"]),
            "tokens": usage.total_tokens if usage else 0,
            "ms": ms,
        }

    results: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    keys = ("state", "active_version", "threshold", "learning", "labels", "calibration_pairs")
    with ThreadPoolExecutor(concurrency) as pool:
        for i, r in enumerate(pool.map(call, rows)):
            results.append(r)
            if (i + 1) % block == 0 or i + 1 == len(rows):
                tasks = (get_json(health_url).get("gateway") or {}).get("tasks") or []
                live = next((t for t in tasks if t.get("task") == task), {})
                states.append({k: live.get(k) for k in keys})
                local = sum(x["source"] == "program" for x in results[-block:])
                print(f"  {i + 1} calls, last block: {local} local, {states[-1]}", file=sys.stderr)
    return results, states


def upper_bound(k: int, n: int, alpha: float = 0.05) -> float | None:
    """One-sided Clopper-Pearson upper bound of a rate (k events in n), by bisection."""
    if n == 0:
        return None
    if k >= n:
        return 1.0

    def cdf(p: float) -> float:  # P(X <= k) for Binomial(n, p), in log space
        lp, lq = math.log(p), math.log1p(-p)
        c = math.lgamma(n + 1)
        return sum(
            math.exp(c - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
            for i in range(k + 1)
        )

    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mid >= 1.0 or cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(results)
    local = [r for r in results if r["source"] == "program"]
    forwarded = [r for r in results if r["source"] == "oracle"]
    errors = [r for r in results if r["source"] not in ("program", "oracle")]
    disagree = sum(r["content"] != r["truth"] for r in local)
    return {
        "calls": n,
        "local": len(local),
        "local_share": len(local) / n if n else None,
        "disagreements": disagree,
        "disagreement": disagree / len(local) if local else None,
        "disagreement_upper_95": upper_bound(disagree, len(local)),
        "forwarded": len(forwarded),
        "forwarded_share": len(forwarded) / n if n else None,
        "upstream_tokens": sum(r["tokens"] for r in forwarded),
        "forwarded_not_truth": sum(r["content"] != r["truth"] for r in forwarded),
        "errors": len(errors),
    }


def wrk_run(
    url: str,
    bodies: Path | None,
    rate: int,
    secs: int,
    task: str | None,
    path: str = "/v1/chat/completions",
) -> dict[str, Any]:
    """wrk at about `rate` req/s: POSTs of `bodies` to `path`, or GETs of `path` without."""
    connections = max(1, rate // 100)
    env = {
        **os.environ,
        "WRK_BODIES": str(bodies) if bodies is not None else "",
        "WRK_PATH": path,
        "WRK_DELAY_MS": "10",
        "WRK_TASK": task or "",
    }
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{secs}s",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "gateway_wrk.lua"),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=secs + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        sys.exit(f"wrk failed ({' '.join(cmd)}):\n{done.stdout}\n{done.stderr}")
    out: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    out["rate_target"] = rate
    out["connections"] = connections
    out["rate_achieved"] = out["requests"] / (out["duration_us"] / 1e6)
    return out


def scrape(url: str, family: str) -> list[tuple[float, int]]:
    """The cumulative buckets (upper bound in seconds, count) of histogram FAMILY in
    URL/metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    out = []
    for m in re.finditer(rf'^{family}_bucket{{le="([^"]+)"}} (\d+)$', text, re.M):
        le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
        out.append((le, int(m.group(2))))
    return out


def server_timing(
    before: list[tuple[float, int]], after: list[tuple[float, int]]
) -> dict[str, Any]:
    """p50/p99 (bucket upper bounds, 10% wide, in µs) of what was observed between two
    scrapes."""
    diff = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    n = diff[-1][1] if diff else 0
    out: dict[str, Any] = {"calls": n}
    for q in (0.5, 0.99):
        key = f"p{round(q * 100)}_us"
        out[key] = next((le * 1e6 for le, c in diff if c >= q * n), None) if n else None
        if out[key] is not None and math.isinf(out[key]):
            out[key] = None
    return out


def write_bodies(path: Path, spec: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for row in rows:
            body = {"model": MODEL, "messages": messages_for(spec, row)}
            f.write(json.dumps(body, separators=(",", ":")) + "\n")


def overhead(
    args: argparse.Namespace,
    spec: dict[str, Any],
    rows: list[dict[str, Any]],
    work: Path,
    replay_gateway: Server,
    local_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install wrk (or run with --no-overhead)")
    bodies = work / "bodies.jsonl"
    write_bodies(bodies, spec, rows)
    out: dict[str, Any] = {"wrk": "-t1, one connection per 100 req/s, 10 ms delay", "rates": []}
    up = start_stand_in(args.stand_in, rows, work, "overhead-stand-in", 0.0)
    # A task that never learns: every call is forwarded (and its answer recorded).
    gw, _ = start_gateway(
        args.loopai, spec, work, "overhead-gateway", up.url, args, min_examples=10**9
    )
    try:
        for rate in args.rates:
            print(
                f"== overhead at {rate} req/s: stand-in directly, then through the gateway",
                file=sys.stderr,
            )
            direct = wrk_run(up.url.removesuffix("/v1"), bodies, rate, args.wrk_secs, None)
            family = "loopai_gateway_forwarded_overhead_seconds"
            before = scrape(gw.url, family)
            via = wrk_run(gw.url, bodies, rate, args.wrk_secs, spec["name"])
            via["server_overhead"] = server_timing(before, scrape(gw.url, family))
            out["rates"].append(
                {
                    "rate": rate,
                    "direct": direct,
                    "gateway": via,
                    "overhead_p50_us": via["latency_us"]["p50"] - direct["latency_us"]["p50"],
                    "overhead_p99_us": via["latency_us"]["p99"] - direct["latency_us"]["p99"],
                }
            )
    finally:
        gw.stop()
        up.stop()
    # Locally answered calls: the inputs the replay's gateway answered locally, checked again.
    out["local"] = []
    if not local_rows:
        out["local_note"] = "no call was answered locally during the replay"
        return out
    c = openai.OpenAI(base_url=replay_gateway.url + "/v1", api_key="sk-bench", max_retries=0)
    still = []
    for row in local_rows[:2000]:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages_for(spec, row),  # type: ignore[arg-type]
            extra_headers={"X-Loopai-Task": spec["name"]},
        )
        if raw.headers.get("x-loopai-source") == "program":
            still.append(row)
    out["local_inputs"] = len(still)
    if not still:
        out["local_note"] = "none of the replay's local answers is local any more"
        return out
    local_bodies = work / "local-bodies.jsonl"
    write_bodies(local_bodies, spec, still)
    for rate in args.rates:
        print(f"== locally answered calls at {rate} req/s", file=sys.stderr)
        family = "loopai_gateway_local_seconds"
        before = scrape(replay_gateway.url, family)
        r = wrk_run(replay_gateway.url, local_bodies, rate, args.wrk_secs, spec["name"])
        r["server_time"] = server_timing(before, scrape(replay_gateway.url, family))
        print(f"== loopback floor (GET /ready) at {rate} req/s", file=sys.stderr)
        r["floor"] = wrk_run(replay_gateway.url, None, rate, args.wrk_secs, None, "/ready")
        out["local"].append(r)
    return out


def fmt(v: Any, spec: str = ".3f") -> str:
    """`v` formatted, or a dash as wide as the format's width."""
    if v is not None:
        return format(v, spec)
    width = re.match(r"\d*", spec)
    return "-".rjust(int(width.group(0) or 1) if width else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="dir with spec.json, test.jsonl")
    ap.add_argument("--loopai", type=Path, default=TARGET / "release" / "loopai")
    ap.add_argument("--stand-in", type=Path, default=TARGET / "release" / "stand_in_llm")
    ap.add_argument("--json", type=Path, default=TARGET / "compare" / "gateway_replay.json")
    ap.add_argument("--stream", choices=["all", "test"], default="all")
    ap.add_argument("--calls", type=int, default=0, help="replay only the first N (0: all)")
    ap.add_argument("--block", type=int, default=500)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="replay once per seed, comma-separated (overrides --seed), and print a summary",
    )
    ap.add_argument("--latency-ms", type=float, default=100.0, help="the upstream's latency")
    ap.add_argument("--concurrency", type=int, default=4, help="calls in flight")
    ap.add_argument("--min-examples", type=int, default=200, help="learn.min_examples")
    ap.add_argument("--max-disagreement", type=float, default=0.02)
    ap.add_argument("--sampling-rate", type=float, default=None, help="sampling.rate")
    ap.add_argument("--no-overhead", action="store_true", help="skip the wrk measurements")
    ap.add_argument(
        "--rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1000, 10000],
        help="req/s for wrk, comma-separated",
    )
    ap.add_argument("--wrk-secs", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    for b in (args.loopai, args.stand_in):
        if not b.is_file():
            sys.exit(f"{b}: not built (cargo build --release -p loopai-cli -p loopai-benches)")
    if args.block < 1 or args.concurrency < 1:
        sys.exit("--block and --concurrency must be at least 1")

    spec, rows = load_rows(args.data, args.stream)
    if not spec.get("name"):
        sys.exit(f"{args.data / 'spec.json'}: no name")
    seeds = args.seeds or [args.seed]
    runs = []
    for i, seed in enumerate(seeds):
        # The wrk measurements once, with the first replay's gateway.
        runs.append(
            replay_once(args, spec, rows, seed, overhead_too=i == 0 and not args.no_overhead)
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1:
        args.json.write_text(json.dumps(runs[0], indent=2) + "\n")
    else:
        args.json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        print_summary(runs)
    print(f"\nresult: {args.json}")


def replay_once(
    args: argparse.Namespace, spec: dict[str, Any], rows: list, seed: int, overhead_too: bool
) -> dict[str, Any]:
    """One replay of the stream shuffled with `seed` through a fresh gateway and stand-in."""
    stream = shuffled(rows, seed)
    if args.calls > 0:
        stream = stream[: args.calls]
    work = Path(tempfile.mkdtemp(prefix="gateway-replay-"))
    print(f"== {spec['name']}: {len(stream)} calls, seed {seed}, work dir {work}", file=sys.stderr)
    up = start_stand_in(args.stand_in, rows, work, "stand-in", args.latency_ms)
    gw, data = start_gateway(
        args.loopai, spec, work, "gateway", up.url, args, args.min_examples, seed
    )
    load_start = os.getloadavg()
    try:
        client = openai.OpenAI(
            base_url=gw.url + "/v1", api_key="sk-bench", max_retries=0, timeout=120
        )
        t0 = time.monotonic()
        results, states = replay(
            client, spec, stream, args.concurrency, args.block, gw.url + "/health"
        )
        seconds = time.monotonic() - t0
        upstream = get_json(up.url.removesuffix("/v1") + "/stand-in/stats")
        health = get_json(gw.url + "/health")
        tasks = subprocess.run(
            [str(args.loopai), "tasks", "list", "--data-dir", str(data), "--json"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
        )
        blocks = []
        for start in range(0, len(results), args.block):
            b = summarize(results[start : start + args.block])
            b["first_call"] = start + 1
            b["gateway_at_end"] = states[len(blocks)] if len(blocks) < len(states) else None
            blocks.append(b)
        half = len(results) // 2
        local_rows = [row for row, r in zip(stream, results) if r["source"] == "program"]
        result: dict[str, Any] = {
            "task": spec["name"],
            "labels": labels_of(spec),
            "calls": len(results),
            "seed": seed,
            "stream": args.stream,
            "concurrency": args.concurrency,
            "upstream_latency_ms": args.latency_ms,
            "min_examples": args.min_examples,
            "max_disagreement": args.max_disagreement,
            "seconds": seconds,
            "blocks": blocks,
            "whole": summarize(results),
            "second_half": summarize(results[half:]),
            "upstream": upstream,
            "upstream_calls_share": upstream["requests"] / len(results) if results else None,
            "gateway_health": health.get("gateway"),
            "tasks_list": json.loads(tasks.stdout) if tasks.returncode == 0 else tasks.stderr,
            "machine": {"cpus": os.cpu_count(), "loadavg_start": load_start},
        }
        if overhead_too:
            result["latency"] = overhead(args, spec, rows, work, gw, local_rows)
        result["machine"]["loadavg_end"] = os.getloadavg()
        result["targets"] = targets(result)
    finally:
        gw.stop()
        up.stop()
    print_tables(result)
    if args.keep:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def print_summary(runs: list[dict[str, Any]]) -> None:
    """One line per replay, then the spread: the result varies from run to run (background
    learning races the stream), so a change is judged on several."""
    print(f"\n{runs[0]['task']}: {len(runs)} replays")
    print(
        f"{'seed':>6} {'2nd half local':>15} {'disagreement':>13} {'upstream calls':>15}  targets"
    )
    for r in runs:
        h = r["second_half"]
        met = [t["met"] for t in r["targets"][:3]]
        print(
            f"{r['seed']:>6} {fmt(h['local_share'], '15.1%')} {fmt(h['disagreement'], '13.2%')} "
            f"{fmt(r['upstream_calls_share'], '15.1%')}  "
            f"{'met' if all(met) else 'NOT met'}"
        )
    met = sum(all(t["met"] for t in r["targets"][:3]) for r in runs)
    print(f"the three replay targets met in {met} of {len(runs)} replays")


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue #16's targets next to the measured figures (`met` is None when not measured)."""
    half, out = r["second_half"], []

    def target(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = None if value is None else (value >= limit if at_least else value <= limit)
        out.append({"target": name, "value": value, "limit": limit, "met": met})

    target("second half answered locally >=", half["local_share"], 0.85, True)
    target("second half disagreement <=", half["disagreement"], r["max_disagreement"], False)
    target("upstream calls over the stream <=", r["upstream_calls_share"], 0.25, False)
    lat = r.get("latency") or {}
    at_10k = [x for x in lat.get("rates", []) if x["rate"] == 10000]
    target(
        "overhead on forwarded calls, p99 at 10K req/s (us) <=",
        at_10k[0]["overhead_p99_us"] if at_10k else None,
        500,
        False,
    )
    local_p99 = [x["latency_us"]["p99"] for x in lat.get("local", [])]
    target("locally answered call, p99 (us) <=", max(local_p99) if local_p99 else None, 100, False)
    # Informative: the same p99 less the loopback floor's at the same rate (what the
    # machine shows for an endpoint that does no work), as the forwarded overhead is.
    over_floor = [
        x["latency_us"]["p99"] - x["floor"]["latency_us"]["p99"]
        for x in lat.get("local", [])
        if x.get("floor")
    ]
    target(
        "locally answered call, p99 over the loopback floor's (us) <=",
        max(over_floor) if over_floor else None,
        100,
        False,
    )
    own = [
        x["gateway"]["server_overhead"]["p99_us"]
        for x in lat.get("rates", [])
        if x["rate"] == 10000 and (x["gateway"].get("server_overhead") or {}).get("p99_us")
    ]
    target(
        "gateway's own time on forwarded calls, server side, p99 at 10K (us) <=",
        own[0] if own else None,
        500,
        False,
    )
    own_local = [
        x["server_time"]["p99_us"]
        for x in lat.get("local", [])
        if (x.get("server_time") or {}).get("p99_us")
    ]
    target(
        "locally answered call, server side, p99 (us) <=",
        max(own_local) if own_local else None,
        100,
        False,
    )
    return out


def print_tables(r: dict[str, Any]) -> None:
    print(
        f"\n{r['task']}: {r['calls']} calls replayed (seed {r['seed']}), upstream latency "
        f"{r['upstream_latency_ms']} ms, budget {r['max_disagreement']}, "
        f"min_examples {r['min_examples']}, {r['seconds']:.0f} s"
    )
    print(
        f"{'calls':>13} {'local':>7} {'disagree':>9} {'(upper95)':>9} "
        f"{'upstream':>9} {'tokens':>8} {'errors':>6}  state at the end"
    )
    for b in r["blocks"]:
        last = b["first_call"] + b["calls"] - 1
        print(
            f"{b['first_call']:>6}-{last:<6} {fmt(b['local_share'], '7.1%')} "
            f"{fmt(b['disagreement'], '9.2%')} {fmt(b['disagreement_upper_95'], '9.2%')} "
            f"{b['forwarded']:>9} {b['upstream_tokens']:>8} {b['errors']:>6}  "
            f"{(b['gateway_at_end'] or {}).get('state', '-')}"
        )
    h, w = r["second_half"], r["whole"]
    print(
        f"second half: {fmt(h['local_share'], '.1%')} answered locally, disagreement "
        f"{fmt(h['disagreement'], '.2%')} ({h['disagreements']} of {h['local']})"
    )
    up = r["upstream"]
    print(
        f"whole stream: {w['forwarded']} forwarded ({fmt(w['forwarded_share'], '.1%')}), "
        f"{up['requests']} upstream requests with background validations "
        f"({fmt(r['upstream_calls_share'], '.1%')}), "
        f"{up['prompt_tokens'] + up['completion_tokens']} upstream tokens"
    )
    lat = r.get("latency")
    if lat:
        print("\nlatency on loopback (wrk, µs)     rate    p50     p99")
        for x in lat["rates"]:
            for name in ("direct", "gateway"):
                d = x[name]
                label = (
                    "forwarded, stand-in directly"
                    if name == "direct"
                    else "forwarded, through the gateway"
                )
                print(
                    f"{label:<32} {d['rate_achieved']:>6.0f} {d['latency_us']['p50']:>6} "
                    f"{d['latency_us']['p99']:>7}"
                )
            print(
                f"{'  gateway overhead':<32} {x['rate']:>6} {x['overhead_p50_us']:>6} "
                f"{x['overhead_p99_us']:>7}"
            )
            so = x["gateway"].get("server_overhead") or {}
            print(
                f"{'  its own time (server side)':<32} {x['rate']:>6} "
                f"{fmt(so.get('p50_us'), '6.0f')} {fmt(so.get('p99_us'), '7.0f')}"
            )
        for d in lat["local"]:
            print(
                f"{'answered locally, end to end':<32} {d['rate_achieved']:>6.0f} "
                f"{d['latency_us']['p50']:>6} {d['latency_us']['p99']:>7}"
            )
            st = d.get("server_time") or {}
            print(
                f"{'  of which in the server':<32} {d['rate_achieved']:>6.0f} "
                f"{fmt(st.get('p50_us'), '6.0f')} {fmt(st.get('p99_us'), '7.0f')}"
            )
            fl = d.get("floor")
            if fl:
                print(
                    f"{'  loopback floor (GET /ready)':<32} {fl['rate_achieved']:>6.0f} "
                    f"{fl['latency_us']['p50']:>6} {fl['latency_us']['p99']:>7}"
                )
        if lat.get("local_note"):
            print(lat["local_note"])
    print("\ntargets (issue #16)")
    for t in r["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        print(f"  {t['target']} {t['limit']}: {fmt(t['value'], '.4g')} ({verdict})")
    load = r["machine"]
    print(
        f"\nload average at start {load['loadavg_start'][0]:.2f}, "
        f"at end {load['loadavg_end'][0]:.2f} ({load['cpus']} CPUs)"
    )


if __name__ == "__main__":
    main()
