"""Runtime: execute, batch, flush/shutdown, context manager, configuration."""

from __future__ import annotations

import copy
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest

import loopai
from support import EXAMPLE_PROGRAM, RULES, log_lines


def test_execute_returns_output_confidence_scores_and_status(data_dir: Path) -> None:
    # Sampling is off, so that `sampled` is decided by the configuration, not by chance.
    no_sampling = {"sampling": {"strategy": "random", "rate": 0}}
    with loopai.Runtime(data_dir, "spam", config=no_sampling) as rt:
        _check_execute_result(rt)


def _check_execute_result(rt: loopai.Runtime) -> None:
    result = rt.execute({"text": "you won a prize"})
    assert result.output == "spam"
    assert result.confidence == pytest.approx(0.95)
    assert result.scores == pytest.approx({"spam": 0.95, "ham": 0.05})
    assert list(result.scores) == ["spam", "ham"]
    assert result.status == "success"
    assert result.version == 1
    assert result.sampled is False
    assert result.latency_ms >= 0
    assert uuid.UUID(result.execution_id).version == 4
    assert result.decided_by is not None and result.decided_by.startswith("decide")

    low = rt.execute({"text": "see you later"})
    assert (low.output, low.status) == ("ham", "abstain")
    assert low.execution_id != result.execution_id


def test_to_dict_and_repr(rt: loopai.Runtime) -> None:
    result = rt.execute({"text": "prize"})
    d = result.to_dict()
    assert set(d) == {
        "execution_id",
        "output",
        "confidence",
        "scores",
        "version",
        "latency_ms",
        "status",
        "source",
        "sampled",
        "decided_by",
    }
    assert json.loads(json.dumps(d)) == d
    assert repr(result).startswith(
        "ExecutionResult(output='spam', confidence=0.95, status='success'"
    )
    assert "task_id='spam'" in repr(rt) or 'task_id="spam"' in repr(rt)


def test_properties(rt: loopai.Runtime, data_dir: Path) -> None:
    assert rt.active_version == 1
    assert rt.task_id == "spam"
    assert rt.data_dir == data_dir
    health = rt.health()
    assert health["status"] == "ok"
    assert health["task"] == "spam"
    assert health["active_version"] == 1


def test_every_execution_is_logged_after_flush(rt: loopai.Runtime, data_dir: Path) -> None:
    ok = rt.execute({"text": "a prize", "meta": {"lang": "en", "n": [1, 2.5, None, True]}})
    with pytest.raises(loopai.InvalidInput):
        rt.execute({"nope": 1})
    rt.flush(timeout=5.0)
    lines = log_lines(data_dir)
    assert len(lines) == 2
    assert lines[0]["execution_id"] == ok.execution_id
    assert lines[0]["input"] == {
        "text": "a prize",
        "meta": {"lang": "en", "n": [1, 2.5, None, True]},
    }
    assert lines[0]["output"] == "spam"
    assert lines[1]["status"] == "error"


def test_execute_json_accepts_str_and_bytes(rt: loopai.Runtime) -> None:
    assert rt.execute_json('{"text": "prize"}').output == "spam"
    assert rt.execute_json(b'{"text": "hello"}').output == "ham"
    with pytest.raises(loopai.InvalidInput, match=r"^input: not valid JSON"):
        rt.execute_json("{oops")
    with pytest.raises(TypeError):
        rt.execute_json(42)  # type: ignore[arg-type]


def test_explain_gives_the_decision_path_and_logs_nothing(
    rt: loopai.Runtime, data_dir: Path
) -> None:
    why = rt.explain({"text": "a prize, a prize"})
    result = rt.execute({"text": "a prize, a prize"})
    assert (why["output"], why["confidence"]) == (result.output, result.confidence)
    assert (why["task"], why["version"], why["abstained"]) == ("spam", 1, False)
    assert why["decided_by"] == result.decided_by
    fired = why["decision"]["fired"]
    assert fired["index"] == 0
    assert fired["when"]["feature"] == "prize"
    assert fired["when"]["value"] == 2.0
    assert fired["when"]["sources"] == ["prize"]
    assert rt.explain('{"text": "hello"}')["decision"]["fired"]["index"] == 1
    assert rt.explain(b'{"text": "hello"}', top_k=1)["output"] == "ham"
    with pytest.raises(loopai.InvalidInput, match="text"):
        rt.explain({"text": 3})
    with pytest.raises(loopai.InvalidInput, match=r"^input: not valid JSON"):
        rt.explain("{oops")
    rt.flush(timeout=5.0)
    # Only the one execution is in the log.
    assert len(log_lines(data_dir)) == 1


def test_execute_batch_keeps_order(rt: loopai.Runtime, data_dir: Path) -> None:
    out = rt.execute_batch([{"text": "prize"}, {"text": "hi"}, {"text": "a prize"}])
    assert [r.output for r in out] == ["spam", "ham", "spam"]
    assert rt.execute_batch([]) == []
    # Any iterable.
    assert len(rt.execute_batch({"text": str(i)} for i in range(3))) == 3


def test_execute_batch_errors_in_place_or_raised(rt: loopai.Runtime, data_dir: Path) -> None:
    inputs: list[dict[str, Any]] = [{"text": "prize"}, {"nope": 1}, {"text": {1}}, {"text": "hi"}]
    out = rt.execute_batch(inputs, return_exceptions=True)
    assert out[0].output == "spam"
    assert isinstance(out[1], loopai.InvalidInput)
    assert isinstance(out[2], loopai.InvalidInput)
    assert str(out[2]).startswith("inputs[2] /text: cannot convert set")
    assert out[3].output == "ham"
    rt.flush()
    # Every convertible input was executed and logged, failures included.
    assert len(log_lines(data_dir)) == 3

    with pytest.raises(loopai.InvalidInput, match="required field"):
        rt.execute_batch(inputs)
    rt.flush()
    assert len(log_lines(data_dir)) == 6


def test_context_manager_closes(data_dir: Path) -> None:
    with loopai.Runtime(data_dir, "spam") as rt:
        rt.execute({"text": "prize"})
    with pytest.raises(loopai.ClosedError):
        rt.execute({"text": "prize"})
    rt.close()  # harmless again
    assert len(log_lines(data_dir)) == 1


def test_close_flushes_and_later_calls_raise(data_dir: Path) -> None:
    rt = loopai.Runtime(data_dir, "spam")
    for _ in range(100):
        rt.execute({"text": "x"})
    rt.close(timeout=5.0)
    assert len(log_lines(data_dir)) == 100
    with pytest.raises(loopai.ClosedError) as info:
        rt.execute({"text": "x"})
    assert info.value.kind == "closed"


def test_shutdown_flushes_then_calls_say_the_runtime_is_shut_down(data_dir: Path) -> None:
    rt = loopai.Runtime(data_dir, "spam")
    for _ in range(10):
        rt.execute({"text": "x"})
    rt.shutdown(timeout=5.0)
    assert len(log_lines(data_dir)) == 10
    for call in (
        lambda: rt.execute({"text": "x"}),
        lambda: rt.execute_json('{"text": "x"}'),
        lambda: rt.begin_rollout(1),
    ):
        with pytest.raises(loopai.ClosedError, match="the runtime is shut down") as info:
            call()
        assert "writer" not in str(info.value)
    [failed] = rt.execute_batch([{"text": "x"}], return_exceptions=True)
    assert isinstance(failed, loopai.ClosedError)
    assert "the runtime is shut down" in str(failed)
    # flush() after shutdown is a no-op that returns; shutting down again is harmless.
    rt.flush()  # returns at once
    rt.shutdown()
    rt.close()
    assert len(log_lines(data_dir)) == 10


def test_execution_results_pickle_and_copy_to_equal_objects(data_dir: Path) -> None:
    with loopai.Runtime(data_dir, "spam") as rt:
        results = [rt.execute({"text": "a prize"}), rt.execute({"text": "hello"})]
    for result in results:
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            back = pickle.loads(pickle.dumps(result, protocol=protocol))
            assert isinstance(back, loopai.ExecutionResult)
            assert back == result
            assert back.to_dict() == result.to_dict()
            assert repr(back) == repr(result)
        assert copy.copy(result) == result
        assert copy.deepcopy(result) == result
    assert results[0] != results[1]
    assert results[0] != "not a result"
    with pytest.raises(ValueError, match="ExecutionResult state: status"):
        loopai.ExecutionResult._from_dict({**results[0].to_dict(), "status": "great"})


def test_bad_timeouts_are_value_errors(rt: loopai.Runtime) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            rt.flush(bad)


def test_config_as_dict(data_dir: Path) -> None:
    config = {"storage": {"durability": "durable"}}
    with loopai.Runtime(data_dir, "spam", config=config) as rt:
        rt.execute({"text": "prize"})
        # Durable: on disk without a flush.
        assert len(log_lines(data_dir)) == 1


def test_config_as_path(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "deployment.yaml"
    path.write_text("storage:\n  durability: durable\n")
    with loopai.Runtime(data_dir, "spam", config=path) as rt:
        rt.execute({"text": "prize"})
        assert len(log_lines(data_dir)) == 1
    with loopai.Runtime(data_dir, "spam", config=str(path)) as rt:
        assert rt.active_version == 1


def test_bad_config_names_the_key(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(loopai.ConfigError, match=r"sampling\.rate") as info:
        loopai.Runtime(data_dir, "spam", config={"sampling": {"rate": 1.5}})
    assert info.value.code == -6
    path = tmp_path / "bad.yaml"
    path.write_text("sampling:\n  rate: 1.5\n")
    with pytest.raises(loopai.ConfigError, match=r"sampling\.rate"):
        loopai.Runtime(data_dir, "spam", config=path)
    with pytest.raises(TypeError):
        loopai.Runtime(data_dir, "spam", config=42)  # type: ignore[arg-type]


def test_missing_program_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(loopai.ArtifactError, match="has no active program"):
        loopai.Runtime(tmp_path, "spam")


def test_a_missing_task_or_data_dir_is_named_and_nothing_is_created(data_dir: Path) -> None:
    with pytest.raises(loopai.ArtifactError) as info:
        loopai.Runtime(data_dir, "spamm")
    message = str(info.value)
    assert f'there is no task "spamm" in {data_dir / "artifacts"}' in message
    assert message.endswith("(tasks there: `spam`); did you mean `spam`?"), message
    assert not (data_dir / "artifacts" / "spamm").exists()
    assert not (data_dir / "datasets").exists()

    missing = data_dir / "no-such-dir"
    with pytest.raises(loopai.ConfigError, match="no such directory"):
        loopai.Runtime(missing, "spam")
    assert not missing.exists()


def test_nothing_is_sampled_when_nothing_would_validate_it(data_dir: Path) -> None:
    sample_all = {"sampling": {"strategy": "random", "rate": 1}}
    with loopai.Runtime(data_dir, "spam", config=sample_all) as rt:
        results = rt.execute_batch([{"text": f"prize {i}"} for i in range(20)])
        assert [r.sampled for r in results] == [False] * 20
    with loopai.Runtime(data_dir, "spam", config=sample_all, oracle=lambda _: "spam") as rt:
        assert rt.execute({"text": "prize"}).sampled is True


def test_install_program_from_path_dict_and_text(tmp_path: Path) -> None:
    meta = loopai.install_program(tmp_path, "spam", EXAMPLE_PROGRAM)
    assert (meta["version"], meta["status"], meta["task_id"]) == (1, "active", "spam")
    assert len(meta["sha256"]) == 64
    assert loopai.install_program(tmp_path, "spam", RULES, activate=False)["version"] == 2
    assert loopai.install_program(tmp_path, "spam", json.dumps(RULES))["version"] == 3
    with loopai.Runtime(tmp_path, "spam") as rt:
        assert rt.active_version == 3


def test_install_program_refuses_bad_programs(tmp_path: Path) -> None:
    with pytest.raises(loopai.ProgramError, match=r"not ['\"]other['\"]"):
        loopai.install_program(tmp_path, "other", RULES)
    broken = dict(RULES, decide={"op": "nope"})
    with pytest.raises(loopai.ProgramError, match="decide"):
        loopai.install_program(tmp_path, "spam", broken)
    with pytest.raises(loopai.StorageError):
        loopai.install_program(tmp_path, "spam", tmp_path / "missing.json")
    assert not (tmp_path / "artifacts" / "spam").exists() or not list(
        (tmp_path / "artifacts" / "spam").glob("v*")
    )


def test_example_program_classifies_example_inputs(tmp_path: Path) -> None:
    loopai.install_program(tmp_path, "spam", EXAMPLE_PROGRAM)
    inputs = (EXAMPLE_PROGRAM.parent / "inputs.jsonl").read_text().splitlines()
    with loopai.Runtime(tmp_path, "spam") as rt:
        outputs = [rt.execute(json.loads(line)).output for line in inputs]
    assert outputs == ["spam", "ham", "spam", "ham"]


def test_stats_counts_todays_executions(rt: loopai.Runtime) -> None:
    assert rt.stats() == []
    for text in ["prize", "prize", "hello"]:
        rt.execute({"text": text})
    with pytest.raises(loopai.InvalidInput):
        rt.execute({})
    days = rt.stats(days=7)
    assert len(days) == 1
    today = days[0]
    assert (today["total"], today["successful"], today["abstained"], today["failed"]) == (
        4,
        2,
        1,
        1,
    )
    assert today["task_id"] == "spam"
    assert today["output_distribution"]["spam"] == 2
    assert today["versions"] == {"v1": 4}
    assert today["latency_ms"]["p50"] >= 0
    assert rt.stats(days=0) == []
    with pytest.raises(OverflowError):
        rt.stats(days=-1)


def test_reload_and_activate_swap_versions(rt: loopai.Runtime, data_dir: Path) -> None:
    hello = dict(RULES)
    hello["features"] = [
        {"name": "prize", "op": "keywords", "source": "text", "terms": ["hello"]},
    ]
    loopai.install_program(data_dir, "spam", hello)
    assert rt.active_version == 1  # installed on disk; this runtime still runs v1
    assert rt.execute({"text": "hello"}).output == "ham"
    assert rt.reload() == 2
    result = rt.execute({"text": "hello"})
    assert (result.output, result.version) == ("spam", 2)
    rt.activate(1)
    assert rt.execute({"text": "hello"}).version == 1
    with pytest.raises(loopai.ArtifactError):
        rt.activate(7)
    assert rt.active_version == 1
