"""The task API: submit, list, read, follow events (SSE, resumable), cancel, review."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from llm_call.testing import Fault, Reply
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)


def _wait_status(served: Served, task_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = httpx.get(f"{served.base_url}/tasks/{task_id}").json()
        if body["status"] in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def _events(served: Served, task_id: str, headers: dict[str, str] | None = None, **params: Any) -> list[tuple[int, str, dict[str, Any]]]:
    out = []
    with httpx.stream("GET", f"{served.base_url}/tasks/{task_id}/events", headers=headers, params=params, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        block: dict[str, str] = {}
        for line in r.iter_lines():
            if not line:
                if "data" in block:
                    out.append((int(block["id"]), block["event"], json.loads(block["data"])))
                block = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            block[key] = value
    return out


def test_submit_and_read_result(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="task answer")])
    r = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "do it", "system": "terse",
                                                    "metadata": {"owner": "me"}})
    assert r.status_code == 202
    task = r.json()
    assert task["status"] in ("queued", "running")
    assert task["id"].startswith("tk_")
    done = _wait_status(served, task["id"], ("succeeded", "failed"))
    assert done["status"] == "succeeded"
    assert done["result"]["text"] == "task answer"
    assert done["request"]["messages"][0] == {"role": "system", "content": "terse"}
    sent = served.upstream.requests[-1].body
    assert "_meta" not in sent and "metadata" not in sent


def test_idempotency_key_returns_the_same_task(serve_llm: Any) -> None:
    served = serve_llm()
    body = {"model": "up/x", "prompt": "once", "idempotency_key": "job-7"}
    first = httpx.post(f"{served.base_url}/tasks", json=body).json()
    second = httpx.post(f"{served.base_url}/tasks", json=body).json()
    assert first["id"] == second["id"]


def test_list_tasks_with_status_filter(serve_llm: Any) -> None:
    served = serve_llm()
    ids = [httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": f"n{i}"}).json()["id"] for i in range(3)]
    for task_id in ids:
        _wait_status(served, task_id, ("succeeded",))
    listed = httpx.get(f"{served.base_url}/tasks", params={"status": "succeeded"}).json()
    assert listed["object"] == "list"
    assert {t["id"] for t in listed["data"]} >= set(ids)
    assert httpx.get(f"{served.base_url}/tasks", params={"status": "queued"}).json()["data"] == []
    bad = httpx.get(f"{served.base_url}/tasks", params={"status": "sleeping"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"


def test_events_follow_to_the_end_and_resume(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="evented", latency=0.2)])
    task_id = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "go"}).json()["id"]
    events = _events(served, task_id)
    kinds = [k for _, k, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "finished"
    assert "started" in kinds
    seqs = [s for s, _, _ in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert all(d["task_id"] == task_id for _, _, d in events)
    resumed = _events(served, task_id, headers={"Last-Event-ID": str(seqs[1])})
    assert [s for s, _, _ in resumed] == seqs[2:]
    after = _events(served, task_id, after=seqs[-2], follow="false")
    assert [s for s, _, _ in after] == seqs[-1:]


def test_events_of_unknown_task_is_404(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.get(f"{served.base_url}/tasks/tk_nothing/events")
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    r = httpx.get(f"{served.base_url}/tasks/tk_nothing/events", headers={"Last-Event-ID": "x"})
    assert r.status_code == 400


def test_cancel_running_task_ends_its_event_stream(serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.hang())])
    task_id = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "hang"}).json()["id"]
    assert _wait_status(served, task_id, ("running",))["status"] == "running"
    r = httpx.post(f"{served.base_url}/tasks/{task_id}/cancel", json={})
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    kinds = [k for _, k, _ in _events(served, task_id)]
    assert kinds[-1] == "cancelled"


def test_review_approve_and_reply(serve_llm: Any) -> None:
    served = serve_llm([Reply(text="draft one"), Reply(text="draft two"), Reply(text="final 7")])
    body = {"model": "up/x", "prompt": "a number", "validation": [r"regex:^\D*\d+$"], "human_after": 1}
    first = httpx.post(f"{served.base_url}/tasks", json=body).json()["id"]
    assert _wait_status(served, first, ("needs_review", "failed"))["status"] == "needs_review"
    approved = httpx.post(f"{served.base_url}/tasks/{first}/review", json={"approve": True})
    assert approved.status_code == 200
    assert approved.json()["status"] == "succeeded"
    assert approved.json()["result"]["text"] == "draft one"

    second = httpx.post(f"{served.base_url}/tasks", json=body).json()["id"]
    assert _wait_status(served, second, ("needs_review", "failed"))["status"] == "needs_review"
    replied = httpx.post(f"{served.base_url}/tasks/{second}/review", json={"reply": "Just the digit, please."})
    assert replied.status_code == 200
    done = _wait_status(served, second, ("succeeded", "failed", "needs_review"))
    assert done["status"] == "succeeded" and done["result"]["text"] == "final 7"


def test_review_errors(serve_llm: Any) -> None:
    served = serve_llm()
    task_id = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "fine"}).json()["id"]
    _wait_status(served, task_id, ("succeeded",))
    both = httpx.post(f"{served.base_url}/tasks/{task_id}/review", json={"approve": True, "reply": "x"})
    assert both.status_code == 400
    not_in_review = httpx.post(f"{served.base_url}/tasks/{task_id}/review", json={"approve": True})
    assert not_in_review.status_code == 409
    assert httpx.post(f"{served.base_url}/tasks/tk_none/review", json={"approve": True}).status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "up/x"}, 400, "prompt"),
        ({"model": "up/x", "prompt": "a", "messages": [{"role": "user", "content": "b"}]}, 400, "prompt"),
        ({"model": "up/x", "prompt": "a", "validation": ["nonsense_spec"]}, 422, "validation.0"),
        ({"model": "unknown-model", "prompt": "a"}, 404, "model"),
        ({"model": "up/x", "prompt": "a", "priority": "high"}, 400, "priority"),
    ],
)
def test_bad_task_submissions(serve_llm: Any, body: dict[str, Any], status: int, param: str) -> None:
    served = serve_llm()
    r = httpx.post(f"{served.base_url}/tasks", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param
    assert httpx.get(f"{served.base_url}/tasks").json()["data"] == []


def test_unknown_task_is_404(serve_llm: Any) -> None:
    served = serve_llm()
    assert httpx.get(f"{served.base_url}/tasks/tk_x").status_code == 404
    assert httpx.post(f"{served.base_url}/tasks/tk_x/cancel", json={}).status_code == 404


def test_api_keys_are_not_in_the_task_store(serve_llm: Any, tmp_path: Any) -> None:
    served = serve_llm(server={"api_keys": ["very-secret-server-key"]})
    headers = {"Authorization": "Bearer very-secret-server-key"}
    task_id = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "p"}, headers=headers).json()["id"]
    deadline = time.monotonic() + 30
    while httpx.get(f"{served.base_url}/tasks/{task_id}", headers=headers).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for path in tmp_path.glob("tasks.db*"):
        assert b"very-secret-server-key" not in path.read_bytes()


def test_a_full_route_queue_is_429_for_tasks_and_background_responses(serve_llm: Any) -> None:
    served = serve_llm(
        [], default=Reply(text="slow", latency=5.0), tasks={"route_limits": {"up/*": 1}, "queue_limits": {"up/*": 1}}
    )
    running = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "first"})
    assert running.status_code in (200, 201, 202)
    _wait_status(served, running.json()["id"], ("running",))
    queued = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "second"})
    assert queued.status_code in (200, 201, 202)
    refused = httpx.post(f"{served.base_url}/tasks", json={"model": "up/x", "prompt": "third"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_full"
    assert "up/*" in refused.json()["error"]["message"]
    client = served.client(max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="up/x", input="fourth", background=True)
    listed = httpx.get(f"{served.base_url}/tasks").json()
    assert len(listed["data"]) == 2
