"""``loopai.wrap``: the gateway in process, over an ``openai.OpenAI`` client.

::

    import openai, loopai

    client = loopai.wrap(openai.OpenAI(), data_dir="/var/lib/loopai", tasks="spam")
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...])

``chat.completions.create`` behaves like ``loopai serve``'s ``POST /v1/chat/completions``
(``docs/gateway.md``): the native ``Gateway`` decides each call; a call the task's program
answers within the disagreement budget returns a ``ChatCompletion`` (or a stream of
``ChatCompletionChunk``) built from the program's label (for an extraction task, the
extracted object as compact JSON), with zero ``usage``, the
execution id as ``id`` and ``system_fingerprint`` ``"loopai-program-v<version>"``; any
other call goes to the wrapped client unchanged, and its answer is recorded as the
oracle's label (a stream once it has been read to the end; for an extraction task, the
JSON object it answered). Sampled local answers are
validated against the LLM on a background thread. Everything else of the client
(``models``, ``embeddings``...) passes through. The decision, the labels and learning are
the native gateway's; this module only speaks the SDK's types.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Union

from loopai._loopai import Gateway, LocalAnswer, PendingCall

if TYPE_CHECKING:
    from typing_extensions import Self

# Arguments of `create` that are the SDK's own, not part of the request body.
_SDK_ARGS = frozenset({"extra_headers", "extra_query", "extra_body", "timeout"})

Tasks = Union[str, Mapping[str, str], None]


def wrap(
    client: Any,
    *,
    data_dir: str | Any,
    tasks: Tasks = None,
    config: str | Any | None = None,
    validation_threads: int = 2,
) -> WrappedClient:
    """Wraps an ``openai.OpenAI`` client with the gateway of ``data_dir``.

    ``tasks`` picks each call's task: a task name (every call), a mapping from the
    request's ``model`` to a task, or ``None`` (the configuration's ``gateway.routes``);
    an ``X-Loopai-Task`` in a call's ``extra_headers`` wins over both. ``config`` is a
    path to a ``deployment.yaml`` or a dict of the same keys (default
    ``<data_dir>/config/deployment.yaml``). Close the result (or use it in ``with``) to
    flush the gateway's records.
    """
    return WrappedClient(client, Gateway(data_dir, config=config), tasks, validation_threads)


class WrappedClient:
    """An ``openai.OpenAI`` client whose ``chat.completions.create`` goes through the
    gateway; every other attribute is the wrapped client's."""

    def __init__(self, client: Any, gateway: Gateway, tasks: Tasks, validation_threads: int):
        if tasks is not None and not isinstance(tasks, (str, Mapping)):
            raise TypeError("tasks: expected a task name, a mapping model -> task, or None")
        self._client = client
        self.gateway = gateway
        self._tasks = tasks
        self._validators = ThreadPoolExecutor(
            max_workers=max(1, validation_threads), thread_name_prefix="loopai-validate"
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self.chat = _Chat(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def stats(self) -> dict[str, Any]:
        """The gateway's figures per task: coverage, disagreement, upstream calls and
        tokens, tokens saved... (``Gateway.stats``)."""
        stats: dict[str, Any] = self.gateway.stats()
        return stats

    def close(self, timeout: float = 5.0) -> None:
        """Waits for validations in flight, then flushes and stops the gateway. Closing
        again does nothing."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._validators.shutdown(wait=True)
        self.gateway.close(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _task_for(self, kwargs: Mapping[str, Any]) -> str | None:
        for name, value in (kwargs.get("extra_headers") or {}).items():
            if name.lower() == "x-loopai-task" and isinstance(value, str):
                return value
        if isinstance(self._tasks, str):
            return self._tasks
        if isinstance(self._tasks, Mapping):
            return self._tasks.get(kwargs.get("model", ""))
        return None

    def _create(self, kwargs: dict[str, Any]) -> Any:
        body = {k: v for k, v in kwargs.items() if k not in _SDK_ARGS and _given(v)}
        body.update(kwargs.get("extra_body") or {})
        request = json.dumps(body, default=_jsonable).encode()
        decision = self.gateway.decide(request, task=self._task_for(kwargs))
        if isinstance(decision, LocalAnswer):
            if decision.validate is not None:
                self._validators.submit(self._validate, decision.validate, kwargs)
            if body.get("stream"):
                return _LocalStream(_local_chunks(decision, body))
            return _types().ChatCompletion.model_validate(_local_completion(decision, body))
        return self._forward(decision, kwargs)

    def _forward(self, pending: PendingCall, kwargs: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        try:
            response = self._client.chat.completions.create(**kwargs)
        except BaseException:
            self.gateway.record_failure(pending)
            raise
        if kwargs.get("stream"):
            return _RecordingStream(response, pending, self.gateway, t0)
        self._record(pending, response, t0)
        return response

    def _record(self, pending: PendingCall, completion: Any, t0: float) -> None:
        choices = getattr(completion, "choices", None) or []
        content = choices[0].message.content if choices else None
        usage = getattr(completion, "usage", None)
        tokens = usage.total_tokens if usage is not None else None
        ms = (time.perf_counter() - t0) * 1000
        self.gateway.record_upstream(pending, content, tokens, ms)

    def _validate(self, pending: PendingCall, kwargs: dict[str, Any]) -> None:
        args = {k: v for k, v in kwargs.items() if k not in ("stream", "stream_options")}
        t0 = time.perf_counter()
        try:
            completion = self._client.chat.completions.create(**args)
        except Exception:
            self.gateway.record_failure(pending)
            return
        self._record(pending, completion, t0)


class _Chat:
    def __init__(self, wrapped: WrappedClient):
        self._wrapped = wrapped
        self.completions = _Completions(wrapped)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped._client.chat, name)


class _Completions:
    """``create`` goes through the gateway; every other attribute (``with_raw_response``,
    ``list``...) is the wrapped client's and does not."""

    def __init__(self, wrapped: WrappedClient):
        self._wrapped = wrapped

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped._client.chat.completions, name)

    def create(self, **kwargs: Any) -> Any:
        """``client.chat.completions.create`` through the gateway (see ``loopai.wrap``)."""
        return self._wrapped._create(kwargs)


def _given(value: Any) -> bool:
    """False for the SDK's "not given" sentinels (``openai.NOT_GIVEN``, ``openai.omit``)."""
    return type(value).__name__ not in ("NotGiven", "Omit")


def _types() -> Any:
    return importlib.import_module("openai.types.chat")


def _jsonable(obj: Any) -> Any:
    """JSON for the SDK's typed message objects (pydantic models)."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    raise TypeError(f"request: {type(obj).__name__} is not JSON serializable")


def _local_completion(answer: LocalAnswer, body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": answer.execution_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": f"loopai-program-v{answer.version}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


def _local_chunks(answer: LocalAnswer, body: Mapping[str, Any]) -> Iterator[Any]:
    chunk_type = _types().ChatCompletionChunk
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {
        "id": answer.execution_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model", ""),
        "system_fingerprint": f"loopai-program-v{answer.version}",
    }
    deltas = [
        ({"role": "assistant", "content": ""}, None),
        ({"content": answer.content}, None),
        ({}, "stop"),
    ]
    for delta, finish in deltas:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        yield chunk_type.model_validate({**base, "choices": [choice]})
    if include_usage:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        yield chunk_type.model_validate({**base, "choices": [], "usage": usage})


class _LocalStream:
    """The chunks of a locally answered stream, iterable like the SDK's ``Stream``."""

    def __init__(self, chunks: Iterator[Any]):
        self._chunks = chunks

    def __iter__(self) -> Iterator[Any]:
        return self._chunks

    def __next__(self) -> Any:
        return next(self._chunks)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._chunks = iter(())


class _RecordingStream:
    """The SDK's stream of a forwarded call, relayed chunk by chunk; the answer is recorded
    once the stream has been read to the end, and nothing is recorded when it breaks off
    or is closed early."""

    def __init__(self, stream: Any, pending: PendingCall, gateway: Gateway, t0: float):
        self._stream = stream
        self._iter = iter(stream)
        self._pending: PendingCall | None = pending
        self._gateway = gateway
        self._t0 = t0
        self._content: list[str] = []
        self._tokens: int | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._iter)
        except StopIteration:
            self._finish(True)
            raise
        except BaseException:
            self._finish(False)
            raise
        for choice in getattr(chunk, "choices", None) or []:
            if choice.index == 0 and choice.delta is not None and choice.delta.content:
                self._content.append(choice.delta.content)
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self._tokens = usage.total_tokens
        return chunk

    def _finish(self, complete: bool) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        if complete:
            ms = (time.perf_counter() - self._t0) * 1000
            self._gateway.record_upstream(pending, "".join(self._content), self._tokens, ms)
        else:
            self._gateway.record_failure(pending)

    def close(self) -> None:
        self._finish(False)
        self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
