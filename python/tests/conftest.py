"""Shared fixtures: a data directory with a small spam program installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import loopai
from support import RULES


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory whose task "spam" has RULES installed and active (v1)."""
    loopai.install_program(tmp_path, "spam", RULES)
    return tmp_path


@pytest.fixture
def rt(data_dir: Path) -> Iterator[loopai.Runtime]:
    with loopai.Runtime(data_dir, "spam") as runtime:
        yield runtime
