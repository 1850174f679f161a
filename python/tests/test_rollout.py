"""Canary rollout: begin_rollout, execute(key=...), rollout(), promote (docs/rollout.md)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import loopai
from support import RULES

# Validate every execution; decide after a few samples; never hold on latency.
CONFIG: dict[str, Any] = {
    "sampling": {"rate": 1},
    "rollout": {
        "min_samples_per_stage": 50,
        "min_validations_per_stage": 20,
        "max_error_rate_increase": 0.2,
        "max_abstain_rate_increase": 0.5,
        "p99_floor_ms": 100000,
        "check_interval_ms": 3600000,
    },
}


def oracle(request: dict[str, Any]) -> str:
    text = str(request["input"]["text"])
    return "spam" if "prize" in text or "win" in text else "ham"


def better_program() -> dict[str, Any]:
    """RULES that also know "win" (agrees with the oracle everywhere)."""
    program = copy.deepcopy(RULES)
    program["features"][0]["terms"] = ["prize", "win"]
    return program


def test_a_better_canary_is_promoted_and_keys_are_sticky(data_dir: Path) -> None:
    v2 = loopai.install_program(data_dir, "spam", better_program(), activate=False)["version"]
    with loopai.Runtime(data_dir, "spam", config=CONFIG, oracle=oracle) as rt:
        assert rt.rollout() is None
        rt.begin_rollout(v2)
        status = rt.rollout()
        assert status is not None
        assert (status["state"], status["stage"], status["fraction"]) == ("in_progress", 0, 0.1)
        assert (status["stable_version"], status["canary_version"]) == (1, v2)

        # The same key is served by the same version, whatever the input.
        by_key = {
            f"user-{i}": rt.execute({"text": f"hello {i}"}, key=f"user-{i}").version
            for i in range(300)
        }
        again = {k: rt.execute({"text": "other"}, key=k).version for k in by_key}
        assert again == by_key
        as_json = {k: rt.execute_json('{"text": "json"}', key=k).version for k in by_key}
        assert as_json == by_key
        assert 1 in by_key.values() and v2 in by_key.values()

        texts = ["win a car", "claim your prize", "see you later", "lunch?"]
        for i in range(400):
            rt.execute({"text": f"{texts[i % 4]} {i}"})
            if i % 50 == 49:
                rt.flush(timeout=30)
                status = rt.rollout()
                assert status is not None
                if status["state"] != "in_progress":
                    break
        status = rt.rollout()
        assert status is not None
        assert status["state"] == "promoted", status["decision"]
        assert rt.active_version == v2
        kinds = [e["kind"] for e in status["recent_events"]]
        assert kinds == ["started", "stage_advanced", "stage_advanced", "promoted"]
        assert status["canary"]["mismatches"] == 0
        assert rt.health()["rollout"]["state"] == "promoted"


def test_manual_promote_and_rollback(data_dir: Path) -> None:
    v2 = loopai.install_program(data_dir, "spam", better_program(), activate=False)["version"]
    v3 = loopai.install_program(data_dir, "spam", RULES, activate=False)["version"]
    with loopai.Runtime(data_dir, "spam") as rt:
        with pytest.raises(loopai.ArtifactError, match="no rollout in progress"):
            rt.promote()
        assert rt.abort_rollout() is None
        rt.begin_rollout(v2)
        assert rt.abort_rollout() == v2
        status = rt.rollout()
        assert status is not None and status["state"] == "rolled_back"
        with pytest.raises(loopai.ArtifactError, match="was rolled back"):
            rt.begin_rollout(v2)
        rt.begin_rollout(v3)
        assert rt.promote() == v3
        assert rt.active_version == v3
        assert rt.execute({"text": "x"}, key="k").version == v3
