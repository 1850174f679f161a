"""Constants and helpers shared by the tests (imported as `support`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_PROGRAM = REPO / "examples" / "spam" / "program.json"

# A rules-only program: "prize" means spam, anything else is ham with low confidence
# (below abstain_below, so the status is "abstain").
RULES: dict[str, Any] = {
    "format": "loopai.program/1",
    "task": "spam",
    "inputs": [{"name": "text", "path": "/text", "type": "text"}],
    "features": [
        {"name": "prize", "op": "keywords", "source": "text", "terms": ["prize"]},
    ],
    "decide": {
        "op": "rules",
        "rules": [
            {"when": {"feature": "prize", "gt": 0}, "then": "spam", "confidence": 0.95},
            {"when": {"always": True}, "then": "ham", "confidence": 0.55},
        ],
    },
    "output": {"kind": "label", "labels": ["spam", "ham"], "abstain_below": 0.6},
}


def log_lines(data_dir: Path, kind: str = "executions") -> list[dict[str, Any]]:
    """Every record of the task's execution log, in file order."""
    out: list[dict[str, Any]] = []
    folder = data_dir / "datasets" / "spam" / kind
    for path in sorted(folder.glob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out
