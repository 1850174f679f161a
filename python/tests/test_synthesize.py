"""loopai.synthesize: learn a program from a specification and run it."""

from __future__ import annotations

import json
import pathlib

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
