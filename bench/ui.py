"""Dashboard benchmark: how long until the first screen of ``/ui`` is usable, with a large store.

A SQLite task store is filled with N finished tasks (default 10,000: succeeded with a result and
its attempt record, some failed with a typed error, realistic prompts); ``llm-call serve``'s app
runs on it in a thread; headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright)
opens ``/ui`` in a fresh context ``--loads`` times. "Usable" = the task list's first page of rows
is in the DOM (recorded by a MutationObserver installed before the page's own script runs), in
milliseconds since navigation start.

Peers in the same run: the same page on an empty store (the page's own cost), and the JSON call
the page makes for its first screen (``GET /v1/tasks?limit=50``) timed alone with httpx.

    .venv/bin/python bench/ui.py                  # 10,000 tasks, 15 loads
    .venv/bin/python bench/ui.py -n 2000 --loads 5

Goal (issue 17): first screen usable within 1 s with 10,000 tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from llm_call.config import Settings, set_settings
from llm_call.server import ServerThread, create_app
from llm_call.tasks.store import NewTask, Outcome, open_store
from llm_call.types import TaskStatus

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
# before the page's script: note when the first rows of the task list appear
OBSERVE = """
new MutationObserver((_, obs) => {
  const rows = document.getElementById('task-rows');
  if (rows && rows.children.length) { window.__firstRows = performance.now(); obs.disconnect(); }
}).observe(document, {childList: true, subtree: true});
"""
PROMPT = "Summarise the following support ticket in two sentences and name the product involved. " * 3


async def fill(path: Path, n: int) -> None:
    store = await open_store(path)
    try:
        batch = 500
        for start in range(0, n, batch):
            count = min(batch, n - start)
            for i in range(start, start + count):
                model = ("openai/gpt-4o-mini", "up/x", "max/sonnet")[i % 3]
                await store.submit(NewTask(request={"model": model, "messages": [{"role": "user", "content": f"#{i} {PROMPT}"}]}, route=model))
            claimed = await store.claim("bench-worker", limit=count)
            for j, rec in enumerate(claimed):
                if j % 10 == 9:
                    outcome = Outcome(TaskStatus.FAILED, error={"type": "ValidationExhausted", "message": "3 attempts failed validation", "hint": None, "fields": {}})
                else:
                    attempt = {"number": 1, "model": rec.route, "kind": "answer", "ok": True, "text": "A summary. " * 20, "feedback": None,
                               "error": None, "latency_s": 1.2, "usage": {"prompt_tokens": 60, "completion_tokens": 80}, "cost_usd": None, "verdicts": []}
                    outcome = Outcome(TaskStatus.SUCCEEDED, result={"text": "A summary. " * 20, "model": rec.route, "latency_s": 1.2, "attempts": [attempt]})
                await store.finish(rec.id, "bench-worker", outcome)
    finally:
        await store.close()


def measure(store_path: Path, loads: int) -> tuple[list[float], list[float], int]:
    """(first-rows ms per load, GET /v1/tasks?limit=50 ms per call, rows shown)."""
    settings = Settings.model_validate({"tasks": {"store": str(store_path)}})
    set_settings(settings)
    page_ms: list[float] = []
    api_ms: list[float] = []
    rows = 0
    with ServerThread(create_app(settings)) as srv, sync_playwright() as pw:
        with httpx.Client() as client:
            client.get(f"{srv.base_url}/tasks", params={"limit": 50})  # warm
            for _ in range(loads):
                t0 = time.perf_counter()
                r = client.get(f"{srv.base_url}/tasks", params={"limit": 50})
                api_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for i in range(loads + 1):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(OBSERVE)
            page = context.new_page()
            page.goto(f"{srv.url}/ui")
            page.wait_for_function("window.__firstRows !== undefined || !document.getElementById('tasks-empty').hidden", timeout=30_000)
            first = page.evaluate("window.__firstRows ?? performance.now()")
            rows = int(page.evaluate("document.getElementById('task-rows').children.length"))
            if i:  # the first load warms the browser's and the server's caches
                page_ms.append(float(first))
            context.close()
        browser.close()
    return page_ms, api_ms, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10_000, help="tasks in the store")
    parser.add_argument("--loads", type=int, default=15, help="page loads to time per store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.db"
        t0 = time.perf_counter()
        asyncio.run(fill(big, args.n))
        print(f"filled {args.n} tasks in {time.perf_counter() - t0:.1f} s")
        rows_out = []
        for label, path in (("empty store", Path(tmp) / "empty.db"), (f"{args.n:,} tasks", big)):
            page_ms, api_ms, rows = measure(path, args.loads)
            rows_out.append((label, page_ms, api_ms, rows))
    print()
    print("| store | /ui first screen usable, p50 | p90 | max | rows shown | GET /v1/tasks?limit=50 p50 |")
    print("|---|---|---|---|---|---|")
    for label, page_ms, api_ms, rows in rows_out:
        q = statistics.quantiles(page_ms, n=10)
        print(f"| {label} | {statistics.median(page_ms):.0f} ms | {q[8]:.0f} ms | {max(page_ms):.0f} ms | {rows} | {statistics.median(api_ms):.1f} ms |")


if __name__ == "__main__":
    main()
