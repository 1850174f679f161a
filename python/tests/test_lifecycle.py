"""Interpreter exit and os.fork(): what happens, as documented in docs/python.md."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import loopai
from support import log_lines


def _run(script: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_atexit_flushes_open_runtimes(data_dir: Path) -> None:
    # The first atexit hook registered runs last (LIFO): it kills the process right after
    # loopai's hook, before interpreter teardown could drop (and so flush) the runtime.
    # What is on disk was therefore written by the atexit flush.
    proc = _run(
        """
        import atexit, os, sys
        atexit.register(lambda: os._exit(0))
        import loopai
        rt = loopai.Runtime(sys.argv[1], "spam")
        for i in range(5000):
            rt.execute({"text": "hello %d" % i})
        """,
        data_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(log_lines(data_dir)) == 5000


def test_atexit_skips_closed_runtimes(data_dir: Path) -> None:
    proc = _run(
        """
        import sys
        import loopai
        with loopai.Runtime(sys.argv[1], "spam") as rt:
            rt.execute({"text": "hello"})
        kept = rt
        """,
        data_dir,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(log_lines(data_dir)) == 1


def test_runtime_dropped_at_exit_without_atexit_still_flushes(data_dir: Path) -> None:
    proc = _run(
        """
        import atexit, sys
        import loopai
        atexit.unregister(loopai._flush_at_exit)
        rt = loopai.Runtime(sys.argv[1], "spam")
        for i in range(1000):
            rt.execute({"text": "hello"})
        del rt  # dropping the last reference shuts the runtime down (bounded)
        """,
        data_dir,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert len(log_lines(data_dir)) == 1000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_old_runtime_raises_and_a_new_one_works(
    rt: loopai.Runtime, data_dir: Path
) -> None:
    rt.execute({"text": "before"})
    with warnings.catch_warnings():
        # Python >= 3.12 warns that forking a process with threads is risky; loopai's
        # writer thread is exactly what this test is about.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child process
        code = 1
        try:
            try:
                rt.execute({"text": "child"})
            except loopai.ClosedError as e:
                old_ok = "created before fork()" in str(e) and "create a new Runtime" in str(e)
            else:
                old_ok = False
            try:
                rt.flush(0.1)
            except loopai.ClosedError:
                pass
            else:
                old_ok = False
            with loopai.Runtime(data_dir, "spam") as fresh:
                new_ok = fresh.execute({"text": "child prize"}).output == "spam"
            code = 0 if old_ok and new_ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert rt.execute({"text": "parent still works"}).output == "ham"
    rt.flush()
    inputs = sorted(line["input"]["text"] for line in log_lines(data_dir))
    assert inputs == ["before", "child prize", "parent still works"]
