#!/usr/bin/env python3
"""Merges the partial results of benches/compare/run.sh into results.json, prints the
table, and draws results.png.

Usage: report.py OUT_DIR --wrk-flags "..." --uvicorn-workers N --quick 0|1
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

TARGET_RPS = 50_000
TARGET_RATIO = 20.0
TARGET_P99_MS = 2.0
TARGET_PY_P50_US = 5.0
TARGET_PY_RATIO = 4.0


def load(out: Path, name: str) -> Any:
    return json.loads((out / f"{name}.json").read_text())


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--wrk-flags", required=True)
    parser.add_argument("--uvicorn-workers", type=int, required=True)
    parser.add_argument("--quick", type=int, default=0)
    args = parser.parse_args()
    out: Path = args.out

    machine = load(out, "machine")
    machine["loadavg_end"] = os.getloadavg()
    latency = load(out, "rust_latency")["rows"][0]
    throughput = load(out, "rust_throughput")
    python = load(out, "python")
    synth_cli = load(out, "synth_cli")["seconds"]
    w = args.uvicorn_workers
    names = {"loopai": "loopai", "fastapi": f"fastapi{w}", "fastapi1": "fastapi1"}
    http = {k: load(out, f"http_{v}") for k, v in names.items()}
    logged = {k: load(out, f"http_{v}_logged")["logged"] for k, v in names.items()}

    rows_by_name = {r["name"]: r for r in python["rows"]}
    py_loopai = rows_by_name["loopai Runtime.execute(dict)"]
    py_fasttext = rows_by_name["fastText predict"]
    py_fasttext_words = rows_by_name["fastText predict (no subwords)"]
    py_sklearn = rows_by_name["scikit-learn TF-IDF+LR predict"]

    def rps(h: dict[str, Any]) -> float:
        return h["requests"] / (h["duration_us"] / 1e6)

    def http_errors(h: dict[str, Any]) -> int:
        return sum(h["errors"].values())

    loopai_rps, fastapi_rps = rps(http["loopai"]), rps(http["fastapi"])
    fastapi1_rps = rps(http["fastapi1"])
    # A server that answers a constant 200 and does nothing else, driven the same way.
    ceiling = load(out, "http_ceiling")
    ceiling_rps = rps(ceiling)
    loopai_p99_ms = http["loopai"]["latency_us"]["p99"] / 1e3
    fastapi_p99_ms = http["fastapi"]["latency_us"]["p99"] / 1e3
    training = python.get("training_seconds", {})
    synth_py = next((v for k, v in training.items() if k.startswith("loopai")), None)
    ft_train = training.get("fastText train_supervised, 1 thread")
    sk_train = training.get("scikit-learn TF-IDF+LR fit")
    threads = {t["threads"]: t for t in throughput["threads"]}

    comparisons = [
        {
            "what": "per call p50, Python: fastText predict / loopai Runtime.execute",
            "ratio": ratio(py_fasttext["p50_us"], py_loopai["p50_us"]),
        },
        {
            "what": "per call p50, Python: fastText (no subwords) / loopai",
            "ratio": ratio(py_fasttext_words["p50_us"], py_loopai["p50_us"]),
        },
        {
            "what": "per call p50, Python: scikit-learn predict / loopai Runtime.execute",
            "ratio": ratio(py_sklearn["p50_us"], py_loopai["p50_us"]),
        },
        {
            "what": "per call p50: loopai from Python / loopai in-process Rust",
            "ratio": ratio(py_loopai["p50_us"] * 1e3, latency["p50_ns"]),
        },
        {
            "what": f"HTTP requests/s: loopai serve / FastAPI ({w} workers)",
            "ratio": ratio(loopai_rps, fastapi_rps),
        },
        {
            "what": "HTTP requests/s: loopai serve / FastAPI (1 worker, uvicorn's default)",
            "ratio": ratio(loopai_rps, fastapi1_rps),
        },
        {
            "what": "HTTP requests/s: loopai serve / do-nothing server",
            "ratio": ratio(loopai_rps, ceiling_rps),
        },
        {
            "what": f"HTTP requests/s: do-nothing server / FastAPI ({w} workers)",
            "ratio": ratio(ceiling_rps, fastapi_rps),
        },
        {
            "what": "HTTP p99 latency: FastAPI / loopai serve",
            "ratio": ratio(fastapi_p99_ms, loopai_p99_ms),
        },
    ]
    if synth_py is not None and ft_train is not None and sk_train is not None:
        comparisons += [
            {
                "what": "learning time: loopai synthesize / fastText train",
                "ratio": ratio(synth_py, ft_train),
            },
            {
                "what": "learning time: loopai synthesize / scikit-learn fit",
                "ratio": ratio(synth_py, sk_train),
            },
        ]

    targets = {
        "loopai_serve_rps_at_least_50k": loopai_rps >= TARGET_RPS,
        "loopai_serve_at_least_20x_fastapi": ratio(loopai_rps, fastapi_rps) >= TARGET_RATIO,
        "loopai_serve_p99_at_most_2ms": loopai_p99_ms <= TARGET_P99_MS,
        "python_execute_p50_at_most_5us": py_loopai["p50_us"] <= TARGET_PY_P50_US,
        "python_at_least_4x_fasttext": ratio(py_fasttext["p50_us"], py_loopai["p50_us"])
        >= TARGET_PY_RATIO,
        "no_http_errors": all(http_errors(h) == 0 for h in [*http.values(), ceiling]),
        # wrk counts completed answers (warm-up included); requests cut off at the end
        # may be logged without being counted.
        "every_answer_logged": all(
            logged[k] >= http[k]["requests"] + load(out, f"http_{v}_warmup")["requests"]
            for k, v in names.items()
        ),
    }
    results = {
        "quick": bool(args.quick),
        "machine": machine,
        "dataset": {
            "name": python["dataset"],
            "test_texts": python["test_texts"],
            "train_examples": python.get("train_examples"),
            "sha256_test": python["sha256_test"],
            "median_text_bytes": python["median_text_bytes"],
        },
        "program": python["program"],
        "rust_in_process": {
            "latency": latency,
            "throughput": throughput,
        },
        "python_per_call": python["rows"],
        "python_versions": python.get("versions", {}),
        "http": {
            "wrk_flags": args.wrk_flags,
            "loopai_serve": {
                **http["loopai"],
                "requests_per_sec": loopai_rps,
                "logged": logged["loopai"],
                "server": "loopai serve (tokio, one async worker per CPU)",
            },
            "fastapi": {
                **http["fastapi"],
                "requests_per_sec": fastapi_rps,
                "logged": logged["fastapi"],
                "server": f"uvicorn[standard] --workers {w}",
            },
            "fastapi_1_worker": {
                **http["fastapi1"],
                "requests_per_sec": fastapi1_rps,
                "logged": logged["fastapi1"],
                "server": "uvicorn[standard] --workers 1",
            },
            "ceiling": {
                **ceiling,
                "requests_per_sec": ceiling_rps,
                "server": "loopai-benches http_ceiling (constant 200, no parsing, no work)",
            },
        },
        "learning_seconds": {
            "loopai synth (CLI)": synth_cli,
            **training,
        },
        "comparisons": comparisons,
        "targets": targets,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    width = 64
    print()
    print(
        f"Machine: {machine['cpus']} CPUs ({machine['cpu']}), load average "
        f"{machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end"
        + ("; QUICK run: smoke test, not figures to quote" if args.quick else "")
    )
    print(
        f"Data: {python['dataset']}, {python['test_texts']} held-out texts; program: "
        f"{python['program']}"
    )
    print()
    print(f"{'in-process Rust, Runtime::execute, logging on':{width}} {'':>14}")
    print(f"{'  p50 / p99 per call':{width}} {latency['p50_ns'] / 1e3:7.2f} / {latency['p99_ns'] / 1e3:.2f} µs")
    for n in (1, 2):
        print(f"{f'  {n} thread(s), logged executions/s':{width}} {threads[n]['per_sec']:14,.0f}")
    print()
    print(f"{'Python, per call':{width}} {'p50 µs':>9} {'p99 µs':>9} {'acc':>7}")
    for r in python["rows"]:
        print(f"{'  ' + r['name']:{width}} {r['p50_us']:9.2f} {r['p99_us']:9.2f} {r['accuracy']:7.4f}")
    print()
    print(f"{'HTTP (wrk ' + args.wrk_flags + ')':{width}} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for label, h, r in (
        ("  loopai serve", http["loopai"], loopai_rps),
        (f"  FastAPI + uvicorn ({w} workers)", http["fastapi"], fastapi_rps),
        ("  FastAPI + uvicorn (1 worker)", http["fastapi1"], fastapi1_rps),
        ("  do-nothing server (the machine's ceiling)", ceiling, ceiling_rps),
    ):
        print(
            f"{label:{width}} {r:10,.0f} {h['latency_us']['p50'] / 1e3:8.3f} "
            f"{h['latency_us']['p99'] / 1e3:8.3f} {http_errors(h):7d}"
        )
    print()
    print(f"{'learning from the train split':{width}} {'seconds':>9}")
    for name, secs in results["learning_seconds"].items():
        print(f"{'  ' + name:{width}} {secs:9.3f}")
    print()
    print(f"{'ratios (same run)':{width}} {'x':>9}")
    for c in comparisons:
        print(f"{'  ' + c['what']:{width}} {c['ratio']:9.2f}")
    print()
    print(
        f"targets: >= {TARGET_RPS:,} req/s: {'met' if targets['loopai_serve_rps_at_least_50k'] else 'MISSED'}"
        f" ({loopai_rps:,.0f}); >= {TARGET_RATIO:.0f}x FastAPI: "
        f"{'met' if targets['loopai_serve_at_least_20x_fastapi'] else 'MISSED'}"
        f" ({ratio(loopai_rps, fastapi_rps):.1f}x); p99 <= {TARGET_P99_MS} ms: "
        f"{'met' if targets['loopai_serve_p99_at_most_2ms'] else 'MISSED'} ({loopai_p99_ms:.3f} ms)"
    )
    print(
        f"targets, Python: p50 <= {TARGET_PY_P50_US} µs: "
        f"{'met' if targets['python_execute_p50_at_most_5us'] else 'MISSED'}"
        f" ({py_loopai['p50_us']:.2f} µs); >= {TARGET_PY_RATIO:.0f}x fastText predict: "
        f"{'met' if targets['python_at_least_4x_fasttext'] else 'MISSED'}"
        f" ({ratio(py_fasttext['p50_us'], py_loopai['p50_us']):.1f}x; accuracy loopai "
        f"{py_loopai['accuracy']:.4f}, fastText {py_fasttext['accuracy']:.4f})"
    )
    print(
        f"every answer logged: {'yes' if targets['every_answer_logged'] else 'NO'} "
        f"({', '.join(f'{k} {n:,}' for k, n in logged.items())} records); "
        f"HTTP errors: {'none' if targets['no_http_errors'] else 'SOME'}"
    )
    print(f"results: {out / 'results.json'}, chart: {out / 'results.png'}")
    draw(out / "results.png", results, latency, python["rows"], loopai_rps, fastapi_rps, fastapi1_rps, w)


def draw(
    path: Path,
    results: dict[str, Any],
    latency: dict[str, Any],
    py_rows: list[dict[str, Any]],
    loopai_rps: float,
    fastapi_rps: float,
    fastapi1_rps: float,
    workers: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))

    def bars(ax: Any, labels: list[str], values: list[float], title: str, unit: str, log: bool) -> None:
        # loopai in blue, the alternatives in grey.
        colors = [
            "#2b6cb0" if ("loopai" in n or "Rust" in n) else "#a0aec0" for n in labels
        ]
        ax.barh(labels, values, color=colors)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(unit)
        ax.margins(x=0.25)
        for i, v in enumerate(values):
            text = f" {v:,.0f}" if v >= 1000 else f" {v:.3g}"
            ax.text(v, i, text, va="center", fontsize=9)

    per_call = [("Rust in-process execute", latency["p50_ns"] / 1e3)] + [
        (r["name"].replace("loopai ", "loopai py ").replace(" (JSON given)", ""), r["p50_us"])
        for r in py_rows
    ]
    bars(axes[0][0], [n for n, _ in per_call], [v for _, v in per_call], "per call, p50", "µs (log)", True)
    bars(
        axes[0][1],
        ["do-nothing server", "loopai serve", f"FastAPI ({workers} workers)", "FastAPI (1 worker)"],
        [results["http"]["ceiling"]["requests_per_sec"], loopai_rps, fastapi_rps, fastapi1_rps],
        f"HTTP throughput, wrk {results['http']['wrk_flags']}",
        "requests/s",
        False,
    )
    h = results["http"]
    bars(
        axes[1][0],
        ["loopai serve p50", "loopai serve p99", "FastAPI p50", "FastAPI p99"],
        [
            h["loopai_serve"]["latency_us"]["p50"] / 1e3,
            h["loopai_serve"]["latency_us"]["p99"] / 1e3,
            h["fastapi"]["latency_us"]["p50"] / 1e3,
            h["fastapi"]["latency_us"]["p99"] / 1e3,
        ],
        "HTTP latency under that load",
        "ms (log)",
        True,
    )
    learn = results["learning_seconds"]
    bars(axes[1][1], list(learn), list(learn.values()), "learning from the train split", "seconds", False)
    load = results["machine"]
    fig.suptitle(
        f"Loopai comparison — {results['dataset']['name']}, {load['cpus']} CPUs, "
        f"load avg {load['loadavg_start'][0]:.1f}"
        + (" (quick run)" if results["quick"] else ""),
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
