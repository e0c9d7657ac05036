"""What a key sees of the operator: no upstream credential anywhere (an upstream may echo it), and
operator internals (base URLs, hosts, file paths of the store and of local models) only with an
admin key. Every route that can carry an upstream error is tried: chat (plain and streamed),
messages, responses, tasks."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.errors import TaskStoreError
from llm_call.tasks.sqlite_store import SQLiteTaskStore
from llm_call.testing import Fault, Reply
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(90)

SECRET = "sk-upstream-0123456789abcdef"
HEADER_SECRET = "hdr-secret-0123456789"
USER, ADMIN = "user-key-0123456789", "admin-key-0123456789"
KEYS = {"api_keys": [USER], "admin_keys": [ADMIN]}


def _h(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _echoes(text: str) -> list[Reply]:
    """Upstream failures that quote the credentials they were sent, for prompts containing ``text``."""
    quoted = f"key {SECRET} header {HEADER_SECRET}"
    return [
        Reply(fault=Fault.http(401, body=json.dumps({"error": {"message": f"Incorrect API key provided: {quoted}"}})),
              match_text=f"{text}-401", times=None),
        Reply(fault=Fault.http(400, body=json.dumps({"error": {"message": f"bad request with {quoted}"}})),
              match_text=f"{text}-400", times=None),
        Reply(fault=Fault.http(500, body=f"proxy error; request headers: Authorization: Bearer {quoted}"),
              match_text=f"{text}-500", times=None),
        Reply(fault=Fault.malformed_json(body=f"not json {quoted}"), match_text=f"{text}-bad", times=None),
    ]


def _wait_task(http: httpx.Client, base: str, task: str) -> dict[str, Any]:
    for _ in range(300):
        body: dict[str, Any] = http.get(f"{base}/tasks/{task}", headers=_h(USER)).json()
        if body["status"] in ("failed", "succeeded", "cancelled"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"task {task} did not finish")


def test_an_upstream_echoing_its_credentials_never_shows_them_to_a_key(serve_llm: Any) -> None:
    served = serve_llm(_echoes("echo"), server=KEYS, up_endpoint={"api_key": SECRET, "headers": {"x-extra-auth": HEADER_SECRET}})
    base = served.base_url
    seen: list[str] = []
    with httpx.Client(timeout=30) as http:
        for kind in ("401", "400", "500", "bad"):
            prompt = f"echo-{kind}"
            msgs = [{"role": "user", "content": prompt}]
            for body, path in (
                ({"model": "up/x", "messages": msgs, "max_attempts": 1}, "/chat/completions"),
                ({"model": "up/x", "messages": msgs, "stream": True}, "/chat/completions"),
                ({"model": "up/x", "max_tokens": 5, "messages": msgs}, "/messages"),
                ({"model": "up/x", "input": prompt}, "/responses"),
            ):
                r = http.post(base + path, json=body, headers=_h(USER))
                assert r.status_code >= 400 or "error" in r.text, (path, r.text)
                seen.append(r.text)
            task = http.post(f"{base}/tasks", json={"model": "up/x", "prompt": prompt}, headers=_h(USER)).json()["id"]
            seen.append(json.dumps(_wait_task(http, base, task)))
            seen.append(http.get(f"{base}/tasks/{task}/events?follow=false", headers=_h(USER)).text)
    assert seen and any("***" in text for text in seen)
    for text in seen:
        assert SECRET not in text and HEADER_SECRET not in text, text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it now: connections are refused


def test_an_unreachable_endpoint_is_named_by_its_setting_not_its_address(serve_llm: Any) -> None:
    port = _closed_port()
    served = serve_llm(server=KEYS, up_endpoint={"base_url": f"http://127.0.0.1:{port}/v1"})
    msgs = [{"role": "user", "content": "hi"}]
    with httpx.Client(base_url=served.base_url, timeout=30, headers=_h(USER)) as http:
        # one request: its retries open the route's breaker, after which errors say only that
        texts = [http.post("/chat/completions", json={"model": "up/x", "messages": msgs}).text]
    for text in texts:
        assert "endpoints.up.base_url" in text and "Connection refused" in text, text
        assert "127.0.0.1" not in text and str(port) not in text, text


def test_models_show_endpoint_base_urls_to_admin_keys_only(serve_llm: Any) -> None:
    served = serve_llm(server=KEYS)
    url = served.upstream.openai_base_url
    with httpx.Client(base_url=served.base_url, timeout=30) as http:
        for path in ("/models", "/models?all=true", "/models/up/*", "/models/up/x"):
            for headers in ({}, {"anthropic-version": "2023-06-01"}):
                ordinary = http.get(path, headers={**_h(USER), **headers})
                assert ordinary.status_code == 200 and "up/" in ordinary.text, ordinary.text
                assert url not in ordinary.text and "127.0.0.1" not in ordinary.text, ordinary.text
        assert url in http.get("/models", headers=_h(ADMIN)).text


def test_a_task_store_failure_names_no_path(serve_llm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing_get(self: SQLiteTaskStore, task_id: str) -> None:
        raise TaskStoreError(f"task store {self.path}: OperationalError: disk I/O error")

    monkeypatch.setattr(SQLiteTaskStore, "get", failing_get)
    served = serve_llm(server=KEYS)
    for key in (USER, ADMIN):
        r = httpx.get(served.base_url + "/tasks/tk_00000000", headers=_h(key), timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "task_store_error", r.text
        assert str(tmp_path) not in r.text and "tasks.db" not in r.text, r.text


def test_a_task_store_failure_names_no_path_to_mcp_clients(serve_llm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing_get(self: SQLiteTaskStore, task_id: str) -> None:
        raise TaskStoreError(f"task store {self.path}: OperationalError: disk I/O error")

    monkeypatch.setattr(SQLiteTaskStore, "get", failing_get)
    served = serve_llm(server=KEYS)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "status", "arguments": {"task_id": "tk_00000000"}}}
    r = httpx.post(served.url + "/mcp", json=body, timeout=30,
                   headers={**_h(USER), "accept": "application/json, text/event-stream"})
    assert r.status_code == 200 and "TaskStoreError" in r.text, r.text[:500]
    assert str(tmp_path) not in r.text and "tasks.db" not in r.text, r.text[:500]


def test_task_worker_ids_name_no_host_to_ordinary_keys(serve_llm: Any) -> None:
    """A worker id is ``server-HOSTNAME-PID-xxxxxx``: the server's host name and process id."""
    host = socket.gethostname()
    served = serve_llm([Reply(text="late", latency=60, match_text="slow", times=None)], server=KEYS)
    base = served.base_url
    with httpx.Client(timeout=30) as http:
        task = http.post(f"{base}/tasks", json={"model": "up/x", "prompt": "slow"}, headers=_h(USER)).json()["id"]
        for _ in range(300):
            body = http.get(f"{base}/tasks/{task}", headers=_h(USER)).json()
            if body["status"] == "running":
                break
            time.sleep(0.05)
        assert body["status"] == "running" and body["worker"], body
        texts = [
            http.get(f"{base}/tasks/{task}", headers=_h(USER)).text,
            http.get(f"{base}/tasks", headers=_h(USER)).text,
            http.get(f"{base}/tasks/{task}/events?follow=false", headers=_h(USER)).text,
            http.post(f"{base}/tasks/{task}/cancel", json={}, headers=_h(USER)).text,
        ]
        for text in texts:
            assert host not in text and "server-" not in text, text
        assert host in http.get(f"{base}/tasks/{task}", headers=_h(ADMIN)).text


def test_a_misconfigured_claude_cli_names_no_path(serve_llm: Any, tmp_path: Path) -> None:
    operator_dir = tmp_path / "operator-tools"
    operator_dir.mkdir()
    (operator_dir / "not-executable").write_text("x")
    for cli in (operator_dir / "missing" / "claude", operator_dir / "not-executable"):
        served = serve_llm(server=KEYS, claude={"cli_path": str(cli)})
        r = httpx.post(served.base_url + "/chat/completions", json={"model": "max/sonnet", "messages": [{"role": "user", "content": "hi"}]},
                       headers=_h(USER), timeout=60)
        assert r.status_code == 400 and "claude.cli_path" in r.text, r.text
        assert "operator-tools" not in r.text and str(tmp_path) not in r.text, r.text
