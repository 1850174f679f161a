#!/usr/bin/env python3
"""Scores the generator on the peer fixtures beside that project's published figures.

Each fixture of FIXTURE_DIR (default: the copy in this repository,
``loopai-synth/tests/data/peer-fixtures``, with its LICENSE and README) is split as the Rust test does: even ids train
(ids 4m+1 and 4m+2 when the even ids miss a label), the rest are held out. The train half
becomes a TaskSpecification; ``loopai synth`` learns a program from it and ``loopai eval``
scores the held-out half.

    scripts/eval-peer-fixtures.py [FIXTURE_DIR] [--loopai BIN]

BIN defaults to ``release/loopai`` in cargo's target directory (CARGO_TARGET_DIR honoured),
built with ``cargo build --release -p loopai-cli`` when missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# From the fixtures' README (that project's phase reports).
PUBLISHED = {
    "phase1_spam_detection": 0.90,
    "phase1_language_detection": 0.80,
    "phase1_sentiment_3class": 0.95,
    "phase2_intent_classification": 0.873,
    "phase2_email_categorization": 0.615,
}


def split(doc: dict) -> tuple[list[dict], list[dict], list[str]]:
    cases = doc["test_cases"]
    labels: list[str] = []
    for c in cases:
        if c["expected_output"] not in labels:
            labels.append(c["expected_output"])
    even = {c["expected_output"] for c in cases if c["id"] % 2 == 0}

    def in_train(i: int) -> bool:
        return i % 2 == 0 if len(even) == len(labels) else i % 4 in (1, 2)

    train, test = [], []
    for c in cases:
        ex = {"input": {"text": c["input"]}, "output": c["expected_output"]}
        (train if in_train(c["id"]) else test).append(ex)
    return train, test, labels


def default_loopai() -> str:
    """release/loopai in cargo's own target directory, built first when missing."""
    env = dict(os.environ)
    if env.get("CARGO_TARGET_DIR"):  # relative to where this is run, not to the repository
        env["CARGO_TARGET_DIR"] = os.path.abspath(env["CARGO_TARGET_DIR"])
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
                          cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    binary = Path(json.loads(meta)["target_directory"]) / "release" / "loopai"
    if not binary.exists():
        print("building loopai (release; the first build takes several minutes)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "loopai-cli"], cwd=ROOT, env=env, check=True)
    return str(binary)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fixtures", nargs="?", default=str(ROOT / "loopai-synth/tests/data/peer-fixtures"))
    ap.add_argument("--loopai", help="the loopai binary (default: release/loopai of cargo's target directory)")
    args = ap.parse_args()
    if not list(Path(args.fixtures).glob("*.json")):
        ap.error(f"{args.fixtures}: no fixture (*.json) in this directory")
    if args.loopai is None:
        args.loopai = default_loopai()
    rows = []
    for path in sorted(Path(args.fixtures).glob("*.json")):
        doc = json.loads(path.read_text())
        train, test, labels = split(doc)
        name = path.stem.replace("_", "-")
        spec = {
            "name": name,
            "description": doc.get("metadata", {}).get("description", ""),
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            "output_schema": {"type": "string", "enum": labels},
            "examples": train,
        }
        with tempfile.TemporaryDirectory() as tmp:
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(spec))
            test_path = Path(tmp) / "test.jsonl"
            test_path.write_text("".join(json.dumps(e) + "\n" for e in test))
            data = Path(tmp) / "data"
            # --activate-anyway: the held-out accuracy is what is measured, trusted or not.
            subprocess.run([args.loopai, "synth", str(spec_path), "--data-dir", str(data), "--quiet", "--activate-anyway"],
                           check=True, stdout=subprocess.DEVNULL)
            out = subprocess.run([args.loopai, "eval", "--data-dir", str(data), "--task", name, str(test_path), "--json"],
                                 check=True, capture_output=True, text=True).stdout
            acc = json.loads(out)["accuracy"]
        rows.append((path.stem, len(train), len(test), acc, PUBLISHED.get(path.stem)))
    print(f"{'fixture':<34} {'train':>5} {'test':>5} {'loopai':>7} {'published':>9}")
    for stem, ntr, nte, acc, pub in rows:
        print(f"{stem:<34} {ntr:>5} {nte:>5} {acc:>7.3f} {('%.3f' % pub) if pub else '-':>9}")
    print("published: that project's LLM-written keyword programs, scored on the items they were written from")
    return 0


if __name__ == "__main__":
    sys.exit(main())
