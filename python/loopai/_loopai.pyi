"""Native module of the ``loopai`` package (import ``loopai``, not this module)."""

import builtins
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Literal, final

from typing_extensions import Self

__all__ = [
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
    "__version__",
    "_cli_main",
    "_flush_all",
    "add_task",
    "install_program",
    "synthesize",
]

__version__: str

class LoopaiError(Exception):
    """Base class of every error raised by loopai. `kind` is the stable snake_case name of the error kind (`"invalid_input"`, ...) and `code` its stable negative status code, shared with the C ABI."""

    kind: ClassVar[str | None]
    code: ClassVar[int | None]

class InvalidInput(LoopaiError, ValueError):
    """The input is malformed, too large, not convertible to JSON, or does not match the task's input schema. Also a ValueError."""

class ProgramError(LoopaiError):
    """A program is malformed, fails validation or exceeds a limit."""

class SchemaError(LoopaiError):
    """A task's input or output schema is malformed or uses an unsupported keyword."""

class InvalidOutput(LoopaiError):
    """The program's output does not match the task's output schema."""

class ArtifactError(LoopaiError):
    """An artifact is missing, corrupt, or does not match its recorded sha256."""

class ConfigError(LoopaiError):
    """The deployment configuration is malformed or has an invalid value."""

class StorageError(LoopaiError, OSError):
    """Reading or writing local storage failed. Also an OSError."""

class TimeoutError(LoopaiError, builtins.TimeoutError):
    """An operation did not finish within its timeout. Also the builtin TimeoutError."""

class ClosedError(LoopaiError):
    """The runtime has been closed, or was created before os.fork() in a parent process."""

class InternalError(LoopaiError):
    """A bug in loopai itself. Please report it."""

class OracleError(LoopaiError):
    """The oracle failed: unreachable, timed out, refused the request, or answered something that is not an allowed output."""

@final
class ExecutionResult:
    """The result of ``Runtime.execute``. Immutable; compares equal field by field; can be
    pickled (and copied)."""

    @property
    def output(self) -> Any:
        """The output: a label (``str``), a dict of extracted fields, or ``None`` when the
        program abstained without an answer."""
    @property
    def confidence(self) -> float:
        """Calibrated confidence in ``[0, 1]``."""
    @property
    def scores(self) -> dict[str, float]:
        """Per-label scores, ``{label: score}`` in the program's label order (empty for
        extraction programs)."""
    @property
    def version(self) -> int:
        """The artifact version that produced the output."""
    @property
    def execution_id(self) -> str:
        """Unique id of this execution (a UUID string), also the key of its log record."""
    @property
    def latency_ms(self) -> float:
        """Time spent in the core's ``execute``, in milliseconds."""
    @property
    def sampled(self) -> bool:
        """Whether this execution was sampled for validation against the oracle. Always
        ``False`` when nothing could validate it: no oracle and no telemetry upload
        configured."""
    @property
    def status(self) -> Literal["success", "abstain"]:
        """``"success"``, or ``"abstain"`` when the confidence is below the program's
        threshold (and, with ``execution.fallback: oracle``, the oracle could not answer)."""
    @property
    def source(self) -> Literal["program", "oracle"]:
        """Who produced ``output``: ``"program"``, or ``"oracle"`` when the program abstained
        and ``execution.fallback: oracle`` answered."""
    @property
    def decided_by(self) -> str | None:
        """The rule or model that decided (e.g. ``"decide.steps[0].rules[2]"``), if known."""
    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serializable)."""
    @classmethod
    def _from_dict(cls, state: dict[str, Any]) -> ExecutionResult:
        """Rebuilds a result from ``to_dict()`` (how pickle restores one)."""
    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickle support: ``(ExecutionResult._from_dict, (self.to_dict(),))``."""
    def __eq__(self, value: object, /) -> bool:
        """Equal when every field is equal (``scores`` in label order)."""

@final
class Runtime:
    """The embeddable Loopai runtime for one task.

    Loads the task's active program from ``<data_dir>/artifacts/<task_id>/`` and logs every
    execution to ``<data_dir>/datasets/<task_id>/``. One instance is meant to be shared by
    every thread of the process: ``execute`` takes no lock and releases the GIL.

    ``config`` is a path to a ``deployment.yaml`` or a dict with the same keys; by default
    ``<data_dir>/config/deployment.yaml`` is read if it exists.

    ``oracle`` is a callable ``(request: dict) -> output`` used to validate sampled
    executions in the background and, with ``execution.fallback: oracle``, to answer when
    the program abstains. ``request`` has ``task``, ``description``, ``labels``,
    ``output_schema``, ``input`` and ``timeout_ms``; the output is a label (``str``) or a
    dict of extracted fields. It is called from loopai's worker threads (the GIL is taken
    just for the call) and must be thread-safe; exceptions are counted as oracle errors in
    ``validation_metrics()`` and never raised by ``execute``. It wins over the
    configuration's ``oracle`` section.

    Use it as a context manager, or call ``shutdown()`` (``close()`` is an alias); runtimes
    still open at interpreter exit are flushed by an ``atexit`` hook. A runtime created
    before ``os.fork()`` raises ``ClosedError`` in the child: create a new one there.
    """

    def __new__(
        cls,
        data_dir: str | os.PathLike[str],
        task_id: str,
        *,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
        oracle: Callable[[dict[str, Any]], Any] | None = None,
    ) -> Self: ...
    def execute(self, input: Mapping[str, Any], key: str | None = None) -> ExecutionResult:
        """Executes the active program on one input (a dict, e.g. ``{"text": "..."}``) and
        logs the execution. During a canary rollout ``key`` (a user or session id) routes
        the execution: the same key gets the same version, and stays on the canary as its
        share grows; without it the input (or its ``rollout.sticky_key``) routes. Raises
        ``InvalidInput`` when the input cannot be converted to JSON or does not match the
        task, ``ClosedError`` after ``shutdown()`` or in a forked child."""
    def execute_json(self, input: str | bytes, key: str | None = None) -> ExecutionResult:
        """Executes one input given as JSON text (``str`` or ``bytes``), like ``execute``
        (``key`` routes it during a canary rollout, as there)."""
    def explain(self, input: Mapping[str, Any] | str | bytes, *, top_k: int = 10) -> dict[str, Any]:
        """Why the active program decides what it does on one input (a dict, or JSON text as
        ``str``/``bytes``): a dict ``{"task", "version", "output", "confidence",
        "abstained", "decided_by", "abstention", "decision"}`` with the rule that fired and
        the feature values its conditions saw, or a model's per-class scores with its
        ``top_k`` largest contributions traced back to the n-grams and keywords of this
        input (see "Explanations" in ``docs/program-format.md``). ``output`` and
        ``confidence`` are exactly what ``execute`` returns. Always the active version,
        never a canary; nothing is logged, sampled or counted. Raises ``InvalidInput`` as
        ``execute`` does."""
    def execute_batch(
        self, inputs: Iterable[Mapping[str, Any]], *, return_exceptions: bool = False
    ) -> list[Any]:
        """Executes several inputs; one result per input, in order, each logged like
        ``execute``. Every input is executed even when some fail. With
        ``return_exceptions=False`` (the default) the first failure is then raised; with
        ``True`` failures are returned in place as ``LoopaiError`` instances."""
    def flush(self, timeout: float = 5.0) -> None:
        """Waits until every execution logged before this call is written and fsync'd, at
        most ``timeout`` seconds (``TimeoutError`` otherwise). Executions sampled for
        validation before the call are validated against the oracle first, within the same
        ``timeout``. The GIL is released while waiting. After ``shutdown()`` it returns at
        once: the shutdown flushed everything there was."""
    def shutdown(self, timeout: float = 5.0) -> None:
        """Flushes the execution log and stops the background threads within ``timeout``
        seconds (``TimeoutError`` otherwise), as ``shutdown`` does in Rust, C and Go. Later
        executions raise ``ClosedError`` ("the runtime is shut down"), ``flush()`` returns
        at once, and shutting down again is harmless. The GIL is released while waiting."""
    def close(self, timeout: float = 5.0) -> None:
        """The same as ``shutdown(timeout)`` (the name Python's file-like objects use)."""
    def __enter__(self) -> Self:
        """Returns the runtime itself (``with Runtime(...) as rt:``)."""
    def __exit__(self, *args: object) -> bool:
        """Shuts the runtime down (``shutdown(timeout=5.0)``); exceptions propagate."""
    def activate(self, version: int) -> None:
        """Activates installed version ``version`` (on disk too) and swaps it in without
        interrupting executions in flight. The version is verified and compiled first."""
    def begin_rollout(self, version: int) -> None:
        """Starts a canary rollout of installed version ``version``: it serves a growing
        share of executions (``rollout.stages``, 10% → 50% → 100% by default) and is
        promoted or rolled back on measured error, mismatch and abstain rates (see
        ``docs/rollout.md``). A rollout in progress is superseded. Raises ``ArtifactError``
        when the version is not installed, is active, or was rolled back before."""
    def promote(self) -> int:
        """Finishes the rollout in progress now: its canary becomes the active version,
        which is returned. Raises ``ArtifactError`` when no rollout is in progress."""
    def abort_rollout(self) -> int | None:
        """Rolls back the rollout in progress: the stable version stays active and the
        canary is not rolled out again automatically. Returns the canary's version, or
        ``None`` when no rollout was in progress."""
    def rollout(self) -> dict[str, Any] | None:
        """The rollout in progress, or the last one, as a dict: ``state`` (``"in_progress"``,
        ``"promoted"``, ``"rolled_back"``, ``"aborted"``), ``stable_version``,
        ``canary_version``, ``stage``, ``stages``, ``fraction``, ``started_at``, per-arm
        ``stable`` and ``canary`` statistics, ``comparisons`` (the confidence sequences),
        ``decision`` and ``recent_events``. ``None`` when the task never had a rollout."""
    def reload(self) -> int:
        """Re-reads the task's ``active`` pointer (changed by ``install_program``,
        ``synthesize`` or the ``loopai`` CLI, possibly in another process) and swaps that
        version in if it differs. Returns the active version."""
    @property
    def active_version(self) -> int:
        """The artifact version executing now."""
    @property
    def task_id(self) -> str:
        """The task id."""
    @property
    def data_dir(self) -> pathlib.Path:
        """The data directory."""
    def stats(self, days: int = 7) -> list[dict[str, Any]]:
        """Daily statistics of the last ``days`` UTC days that have data, oldest first (today's
        are brought up to date first, which flushes the log): one dict per day with
        ``date``, ``total``, ``successful``, ``failed``, ``abstained``, ``success_rate``,
        ``latency_ms`` (``avg``, ``p50``, ``p95``, ``p99``, ...), ``output_distribution``,
        ``versions``, ``validations``... (see ``docs/datasets.md``)."""
    def health(self) -> dict[str, Any]:
        """The runtime's state for health checks: ``status`` (``"ok"`` or ``"degraded"``),
        ``task``, ``active_version``, execution-log counters under ``dataset``, telemetry
        counters under ``telemetry`` (``None`` when telemetry is off; see
        ``docs/telemetry.md``), artifact refresh under ``refresh`` (``None`` without
        ``cloud.api_url``; see ``docs/repository.md``), ``validation_metrics()`` under
        ``validation`` and ``rollout()`` under ``rollout``."""
    def validation_metrics(self) -> dict[str, Any]:
        """Validation against the oracle and oracle fallback: ``oracle`` (``"in-process"``,
        ``"http <model> at <url>"`` or ``None``: then samples are not validated),
        ``comparison``, ``fallback``, ``queued``, the totals ``validated``, ``matched``,
        ``match_rate``, ``skipped_queue_full``, ``skipped_no_oracle``, ``skipped_shutdown``,
        ``oracle_errors``, ``oracle_fallbacks``, ``oracle_fallback_failures``, and
        ``versions``: one dict per program version with the same counters plus
        ``rolling_validated`` and ``rolling_match_rate`` (the last 1000 validations).
        Rates are ``None`` before the first validation."""

def _cli_main(argv: list[str]) -> int:
    """Runs the ``loopai`` command (the same CLI as the Rust binary) with ``argv``, the
    program name first, and returns its exit status (0 success, 1 failure, 2 usage error).
    It writes to the process's stdout and stderr directly. The GIL is released while it
    runs. Used by ``loopai.__main__`` (the wheel's ``loopai`` script, ``python -m loopai``)."""

@final
class PendingCall:
    """A call to forward to the LLM (or a local answer to validate): give it back to `Gateway.record_upstream` with the answer, or to `Gateway.record_failure`. Each is recorded once."""

    @property
    def task(self) -> str | None:
        """The call's task (`None` for a call with no task)."""

    @property
    def id(self) -> str:
        """The call's id."""

@final
class LocalAnswer:
    """A call answered locally: the program's label (`content`) and the execution id; `validate` is a `PendingCall` when the sampler picked the call for validation."""

    @property
    def task(self) -> str:
        """The task."""

    @property
    def execution_id(self) -> str:
        """The execution id (the completion's `id`)."""

    @property
    def content(self) -> str:
        """The completion's content: the label, or the extracted object as compact JSON."""

    @property
    def confidence(self) -> float:
        """The program's confidence."""

    @property
    def version(self) -> int:
        """The artifact version that answered."""

    @property
    def latency_ms(self) -> float:
        """Time in the program, in milliseconds."""

    @property
    def validate(self) -> PendingCall | None:
        """A `PendingCall` when the call was sampled for validation, else `None`."""

@final
class Gateway:
    """The gateway of a data directory: every task registered from a specification (`loopai tasks add`), the decision on each chat call, the upstream's answers recorded as labels, and learning in background threads. `config` is a path to a `deployment.yaml` or a dict of the same keys (it needs a `gateway` section); by default `<data_dir>/config/deployment.yaml`. Share one per process."""

    def __new__(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        config: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    ) -> Self: ...
    def decide(self, request: bytes, task: str | None = None) -> LocalAnswer | PendingCall:
        """Decides a chat call: `request` is the Chat Completions request body (JSON bytes), `task` the `X-Loopai-Task` (else the configured routes apply). Returns a `LocalAnswer` or a `PendingCall` to forward."""

    def record_upstream(
        self,
        pending: PendingCall,
        content: str | None,
        total_tokens: int | None = None,
        latency_ms: float = 0.0,
    ) -> tuple[str, str | None]:
        """Records what the LLM answered to a `PendingCall`: `("label", LABEL)` (for an extraction task, the normalised object as compact JSON), `("outside", None)` or `("untasked", None)`."""

    def record_failure(self, pending: PendingCall) -> None:
        """Records that the LLM failed on a `PendingCall`: counted, nothing recorded as a label."""

    def stats(self) -> dict[str, Any]:
        """The gateway's figures, with one dict per task under `tasks` (see `docs/gateway.md`)."""

    def tasks(self) -> list[str]:
        """The gateway's tasks, sorted."""

    def flush(self, timeout: float = 5.0) -> None:
        """Waits until every call recorded before this call is written, at most `timeout` seconds."""

    def close(self, timeout: float = 5.0) -> None:
        """Flushes and stops the gateway's background threads within `timeout` seconds."""

def _flush_all(timeout: float = 5.0) -> list[str]:
    """Flushes every runtime still alive in this process, all within one ``timeout``;
    returns the failures as messages. Called by the package's ``atexit`` hook."""

def add_task(
    data_dir: str | os.PathLike[str], spec: Mapping[str, Any] | str | os.PathLike[str]
) -> None:
    """Registers (or updates) a gateway task from its specification alone, with no program (what `loopai tasks add` does)."""

def install_program(
    data_dir: str | os.PathLike[str],
    task_id: str,
    program: str | bytes | os.PathLike[str] | Mapping[str, Any],
    *,
    activate: bool = True,
) -> dict[str, Any]:
    """Checks a ``loopai.program/1`` program and installs it as the next version of task
    ``task_id`` under ``<data_dir>/artifacts/``, making it the active one if ``activate``.

    ``program`` is a dict, JSON text, or a path to a ``program.json``. The program must
    compile and be written for ``task_id`` (``ProgramError`` otherwise). Returns the new
    artifact's metadata (``version``, ``sha256``, ``created_at``, ...). Running runtimes
    pick the new version up on their next reload or restart."""

def synthesize(
    spec: str | bytes | os.PathLike[str] | Mapping[str, Any],
    data_dir: str | os.PathLike[str],
    *,
    strategy: str = "auto",
    activate: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Learns a program from a task specification (the design's TaskSpecification: ``name``,
    ``description``, ``input_schema``, ``output_schema``, ``examples``, ...) and installs it
    as the next version of the task ``spec["name"]`` under ``<data_dir>/artifacts/``,
    making it the active one if ``activate`` and the estimate can be trusted
    (``complexity_metrics["trusted"]``: the cross-validated accuracy meets the spec's
    ``accuracy_target`` and beats always answering the most frequent label; otherwise
    ``complexity_metrics["warnings"]`` says why, and ``Runtime.activate(version)`` activates
    it anyway). ``spec`` is a dict, JSON text, or a path to a
    spec file; ``strategy`` is ``"auto"``, ``"rule"``, ``"ml"`` or ``"hybrid"``. The GIL is
    released while training. Returns the new artifact's metadata (``version``,
    ``synthesis_strategy``, ``confidence_score`` — the cross-validated accuracy, absent
    when there was nothing to cross-validate —, ``complexity_metrics``, ...).

    A malformed spec raises ``InvalidInput`` listing every problem, each with its path
    (``spec.examples[3].output: ...``) and, for a spec file, the file name. Labels without
    examples are reported as ``UserWarning``s."""
