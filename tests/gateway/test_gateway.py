"""`loopai serve` with the gateway on, driven by the official `openai` SDK, in front of the
stand-in upstream LLM: shadow mode forwards, a task learns and then answers locally, streams
parse both ways, upstream failures reach the SDK as the right error class, bad requests get
OpenAI's error format, and nothing of a failed call is recorded as a label."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest
import trustme
from conftest import (
    Process,
    add_task,
    get_json,
    spec,
    start_gateway,
    start_stand_in,
    tasks_list,
)

T = TypeVar("T")

TASK = "spam"
SYSTEM = "You are a spam filter. Answer with one word: spam or ham."


def client(base_url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-client", max_retries=0, timeout=20, **kw)


def messages(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def ask(c: openai.OpenAI, text: str, **kw: Any) -> tuple[str, Any]:
    """(X-Loopai-Source, parsed completion) of one call of the task."""
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=messages(text),  # type: ignore[arg-type]
        extra_headers={"X-Loopai-Task": TASK},
        **kw,
    )
    return raw.headers.get("x-loopai-source", ""), raw.parse()


def eventually(fn: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def task_row(data_dir: Path) -> dict[str, Any]:
    return next(t for t in tasks_list(data_dir) if t["task"] == TASK)


def health_task(gw: Process) -> dict[str, Any]:
    """The task's figures in the gateway's `/health` (in memory, failed calls included)."""
    tasks = get_json(gw.url + "/health")["gateway"]["tasks"]
    row: dict[str, Any] = next(t for t in tasks if t["task"] == TASK)
    return row


def row_when(data_dir: Path, pred: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The task's `tasks list` row once `pred` holds for it (bounded wait)."""

    def check() -> dict[str, Any] | None:
        row = task_row(data_dir)
        return row if pred(row) else None

    return eventually(check, what)


@pytest.fixture
def shadow(tmp_path: Path, stand_in: Process) -> Iterator[tuple[Path, Process]]:
    """A data dir with the task registered from a spec without examples, and the gateway."""
    data = tmp_path / "data"
    add_task(data, spec(TASK, []))
    gw = start_gateway(
        data,
        stand_in.url,
        extra_yaml=("  routes:\n    - task: spam\n      model: spam-model\n"),
    )
    yield data, gw
    gw.stop()


def test_a_registered_task_without_a_program_is_in_shadow(tmp_path: Path) -> None:
    data = tmp_path / "data"
    add_task(data, spec(TASK, []))
    row = task_row(data)
    assert row["state"] == "shadow"
    assert row["labels"] == 0


def test_shadow_mode_forwards_and_records_the_oracle_label(
    shadow: tuple[Path, Process], stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    data, gw = shadow
    c = client(gw.url + "/v1")
    for row in rows[:5]:
        source, completion = ask(c, row["input"]["text"])
        assert source == "oracle"
        assert completion.choices[0].message.content == row["output"]
        assert completion.id.startswith("chatcmpl-")  # the upstream's answer, as is
    upstream = get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")
    assert upstream["answered"] == 5
    got = row_when(data, lambda r: r["oracle_labels"] == 5, "5 labels recorded")
    assert got["state"] == "shadow"
    assert got["forwarded"] == 5 and got["local"] == 0
    # The gateway's own time on each forwarded call, server side, upstream time excluded.
    with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
        metrics = r.read().decode()
    count = re.search(r"^loopai_gateway_forwarded_overhead_seconds_count (\d+)$", metrics, re.M)
    assert count and int(count.group(1)) >= 5, metrics
    total = re.search(r"^loopai_gateway_forwarded_overhead_seconds_sum (\S+)$", metrics, re.M)
    assert total and float(total.group(1)) > 0, metrics


def test_a_route_by_model_picks_the_task_and_no_task_is_forwarded_untouched(
    shadow: tuple[Path, Process], rows: list[dict[str, Any]]
) -> None:
    data, gw = shadow
    c = client(gw.url + "/v1")
    raw = c.chat.completions.with_raw_response.create(
        model="spam-model",
        messages=messages(rows[0]["input"]["text"]),  # type: ignore[arg-type]
    )
    assert raw.headers["x-loopai-source"] == "oracle"
    raw = c.chat.completions.with_raw_response.create(
        model="another-model",
        messages=messages(rows[1]["input"]["text"]),  # type: ignore[arg-type]
    )
    assert raw.headers["x-loopai-source"] == "oracle"
    assert raw.parse().choices[0].message.content == rows[1]["output"]
    # Only the routed call is the task's.
    row_when(data, lambda r: r["oracle_labels"] == 1, "the routed call's label")
    time.sleep(0.5)
    assert task_row(data)["calls"] == 1


def test_a_forwarded_stream_is_relayed_and_parses(
    shadow: tuple[Path, Process], rows: list[dict[str, Any]]
) -> None:
    data, gw = shadow
    row = rows[2]
    chunks = list(
        client(gw.url + "/v1").chat.completions.create(
            model="gpt-4o-mini",
            messages=messages(row["input"]["text"]),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Loopai-Task": TASK},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == row["output"]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    row_when(data, lambda r: r["oracle_labels"] == 1, "the streamed answer recorded as a label")


def test_answers_outside_the_labels_are_counted_not_learnt(
    shadow: tuple[Path, Process],
) -> None:
    data, gw = shadow
    source, completion = ask(client(gw.url + "/v1"), "an input the upstream does not know")
    assert source == "oracle"
    assert completion.choices[0].message.content == "I don't know."
    got = row_when(data, lambda r: r["outside_labels"] == 1, "the outside answer counted")
    assert got["oracle_labels"] == 0


def test_upstream_errors_reach_the_sdk_as_their_class_and_record_nothing(
    shadow: tuple[Path, Process], stand_in: Process
) -> None:
    data, gw = shadow
    c = client(gw.url + "/v1")
    with pytest.raises(openai.InternalServerError) as e500:
        ask(c, "boom [stand-in:500]")
    assert e500.value.status_code == 500
    assert e500.value.type == "server_error"
    with pytest.raises(openai.RateLimitError) as e429:
        ask(c, "slow down [stand-in:429]")
    assert e429.value.code == "rate_limit_exceeded"
    assert e429.value.response.headers["retry-after"] == "1"  # the SDK's retries honour it
    upstream = get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")
    assert (upstream["server_errors"], upstream["rate_limited"]) == (1, 1)
    live = health_task(gw)
    assert (live["calls"], live["upstream_calls"], live["upstream_errors"]) == (2, 2, 2)
    assert (live["labels"], live["oracle_labels"], live["outside_labels"]) == (0, 0, 0)
    time.sleep(0.5)  # the call-log writer: nothing of a failed call reaches the disk either
    row = task_row(data)
    assert (row["labels"], row["oracle_labels"], row["outside_labels"]) == (0, 0, 0)


def test_a_slow_upstream_is_a_504_and_a_down_one_a_502(
    tmp_path: Path, rows: list[dict[str, Any]]
) -> None:
    up = start_stand_in(tmp_path, rows)
    data = tmp_path / "data"
    add_task(data, spec(TASK, []))
    gw = start_gateway(data, up.url, timeout_ms=1000)
    try:
        c = client(gw.url + "/v1")
        with pytest.raises(openai.InternalServerError) as slow:
            ask(c, "wait [stand-in:hang]")
        assert slow.value.status_code == 504
        assert slow.value.code == "upstream_timeout"
        up.stop()
        with pytest.raises(openai.InternalServerError) as down:
            ask(c, rows[0]["input"]["text"])
        assert down.value.status_code == 502
        assert down.value.code == "upstream_unreachable"
        live = health_task(gw)
        assert (live["upstream_errors"], live["labels"]) == (2, 0)
        time.sleep(0.5)
        assert task_row(data)["labels"] == 0
    finally:
        gw.stop()
        up.stop()


def post_raw(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"model": "m"}',
        b'{"model": "m", "messages": [{"content": "no role"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
    ],
)
def test_malformed_bodies_get_400_in_openais_error_format(
    shadow: tuple[Path, Process], stand_in: Process, body: bytes
) -> None:
    _, gw = shadow
    status, answer = post_raw(gw.url + "/v1/chat/completions", body, {"X-Loopai-Task": TASK})
    assert status == 400, answer
    error = answer["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")["requests"] == 0


def test_an_unknown_task_is_a_404_naming_it(shadow: tuple[Path, Process]) -> None:
    _, gw = shadow
    with pytest.raises(openai.NotFoundError) as e:
        client(gw.url + "/v1").chat.completions.create(
            model="m",
            messages=messages("x"),  # type: ignore[arg-type]
            extra_headers={"X-Loopai-Task": "no-such-task"},
        )
    assert e.value.code == "unknown_task"
    assert "no-such-task" in str(e.value)


def test_a_task_learns_from_the_oracle_and_then_answers_locally(
    tmp_path: Path, stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    data = tmp_path / "data"
    add_task(data, spec(TASK, []))
    gw = start_gateway(
        data,
        stand_in.url,
        min_examples=40,
        extra_yaml="  tasks:\n    spam:\n      max_disagreement: 0.2\n",
    )
    try:
        c = client(gw.url + "/v1")
        local: list[tuple[dict[str, Any], Any]] = []
        deadline = time.monotonic() + 180
        calls = 0
        # Replay the rows in order, again and again, until the program answers a few calls
        # (bounded in calls and time).
        while len(local) < 5 and calls < 1200 and time.monotonic() < deadline:
            row = rows[calls % len(rows)]
            calls += 1
            source, completion = ask(c, row["input"]["text"])
            assert source in ("oracle", "program")
            if source == "program":
                local.append((row, completion))
            elif calls > len(rows):
                time.sleep(0.05)  # let the background learner have the CPU
        assert len(local) == 5, f"no local answers after {calls} calls:\n{gw.output()}"
        for _, completion in local:
            assert completion.object == "chat.completion"
            assert completion.model == "gpt-4o-mini"
            assert completion.choices[0].message.content in ("spam", "ham")
            assert completion.choices[0].finish_reason == "stop"
            assert completion.usage.total_tokens == 0
        agree = sum(comp.choices[0].message.content == row["output"] for row, comp in local)
        assert agree >= 4, local
        # A locally answered stream parses with the SDK too.
        row, _ = local[0]
        raw = c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=messages(row["input"]["text"]),  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Loopai-Task": TASK},
        )
        source = raw.headers["x-loopai-source"]
        chunks = list(raw.parse())
        content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert content in ("spam", "ham")
        assert chunks[-1].usage is not None
        if source == "program":
            assert chunks[-1].usage.total_tokens == 0
        listed = row_when(data, lambda r: r["local"] >= 5, "local answers listed")
        assert listed["state"] == "serving"
        assert listed["active_version"] is not None
        assert 0 < listed["coverage"] <= 1
        live = health_task(gw)
        assert live["state"] == "serving" and live["local"] >= 5
        assert live["threshold"] is not None
        assert live["disagreement_upper"] is not None
        assert live["disagreement_upper"] <= live["max_disagreement"] == 0.2
        assert live["tokens_saved"] > 0
        with urllib.request.urlopen(gw.url + "/metrics", timeout=10) as r:
            metrics = r.read().decode()
        local_total = re.search(r'^loopai_gateway_local_total\{task="spam"\} (\d+)$', metrics, re.M)
        assert local_total and int(local_total.group(1)) >= 5, metrics
        timed = re.search(r"^loopai_gateway_local_seconds_count (\d+)$", metrics, re.M)
        assert timed and int(timed.group(1)) >= 5, metrics
    finally:
        gw.stop()


def test_over_tls_the_sdk_is_served_when_it_trusts_the_ca_and_refused_when_not(
    tmp_path: Path, stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    for blob, path in [(issued.cert_chain_pems[0], cert), (issued.private_key_pem, key)]:
        blob.write_to_path(str(path))
    ca.cert_pem.write_to_path(str(ca_file))
    data = tmp_path / "data"
    add_task(data, spec(TASK, []))
    gw = start_gateway(data, stand_in.url, tls=(cert, key, ca_file))
    try:
        assert gw.url.startswith("https://127.0.0.1:"), gw.url
        # The SDK with an HTTP client that trusts the private CA (the SDK's own httpx client
        # class, whichever httpx it is built on).
        trusting = ssl.create_default_context(cafile=str(ca_file))
        with openai.DefaultHttpxClient(verify=trusting) as http:
            source, completion = ask(
                client(gw.url + "/v1", http_client=http), rows[0]["input"]["text"]
            )
        assert source == "oracle"
        assert completion.choices[0].message.content == rows[0]["output"]
        # With the system's roots it refuses the certificate; nothing reaches the upstream.
        with pytest.raises(openai.APIConnectionError) as refused:
            ask(client(gw.url + "/v1"), rows[1]["input"]["text"])
        cause = refused.value.__cause__
        assert cause is not None and "CERTIFICATE_VERIFY_FAILED" in str(cause), repr(cause)
        upstream = get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")
        assert upstream["answered"] == 1
    finally:
        gw.stop()
