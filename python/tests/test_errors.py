"""Exceptions: one class per core error kind, with stable kind names and codes."""

from __future__ import annotations

import builtins

import pytest

import loopai

# (class, kind name, code): mirrors loopai_core::ErrorKind (names and codes are stable).
KINDS = [
    (loopai.InvalidInput, "invalid_input", -1),
    (loopai.ProgramError, "program", -2),
    (loopai.SchemaError, "schema", -3),
    (loopai.InvalidOutput, "invalid_output", -4),
    (loopai.ArtifactError, "artifact", -5),
    (loopai.ConfigError, "config", -6),
    (loopai.StorageError, "io", -7),
    (loopai.TimeoutError, "timeout", -8),
    (loopai.ClosedError, "closed", -9),
    (loopai.InternalError, "internal", -10),
    (loopai.OracleError, "oracle", -11),
]


@pytest.mark.parametrize(("cls", "kind", "code"), KINDS)
def test_every_kind_has_a_class(cls: type[loopai.LoopaiError], kind: str, code: int) -> None:
    assert issubclass(cls, loopai.LoopaiError)
    assert issubclass(cls, Exception)
    assert (cls.kind, cls.code) == (kind, code)
    assert cls.__module__ == "loopai"
    assert cls.__doc__
    err = cls("message")
    assert str(err) == "message"


def test_builtin_bases() -> None:
    assert issubclass(loopai.InvalidInput, ValueError)
    assert issubclass(loopai.StorageError, OSError)
    assert issubclass(loopai.TimeoutError, builtins.TimeoutError)
    assert loopai.TimeoutError is not builtins.TimeoutError
    assert loopai.LoopaiError.kind is None and loopai.LoopaiError.code is None


def test_native_module_exports_the_same_classes() -> None:
    from loopai import _loopai

    for cls, _, _ in KINDS:
        assert getattr(_loopai, cls.__name__) is cls


def test_messages_are_the_cores(rt: loopai.Runtime) -> None:
    with pytest.raises(loopai.InvalidInput) as info:
        rt.execute({"text": 5})
    assert str(info.value) == "input /text: expected a string, got a number"
    assert (info.value.kind, info.value.code) == ("invalid_input", -1)
    # Catchable as the builtin too.
    with pytest.raises(ValueError):
        rt.execute({})
