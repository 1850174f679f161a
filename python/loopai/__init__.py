"""Loopai: run synthesized classification programs in-process, in microseconds.

Replace an LLM classification call with one line::

    import loopai

    rt = loopai.Runtime("/var/lib/loopai", "spam")
    result = rt.execute({"text": text})
    result.output      # "spam"
    result.confidence  # 0.97

A ``Runtime`` is meant to be shared by every thread of the process: ``execute`` releases
the GIL and takes no lock. Every execution is logged under ``<data_dir>/datasets/``.

At interpreter exit, runtimes that are still open are flushed (at most
``ATEXIT_FLUSH_TIMEOUT`` seconds in all). After ``os.fork()``, a runtime created in the
parent raises ``ClosedError`` in the child; create a new ``Runtime`` there.

The implementation is the native module ``loopai._loopai``; import from ``loopai``.
"""

from __future__ import annotations

import atexit
import sys

from loopai._loopai import (
    ArtifactError,
    ClosedError,
    ConfigError,
    ExecutionResult,
    Gateway,
    InternalError,
    InvalidInput,
    InvalidOutput,
    LocalAnswer,
    LoopaiError,
    OracleError,
    PendingCall,
    ProgramError,
    Runtime,
    SchemaError,
    StorageError,
    TimeoutError,
    __version__,
    _flush_all,
    add_task,
    install_program,
    synthesize,
)
from loopai.gateway import WrappedClient, wrap

__all__ = [
    "ATEXIT_FLUSH_TIMEOUT",
    "ArtifactError",
    "ClosedError",
    "ConfigError",
    "ExecutionResult",
    "Gateway",
    "InternalError",
    "InvalidInput",
    "InvalidOutput",
    "LocalAnswer",
    "LoopaiError",
    "OracleError",
    "PendingCall",
    "ProgramError",
    "Runtime",
    "SchemaError",
    "StorageError",
    "TimeoutError",
    "WrappedClient",
    "__version__",
    "add_task",
    "install_program",
    "synthesize",
    "wrap",
]

ATEXIT_FLUSH_TIMEOUT: float = 5.0
"""Seconds that the exit hook waits, in all, for open runtimes to flush their logs."""


def _flush_at_exit() -> None:
    """Flush every runtime still open (the ``atexit`` hook); report failures on stderr."""
    for message in _flush_all(ATEXIT_FLUSH_TIMEOUT):
        sys.stderr.write(f"loopai: at exit: {message}\n")


atexit.register(_flush_at_exit)
