"""`loopai.wrap` over the official `openai.OpenAI` client, against the stand-in upstream:
calls are forwarded and recorded until the task has learnt, then answered in process;
streams work both ways; upstream errors reach the caller and record nothing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Process, get_json, spec

import loopai

TASK = "spam"


def messages(text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a spam filter. Answer spam or ham."},
        {"role": "user", "content": text},
    ]


def config(upstream: str, min_examples: int = 40) -> dict[str, Any]:
    return {
        "gateway": {
            "upstream": {"base_url": upstream},
            "tasks": {TASK: {"max_disagreement": 0.2}},
        },
        "learn": {"min_examples": min_examples, "seed": 7},
    }


def task_stats(client: loopai.WrappedClient) -> dict[str, Any]:
    row: dict[str, Any] = next(t for t in client.stats()["tasks"] if t["task"] == TASK)
    return row


def upstream_stats(stand_in: Process) -> dict[str, Any]:
    stats: dict[str, Any] = get_json(stand_in.url.removesuffix("/v1") + "/stand-in/stats")
    return stats


def wrapped(tmp_path: Path, stand_in: Process, **kw: Any) -> loopai.WrappedClient:
    data = tmp_path / "data"
    loopai.add_task(data, spec(TASK, []))
    sdk = openai.OpenAI(base_url=stand_in.url, api_key="sk-test", max_retries=0, timeout=20)
    return loopai.wrap(sdk, data_dir=data, tasks=TASK, config=config(stand_in.url, **kw))


def test_a_bad_spec_is_refused_naming_the_field(tmp_path: Path) -> None:
    bad = spec(TASK, [])
    del bad["output_schema"]
    with pytest.raises(loopai.LoopaiError, match="output_schema"):
        loopai.add_task(tmp_path, bad)


def test_calls_are_forwarded_and_recorded_in_shadow(
    tmp_path: Path, stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    with wrapped(tmp_path, stand_in) as client:
        for row in rows[:3]:
            c = client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages(row["input"]["text"]),
                temperature=openai.NOT_GIVEN,  # the SDK's sentinel is not sent
            )
            assert c.id.startswith("chatcmpl-")  # the upstream's answer
            assert c.choices[0].message.content == row["output"]
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=messages(rows[3]["input"]["text"]),
            stream=True,
            stream_options={"include_usage": True},
        )
        content = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert content == rows[3]["output"]
        stats = task_stats(client)
        assert stats["state"] == "shadow"
        assert (stats["calls"], stats["forwarded"], stats["oracle_labels"]) == (4, 4, 4)
        assert stats["upstream_tokens"] > 0
    assert upstream_stats(stand_in)["answered"] == 4


def test_upstream_errors_reach_the_caller_and_record_nothing(
    tmp_path: Path, stand_in: Process
) -> None:
    with wrapped(tmp_path, stand_in) as client:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=messages("x [stand-in:500]"))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="m", messages=messages("x [stand-in:429]"))
        c = client.chat.completions.create(model="m", messages=messages("not a known input"))
        assert c.choices[0].message.content == "I don't know."
        stats = task_stats(client)
        assert stats["upstream_errors"] == 2
        assert (stats["labels"], stats["outside_labels"]) == (0, 1)


def test_a_malformed_request_is_refused_before_the_upstream(
    tmp_path: Path, stand_in: Process
) -> None:
    with wrapped(tmp_path, stand_in) as client:
        with pytest.raises(loopai.InvalidInput, match="messages"):
            client.chat.completions.create(model="m", messages=[{"content": "no role"}])
    assert upstream_stats(stand_in)["requests"] == 0


def test_the_task_learns_then_answers_in_process(
    tmp_path: Path, stand_in: Process, rows: list[dict[str, Any]]
) -> None:
    with wrapped(tmp_path, stand_in) as client:
        local: list[tuple[dict[str, Any], Any]] = []
        calls = 0
        deadline = time.monotonic() + 180
        while len(local) < 5 and calls < 1200 and time.monotonic() < deadline:
            row = rows[calls % len(rows)]
            calls += 1
            c = client.chat.completions.create(
                model="gpt-4o-mini", messages=messages(row["input"]["text"])
            )
            if (c.system_fingerprint or "").startswith("loopai-program-v"):
                local.append((row, c))
            elif calls > len(rows):
                time.sleep(0.05)  # let the background learner have the CPU
        assert len(local) == 5, f"no local answers after {calls} calls: {task_stats(client)}"
        for _, c in local:
            assert c.object == "chat.completion"
            assert c.model == "gpt-4o-mini"
            assert c.usage is not None and c.usage.total_tokens == 0
            assert c.choices[0].message.content in ("spam", "ham")
        assert sum(c.choices[0].message.content == r["output"] for r, c in local) >= 4
        row = local[0][0]
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages(row["input"]["text"]),
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].system_fingerprint.startswith("loopai-program-v")
        content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert content in ("spam", "ham")
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 0
        stats = task_stats(client)
        assert stats["state"] == "serving"
        assert stats["local"] >= 6
        assert stats["tokens_saved"] > 0
        assert stats["disagreement_upper"] <= stats["max_disagreement"]
        # Local answers reach the upstream only as sampled validations.
        # A learning pass may still be running (the labels keep growing): closing waits
        # for the gateway's threads, bounded by this timeout.
        client.close(timeout=120)
        final = task_stats(client)
        assert upstream_stats(stand_in)["requests"] == final["forwarded"] + final["validations"]
