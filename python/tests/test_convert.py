"""Converting Python inputs to JSON: what is accepted, and errors that name the path."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import pytest

import loopai
from support import log_lines


class Text(str):
    pass


def test_nested_values_round_trip_into_the_log(rt: loopai.Runtime, data_dir: Path) -> None:
    value: dict[str, Any] = {
        "text": "prize",
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "floats": [0.5, -1e300, 1e-300],
        "flags": [True, False, None],
        "nested": {"a": {"b": [{"c": "d"}]}},
        "tuple": (1, "two"),
        "unicode": "h\u00e9llo \u2603 \U0001f600",
        "empty": {},
    }
    rt.execute(value)
    rt.flush()
    logged = log_lines(data_dir)[0]["input"]
    expected = dict(value, tuple=[1, "two"])
    assert logged == expected
    assert logged["flags"][0] is True  # bool stays bool, not 1


def test_subclasses_and_mappings_are_accepted(rt: loopai.Runtime) -> None:
    assert rt.execute(collections.OrderedDict(text="prize")).output == "spam"
    assert rt.execute({"text": Text("prize")}).output == "spam"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"text": "x", "n": math.nan}, r"^input /n: NaN is not a JSON number$"),
        ({"text": "x", "n": [1, math.inf]}, r"^input /n/1: inf is not a JSON number$"),
        ({"text": "x", "n": 2**64}, r"^input /n: integer does not fit in 64 bits$"),
        ({"text": "x", 1: "y"}, r"^input: object keys must be strings, got int$"),
        ({"text": "x", "a/b": {"c~d": b"raw"}}, r"^input /a~1b/c~0d: cannot convert bytes to JSON"),
        ({"text": object()}, r"^input /text: cannot convert object to JSON"),
    ],
)
def test_unconvertible_values_name_the_path(
    rt: loopai.Runtime, value: dict[Any, Any], message: str
) -> None:
    with pytest.raises(loopai.InvalidInput, match=message):
        rt.execute(value)


def test_self_reference_and_deep_nesting_are_refused(rt: loopai.Runtime) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(loopai.InvalidInput, match="nested more than 128 levels"):
        rt.execute({"text": "x", "loop": loop})
    deep: Any = "x"
    for _ in range(200):
        deep = [deep]
    with pytest.raises(loopai.InvalidInput, match="nested more than"):
        rt.execute({"text": "x", "deep": deep})


def test_non_object_inputs_are_refused_by_the_core(rt: loopai.Runtime) -> None:
    for value in (["text"], "text", None, 3):
        with pytest.raises(loopai.InvalidInput):
            rt.execute(value)  # type: ignore[arg-type]
