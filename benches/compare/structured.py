#!/usr/bin/env python3
"""Structured inputs, side by side: `loopai synth` + `loopai eval` against scikit-learn on the
same features, on seeded tasks whose label depends on more than one text.

    benches/compare/structured.py [--datasets DIR] [--loopai BIN] [--seed N] [--json]

Tasks (train / held-out test, generated from --seed; the SMS ones from the real SMS Spam
Collection of `scripts/fetch_datasets.py DIR sms-spam`, skipped when DIR lacks it):
  number        the label is a number alone (amount >= 400), the text is filler
  category      the label is a category alone (plan in {pro, enterprise})
  missing       the label is "unknown" when an optional number is missing, else age >= 18
  text-and-num  synthetic subject + body + lines: spam words in the body AND <= 30 lines
  sms-or-num    SMS split into subject (first 4 words) + body, plus `reports` (how many users
                reported the sender): spam when the SMS is spam OR reports >= 5
  sms-and-num   the same SMS fields plus `lines`: spam when the SMS is spam AND lines <= 30

scikit-learn's model sees the same fields: a ColumnTransformer with a TF-IDF per text field
(word 1-2-grams, sublinear TF), numbers imputed with the mean, with a missing indicator,
standardized, categories one-hot (unknown values ignored), then LinearSVC and
LogisticRegression, each with C chosen by 3-fold cross-validation over 10^-2..10^2.
Accuracy is on the held-out test. The loopai binary defaults to cargo's debug build
(CARGO_TARGET_DIR honoured): `cargo build -p loopai-cli`. Needs scikit-learn
(benches/python/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILLER = (
    "the a and to of in is it you that was for on are with as this be at have from or by "
    "one had not but what all were when we there can an your which their said"
).split()
SPAMMY = ["prize", "winner", "cash", "claim", "free", "urgent", "offer"]


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(lo, hi)))


def task_number(rng):
    def make():
        amount = rng.randrange(10_000) / 10
        return {"text": words(rng, 6, 11), "amount": amount}, "high" if amount >= 400 else "low"

    schema = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["text", "amount"],
    }
    return schema, ["high", "low"], make, 500, 1000


def task_category(rng):
    plans = ["free", "basic", "pro", "enterprise", "trial"]

    def make():
        plan = rng.choice(plans)
        return (
            {"text": words(rng, 6, 11), "plan": plan},
            "priority" if plan in ("pro", "enterprise") else "standard",
        )

    schema = {
        "type": "object",
        "properties": {"text": {"type": "string"}, "plan": {"type": "string", "enum": plans}},
        "required": ["text", "plan"],
    }
    return schema, ["priority", "standard"], make, 300, 1000


def task_missing(rng):
    def make():
        text, vip = words(rng, 5, 9), rng.random() < 0.5
        if rng.random() < 0.3:
            return {"text": text, "vip": vip}, "unknown"
        age = rng.randrange(80)
        return {"text": text, "vip": vip, "age": age}, "adult" if age >= 18 else "minor"

    schema = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "age": {"type": ["integer", "null"]},
            "vip": {"type": "boolean"},
        },
        "required": ["text", "vip"],
    }
    return schema, ["adult", "minor", "unknown"], make, 500, 1000


def task_text_and_num(rng):
    def make():
        spammy, lines = rng.random() < 0.5, rng.randint(1, 80)
        body = words(rng, 8, 15)
        if spammy:
            body += " " + " ".join(rng.choice(SPAMMY) for _ in range(rng.randint(1, 2)))
        return (
            {"subject": words(rng, 3, 5), "body": body, "lines": lines},
            "spam" if spammy and lines <= 30 else "ham",
        )

    schema = {
        "type": "object",
        "properties": {
            "subject": {"type": "string"},
            "body": {"type": "string"},
            "lines": {"type": "integer"},
        },
        "required": ["subject", "body", "lines"],
    }
    return schema, ["spam", "ham"], make, 1000, 1000


def sms_rows(datasets: Path):
    d = datasets / "sms-spam"
    spec = json.loads((d / "spec.json").read_text())
    train = [(e["input"]["text"], e["output"]) for e in spec["examples"]]
    test = [
        (e["input"]["text"], e["output"])
        for e in map(json.loads, (d / "test.jsonl").read_text().splitlines())
        if e
    ]
    return train, test


def split_sms(text: str) -> dict:
    ws = text.split(" ")
    return {"subject": " ".join(ws[:4]), "body": " ".join(ws[4:])}


def sms_task(datasets: Path, rng, combine):
    train, test = sms_rows(datasets)

    def build(rows):
        out = []
        for text, label in rows:
            inp, y = combine(split_sms(text), label == "spam", rng)
            out.append({"input": inp, "output": y})
        return out

    return build(train), build(test)


def sms_or(fields, spam, rng):
    if spam:
        reports = rng.randint(0, 20)
    else:
        reports = rng.randint(5, 20) if rng.random() < 0.25 else rng.randint(0, 4)
    fields["reports"] = reports
    return fields, "spam" if spam or reports >= 5 else "ham"


def sms_and(fields, spam, rng):
    lines = rng.randint(1, 80)
    fields["lines"] = lines
    return fields, "spam" if spam and lines <= 30 else "ham"


def default_loopai() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR")
    target_dir = Path(target) if target else ROOT / "target"
    if not target_dir.is_absolute():
        target_dir = Path.cwd() / target_dir
    return target_dir / "debug" / "loopai"


def run_loopai(bin_: Path, name: str, spec: dict, test: list[dict], seed: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        spec_path, test_path = Path(d) / "spec.json", Path(d) / "test.jsonl"
        spec_path.write_text(json.dumps(spec))
        test_path.write_text("".join(json.dumps(e) + "\n" for e in test))
        t0 = time.perf_counter()
        synth = subprocess.run(
            [
                str(bin_),
                "synth",
                str(spec_path),
                "--data-dir",
                d,
                "--quiet",
                "--seed",
                str(seed),
                "--activate-anyway",
            ],
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - t0
        if synth.returncode != 0:
            sys.exit(f"{name}: loopai synth failed:\n{synth.stderr}{synth.stdout}")
        ev = subprocess.run(
            [str(bin_), "eval", "--json", "--task", spec["name"], "--data-dir", d, str(test_path)],
            capture_output=True,
            text=True,
        )
        if ev.returncode != 0:
            sys.exit(f"{name}: loopai eval failed:\n{ev.stderr}")
        chosen = next(
            (
                line.split(":", 1)[1].strip().split(" (")[0]
                for line in synth.stdout.splitlines()
                if line.startswith("chosen:")
            ),
            "?",
        )
        return {"accuracy": json.loads(ev.stdout)["accuracy"], "model": chosen, "learn_s": elapsed}


def run_sklearn(schema: dict, train: list[dict], test: list[dict], seed: int) -> dict:
    import numpy as np
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import LinearSVC

    props = schema["properties"]
    texts = [k for k, p in props.items() if p.get("type") == "string" and "enum" not in p]
    nums = [
        k
        for k, p in props.items()
        if set([p.get("type")] if isinstance(p.get("type"), str) else p.get("type", [])) - {"null"}
        <= {"number", "integer"}
        and "enum" not in p
        and p.get("type")
    ]
    cats = [k for k in props if k not in texts and k not in nums]

    def frame(rows):
        data = {}
        for k in texts:
            data[k] = [r["input"].get(k) or "" for r in rows]
        for k in nums:
            data[k] = [np.nan if r["input"].get(k) is None else float(r["input"][k]) for r in rows]
        for k in cats:
            data[k] = [str(r["input"].get(k)) for r in rows]
        return pd.DataFrame(data)

    parts = [
        (f"tfidf_{k}", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), k) for k in texts
    ]
    if nums:
        parts.append(
            ("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()), nums)
        )
    if cats:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore"), cats))
    x_train, x_test = frame(train), frame(test)
    y_train = [r["output"] for r in train]
    y_test = [r["output"] for r in test]
    out = {}
    for name, model in [
        ("LinearSVC", LinearSVC(random_state=seed)),
        ("LogReg", LogisticRegression(max_iter=2000)),
    ]:
        pipe = Pipeline([("features", ColumnTransformer(parts)), ("model", model)])
        t0 = time.perf_counter()
        search = GridSearchCV(pipe, {"model__C": [0.01, 0.1, 1.0, 10.0, 100.0]}, cv=3)
        search.fit(x_train, y_train)
        elapsed = time.perf_counter() - t0
        acc = float(np.mean(search.predict(x_test) == np.array(y_test)))
        out[name] = {"accuracy": acc, "C": search.best_params_["model__C"], "learn_s": elapsed}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path("/work/datasets"))
    ap.add_argument("--loopai", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    bin_ = args.loopai or default_loopai()
    if not bin_.exists():
        sys.exit(f"{bin_} not found: build it with `cargo build -p loopai-cli` or pass --loopai")

    tasks = []
    for name, make_task in [
        ("number", task_number),
        ("category", task_category),
        ("missing", task_missing),
        ("text-and-num", task_text_and_num),
    ]:
        rng = random.Random(f"{args.seed}-{name}")
        schema, labels, make, n_train, n_test = make_task(rng)
        rows = [dict(zip(("input", "output"), make())) for _ in range(n_train + n_test)]
        tasks.append((name, schema, labels, rows[:n_train], rows[n_train:]))
    if (args.datasets / "sms-spam" / "spec.json").exists():
        for name, combine, num in [
            ("sms-or-num", sms_or, "reports"),
            ("sms-and-num", sms_and, "lines"),
        ]:
            rng = random.Random(f"{args.seed}-{name}")
            train, test = sms_task(args.datasets, rng, combine)
            schema = {
                "type": "object",
                "properties": {
                    "subject": {"type": "string"},
                    "body": {"type": "string"},
                    num: {"type": "integer"},
                },
                "required": ["subject", "body", num],
            }
            tasks.append((name, schema, ["spam", "ham"], train, test))
    else:
        print(
            f"(no {args.datasets}/sms-spam: the SMS tasks are skipped; "
            f"scripts/fetch_datasets.py {args.datasets} sms-spam)",
            file=sys.stderr,
        )

    results = []
    for name, schema, labels, train, test in tasks:
        spec = {
            "name": name,
            "input_schema": schema,
            "output_schema": {"type": "string", "enum": labels},
            "examples": train,
        }
        loopai = run_loopai(bin_, name, spec, test, args.seed)
        sk = run_sklearn(schema, train, test, args.seed)
        results.append(
            {"task": name, "train": len(train), "test": len(test), "loopai": loopai, "sklearn": sk}
        )
        if not args.json:
            print(
                f"{name:13} train {len(train):5} test {len(test):5}  "
                f"loopai {loopai['accuracy']:.4f} ({loopai['model']})  "
                f"LinearSVC {sk['LinearSVC']['accuracy']:.4f}  "
                f"LogReg {sk['LogReg']['accuracy']:.4f}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
