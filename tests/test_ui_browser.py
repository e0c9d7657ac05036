"""The /ui dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against ``llm-call serve``'s app on a real socket with the scripted LLM server upstream.

Each test saves screenshots of the pages it visits under its ``tmp_path``. A marker set on
``window`` at load and still there at the end proves the page never reloaded.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from llm_call.providers.claude_quota import QUOTA, record_rate_limit_event
from llm_call.testing import Fault, Reply, unified_ratelimit_headers
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(60)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    """A fresh Chromium per test (async: the sync API cannot share the thread with pytest-asyncio)."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make system-deps)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        p = await browser.new_page(viewport={"width": 1280, "height": 800})
        p.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        yield p
        await browser.close()
    assert errors == [], f"script errors on the page: {errors}"


async def _open_ui(page: Page, served: Served) -> None:
    await page.goto(f"{served.url}/ui")
    await page.evaluate("window.__loaded_once = true")


async def _still_same_document(page: Page) -> bool:
    return bool(await page.evaluate("window.__loaded_once === true"))


async def _get(url: str) -> Any:
    async with httpx.AsyncClient() as client:
        r = await client.get(url)
    return r.json() if r.status_code == 200 else r.status_code


async def _submit(served: Served, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{served.base_url}/tasks", json=body, headers=headers)
    assert r.status_code == 202, r.text
    task_id: str = r.json()["id"]
    return task_id


def _row(page: Page, task_id: str) -> Any:
    return page.locator(f'#task-rows tr[data-id="{task_id}"]')


async def test_list_updates_live_then_task_page_streams_and_cancel_stops_a_running_task(
    serve_llm: Any, page: Page, tmp_path: Path
) -> None:
    served = serve_llm([Reply(text="the finished answer", latency=1.0)], default=Reply(fault=Fault.hang()))
    await _open_ui(page, served)
    await expect(page.locator("#tasks-empty")).to_be_visible()

    task_id = await _submit(served, {"model": "up/x", "prompt": "Summarise the report, please."})
    row = _row(page, task_id)
    await expect(row).to_be_visible()  # appeared without a reload
    await expect(row.locator("td").nth(6)).to_have_text("Summarise the report, please.")
    await expect(row.locator("td").nth(2)).to_have_text("up/x")
    await expect(row).to_have_attribute("data-status", "succeeded")  # and finished, still without one
    await expect(row.locator("td").nth(5)).to_contain_text("19 chars")
    await page.screenshot(path=tmp_path / "tasks.png")

    await row.locator("a").click()
    await expect(page.locator("#t-id")).to_have_text(task_id)
    await expect(page.locator("#t-status")).to_have_text("succeeded")
    await expect(page.locator("#t-result-text")).to_have_text("the finished answer")
    await expect(page.locator('#t-events li[data-kind="finished"]')).to_be_visible()
    await expect(page.locator("#t-attempts .card")).to_have_count(1)
    await expect(page.locator("#t-cancel")).to_be_disabled()
    await page.screenshot(path=tmp_path / "task.png", full_page=True)

    hanging = await _submit(served, {"model": "up/x", "prompt": "this one never answers"})
    await page.evaluate(f"location.hash = '#/task/{hanging}'")
    await expect(page.locator("#t-status")).to_have_text("running")
    await expect(page.locator('#t-events li[data-kind="started"]')).to_be_visible()  # streamed while running
    await page.locator("#t-cancel").click()
    await expect(page.locator("#t-status")).to_have_text("cancelled")
    await expect(page.locator('#t-events li[data-kind="cancelled"]')).to_be_visible()
    assert (await _get(f"{served.base_url}/tasks/{hanging}"))["status"] == "cancelled"
    await page.screenshot(path=tmp_path / "task-cancelled.png", full_page=True)
    assert await _still_same_document(page)


async def test_review_approve_and_reply_from_the_task_page(serve_llm: Any, page: Page, tmp_path: Path) -> None:
    served = serve_llm([Reply(text="draft one"), Reply(text="draft two"), Reply(text="final 7")])
    body = {"model": "up/x", "prompt": "a number", "validation": [r"regex:^\D*\d+$"], "human_after": 1}
    first = await _submit(served, body)
    await _open_ui(page, served)
    await expect(_row(page, first)).to_have_attribute("data-status", "needs_review")
    await page.evaluate(f"location.hash = '#/task/{first}'")
    await expect(page.locator("#t-review")).to_be_visible()
    verdict = page.locator("#t-attempts .verdicts li").first
    await expect(verdict).to_contain_text("failed")
    await page.screenshot(path=tmp_path / "review.png", full_page=True)
    await page.locator("#t-approve").click()
    await expect(page.locator("#t-status")).to_have_text("succeeded")
    await expect(page.locator("#t-result-text")).to_have_text("draft one")
    await expect(page.locator("#t-review")).to_be_hidden()

    second = await _submit(served, body)
    await page.evaluate(f"location.hash = '#/task/{second}'")
    await expect(page.locator("#t-review")).to_be_visible()
    await page.locator("#t-reply").fill("Just the digit, please.")
    await page.locator("#t-reply-form button").click()
    await expect(page.locator("#t-status")).to_have_text("succeeded")
    await expect(page.locator("#t-result-text")).to_have_text("final 7")
    sent = served.upstream.requests[-1].body["messages"]
    assert any(m.get("content") == "Just the digit, please." for m in sent)
    await page.screenshot(path=tmp_path / "review-replied.png", full_page=True)
    assert await _still_same_document(page)


async def test_html_in_a_prompt_is_shown_as_text_and_runs_nothing(serve_llm: Any, page: Page, tmp_path: Path) -> None:
    served = serve_llm([], default=Reply(text="<b>bold?</b><img src=y onerror=window.__pwned=3>"))
    prompt = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    task_id = await _submit(served, {"model": "up/x", "prompt": prompt})
    await _open_ui(page, served)
    cell = _row(page, task_id).locator("td").nth(6)
    await expect(cell).to_have_text(prompt)
    assert await page.locator("#task-rows img, #task-rows script").count() == 0
    await expect(_row(page, task_id)).to_have_attribute("data-status", "succeeded")
    await page.evaluate(f"location.hash = '#/task/{task_id}'")
    await expect(page.locator("#t-prompt pre")).to_have_text(prompt)
    await expect(page.locator("#t-result-text")).to_have_text("<b>bold?</b><img src=y onerror=window.__pwned=3>")
    assert await page.locator("main img, main script, main b").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    await page.screenshot(path=tmp_path / "xss-as-text.png", full_page=True)


async def test_with_keys_the_page_asks_for_one_and_refuses_a_wrong_key(serve_llm: Any, page: Page, tmp_path: Path) -> None:
    served = serve_llm(server={"api_keys": ["right-key-1"]})
    task_id = await _submit(served, {"model": "up/x", "prompt": "keyed task"}, {"Authorization": "Bearer right-key-1"})
    await _open_ui(page, served)
    await expect(page.locator("#page-login")).to_be_visible()
    await expect(page.locator("#page-tasks")).to_be_hidden()
    await page.locator("#key-input").fill("wrong-key")
    await page.locator("#login-form button").click()
    await expect(page.locator("#login-error")).to_contain_text("refused")
    await expect(page.locator("#page-tasks")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.screenshot(path=tmp_path / "login-refused.png")

    await page.locator("#key-input").fill("right-key-1")
    await page.locator("#login-form button").click()
    await expect(_row(page, task_id)).to_be_visible()
    await page.reload()  # the key is kept for the tab: no second prompt
    await expect(_row(page, task_id)).to_be_visible()
    await expect(page.locator("#page-login")).to_be_hidden()


async def test_routes_page_shows_counts_breakers_and_what_is_not_available(serve_llm: Any, page: Page, tmp_path: Path) -> None:
    served = serve_llm([], default=Reply(fault=Fault.hang()), tasks={"route_limits": {"up/*": 1}})
    running = await _submit(served, {"model": "up/x", "prompt": "one"})
    await _submit(served, {"model": "up/x", "prompt": "two"})
    deadline = time.monotonic() + 20
    while (await _get(f"{served.base_url}/tasks/{running}"))["status"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await _open_ui(page, served)
    await page.locator("#nav-routes").click()
    row = page.locator('#route-rows tr[data-route="up/x"]')
    await expect(row.locator("td").nth(1)).to_have_text("endpoint:up")
    await expect(row.locator("td").nth(2)).to_have_text("closed")
    await expect(row.locator("td").nth(3)).to_have_text("1")
    await expect(row.locator("td").nth(4)).to_have_text("1")
    await expect(row.locator("td").nth(5)).to_have_text("1 (up/*)")
    await expect(page.locator("#quota")).to_contain_text("No quota reported yet")
    # the CLI pool (GET /v1/claude/pool): off by default, said so
    await expect(page.locator("#pool .pill")).to_have_text("off")
    await expect(page.locator("#pool")).to_contain_text("claude.pool_size = 0")
    # the CLI reports the subscription's windows (as a max/* call in subscription mode would)
    resets = time.time() + 2 * 3600
    record_rate_limit_event(
        {"type": "rate_limit_event", "rate_limit_info": {
            "status": "allowed_warning", "rateLimitType": "five_hour", "utilization": 0.93, "resetsAt": resets,
            "unifiedWindows": {"seven_day": {"utilization": 0.41, "resetsAt": resets + 86400, "status": "allowed"}}}}
    )
    try:
        five = page.locator('#quota [data-window="five_hour"]')
        await expect(five).to_contain_text("93% used")
        await expect(five).to_contain_text("resets in 1 h 59 min")
        await expect(page.locator('#quota [data-window="seven_day"]')).to_contain_text("41% used")
        await expect(page.locator("#quota .pill")).to_have_text("allowed warning")
    finally:
        QUOTA.clear()
    await page.screenshot(path=tmp_path / "routes.png")
    async with httpx.AsyncClient() as client:
        await client.post(f"{served.base_url}/tasks/{running}/cancel", json={})


async def test_routes_page_shows_the_claude_cli_pool(serve_llm: Any, page: Page, tmp_path: Path) -> None:
    from llm_call.providers._claude_pool import ClaudePool

    served = serve_llm([], claude={"pool_size": 3})
    # a pool of this process with a history (what GET /v1/claude/pool sums), no CLI needed
    pool = ClaudePool(served.settings.claude, spawn=None)  # type: ignore[arg-type]
    pool.started, pool.calls = 4, 17
    pool.replaced.update({"died": 1, "max_calls": 2})
    try:
        await _open_ui(page, served)
        await page.locator("#nav-routes").click()
        await expect(page.locator("#pool .pill")).to_have_text("on")
        await expect(page.locator('#pool [data-pool="size"]')).to_have_text("0 of 3 processes")
        await expect(page.locator('#pool [data-pool="idle / busy"]')).to_have_text("0 idle · 0 busy")
        await expect(page.locator('#pool [data-pool="started"]')).to_have_text("4")
        await expect(page.locator('#pool [data-pool="replaced"]')).to_have_text("3 (died 1, max calls 2)")
        await expect(page.locator('#pool [data-pool="calls served"]')).to_have_text("17")
        await page.screenshot(path=tmp_path / "routes-pool.png")
    finally:
        await pool.aclose()


async def test_a_task_waiting_queued_for_the_claude_quota_shows_why_and_until_when(
    serve_llm: Any, page: Page, claude_env: ClaudeEnv, tmp_path: Path
) -> None:
    # (page before claude_env: Chromium is not one of the processes claude_env must see gone)
    reset = int(time.time()) + 600
    rejected = unified_ratelimit_headers("rejected", five_hour=(1.0, reset, "rejected"))
    served = serve_llm([Reply(fault=Fault.http(429), headers=rejected)], default=Reply(text="must not run", times=None))
    claude_env.use_subscription(served.upstream)
    try:
        task_id = await _submit(served, {"model": "max/sonnet", "prompt": "wait for the quota"})
        deadline = time.monotonic() + 45
        while not ((body := await _get(f"{served.base_url}/tasks/{task_id}"))["progress"] or {}).get("waiting"):
            assert body["status"] in ("queued", "running") and time.monotonic() < deadline, body
            await asyncio.sleep(0.05)
        assert body["status"] == "queued" and body["progress"]["waiting"]["until"] == reset
        await _open_ui(page, served)
        row = _row(page, task_id)
        await expect(row).to_have_attribute("data-status", "queued")
        await expect(row.locator("td").nth(5)).to_contain_text("waiting for the Claude quota (five_hour) until")
        await row.locator("a").click()
        await expect(page.locator("#t-status")).to_have_text("queued")
        await expect(page.locator("#t-meta")).to_contain_text("waiting for the Claude quota (five_hour) until")
        await page.screenshot(path=tmp_path / "task-waiting.png", full_page=True)
        await page.locator("#t-cancel").click()
        await expect(page.locator("#t-status")).to_have_text("cancelled")
        assert len([r for r in served.upstream.requests if r.path == "/v1/messages"]) == 1
    finally:
        QUOTA.clear()
