"""Threads: one Runtime shared by many threads; the GIL is released during executions
and waits; the background writer never needs the GIL.

The GIL tests set a very long switch interval so that the interpreter never forces a
thread switch during the test: another Python thread can then only run while loopai has
released the GIL itself, which makes the outcome deterministic either way.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import loopai
from support import log_lines


@pytest.fixture
def no_forced_switches() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_many_threads_share_one_runtime(rt: loopai.Runtime, data_dir: Path) -> None:
    threads, per_thread = 8, 300
    errors: list[BaseException] = []
    ids: list[set[str]] = [set() for _ in range(threads)]

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                text = "prize" if i % 2 else "hello"
                result = rt.execute({"text": text, "thread": n})
                assert result.output == ("spam" if i % 2 else "ham")
                ids[n].add(result.execution_id)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    all_ids = set().union(*ids)
    assert len(all_ids) == threads * per_thread
    rt.flush()
    assert len(log_lines(data_dir)) == threads * per_thread


def _runs_while(call: Callable[[], object]) -> bool:
    """Whether another Python thread ran while `call` was in progress."""
    in_call = False
    seen: list[bool] = []
    go = threading.Event()

    def other() -> None:
        go.wait()
        seen.append(in_call)  # the first bytecode this thread runs after waking

    t = threading.Thread(target=other)
    t.start()
    while not t.is_alive():  # pragma: no cover
        time.sleep(0)
    in_call = True
    go.set()
    call()
    in_call = False
    t.join()
    return seen == [True]


@pytest.mark.usefixtures("no_forced_switches")
def test_execute_releases_the_gil(rt: loopai.Runtime) -> None:
    batch = [{"text": "hello prize " * 20}] * 5000
    # The other thread must be scheduled while the batch runs; retry a few times in case
    # the machine is busy (without the release it could never run: the result is False).
    assert any(_runs_while(lambda: rt.execute_batch(batch)) for _ in range(5))


@pytest.mark.usefixtures("no_forced_switches")
def test_single_execute_releases_the_gil(rt: loopai.Runtime) -> None:
    def many() -> None:
        for _ in range(2000):
            rt.execute({"text": "hello"})

    # A Python-level loop of executes: the other thread gets in at one of the releases.
    assert any(_runs_while(many) for _ in range(5))


@pytest.mark.usefixtures("no_forced_switches")
def test_flush_releases_the_gil(rt: loopai.Runtime) -> None:
    def fill_and_flush() -> None:
        rt.execute_batch([{"text": "x" * 2000}] * 3000)
        rt.flush(10.0)

    assert any(_runs_while(fill_and_flush) for _ in range(5))


@pytest.mark.usefixtures("no_forced_switches")
def test_background_writer_never_needs_the_gil(rt: loopai.Runtime) -> None:
    rt.execute_batch([{"text": "hello"}] * 1000)
    # Hold the GIL (pure Python, no forced switch for 30 s) until the writer has written
    # everything; if it needed the GIL it could never finish and this would time out.
    deadline = time.monotonic() + 10.0
    written = 0
    while time.monotonic() < deadline:
        written = rt.health()["dataset"]["written"]
        if written >= 1000:
            break
    assert written >= 1000


def test_a_thread_blocked_in_flush_does_not_stop_executions(rt: loopai.Runtime) -> None:
    stop = threading.Event()
    flushes = 0

    def flusher() -> None:
        nonlocal flushes
        while not stop.is_set():
            rt.flush(5.0)
            flushes += 1

    t = threading.Thread(target=flusher)
    t.start()
    try:
        for _ in range(2000):
            rt.execute({"text": "prize"})
    finally:
        stop.set()
        t.join()
    assert flushes > 0
