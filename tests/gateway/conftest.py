"""Fixtures of the gateway tests: the stand-in upstream LLM and `loopai serve` with the
gateway on, each a real process on 127.0.0.1 with an ephemeral port, stopped at the end.

Binaries: `$STAND_IN_LLM` and `$LOOPAI_BIN`, else `${CARGO_TARGET_DIR:-target}/debug/...`
(scripts/test-gateway.sh builds them).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
STAND_IN = Path(os.environ.get("STAND_IN_LLM") or TARGET / "debug" / "stand_in_llm")
LOOPAI = Path(os.environ.get("LOOPAI_BIN") or TARGET / "debug" / "loopai")

# Every wait of these tests is bounded by this (seconds).
START_TIMEOUT = 60.0

LABELS = ["spam", "ham"]


class Process:
    """A started server: its process, base URL and the lines it printed."""

    def __init__(self, args: list[str], url_pattern: str, env: dict[str, str] | None = None):
        self.args = args
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        found = threading.Event()
        self.url = ""
        pattern = re.compile(url_pattern)

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = pattern.search(line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            found.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not found.wait(START_TIMEOUT) or not self.url:
            self.stop()
            raise RuntimeError(f"{args[0]} did not start:\n" + "\n".join(self.lines))

    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)


def get_json(url: str, context: ssl.SSLContext | None = None) -> Any:
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        return json.load(r)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def sms_rows() -> list[dict[str, Any]]:
    """A small, clearly separable spam/ham set: 40 of each, all distinct (seeded)."""
    import random

    rng = random.Random(16)
    spam_words = ["WIN", "FREE", "prize", "claim", "cash", "urgent", "txt", "award", "bonus"]
    ham_words = ["lunch", "home", "mum", "later", "meeting", "dinner", "tomorrow", "ok", "love"]
    rows = []
    for i in range(40):
        words = rng.sample(spam_words, 4)
        rows.append(
            {
                "input": {"text": f"{' '.join(words)}! call 0800{i:04d} now to claim"},
                "output": "spam",
            }
        )
        words = rng.sample(ham_words, 4)
        rows.append({"input": {"text": f"hey, {' '.join(words)} see you {i}"}, "output": "ham"})
    rng.shuffle(rows)
    return rows


def spec(name: str, examples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "description": "Classify an SMS text message as spam or ham (legitimate).",
        "input_schema": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        "output_schema": {"type": "string", "enum": LABELS},
        "examples": examples,
    }


@pytest.fixture(scope="session")
def rows() -> list[dict[str, Any]]:
    return sms_rows()


def start_stand_in(tmp: Path, rows: list[dict[str, Any]], *extra: str) -> Process:
    answers = tmp / "answers.jsonl"
    write_jsonl(answers, rows)
    return Process(
        [str(STAND_IN), "--answers", str(answers), "--workers", "1", *extra],
        r"listening on (http://\S+/v1)",
    )


@pytest.fixture
def stand_in(tmp_path: Path, rows: list[dict[str, Any]]) -> Iterator[Process]:
    p = start_stand_in(tmp_path, rows)
    yield p
    p.stop()


def start_gateway(
    data_dir: Path,
    upstream: str,
    *,
    min_examples: int = 200,
    extra_yaml: str = "",
    timeout_ms: int = 5000,
    tls: tuple[Path, Path, Path] | None = None,
) -> Process:
    """`loopai serve` with the gateway on in front of `upstream` (a base URL with /v1);
    with `tls` (certificate, key, CA file) it serves HTTPS with that certificate."""
    config = data_dir / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "deployment.yaml").write_text(
        f"gateway:\n"
        f"  upstream:\n"
        f"    base_url: {upstream}\n"
        f"    timeout_ms: {timeout_ms}\n"
        f"    connect_timeout_ms: 2000\n"
        f"{extra_yaml}"
        f"learn:\n"
        f"  min_examples: {min_examples}\n"
        f"  seed: 7\n"
    )
    args = [str(LOOPAI), "serve", "--data-dir", str(data_dir), "--port", "0", "--workers", "2"]
    context = None
    if tls is not None:
        cert, key, ca = tls
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
        context = ssl.create_default_context(cafile=str(ca))
    p = Process(args, r"listening on (https?://[0-9.:]+)", env={"RUST_LOG": "info"})
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(p.url + "/ready", timeout=5, context=context) as r:
                if r.status == 200:
                    return p
        except OSError:
            pass
        if time.monotonic() > deadline or p.proc.poll() is not None:
            p.stop()
            raise RuntimeError("loopai serve did not get ready:\n" + p.output())
        time.sleep(0.1)


def add_task(data_dir: Path, task_spec: dict[str, Any]) -> None:
    path = data_dir / f"{task_spec['name']}.spec.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(task_spec))
    done = subprocess.run(
        [str(LOOPAI), "tasks", "add", "--data-dir", str(data_dir), str(path)],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr


def tasks_list(data_dir: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(LOOPAI), "tasks", "list", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result
