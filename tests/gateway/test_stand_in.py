"""The stand-in upstream LLM speaks the protocol the official `openai` SDK expects: its
answers, streams and errors parse into the SDK's own types and exception classes."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Process, get_json, start_stand_in


def client(base_url: str, timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=timeout)


def user(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a spam filter. Answer spam or ham."},
        {"role": "user", "content": text},
    ]


def test_a_known_input_gets_its_label_as_a_chat_completion(
    stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    row = rows[0]
    c = client(stand_in.url).chat.completions.create(
        model="gpt-4o-mini", messages=user(row["input"]["text"])
    )
    assert c.object == "chat.completion"
    assert c.id.startswith("chatcmpl-")
    assert c.model == "gpt-4o-mini"
    assert c.choices[0].message.content == row["output"]
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage is not None
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens > 0


def test_an_unknown_input_gets_an_answer_outside_the_labels(stand_in: Process) -> None:
    c = client(stand_in.url).chat.completions.create(model="m", messages=user("never seen"))
    assert c.choices[0].message.content == "I don't know."
    assert get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")["unknown_inputs"] == 1


def test_a_stream_parses_with_the_sdk_and_ends_with_usage(
    stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    row = rows[1]
    chunks = list(
        client(stand_in.url).chat.completions.create(
            model="m",
            messages=user(row["input"]["text"]),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == row["output"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_a_json_user_message_is_looked_up_as_a_whole_input(tmp_path: Path) -> None:
    rows = [{"input": {"subject": "hi", "body": "WIN"}, "output": {"label": "spam"}}]
    p = start_stand_in(tmp_path, rows)
    try:
        c = client(p.url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": '{"body": "WIN", "subject": "hi"}'}]
        )
        assert json.loads(c.choices[0].message.content or "") == {"label": "spam"}
    finally:
        p.stop()


def test_bad_requests_raise_bad_request_error_with_openai_fields(stand_in: Process) -> None:
    c = client(stand_in.url)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[])
    assert e.value.code == "empty_array"
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="m", messages=[{"role": "robot", "content": "x"}])  # type: ignore[list-item, misc]
    assert e.value.param == "messages[0].role"
    req = urllib.request.Request(
        stand_in.url + "/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(req, timeout=10)
    assert http.value.code == 400
    assert json.load(http.value)["error"]["type"] == "invalid_request_error"


def test_markers_inject_500_429_and_hang(stand_in: Process) -> None:
    c = client(stand_in.url)
    with pytest.raises(openai.InternalServerError) as e500:
        c.chat.completions.create(model="m", messages=user("boom [stand-in:500]"))
    assert e500.value.status_code == 500
    with pytest.raises(openai.RateLimitError) as e429:
        c.chat.completions.create(model="m", messages=user("slow down [stand-in:429]"))
    assert e429.value.response.headers["retry-after"] == "1"
    assert e429.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.APITimeoutError):
        client(stand_in.url, timeout=0.5).chat.completions.create(
            model="m", messages=user("wait [stand-in:hang]")
        )
    stats = get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")
    assert (stats["server_errors"], stats["rate_limited"], stats["hangs"]) == (1, 1, 1)


def test_a_configured_key_is_required(tmp_path: Path, rows: list[dict[str, Any]]) -> None:
    os.environ["STAND_IN_TEST_KEY"] = "sk-right"
    p = start_stand_in(tmp_path, rows, "--api-key-env", "STAND_IN_TEST_KEY")
    try:
        with pytest.raises(openai.AuthenticationError):
            client(p.url).chat.completions.create(model="m", messages=user("x"))
        ok = openai.OpenAI(base_url=p.url, api_key="sk-right", max_retries=0, timeout=10)
        assert ok.chat.completions.create(model="m", messages=user("x")).choices
    finally:
        p.stop()
        del os.environ["STAND_IN_TEST_KEY"]


def test_the_fault_flag_applies_to_every_request(
    tmp_path: Path, rows: list[dict[str, Any]]
) -> None:
    p = start_stand_in(tmp_path, rows, "--fault", "429", "--retry-after", "7")
    try:
        for row in rows[:2]:
            with pytest.raises(openai.RateLimitError) as e:
                client(p.url).chat.completions.create(
                    model="m", messages=user(row["input"]["text"])
                )
            assert e.value.response.headers["retry-after"] == "7"
    finally:
        p.stop()
