"""The HTTP baseline of benches/compare: the original design's edge runtime in Python.

A minimal FastAPI service doing per request what the design's Python runtime does
(``POST /execute``, scenario 2 of the architecture document): run a generated keyword
program written in Python, decide sampling (5 %), append the execution record as one JSON
line to ``<data_dir>/datasets/<task>/executions/YYYY-MM-DD.jsonl``, answer
``{"output", "confidence", "version", "execution_id", "latency_ms"}``.

It is given its best configuration: an ``async`` endpoint (no thread pool hop), uvicorn
with uvloop and httptools (``uvicorn[standard]``), access log off, and the log file opened
once per worker process and flushed after each record (the design opens it per record;
this is cheaper, and like loopai's default buffered log it does not fsync). Each worker
process appends to its own file (``...-<pid>.jsonl``) so lines never interleave.

Run::

    LOOPAI_BASELINE_DATA_DIR=/tmp/d uvicorn fastapi_baseline:app --workers 2 \\
        --host 127.0.0.1 --port 8090 --no-access-log --log-level warning
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

TASK = os.environ.get("LOOPAI_BASELINE_TASK", "sms-spam")
DATA_DIR = Path(os.environ.get("LOOPAI_BASELINE_DATA_DIR", "/tmp/loopai-baseline"))
PROGRAM_ID = "00000000-0000-4000-8000-000000000001"
VERSION = 1
SAMPLING_RATE = 0.05

# The generated program (design: "rule" synthesis strategy, Python code artifact).
SPAM_KEYWORDS = (
    "free", "win", "winner", "won", "prize", "claim", "cash", "urgent", "txt", "text ",
    "call now", "call 0", "mobile", "reply", "stop", "offer", "award", "guaranteed",
    "ringtone", "camcorder", "voucher", "bonus", "entry", "selected", "congratulations",
    "http", "www.", "£", "$", "18+", "subscription", "per msg", "nokia", "chat",
)


def program(input_data: dict[str, Any]) -> tuple[str, float]:
    x = str(input_data["text"]).lower()
    hits = sum(1 for k in SPAM_KEYWORDS if k in x)
    if hits >= 2:
        return "spam", 0.95
    if hits == 1:
        return "spam", 0.6
    return "ham", 0.8


class ExecuteRequest(BaseModel):
    input: dict[str, Any]


class _Log:
    """The execution log of this worker process: one JSON line per execution."""

    def __init__(self) -> None:
        self.day = ""
        self.file: Any = None

    def append(self, record: dict[str, Any]) -> None:
        day = record["executed_at"][:10]
        if day != self.day:
            if self.file is not None:
                self.file.close()
            directory = DATA_DIR / "datasets" / TASK / "executions"
            directory.mkdir(parents=True, exist_ok=True)
            self.file = open(directory / f"{day}-{os.getpid()}.jsonl", "a", encoding="utf-8")
            self.day = day
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()


_log = _Log()
app = FastAPI()


@app.post("/execute")
async def execute(request: ExecuteRequest) -> dict[str, Any]:
    start = time.perf_counter()
    output, confidence = program(request.input)
    execution_id = str(uuid.uuid4())
    sampled = random.random() < SAMPLING_RATE
    latency_ms = (time.perf_counter() - start) * 1e3
    _log.append(
        {
            "id": execution_id,
            "program_id": PROGRAM_ID,
            "task_id": TASK,
            "input_data": request.input,
            "output_data": {"output": output},
            "latency_ms": latency_ms,
            "status": "success",
            "sampled_for_validation": sampled,
            "executed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        }
    )
    return {
        "output": output,
        "confidence": confidence,
        "version": VERSION,
        "execution_id": execution_id,
        "latency_ms": latency_ms,
        "status": "success",
        "sampled": sampled,
    }


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "task": TASK, "active_version": VERSION}
