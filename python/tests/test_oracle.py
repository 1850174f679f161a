"""A Python callable as the oracle: validation of sampled executions, cascade, failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import loopai
from support import log_lines

SAMPLE_ALL: dict[str, Any] = {"sampling": {"strategy": "random", "rate": 1}}
FALLBACK: dict[str, Any] = {
    "sampling": {"rate": 0},
    "execution": {"fallback": "oracle", "timeout_ms": 5000},
}


def test_sampled_executions_are_validated_through_a_python_oracle(data_dir: Path) -> None:
    requests: list[dict[str, Any]] = []
    threads: set[str] = set()

    def oracle(request: dict[str, Any]) -> str:
        requests.append(request)
        threads.add(threading.current_thread().name)
        return "spam"

    with loopai.Runtime(data_dir, "spam", config=SAMPLE_ALL, oracle=oracle) as rt:
        a = rt.execute({"text": "a prize"})
        b = rt.execute({"text": "hello"})
        assert a.sampled and b.sampled
        assert (a.source, b.source) == ("program", "program")
        rt.flush()
        metrics = rt.validation_metrics()
        assert metrics["oracle"] == "in-process"
        assert (metrics["validated"], metrics["matched"]) == (2, 1)
        assert metrics["match_rate"] == pytest.approx(0.5)
        assert metrics["versions"][0]["version"] == 1
        assert metrics["versions"][0]["rolling_match_rate"] == pytest.approx(0.5)
        assert rt.health()["validation"] == metrics

    assert threading.current_thread().name not in threads, "called from loopai's workers"
    assert set(requests[0]) == {
        "task",
        "description",
        "labels",
        "output_schema",
        "input",
        "timeout_ms",
    }
    assert requests[0]["labels"] == ["spam", "ham"]
    assert sorted(r["input"]["text"] for r in requests) == ["a prize", "hello"]
    records = {r["execution_id"]: r for r in log_lines(data_dir, "validations")}
    assert records[a.execution_id]["match"] is True
    assert records[b.execution_id]["match"] is False
    assert records[b.execution_id]["oracle_output"] == "spam"


def test_cascade_answers_abstentions_through_a_python_oracle(data_dir: Path) -> None:
    with loopai.Runtime(data_dir, "spam", config=FALLBACK, oracle=lambda req: "SPAM") as rt:
        result = rt.execute({"text": "hello"})
        assert (result.output, result.status, result.source) == ("spam", "success", "oracle")
        assert result.to_dict()["source"] == "oracle"
        confident = rt.execute({"text": "a prize"})
        assert confident.source == "program"
        metrics = rt.validation_metrics()
        assert (metrics["oracle_fallbacks"], metrics["oracle_fallback_failures"]) == (1, 0)
        rt.flush()
    logged = {r["execution_id"]: r for r in log_lines(data_dir)}
    assert logged[result.execution_id]["source"] == "oracle"
    assert logged[result.execution_id]["output"] == "spam"


def test_a_raising_oracle_is_counted_and_never_raised(data_dir: Path) -> None:
    def oracle(request: dict[str, Any]) -> str:
        raise ValueError("the LLM is down")

    with loopai.Runtime(data_dir, "spam", config=SAMPLE_ALL, oracle=oracle) as rt:
        for _ in range(3):
            rt.execute({"text": "a prize"})
        rt.flush()
        metrics = rt.validation_metrics()
        assert (metrics["oracle_errors"], metrics["validated"]) == (3, 0)
    assert log_lines(data_dir, "validations") == []

    with loopai.Runtime(data_dir, "spam", config=FALLBACK, oracle=oracle) as rt:
        result = rt.execute({"text": "hello"})
        assert (result.output, result.status, result.source) == ("ham", "abstain", "program")
        assert rt.validation_metrics()["oracle_fallback_failures"] == 1


def test_answers_that_are_not_labels_are_oracle_errors(data_dir: Path) -> None:
    answers: list[Any] = [3, "maybe", {"label": "spam"}]

    def oracle(request: dict[str, Any]) -> Any:
        return answers.pop()

    config = {**SAMPLE_ALL, "validation": {"workers": 1}}
    with loopai.Runtime(data_dir, "spam", config=config, oracle=oracle) as rt:
        for _ in range(3):
            rt.execute({"text": "a prize"})
        rt.flush()
        assert rt.validation_metrics()["oracle_errors"] == 3


def test_a_slow_oracle_does_not_block_execute(data_dir: Path) -> None:
    entered = threading.Event()
    release = threading.Event()

    def oracle(request: dict[str, Any]) -> str:
        entered.set()
        release.wait(30)
        return "spam"

    config = {**SAMPLE_ALL, "validation": {"workers": 1, "queue_capacity": 1}}
    with loopai.Runtime(data_dir, "spam", config=config, oracle=oracle) as rt:
        rt.execute({"text": "a prize"})
        assert entered.wait(30)
        # The only worker waits inside the oracle: one more sample fits in the queue, the
        # rest are skipped, and every execute returns.
        try:
            results = [rt.execute({"text": "a prize"}) for _ in range(4)]
            assert all(r.output == "spam" for r in results)
            # A sample reaches the validation queue once its record is in the local log,
            # which the log writer does in the background: wait (bounded) for the hand-off.
            deadline = time.monotonic() + 30
            while rt.validation_metrics()["skipped_queue_full"] < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rt.validation_metrics()["skipped_queue_full"] == 3
        finally:
            release.set()
        rt.flush(30)
        assert rt.validation_metrics()["validated"] == 2


def test_the_oracle_must_be_callable(data_dir: Path) -> None:
    with pytest.raises(TypeError, match="oracle: expected a callable"):
        loopai.Runtime(data_dir, "spam", oracle="gpt-4")  # type: ignore[arg-type]


def test_fallback_needs_an_oracle(data_dir: Path) -> None:
    with pytest.raises(loopai.ConfigError, match="requires an oracle"):
        loopai.Runtime(data_dir, "spam", config=FALLBACK)
