"""An extraction task (an object output) through `loopai serve`'s gateway, driven by the
official `openai` SDK, in front of the stand-in upstream LLM that answers the truth as JSON:
the task learns from the upstream's answers until the program answers, and its answers
(plain and streamed) are the extracted objects as JSON."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from conftest import Process, add_task, get_json, start_gateway, start_stand_in, tasks_list

import loopai

TASK = "order"
SYSTEM = 'Extract the order number and the amount as JSON: {"order_id": ..., "amount": ...}.'

ORDER_SPEC: dict[str, Any] = {
    "name": TASK,
    "description": "The order number and the amount of a customer message.",
    "input_schema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
    "output_schema": {
        "type": "object",
        "required": ["order_id"],
        "properties": {
            "order_id": {"type": "string"},
            "amount": {"type": ["number", "null"]},
        },
    },
    "examples": [],
}


def order_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded stream of distinct customer messages: an order number and (mostly) an
    amount in varied sentences, with the truth."""
    rng = random.Random(seed)
    templates = [
        "Hi, my order {id} arrived damaged, I paid {money} for it.",
        "Refund request for order {id}: total {money}",
        "Where is {id}? You charged me {money} yesterday.",
        "Order number {id} - amount due {money}, please confirm",
        "I was billed {money} twice for {id}!",
        "Can you check the status of {id}? Thanks",
        "Hello. The parcel for {id} never came. It cost {money}.",
    ]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        order_id = f"ORD-{rng.randrange(10_000, 100_000)}"
        cents = rng.randrange(100, 500_000)
        whole, frac = divmod(cents, 100)
        money = rng.choice([f"${whole}.{frac:02d}", f"{whole}.{frac:02d} USD"])
        template = rng.choice(templates)
        text = template.format(id=order_id, money=money)
        if text in seen:
            continue
        seen.add(text)
        amount = None if "{money}" not in template else cents / 100
        rows.append({"input": {"text": text}, "output": {"order_id": order_id, "amount": amount}})
    return rows


def ask(c: openai.OpenAI, text: str, **kw: Any) -> tuple[str, Any]:
    raw = c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        extra_headers={"X-Loopai-Task": TASK},
        **kw,
    )
    return raw.headers.get("x-loopai-source", ""), raw.parse()


def health_task(gw: Process) -> dict[str, Any]:
    tasks = get_json(gw.url + "/health")["gateway"]["tasks"]
    row: dict[str, Any] = next(t for t in tasks if t["task"] == TASK)
    return row


def wait_installed(stats: Callable[[], dict[str, Any]]) -> None:
    """Until the first learning pass has installed its program (bounded; it is activated at
    once, and the forwarded calls calibrate it while the pass cross-fits)."""
    deadline = time.monotonic() + 600
    while True:
        row = stats()
        assert row["last_learn_error"] is None, row
        if row["active_version"] is not None:
            return
        assert time.monotonic() < deadline, row
        time.sleep(0.2)


def test_an_extraction_task_learns_from_the_upstream_and_answers_json(tmp_path: Path) -> None:
    rows = order_rows(600, 16)
    stand_in = start_stand_in(tmp_path, rows)
    data = tmp_path / "data"
    add_task(data, ORDER_SPEC)
    row = next(t for t in tasks_list(data) if t["task"] == TASK)
    assert row["state"] == "shadow"
    gw = start_gateway(
        data, stand_in.url, min_examples=100, extra_yaml="  max_disagreement: 0.05\n"
    )
    try:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0, timeout=60)
        local: list[str] = []
        for i, r in enumerate(rows[:-1]):
            source, completion = ask(c, r["input"]["text"])
            content = completion.choices[0].message.content
            # The upstream's answer as it gave it, or the program's: the same object.
            assert json.loads(content) == r["output"], (source, content)
            if source == "program":
                local.append(content)
            else:
                assert source == "oracle"
            if i == 100:
                # 101 labels: the first learning pass runs in the background.
                wait_installed(lambda: health_task(gw))
            if len(local) >= 20:
                break
        assert len(local) >= 20, f"the program answered {len(local)} of {i + 1} calls"
        # Compact, keys in the spec's order.
        assert all(content.startswith('{"order_id":') for content in local)
        assert all(": " not in content for content in local)
        # A streamed local answer: the same JSON in OpenAI's chunks.
        last = rows[-1]
        for _ in range(20):
            raw = c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": last["input"]["text"]},
                ],
                extra_headers={"X-Loopai-Task": TASK},
                stream=True,
            )
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices
            )
            assert json.loads(text) == last["output"]
            if raw.headers.get("x-loopai-source") == "program":
                break
        else:
            raise AssertionError("the streamed call was never answered by the program")
        t = health_task(gw)
        assert t["state"] == "serving", t
        assert t["outside_labels"] == 0, t
        assert t["local"] >= 21, t
    finally:
        gw.stop()
        stand_in.stop()


def test_loopai_wrap_learns_an_extraction_task(tmp_path: Path) -> None:
    rows = order_rows(600, 17)
    stand_in = start_stand_in(tmp_path, rows)
    data = tmp_path / "data"
    loopai.add_task(data, ORDER_SPEC)
    sdk = openai.OpenAI(base_url=stand_in.url, api_key="sk-test", max_retries=0, timeout=20)
    config = {
        "gateway": {"upstream": {"base_url": stand_in.url}, "max_disagreement": 0.05},
        "learn": {"min_examples": 100, "seed": 7},
    }

    def stats() -> dict[str, Any]:
        row: dict[str, Any] = next(t for t in client.stats()["tasks"] if t["task"] == TASK)
        return row

    try:
        with loopai.wrap(sdk, data_dir=data, tasks=TASK, config=config) as client:
            local = 0
            for i, r in enumerate(rows):
                completion = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": r["input"]["text"]},
                    ],
                )
                content = completion.choices[0].message.content
                assert json.loads(content) == r["output"], content
                if (completion.system_fingerprint or "").startswith("loopai-program"):
                    local += 1
                    assert content.startswith('{"order_id":'), content
                if i == 100:
                    wait_installed(stats)
                if local >= 20:
                    break
            assert local >= 20, f"the program answered {local} of {i + 1} calls"
            t = stats()
            assert t["state"] == "serving" and t["outside_labels"] == 0, t
    finally:
        stand_in.stop()
