"""The monitoring dashboard in a real headless Chromium (the distribution's package, over
the DevTools protocol): `loopai cloud serve` seeded with 30 days x 10 versions of
telemetry, heartbeats, rollouts, improvement attempts and an escalation; the pages must
render that data, escape what deployments send, and log no console error. Screenshots are
kept under $CARGO_TARGET_DIR/test-artifacts/dashboard/.

Run by scripts/test-dashboard.sh (LOOPAI_BIN: the loopai binary; ARTIFACTS_DIR: where
screenshots go).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import seed
from cdp import Browser

ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", "test-artifacts")) / "dashboard"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    root = tmp_path_factory.mktemp("cloud")
    cloud_dir = root / "data"
    cloud_dir.mkdir()
    keys = root / "keys.jsonl"
    seed.write_keys(keys)
    seed.write_engine_files(cloud_dir)
    server = seed.CloudServer(os.environ["LOOPAI_BIN"], cloud_dir, keys, "--silent-after-intervals", "2")
    try:
        seed.seed(server.url)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(cloud):
    b = Browser()
    try:
        # Signing in through the form: the cookie it sets carries every later page.
        b.goto(f"{cloud.url}/")
        assert b.evaluate("location.pathname") == "/login", "not signed in: the dashboard asks for a key"
        b.submit_and_wait(
            f"document.querySelector('#key').value = {seed.VIEWER_KEY!r};"
            "document.querySelector('form.login').submit()"
        )
        assert b.evaluate("location.pathname") == "/"
        yield b
    finally:
        b.close()


def text(b: Browser) -> str:
    return b.evaluate("document.body.innerText")


def test_fleet_overview_shows_every_deployment_with_its_health(cloud, browser):
    # edge-ap-3 reports every second: two intervals without news make it silent.
    time.sleep(2.5)
    browser.goto(f"{cloud.url}/")
    body = text(browser)
    browser.screenshot(ARTIFACTS / "fleet.png")
    for deployment in seed.DEPLOYMENTS:
        assert deployment in body
    health = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('tbody tr')]"
        ".filter(r => r.cells.length > 5)"
        ".map(r => [r.cells[0].innerText, r.querySelector('.badge') && r.querySelector('.badge').innerText]))"
    )
    assert health["edge-eu-1"] == "ok", health
    assert health["edge-us-2"] == "degraded", health
    assert health["edge-ap-3"] == "silent", health
    # The rollout the heartbeat reports, and the hostile error shown as text, not run.
    assert "in_progress v9→v10 stage 1 (5.0%)" in body
    assert seed.HOSTILE_ERROR in body
    assert browser.evaluate("document.querySelectorAll('script').length") == 0
    # Both tasks, linked.
    links = browser.evaluate("[...document.querySelectorAll('a[href^=\"/tasks/\"]')].map(a => a.innerText)")
    assert seed.TASK in links and seed.SMALL_TASK in links
    assert browser.errors() == []


def test_task_page_charts_thirty_days_of_ten_versions_and_the_history(cloud, browser):
    browser.goto(f"{cloud.url}/tasks/{seed.TASK}")
    browser.screenshot(ARTIFACTS / "task.png")
    body = text(browser)
    charts = browser.evaluate(
        "[...document.querySelectorAll('svg')].map(s => ({label: s.getAttribute('aria-label'),"
        " lines: s.querySelectorAll('polyline').length, points: s.querySelectorAll('circle').length}))"
    )
    assert [c["label"] for c in charts] == ["match rate per version and day", "executions per version and day"]
    for c in charts:
        # One unbroken line per version, a point per version and day.
        assert c["lines"] == seed.VERSIONS, c
        assert c["points"] == seed.VERSIONS * seed.DAYS, c
    legend = browser.evaluate("[...document.querySelector('.legend').children].map(li => li.innerText)")
    assert legend == [f"v{v}" for v in range(1, seed.VERSIONS + 1)]
    # The charts are drawn at a readable size on a laptop screen.
    width = browser.evaluate("document.querySelector('svg').getBoundingClientRect().width")
    assert width > 800, width
    # Current rollout, the rollout decisions, the improvement history, the escalation.
    assert "edge-eu-1" in body and "in_progress v9→v10" in body
    assert seed.ROLLBACK_REASON in body
    assert "cross-validated accuracy 0.7612 below 0.8500" in body
    assert "successful" in body and "unsuccessful" in body
    assert "Escalated 2026-11-12T03:00:01Z after 3 unsuccessful attempts" in body
    assert seed.ESCALATION_INPUT in body
    assert browser.evaluate("document.querySelectorAll('pre b').length") == 0
    assert browser.errors() == []


def test_a_task_without_history_renders_too(cloud, browser):
    browser.goto(f"{cloud.url}/tasks/{seed.SMALL_TASK}")
    browser.screenshot(ARTIFACTS / "task-small.png")
    body = text(browser)
    assert "No improvement attempt." in body and "No escalation." in body
    assert browser.evaluate("document.querySelectorAll('svg polyline').length") == 2
    assert browser.errors() == []
