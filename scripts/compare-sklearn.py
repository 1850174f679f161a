#!/usr/bin/env python3
"""Side by side, in one run: `loopai synth` + `loopai eval` against scikit-learn's TF-IDF +
LinearSVC with C tuned by 3-fold cross-validation, on one task.

Both learn from the same examples (the spec's, plus any --examples files) and are scored on
the same held-out TEST.jsonl (one ``{"input": {...}, "output": ...}`` a line). Printed per
system: accuracy, macro-F1 (over the labels present in the test set, as ``loopai eval``
computes it), for loopai the program's size in bytes and the p99 latency of ``loopai eval``,
and learning time — for loopai the wall-clock time of ``loopai synth``
(cross-validation, every candidate, writing the program), for scikit-learn the time of
the grid search plus the final fit (vectorizer fitted inside each fold).

    scripts/compare-sklearn.py SPEC.json TEST.jsonl [--examples TRAIN.jsonl ...]
        [--loopai BIN] [--seed N] [--json]

scikit-learn's input is the input object's string fields joined by newlines (in the
input schema's order); its vectorizer uses word 1-2-grams with sublinear TF and IDF, the
configuration usually reported as the "TF-IDF + LinearSVC" baseline. C is searched over
10^-2 .. 10^2. The loopai binary defaults to the release build in cargo's real target
directory (CARGO_TARGET_DIR honoured): build it first with
``cargo build --release -p loopai-cli``. Needs scikit-learn (benches/python/requirements.txt).
Timings depend on the machine's load: run it on a quiet machine for figures to quote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
C_GRID = [0.01, 0.1, 1.0, 10.0, 100.0]


def default_loopai() -> Path:
    """`release/loopai` under cargo's real target directory."""
    try:
        meta = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
        target = Path(json.loads(meta.stdout)["target_directory"])
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError) as e:
        sys.exit(f"cannot find cargo's target directory (cargo metadata): {e}")
    return target / "release" / "loopai"


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except ValueError as e:
            sys.exit(f"{path} line {i}: not JSON: {e}")
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), dict) or "output" not in ex:
            sys.exit(f'{path} line {i}: expected {{"input": {{...}}, "output": ...}}')
        out.append(ex)
    return out


def text_fields(spec: dict, examples: list[dict]) -> list[str]:
    props = (spec.get("input_schema") or {}).get("properties")
    if isinstance(props, dict):
        keys = []
        for k, v in props.items():
            t = v.get("type") if isinstance(v, dict) else None
            if t == "string" or (isinstance(t, list) and "string" in t):
                keys.append(k)
        if keys:
            return keys
    return sorted({k for e in examples for k, v in e["input"].items() if isinstance(v, str)})


def as_text(ex: dict, keys: list[str]) -> str:
    return "\n".join(v for k in keys if isinstance(v := ex["input"].get(k), str))


def run_loopai(bin_: Path, spec_path: Path, extra: list[Path], test: Path, seed: int) -> dict:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="loopai-compare-") as d:
        cmd = [str(bin_), "synth", str(spec_path), "--data-dir", d, "--quiet",
               "--seed", str(seed), "--activate-anyway"]
        for e in extra:
            cmd += ["--examples", str(e)]
        t0 = time.perf_counter()
        synth = subprocess.run(cmd, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if synth.returncode != 0:
            sys.exit(f"loopai synth failed:\n{synth.stderr}")
        ev = subprocess.run(
            [str(bin_), "eval", "--json", "--task", spec["name"], "--data-dir", d, str(test)],
            capture_output=True, text=True,
        )
        if ev.returncode != 0:
            sys.exit(f"loopai eval failed:\n{ev.stderr}")
        report = json.loads(ev.stdout)
        chosen = next((line.split(":", 1)[1].strip() for line in synth.stdout.splitlines()
                       if line.startswith("chosen:")), "")
        # The report's `program: N bytes, ...` line.
        size = next((int(line.split()[1]) for line in synth.stdout.splitlines()
                     if line.startswith("program: ") and line.split()[1].isdigit()), None)
        return {
            "system": "loopai synth",
            "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"],
            "learn_s": elapsed,
            "detail": chosen,
            "p99_us": report.get("latency_p99_us"),
            "program_bytes": size,
        }


def run_sklearn(train: list[dict], test: list[dict], keys: list[str], seed: int, metric: str) -> dict:
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.model_selection import GridSearchCV, StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.svm import LinearSVC
    except ImportError:
        sys.exit("scikit-learn is needed: pip install -r benches/python/requirements.txt")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    # liblinear stops at its iteration cap for the largest C on some sets; the grid
    # search then simply scores that C as it is.
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    x = [as_text(e, keys) for e in train]
    y = [str(e["output"]) for e in train]
    pipe = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LinearSVC()
    )
    # As many folds as the rarest label allows, at most 3.
    folds = max(2, min(3, min(y.count(c) for c in set(y))))
    search = GridSearchCV(
        pipe,
        {"linearsvc__C": C_GRID},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
        scoring="f1_macro" if metric == "macro_f1" else "accuracy",
        n_jobs=1,
    )
    t0 = time.perf_counter()
    search.fit(x, y)
    elapsed = time.perf_counter() - t0
    truth = [str(e["output"]) for e in test]
    pred = list(search.predict([as_text(e, keys) for e in test]))
    present = sorted(set(truth))
    return {
        "system": "sklearn TF-IDF + LinearSVC",
        "accuracy": accuracy_score(truth, pred),
        "macro_f1": f1_score(truth, pred, labels=present, average="macro", zero_division=0),
        "learn_s": elapsed,
        "detail": f"C={search.best_params_['linearsvc__C']} ({folds}-fold CV)",
        "p99_us": None,
        "program_bytes": None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("test", type=Path)
    ap.add_argument("--examples", type=Path, action="append", default=[])
    ap.add_argument("--loopai", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    bin_ = args.loopai or default_loopai()
    if not bin_.is_file():
        sys.exit(f"{bin_}: not found; build it with cargo build --release -p loopai-cli")
    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    train = list(spec.get("examples") or [])
    for e in args.examples:
        train += read_jsonl(e)
    test = read_jsonl(args.test)
    if not train or not test:
        sys.exit("need training examples (spec or --examples) and a non-empty test file")
    keys = text_fields(spec, train)
    metric = spec.get("metric", "accuracy")
    rows = [
        run_loopai(bin_, args.spec, args.examples, args.test, args.seed),
        run_sklearn(train, test, keys, args.seed, metric),
    ]
    if args.json:
        print(json.dumps({"task": spec.get("name"), "train": len(train), "test": len(test),
                          "rows": rows}, indent=2))
        return 0
    print(f"task {spec.get('name')}: {len(train)} training examples, {len(test)} held out")
    print(f"{'system':<28} {'accuracy':>8} {'macro-F1':>8} {'learn s':>8} {'program':>10} "
          f"{'p99 µs':>7}  detail")
    for r in rows:
        size = f"{r['program_bytes']:>10}" if r["program_bytes"] is not None else f"{'-':>10}"
        p99 = f"{r['p99_us']:>7.1f}" if r["p99_us"] is not None else f"{'-':>7}"
        print(f"{r['system']:<28} {r['accuracy']:>8.4f} {r['macro_f1']:>8.4f} "
              f"{r['learn_s']:>8.2f} {size} {p99}  {r['detail']}")
    a, b = rows
    print(f"loopai - sklearn: accuracy {a['accuracy'] - b['accuracy']:+.4f}, "
          f"macro-F1 {a['macro_f1'] - b['macro_f1']:+.4f}, "
          f"time ratio {a['learn_s'] / max(b['learn_s'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
