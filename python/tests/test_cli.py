"""The wheel's `loopai` command: the same CLI as the Rust binary, run by the native module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import loopai
from support import REPO

SPEC = REPO / "examples" / "spam" / "spec.json"


def _script() -> Path:
    """The `loopai` script that pip installed next to this interpreter."""
    script = Path(sys.executable).parent / "loopai"
    assert script.exists(), f"{script}: the loopai-runtime wheel installs a `loopai` script"
    return script


def _run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_version_and_usage_errors_exit_like_the_binary() -> None:
    for command in ([_script()], [sys.executable, "-m", "loopai"]):
        done = _run(*command, "--version")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"loopai {loopai.__version__}\n"
        done = _run(*command, "no-such-command")
        assert done.returncode == 2
        assert "unrecognized subcommand" in done.stderr


def test_synth_then_exec_round_trip_through_the_script(tmp_path: Path) -> None:
    done = _run(_script(), "synth", SPEC, "--data-dir", tmp_path, "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert "installed spam v1, active" in done.stdout
    # stderr is a pipe here: progress comes as plain lines, not bars.
    assert "] trained " in done.stderr, done.stderr

    texts = ["WINNER! Claim your free prize now", "Are we still on for dinner tomorrow?"]
    inputs = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    done = _run(_script(), "exec", "--data-dir", tmp_path, "--task", "spam", stdin=inputs)
    assert done.returncode == 0, done.stderr
    outputs = [json.loads(line)["output"] for line in done.stdout.splitlines()]
    assert outputs == ["spam", "ham"]

    done = _run(_script(), "exec", "--data-dir", tmp_path, "--task", "spam", "--input", "[]")
    assert done.returncode == 1
    assert done.stderr.startswith("error: "), done.stderr
