"""loopai.synthesize: learn a program from a specification and run it."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

import loopai

SPEC = pathlib.Path(__file__).resolve().parents[2] / "examples" / "spam" / "spec.json"


def test_synthesize_from_a_path_installs_and_activates(tmp_path: pathlib.Path) -> None:
    meta = loopai.synthesize(SPEC, tmp_path, seed=1)
    assert meta["version"] == 1
    assert meta["llm_provider"] == "none"
    assert meta["confidence_score"] > 0.9
    assert meta["output_schema"] == json.loads(SPEC.read_text())["output_schema"]
    with loopai.Runtime(tmp_path, "spam") as rt:
        assert rt.active_version == 1
        winner = {"text": "WINNER! Claim your free prize now, call 09061701461"}
        assert rt.execute(winner).output == "spam"
        assert rt.execute({"text": "Are we still on for dinner tomorrow?"}).output == "ham"


def test_synthesize_from_a_dict_with_a_strategy(tmp_path: pathlib.Path) -> None:
    spec = json.loads(SPEC.read_text())
    meta = loopai.synthesize(spec, tmp_path, strategy="rule", activate=False)
    assert meta["synthesis_strategy"] == "rule"
    with pytest.raises(loopai.ArtifactError):
        loopai.Runtime(tmp_path, "spam")


def test_bad_specs_raise_with_the_path(tmp_path: pathlib.Path) -> None:
    spec = json.loads(SPEC.read_text())
    spec["examples"][0]["output"] = "maybe"
    with pytest.raises(loopai.LoopaiError, match=r"examples\[0\]\.output"):
        loopai.synthesize(spec, tmp_path)
    with pytest.raises(loopai.ConfigError):
        loopai.synthesize(SPEC, tmp_path, strategy="magic")


def test_spec_file_errors_name_the_file_and_list_every_problem(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad-spec.json"
    bad.write_text('{"name": "t",\n "output_schema": {},\n}')
    with pytest.raises(loopai.InvalidInput) as info:
        loopai.synthesize(bad, tmp_path)
    assert str(info.value) == f"{bad}:3:1: not valid JSON: trailing comma"

    bad.write_text("[]")
    with pytest.raises(loopai.InvalidInput, match="a task specification is a JSON object"):
        loopai.synthesize(bad, tmp_path)

    spec = json.loads(SPEC.read_text())
    spec["examples"][0]["output"] = "maybe"
    spec["examples"][1]["input"] = 5
    bad.write_text(json.dumps(spec))
    with pytest.raises(loopai.InvalidInput) as info:
        loopai.synthesize(bad, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{bad}: the task specification has 2 problems:"), message
    assert "spec.examples[0].output" in message
    assert "spec.examples[1].input" in message

    program = SPEC.parent / "program.json"
    with pytest.raises(
        loopai.InvalidInput, match=r"this looks like a program \(loopai.program/1\)"
    ):
        loopai.synthesize(program, tmp_path)
    assert not (tmp_path / "artifacts").exists()


def test_a_label_without_examples_is_a_warning(tmp_path: pathlib.Path) -> None:
    spec = json.loads(SPEC.read_text())
    spec["output_schema"]["enum"].append("phishing")
    with pytest.warns(UserWarning, match='label "phishing" has no example'):
        meta = loopai.synthesize(spec, tmp_path, strategy="rule")
    assert meta["version"] == 1
    spec["output_schema"]["enum"] = ["spam"]
    with pytest.raises(loopai.InvalidInput, match="only one label"):
        loopai.synthesize(spec, tmp_path)


def _tickets(n: int, seed: int) -> list[dict[str, Any]]:
    """Tickets whose label depends on a number, a category and an optional boolean."""
    import random

    rng = random.Random(seed)
    words = ["printer", "login", "invoice", "screen", "network", "update", "mail"]
    out: list[dict[str, Any]] = []
    for _ in range(n):
        lines = rng.randint(1, 60)
        priority = rng.choice(["low", "medium", "high"])
        ticket: dict[str, object] = {
            "subject": f"{rng.choice(words)} {rng.choice(words)} problem",
            "lines": lines,
            "priority": priority,
        }
        vip = rng.choice([True, False, None])
        if vip is not None:
            ticket["vip"] = vip
        if vip:
            label = "urgent"
        elif priority == "high" and lines > 20:
            label = "escalate"
        else:
            label = "normal"
        out.append({"input": ticket, "output": label})
    return out


def test_synthesize_and_execute_structured_inputs(tmp_path: pathlib.Path) -> None:
    spec = {
        "name": "tickets",
        "input_schema": {
            "type": "object",
            "properties": {
                "subject": {"type": "string"},
                "lines": {"type": "integer"},
                "priority": {"type": "string", "enum": ["low", "medium", "high"]},
                "vip": {"type": "boolean"},
            },
            "required": ["subject", "lines", "priority"],
        },
        "output_schema": {"type": "string", "enum": ["urgent", "escalate", "normal"]},
        "examples": _tickets(300, seed=1),
    }
    meta = loopai.synthesize(spec, tmp_path, seed=1)
    assert meta["confidence_score"] > 0.95
    held_out = _tickets(200, seed=2)
    with loopai.Runtime(tmp_path, "tickets") as rt:
        right = sum(rt.execute(e["input"]).output == e["output"] for e in held_out)
        assert right / len(held_out) >= 0.95
        missing_vip = {"subject": "login problem", "lines": 45, "priority": "high"}
        assert rt.execute(missing_vip).output == "escalate"
        with pytest.raises(loopai.InvalidInput, match="/lines"):
            rt.execute({"subject": "x", "lines": "many", "priority": "high"})


def test_structured_examples_of_the_wrong_type_raise_with_the_path(tmp_path: pathlib.Path) -> None:
    spec = {
        "name": "tickets",
        "input_schema": {"type": "object", "properties": {"lines": {"type": "integer"}}},
        "output_schema": {"type": "string", "enum": ["a", "b"]},
        "examples": [
            {"input": {"lines": 3}, "output": "a"},
            {"input": {"lines": "3"}, "output": "b"},
        ],
    }
    wrong_type = r"spec\.examples\[1\]\.input\.lines: expected a number"
    with pytest.raises(loopai.InvalidInput, match=wrong_type):
        loopai.synthesize(spec, tmp_path)
