"""What the dashboard needs from the server, over real sockets: task list paging and the model
filter (both stores), ``GET /v1/routes`` (running/queued per route, breaker states), and ``/ui``
itself (served without a key, under a strict Content-Security-Policy). The page in a real
browser is tested in test_ui_browser.py."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.tasks import open_store
from llm_call.tasks.store import NewTask, TaskStore
from llm_call.testing import Fault, Reply
from support.llm_server import Served, serve_llm
from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server", "serve_llm"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    if request.param == "sqlite":
        s = await open_store(tmp_path / "tasks.db")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = re.sub(r"\W", "", request.node.name)[:40]
        s = await open_store(f"{server.url}?prefix={prefix}")
    yield s
    await s.close()


async def test_store_pages_newest_first_and_filters_by_route_glob(store: TaskStore) -> None:
    ids = []
    for i in range(7):
        route = "openai/a" if i % 2 == 0 else "up/b"
        rec, _ = await store.submit(NewTask(request={"model": route, "prompt": f"p{i}"}, route=route, created_at=1000.0 + i))
        ids.append(rec.id)
    newest_first = ids[::-1]

    pages: list[list[str]] = []
    before = None
    while True:
        page = [r.id for r in await store.list_tasks(limit=3, before=before)]
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]

    openai_only = [r.id for r in await store.list_tasks(route="openai/*", limit=10)]
    assert openai_only == [ids[6], ids[4], ids[2], ids[0]]
    second = [r.id for r in await store.list_tasks(route="openai/*", limit=2, before=openai_only[1])]
    assert second == [ids[2], ids[0]]
    assert await store.list_tasks(route="nothing/*") == []
    assert await store.list_tasks(before="tk_unknown") == []


def _submit(served: Served, model: str, prompt: str, headers: dict[str, str] | None = None) -> str:
    r = httpx.post(f"{served.base_url}/tasks", json={"model": model, "prompt": prompt}, headers=headers)
    assert r.status_code == 202, r.text
    task_id: str = r.json()["id"]
    return task_id


def _wait(served: Served, task_id: str, statuses: tuple[str, ...], headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = httpx.get(f"{served.base_url}/tasks/{task_id}", headers=headers).json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_task_list_pages_with_next_before_and_filters_by_model(serve_llm: Any) -> None:
    served = serve_llm(aliases={"fast": "up/fast"})
    ids = [_submit(served, "up/x" if i % 2 else "fast", f"n{i}") for i in range(5)]
    for task_id in ids:
        _wait(served, task_id, ("succeeded",))
    url = f"{served.base_url}/tasks"

    first = httpx.get(url, params={"limit": 2}).json()
    assert [t["id"] for t in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True and first["next_before"] == ids[3]
    second = httpx.get(url, params={"limit": 2, "before": first["next_before"]}).json()
    assert [t["id"] for t in second["data"]] == ids[::-1][2:4]
    last = httpx.get(url, params={"limit": 2, "before": second["next_before"]}).json()
    assert [t["id"] for t in last["data"]] == [ids[0]]
    assert last["has_more"] is False and last["next_before"] is None

    # the model filter matches the route: an alias is found under the model it stands for
    fast = httpx.get(url, params={"model": "up/fast"}).json()["data"]
    assert [t["id"] for t in fast] == [ids[4], ids[2], ids[0]]
    assert [t["id"] for t in httpx.get(url, params={"model": "up/*", "status": "succeeded", "limit": 1}).json()["data"]] == [ids[4]]
    assert httpx.get(url, params={"model": "other/*"}).json() == {"object": "list", "data": [], "has_more": False, "next_before": None}


def test_routes_show_running_and_queued_per_route_with_limits(serve_llm: Any) -> None:
    served = serve_llm([], default=Reply(fault=Fault.hang()), tasks={"route_limits": {"up/*": 1, "max/*": 4}})
    running = _submit(served, "up/x", "first")
    _wait(served, running, ("running",))
    queued = _submit(served, "up/x", "second")
    assert httpx.get(f"{served.base_url}/tasks/{queued}").json()["status"] == "queued"

    body = httpx.get(f"{served.base_url}/routes").json()
    assert body["object"] == "llm_call.routes" and body["truncated"] is False
    row = next(r for r in body["routes"] if r["route"] == "up/x")
    assert row["running"] == 1 and row["queued"] == 1
    assert row["limit"] == {"pattern": "up/*", "max": 1}
    assert row["breaker"] == "endpoint:up" and row["state"] == "closed"
    # configured limits without tasks are listed too
    assert any(r["route"] == "max/*" and r["limit"] == {"pattern": "max/*", "max": 4} for r in body["routes"])

    assert httpx.post(f"{served.base_url}/tasks/{running}/cancel", json={}).status_code == 200
    _wait(served, running, ("cancelled",))


def test_routes_show_an_open_breaker(serve_llm: Any) -> None:
    served = serve_llm([], default=Reply(fault=Fault.http(503)), retry={"max_retries": 0, "breaker_threshold": 2})
    client = served.client()
    for _ in range(3):
        with pytest.raises(Exception):  # noqa: B017 - the kind of failure is tested elsewhere
            client.chat.completions.create(model="up/x", messages=[{"role": "user", "content": "hi"}])
    body = httpx.get(f"{served.base_url}/routes").json()
    assert body["breakers"]["endpoint:up"]["state"] == "open"
    row = next(r for r in body["routes"] if r["breaker"] == "endpoint:up")
    assert row["state"] == "open" and row["breaker_detail"]["retry_in"] > 0


def test_ui_is_served_without_a_key_under_a_strict_csp_and_the_api_still_needs_one(serve_llm: Any) -> None:
    served = serve_llm(server={"api_keys": ["k-right"]})
    page = httpx.get(f"{served.url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/ui/app.js"' in page.text and "<script>" not in page.text and "style=" not in page.text
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = httpx.get(f"{served.url}/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"] == csp
    assert httpx.get(f"{served.url}/ui/other.js").status_code == 401  # not a static file: auth applies
    assert httpx.get(f"{served.base_url}/routes").status_code == 401
    assert httpx.get(f"{served.base_url}/routes", headers={"Authorization": "Bearer k-right"}).status_code == 200


def test_route_counts_are_those_of_the_tasks_the_key_can_see(serve_llm: Any) -> None:
    a, b, admin = "alice-key-0123456789", "bob-key-0123456789", "admin-key-0123456789"
    served = serve_llm([], default=Reply(fault=Fault.hang()), server={"api_keys": [a, b], "admin_keys": [admin]})
    mine = _submit(served, "up/x", "alice's", {"Authorization": f"Bearer {a}"})
    _wait(served, mine, ("running",), {"Authorization": f"Bearer {a}"})

    def running(key: str) -> int:
        body = httpx.get(f"{served.base_url}/routes", headers={"Authorization": f"Bearer {key}"}).json()
        return sum(r["running"] for r in body["routes"] if r["route"] == "up/x")

    assert running(a) == 1 and running(admin) == 1
    assert running(b) == 0
    httpx.post(f"{served.base_url}/tasks/{mine}/cancel", json={}, headers={"Authorization": f"Bearer {a}"})
