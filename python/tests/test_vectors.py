"""Parity vectors: Python returns bit for bit what Rust, C, Go and C# return."""

from __future__ import annotations

import json
import pathlib
import struct

import loopai

VECTORS = pathlib.Path(__file__).resolve().parents[2] / "tests" / "vectors"


def test_parity_vectors_bit_for_bit(tmp_path: pathlib.Path) -> None:
    loopai.install_program(tmp_path, "spam", VECTORS / "program.json")
    rows = [json.loads(line) for line in (VECTORS / "spam.jsonl").read_text().splitlines() if line]
    assert rows
    with loopai.Runtime(tmp_path, "spam") as rt:
        for row in rows:
            result = rt.execute(row["input"])
            assert result.output == row["output"], row["input"]
            bits = struct.pack(">d", result.confidence).hex()
            assert bits == row["confidence_bits"], row["input"]
            assert result.scores == row["scores"], row["input"]
            assert result.status == row["status"], row["input"]


def test_explain_vectors_match_rust(tmp_path: pathlib.Path) -> None:
    loopai.install_program(tmp_path, "spam", VECTORS / "explain-program.json")
    lines = (VECTORS / "explain.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line]
    assert len(rows) >= 10
    with loopai.Runtime(tmp_path, "spam") as rt:
        for row in rows:
            got = rt.explain(row["input"], top_k=row["top_k"])
            assert got == row["explanation"], row["input"]
            # JSON text in, the same explanation out.
            assert rt.explain(json.dumps(row["input"]), top_k=row["top_k"]) == got
