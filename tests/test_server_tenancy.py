"""Per-key isolation: two API keys cannot list, read, follow, cancel, review or reuse each other's
tasks, background responses and idempotency keys (SQLite and Redis stores); an admin key sees
everything; a task store from before tenants is migrated."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.tasks.sqlite_store import SQLiteTaskStore
from llm_call.tasks.store import NewTask
from llm_call.testing import Reply
from support.llm_server import serve_llm
from support.redis_server import RedisServer, redis_server

__all__ = ["redis_server", "serve_llm"]

pytestmark = pytest.mark.timeout(90)

A, B, ADMIN = "alice-key-0123456789", "bob-key-0123456789", "admin-key-0123456789"
KEYS = {"api_keys": [A, B], "admin_keys": [ADMIN]}
SLOW = Reply(text="slow answer", latency=60, match_text="slow", times=None)


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "tasks.db")
    redis: RedisServer = request.getfixturevalue("redis_server")
    return f"{redis.url}?prefix=tenancy{abs(hash(str(tmp_path))) % 10**8}"


def test_keys_cannot_see_or_touch_each_others_tasks(serve_llm: Any, store: str) -> None:
    served = serve_llm([SLOW], server=KEYS, tasks={"store": store})
    base = served.base_url
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{base}/tasks", json={"model": "up/x", "prompt": "slow job", "idempotency_key": "job-1"}, headers=_h(A))
        assert r.status_code == 202, r.text
        task = r.json()["id"]
        r = http.post(f"{base}/responses", json={"model": "up/x", "input": "slow response", "background": True}, headers=_h(A))
        assert r.status_code == 200, r.text
        response = r.json()["id"]
        assert "alice" not in http.get(f"{base}/tasks/{task}", headers=_h(A)).text  # the key is never recorded

        # B sees none of it: every route answers as for an unknown id
        assert http.get(f"{base}/tasks", headers=_h(B)).json()["data"] == []
        forbidden = [
            ("GET", f"/tasks/{task}", None),
            ("GET", f"/tasks/{task}/events?follow=false", None),
            ("GET", f"/tasks/{task}/events", None),
            ("POST", f"/tasks/{task}/cancel", {}),
            ("POST", f"/tasks/{task}/review", {"approve": True}),
            ("GET", f"/responses/{response}", None),
            ("GET", f"/responses/{response}?stream=true", None),
            ("POST", f"/responses/{response}/cancel", {}),
        ]
        for method, path, body in forbidden:
            r = http.request(method, base + path, json=body, headers=_h(B))
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            unknown_path = path.replace(response, "resp_tk_00000000").replace(task, "tk_00000000")
            unknown = http.request(method, base + unknown_path, json=body, headers=_h(B))
            assert r.json()["error"]["code"] == unknown.json()["error"]["code"]

        # the per-route counts of /v1/routes (the dashboard's Routes page) count only B's tasks
        assert not any(r["running"] or r["queued"] for r in http.get(f"{base}/routes", headers=_h(B)).json()["routes"])
        assert any(r["running"] or r["queued"] for r in http.get(f"{base}/routes", headers=_h(A)).json()["routes"])

        # B's idempotency key "job-1" is its own: a new task, not A's (and not A's answer)
        r = http.post(f"{base}/tasks", json={"model": "up/x", "prompt": "b's job", "idempotency_key": "job-1"}, headers=_h(B))
        assert r.status_code == 202
        b_task = r.json()["id"]
        assert b_task != task
        again = http.post(f"{base}/tasks", json={"model": "up/x", "prompt": "slow job", "idempotency_key": "job-1"}, headers=_h(A))
        assert again.json()["id"] == task
        assert [t["id"] for t in http.get(f"{base}/tasks", headers=_h(B)).json()["data"]] == [b_task]

        # A's own view: both of its tasks, not B's; A still controls its task
        mine = {t["id"] for t in http.get(f"{base}/tasks", headers=_h(A)).json()["data"]}
        assert mine == {task, response.removeprefix("resp_")}
        assert http.get(f"{base}/tasks/{task}", headers=_h(A)).json()["status"] in ("queued", "running")
        assert http.post(f"{base}/tasks/{task}/review", json={"approve": True}, headers=_h(A)).status_code == 409

        # the admin key sees and controls everything
        every = {t["id"] for t in http.get(f"{base}/tasks", headers=_h(ADMIN)).json()["data"]}
        assert every == {task, b_task, response.removeprefix("resp_")}
        assert http.get(f"{base}/responses/{response}", headers=_h(ADMIN)).status_code == 200
        r = http.post(f"{base}/tasks/{task}/cancel", json={}, headers=_h(ADMIN))
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert http.post(f"{base}/responses/{response}/cancel", json={}, headers=_h(A)).json()["status"] == "cancelled"

        # another key's task id as a page cursor tells nothing: B gets the page of an unknown cursor
        newer = http.post(f"{base}/tasks", json={"model": "up/x", "prompt": "later"}, headers=_h(A)).json()["id"]
        assert http.get(f"{base}/tasks", params={"before": newer}, headers=_h(B)).json()["data"] == []
        admin_page = http.get(f"{base}/tasks", params={"before": newer}, headers=_h(ADMIN)).json()["data"]
        assert admin_page[0]["id"] == b_task


def test_without_keys_there_is_one_tenant(serve_llm: Any) -> None:
    served = serve_llm()
    with httpx.Client(base_url=served.base_url, timeout=30) as http:
        first = http.post("/tasks", json={"model": "up/x", "prompt": "hi", "idempotency_key": "k"}).json()["id"]
        assert http.post("/tasks", json={"model": "up/x", "prompt": "hi", "idempotency_key": "k"}).json()["id"] == first
        assert [t["id"] for t in http.get("/tasks").json()["data"]] == [first]


_V1_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tasks(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, request TEXT NOT NULL,
    route TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT, owner TEXT, worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    started_at REAL, finished_at REAL, progress TEXT, result TEXT, error TEXT, event_seq INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX tasks_idempotency ON tasks(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE events(task_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (task_id, seq)) WITHOUT ROWID;
CREATE TABLE workers(id TEXT PRIMARY KEY, kind TEXT NOT NULL, claims TEXT NOT NULL, concurrency INTEGER NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO tasks (id, status, request, route, idempotency_key, created_at, event_seq)
    VALUES ('tk_old', 'queued', '{"model": "up/x", "prompt": "hi"}', 'up/x', 'shared-key', 1.0, 0);
"""


async def test_a_version_1_store_is_migrated_and_keys_become_per_tenant(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_V1_SCHEMA)
    store = SQLiteTaskStore(path)
    await store.open()
    try:
        old = await store.get("tk_old")
        assert old is not None and old.tenant is None
        rec, created = await store.submit(NewTask({"model": "up/x", "prompt": "x"}, "up/x", idempotency_key="shared-key"))
        assert (rec.id, created) == ("tk_old", False)  # same (no) tenant: the same task
        rec, created = await store.submit(
            NewTask({"model": "up/x", "prompt": "x"}, "up/x", idempotency_key="shared-key", tenant="k_b")
        )
        assert created and rec.tenant == "k_b"
        assert [r.id for r in await store.list_tasks(tenant="k_b")] == [rec.id]
        assert {r.id for r in await store.list_tasks()} == {"tk_old", rec.id}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"


def _mcp_tool(base: str, key: str, name: str, arguments: dict[str, Any]) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    r = httpx.post(base + "/mcp", json=body, timeout=30, headers={**_h(key), "accept": "application/json, text/event-stream"})
    assert r.status_code == 200, r.text[:300]
    return r.text


def test_mcp_tools_cannot_see_or_touch_another_keys_task(serve_llm: Any) -> None:
    served = serve_llm([SLOW], server=KEYS)
    task = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "slow job"}, headers=_h(A), timeout=30).json()["id"]
    for tool in ("status", "cancel", "wait"):
        args = {"task_id": task, **({"timeout": 1} if tool == "wait" else {})}
        theirs = _mcp_tool(served.url, B, tool, args)
        unknown = _mcp_tool(served.url, B, tool, {**args, "task_id": "tk_00000000"})
        assert "slow job" not in theirs and "no task with id" in theirs, (tool, theirs[:300])
        assert theirs.replace(task, "ID") == unknown.replace("tk_00000000", "ID"), (tool, theirs[:300], unknown[:300])
    mine = _mcp_tool(served.url, A, "status", {"task_id": task})
    assert '\\"status\\": \\"running\\"' in mine or "running" in mine, mine[:300]
    assert httpx.get(f"{served.base_url}/tasks/{task}", headers=_h(A), timeout=30).json()["status"] in ("queued", "running")
