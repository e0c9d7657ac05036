"""The distributed task backend (SAQ + Redis) against a real redis-server and real processes.

The module starts its own ``redis-server`` on 127.0.0.1 and a free port (it FAILS, never skips,
when Redis cannot be started). Store-level tests drive :class:`RedisTaskStore` directly; the
cluster tests run two ``llm-call worker`` processes and one ``llm-call serve`` process on the
same Redis, against scripted LLM servers, and check: 200 tasks spread over both workers within a
cluster-wide route limit, events through the server's SSE endpoint, a ``kill -9`` of a worker
mid-run (every task still ends exactly once), cancel of a task running on a worker (its HTTP call
is closed), the CLI, and the openai SDK's background Responses flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llm_call.errors import ConfigError
from llm_call.server._auth import opaque_worker
from llm_call.tasks import TaskManager, make_store, open_store
from llm_call.tasks.redis_store import RedisTaskStore
from llm_call.tasks.store import (
    FINAL_EVENT_KINDS,
    NewTask,
    Outcome,
    WorkerInfo,
)
from llm_call.testing import Reply, ScriptedLLMServer
from llm_call.types import TaskRecord, TaskStatus
from support.redis_server import RedisServer, free_port, redis_server

__all__ = ["redis_server"]

pytestmark = pytest.mark.timeout(90)

LLM_CALL = str(Path(sys.executable).parent / "llm-call")
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=20)


# -- helpers ---------------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def final_events(events: list[Any]) -> list[str]:
    return [e.kind for e in events if e.kind in FINAL_EVENT_KINDS]


def max_overlap(records: list[TaskRecord]) -> int:
    """Most tasks running at one instant (from their started/finished times)."""
    edges = []
    for r in records:
        assert r.started_at is not None and r.finished_at is not None
        edges += [(r.started_at, 1), (r.finished_at, -1)]
    now = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        now += step
        peak = max(peak, now)
    return peak


def established_to(port: int) -> int:
    """TCP connections of this host in ESTABLISHED state whose remote port is ``port``."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(path) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "01" and int(parts[2].rsplit(":", 1)[1], 16) == port:
                    n += 1
    return n


@dataclass
class Proc:
    """A child process with its output in a log file; stopped by its PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    worker_id: str = ""

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        def check() -> re.Match[str] | None:
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.text()[-3000:]}")
            return re.search(pattern, self.text())

        found: re.Match[str] = await wait_until(check, timeout, f"{self.name}: {pattern!r}")
        return found

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)

    def kill9(self) -> None:
        os.kill(self.popen.pid, signal.SIGKILL)


def child_env(config: Path, xdg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_", "ANTHROPIC_", "CLAUDE"))}
    env.update(LLM_CALL_CONFIG=str(config), XDG_DATA_HOME=str(xdg), PYTHONUNBUFFERED="1", OPENAI_API_KEY="test")
    return env


def spawn(name: str, args: list[str], env: dict[str, str], logs: Path) -> Proc:
    log = logs / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([LLM_CALL, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    return Proc(name, popen, log)


async def start_worker(name: str, url: str, env: dict[str, str], logs: Path, *extra: str) -> Proc:
    proc = spawn(name, ["worker", "--tasks", url, *extra], env, logs)
    match = await proc.wait_for_line(r"worker (\S+) running tasks from")
    proc.worker_id = match.group(1)
    return proc


def write_config(path: Path, openai_url: str, slow_url: str, extra: str = "", heartbeat: float = 1.0) -> Path:
    path.write_text(
        f"""
[openai]
base_url = "{openai_url}"

[endpoints.slow]
base_url = "{slow_url}"
api_key = "test"

[tasks]
heartbeat_s = {heartbeat}
{extra}
"""
    )
    return path


# -- store level -------------------------------------------------------------------------------------


@pytest.fixture
async def store(redis_server: RedisServer, request: pytest.FixtureRequest) -> AsyncIterator[RedisTaskStore]:
    prefix = re.sub(r"\W", "", request.node.name)[:40]
    s = await open_store(f"{redis_server.url}?prefix={prefix}&global_limits=openai/*=3&job_heartbeat_s=1")
    assert isinstance(s, RedisTaskStore)
    yield s
    await s.close()


def task(route: str = "openai/x", **kw: Any) -> NewTask:
    return NewTask(request={"model": route, "prompt": "hi"}, route=route, **kw)


class _Marker:
    """A value JSON cannot hold that knows its dict form (as llm_call's own types do)."""

    def to_dict(self) -> dict[str, Any]:
        return {"marker": True}


async def test_both_stores_write_the_same_json(store: RedisTaskStore, tmp_path: Path) -> None:
    """One codec for stored tasks: a value JSON cannot hold (stored as its ``to_dict()``) and a
    non-finite float come back the same from SQLite and Redis (Redis used to raise TypeError
    on the first and keep ``NaN`` where SQLite stored ``null``)."""
    request = {"model": "openai/x", "prompt": "hi", "extra": _Marker(), "score": float("nan")}
    sqlite = await open_store(tmp_path / "t.db")
    try:
        got = []
        for s in (sqlite, store):
            rec, _ = await s.submit(NewTask(request=dict(request), route="openai/x"))
            got.append((await s.get(rec.id)).request)  # type: ignore[union-attr]
    finally:
        await sqlite.close()
    assert got[0] == got[1] == {"model": "openai/x", "prompt": "hi", "extra": {"marker": True}, "score": None}


async def test_location_selects_the_redis_backend(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(make_store(redis_server.url), RedisTaskStore)
    monkeypatch.setenv("LLM_CALL_TASKS", redis_server.url + "?prefix=env")
    from llm_call.config import set_settings

    set_settings(None)
    chosen = make_store(None)
    assert isinstance(chosen, RedisTaskStore) and chosen.prefix == "env"
    assert "s3cret" not in make_store("redis://:s3cret@127.0.0.1:1/0").url  # shown in logs and /health


async def test_open_fails_with_a_clear_error_when_redis_is_unreachable() -> None:
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        await open_store(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(ConfigError, match="global_limits"):
        make_store("redis://127.0.0.1:1/0?global_limits=max/*")


async def test_lifecycle_idempotency_priority_events_and_expiry(store: RedisTaskStore) -> None:
    first, created = await store.submit(task(idempotency_key="k"))
    again, created_again = await store.submit(task(idempotency_key="k"))
    assert created and not created_again and again.id == first.id
    urgent, _ = await store.submit(task("max/x", priority=5))
    await store.heartbeat(WorkerInfo(id="w1", kind="worker", claims="all"))
    claimed = await store.claim("w1", limit=10)
    assert [r.id for r in claimed] == [urgent.id, first.id]  # highest priority first
    assert all(r.status is TaskStatus.RUNNING and r.worker == "w1" and r.attempts == 1 for r in claimed)
    assert await store.finish(first.id, "w1", Outcome(TaskStatus.SUCCEEDED, result={"text": "ok"}))
    assert not await store.finish(first.id, "w1", Outcome(TaskStatus.FAILED, error={"type": "X"}))
    rec = await store.get(first.id)
    assert rec is not None and rec.status is TaskStatus.SUCCEEDED and rec.result == {"text": "ok"}
    events = await store.read_events(first.id)
    assert [(e.seq, e.kind) for e in events] == [(1, "queued"), (2, "started"), (3, "finished")]
    assert [e.seq for e in await store.read_events(first.id, after=1, limit=1)] == [2]
    # a final task's record, events, idempotency key and SAQ job expire by TTL; a live one does not
    r = store._r
    for key in (f"{store.prefix}:t:{first.id}", f"{store.prefix}:e:{first.id}", f"{store.prefix}:idem:k"):
        assert 0 < await r.ttl(key) <= store.retention_s
    job = await store._queue(f"{store.prefix}|0||openai/x").job(first.id)
    assert job is not None and job.status == "complete" and 0 < await r.ttl(job.id)
    assert await r.ttl(f"{store.prefix}:t:{urgent.id}") == -1
    assert (await store.counts()) == {"running": 1, "succeeded": 1}
    assert [t.id for t in await store.list_tasks(status=TaskStatus.RUNNING)] == [urgent.id]
    assert await store.cleanup(time.time() + 1) == 1
    assert await store.get(first.id) is None and await store.counts() == {"running": 1}


async def test_queued_count_per_route_pattern_for_queue_limits(store: RedisTaskStore) -> None:
    for route in ("openai/x", "openai/x", "max/sonnet"):
        await store.submit(task(route))
    await store.submit(task("openai/x", priority=3))  # another lane of the same route
    assert await store.queued_count("openai/*") == 3
    assert await store.queued_count("max/*") == 1
    assert await store.queued_count("local/*") == 0
    await store.heartbeat(WorkerInfo(id="w1", kind="worker", claims="all"))
    await store.claim("w1", limit=2)
    assert await store.queued_count("*") == 2  # running tasks are not waiting


async def test_cancel_queued_now_and_running_through_the_worker(store: RedisTaskStore) -> None:
    queued, _ = await store.submit(task())
    rec = await store.request_cancel(queued.id)
    assert rec.status is TaskStatus.CANCELLED and rec.error and rec.error["type"] == "TaskCancelled"
    assert queued.id in rec.error["message"]
    running, _ = await store.submit(task())
    await store.heartbeat(WorkerInfo(id="w1", kind="worker", claims="all"))
    assert [r.id for r in await store.claim("w1", limit=5)] == [running.id]  # the cancelled one is gone
    rec = await store.request_cancel(running.id)
    assert rec.status is TaskStatus.RUNNING and rec.cancel_requested
    assert await store.cancel_requests("w1") == [running.id]
    assert await store.finish(running.id, "w1", Outcome(TaskStatus.CANCELLED, error={"type": "TaskCancelled"}))
    assert final_events(await store.read_events(running.id)) == ["cancelled"]


async def test_route_limits_hold_per_host_and_across_hosts(redis_server: RedisServer) -> None:
    base = f"{redis_server.url}?prefix=limits&host_limits=max/*=2&global_limits=max/*=3"
    a = await open_store(base + "&host=a")
    b1 = await open_store(base + "&host=b")
    b2 = await open_store(base + "&host=b")  # a second process on host b
    try:
        for _ in range(10):
            await a.submit(task("max/x"))
        got_b1 = await b1.claim("b1", limit=10)
        got_b2 = await b2.claim("b2", limit=10)
        got_a = await a.claim("a1", limit=10)
        assert (len(got_b1), len(got_b2), len(got_a)) == (2, 0, 1)  # host b: 2; all hosts: 3
        assert await b1.finish(got_b1[0].id, "b1", Outcome(TaskStatus.SUCCEEDED, result={}))
        assert len(await b2.claim("b2", limit=10)) == 1  # the lease came back with the finish
        assert await a.claim("a1", limit=10) == []
    finally:
        for s in (a, b1, b2):
            await s.close()


async def test_saq_sweep_requeues_a_stale_job_and_fences_the_old_worker(store: RedisTaskStore) -> None:
    rec, _ = await store.submit(task())
    await store.heartbeat(WorkerInfo(id="w1", kind="worker", claims="all"))
    await store.claim("w1", limit=1)
    await asyncio.sleep(1.5)  # the job's SAQ heartbeat (1 s) goes stale: w1 stopped touching it
    report = await store.recover(max_executions=3, stale_after=30.0)  # w1 itself still looks alive
    assert report.requeued == [rec.id] and report.dead_workers == []
    assert not await store.finish(rec.id, "w1", Outcome(TaskStatus.SUCCEEDED, result={"text": "late"}))
    await store.heartbeat(WorkerInfo(id="w2", kind="worker", claims="all"))
    [again] = await store.claim("w2", limit=1)
    assert again.attempts == 2 and again.worker == "w2"
    assert await store.finish(rec.id, "w2", Outcome(TaskStatus.SUCCEEDED, result={"text": "ok"}))
    events = await store.read_events(rec.id)
    assert [e.kind for e in events] == ["queued", "started", "requeued", "started", "finished"]
    assert events[2].data["by"] == "swept"


async def test_dead_worker_tasks_requeue_then_interrupt_after_max_executions(store: RedisTaskStore) -> None:
    rec, _ = await store.submit(task())
    await store.heartbeat(WorkerInfo(id="gone", kind="worker", claims="all", pid=2**22 + 7))
    await store.claim("gone", limit=1)
    report = await store.recover(max_executions=2, stale_after=30.0)  # its pid does not exist here
    assert report.requeued == [rec.id] and report.dead_workers == ["gone"]
    await store.heartbeat(WorkerInfo(id="gone2", kind="worker", claims="all", pid=2**22 + 8))
    await store.claim("gone2", limit=1)
    report = await store.recover(max_executions=2, stale_after=30.0)
    assert report.interrupted == [rec.id]
    final = await store.get(rec.id)
    assert final is not None and final.status is TaskStatus.INTERRUPTED and final.error
    assert final.error["type"] == "TaskInterrupted" and rec.id in final.error["message"]


async def test_owned_tasks_and_review(store: RedisTaskStore) -> None:
    mine, _ = await store.submit(task(owner="m1"))
    await store.heartbeat(WorkerInfo(id="m1", claims="own"))
    await store.heartbeat(WorkerInfo(id="w1", kind="worker", claims="all"))
    assert await store.claim("w1", limit=5) == []  # reserved for m1
    [got] = await store.claim("m1", limit=5, claim_all=False)
    assert got.id == mine.id
    assert await store.finish(mine.id, "m1", Outcome(TaskStatus.NEEDS_REVIEW, error={"type": "HumanReviewNeeded"}))
    rec = await store.resolve_review(mine.id, request={"model": "openai/x", "prompt": "again"})
    assert rec.status is TaskStatus.QUEUED and rec.attempts == 0 and rec.owner is None
    [again] = await store.claim("w1", limit=5)
    assert again.request["prompt"] == "again"
    # a manager that claims everything (a server) does not reserve what it submits
    server_task, _ = await store.submit(task(owner="w1"))
    assert server_task.owner is None


async def test_manager_and_in_process_worker_on_redis(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"{redis_server.url}?prefix=inproc"
    async with ScriptedLLMServer([], default=Reply(text="ok", latency=0.05)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        from llm_call.tasks.worker import run_worker

        async with TaskManager(url, execute=False) as client:
            ids = [await client.submit({"model": "openai/x", "prompt": f"q{i}"}) for i in range(20)]
            # a worker for other routes (llm-call worker --routes) leaves them alone
            assert await asyncio.wait_for(run_worker(url, burst=True, routes=["max/*", "local/*"]), 30) == {}
            assert (await client.status(ids[0])).status is TaskStatus.QUEUED
            stats = await asyncio.wait_for(run_worker(url, concurrency=5, burst=True, routes=["openai/*"]), 30)
            assert stats == {"succeeded": 20}
            assert (await client.result(ids[0])).text == "ok"
            kinds = [e.kind async for e in client.events(ids[-1])]
            assert kinds[:2] == ["queued", "started"] and kinds[-1] == "finished"


# -- a cluster: two worker processes and a server process ------------------------------------------


@dataclass
class Cluster:
    url: str
    server_url: str
    workers: list[Proc]
    server: Proc
    slow_port: int
    env: dict[str, str]
    logs: Path
    procs: list[Proc] = field(default_factory=list)


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[ScriptedLLMServer, ScriptedLLMServer]]:
    fast = ScriptedLLMServer(
        [Reply(text="slowly ok", latency=1.5, match_text="kill-test", times=None)],
        default=Reply(text="ok", latency=0.3),
    )
    slow = ScriptedLLMServer([], default=Reply(text="late", latency=120))
    with fast.running(), slow.running():
        yield fast, slow


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, scripted: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    fast, slow = scripted
    root = tmp_path_factory.mktemp("cluster")
    url = f"{redis_server.url}?prefix=cluster&global_limits=openai/*=24"
    worker_env = child_env(write_config(root / "worker.toml", fast.openai_base_url, slow.openai_base_url), root / "xdg")
    # the server only serves: route limits of 0 keep its own manager from running these routes
    server_cfg = write_config(
        root / "server.toml", fast.openai_base_url, slow.openai_base_url, 'route_limits = {"openai/*" = 0, "slow/*" = 0}'
    )
    port = free_port()

    async def start() -> Cluster:
        workers = await asyncio.gather(
            start_worker("worker1", url, worker_env, root, "--concurrency", "20"),
            start_worker("worker2", url, worker_env, root, "--concurrency", "20", "--routes", "openai/*,slow/*"),
        )
        server = spawn("server", ["serve", "--port", str(port), "--tasks", url], child_env(server_cfg, root / "xdg"), root)
        base = f"http://127.0.0.1:{port}"

        async def healthy() -> bool:
            if server.popen.poll() is not None:
                pytest.fail(f"server exited:\n{server.text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as s, s.get(base + "/health") as resp:
                    return resp.status == 200
            return False

        await wait_until(healthy, 30, "the server to answer /health", every=0.2)
        return Cluster(url, base, list(workers), server, slow.port, worker_env, root)

    made: Cluster | None = None
    try:
        made = asyncio.run(start())
        yield made
    finally:
        for proc in ([*made.workers, made.server, *made.procs] if made else []):
            proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
        yield session


async def submit_http(http: aiohttp.ClientSession, c: Cluster, body: dict[str, Any]) -> str:
    async with http.post(c.server_url + "/v1/tasks", json=body) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def sse_events(http: aiohttp.ClientSession, c: Cluster, task_id: str) -> list[tuple[int, str]]:
    async with http.get(f"{c.server_url}/v1/tasks/{task_id}/events", params={"follow": "false"}) as resp:
        assert resp.status == 200
        raw = await resp.text()
    out = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            out.append((int(fields["id"]), json.loads(fields["data"])["kind"]))
    return out


async def test_200_tasks_spread_over_both_workers_within_the_global_limit(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    ids = await asyncio.gather(*(submit_http(http, cluster, {"model": "openai/x", "prompt": f"task {i}"}) for i in range(200)))
    async with TaskManager(cluster.url, execute=False) as client:
        records = [await client.wait(i, timeout=60) for i in ids]
        assert {r.status for r in records} == {TaskStatus.SUCCEEDED}
        assert {r.result["text"] for r in records if r.result} == {"ok"}
        by_worker = {w.worker_id: sum(r.worker == w.worker_id for r in records) for w in cluster.workers}
        assert all(n > 0 for n in by_worker.values()), by_worker
        assert sum(by_worker.values()) == 200  # the server only served
        assert max_overlap(records) <= 24  # global_limits=openai/*=24 across both processes
        for task_id in ids:
            assert final_events(await client.store.read_events(task_id)) == ["finished"]
    for task_id in ids[:10]:  # progress events reach whoever polls the server, from Redis
        got = await sse_events(http, cluster, task_id)
        async with TaskManager(cluster.url, execute=False) as client:
            stored = [(e.seq, e.kind) for e in await client.store.read_events(task_id)]
        # (a worker stalled past its heartbeat on a loaded machine may add requeued + started)
        assert got == stored and got[0] == (1, "queued") and got[1][1] == "started" and got[-1][1] == "finished"


async def test_cancel_reaches_the_worker_running_the_task(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    task_id = await submit_http(http, cluster, {"model": "slow/x", "prompt": "take your time"})

    async def running() -> dict[str, Any] | None:
        async with http.get(f"{cluster.server_url}/v1/tasks/{task_id}") as resp:
            body: dict[str, Any] = await resp.json()
        return body if body["status"] == "running" else None

    body = await wait_until(running, 20, "the task to run")
    # a server without keys shows no one its workers' host names: a stable digest of one of them
    assert body["worker"] in {opaque_worker(w.worker_id) for w in cluster.workers}
    await wait_until(lambda: established_to(cluster.slow_port) > 0, 20, "the worker's HTTP call")
    async with http.post(f"{cluster.server_url}/v1/tasks/{task_id}/cancel", json={}) as resp:
        assert resp.status == 200

    async def cancelled() -> dict[str, Any] | None:
        async with http.get(f"{cluster.server_url}/v1/tasks/{task_id}") as resp:
            got: dict[str, Any] = await resp.json()
        return got if got["status"] == "cancelled" else None

    final = await wait_until(cancelled, 20, "the worker to cancel the task")
    assert final["worker"] == body["worker"] and final["error"]["type"] == "TaskCancelled"
    await wait_until(lambda: established_to(cluster.slow_port) == 0, 20, "the HTTP call to be closed")
    kinds = [k for _, k in await sse_events(http, cluster, task_id)]
    assert kinds[-2:] == ["cancel_requested", "cancelled"] and kinds.count("cancelled") == 1


async def test_openai_sdk_background_responses_through_redis(cluster: Cluster) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=cluster.server_url + "/v1", api_key="unused", max_retries=0)
    try:
        resp = await client.responses.create(model="openai/x", input="hello from the sdk", background=True)
        assert resp.status in ("queued", "in_progress")

        async def completed() -> Any:
            got = await client.responses.retrieve(resp.id)
            return got if got.status == "completed" else None

        done = await wait_until(completed, 30, "the background response")
        assert done.output_text == "ok"
    finally:
        await client.close()
    async with TaskManager(cluster.url, execute=False) as manager:
        rec = await manager.status(resp.id.removeprefix("resp_"))
        assert rec.worker in {w.worker_id for w in cluster.workers}


async def test_cli_ask_background_and_tasks_commands_on_redis(cluster: Cluster) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([LLM_CALL, *args], env=cluster.env, capture_output=True, text=True, timeout=60)

    asked = cli("ask", "--background", "--tasks", cluster.url, "-m", "openai/x", "from the shell")
    assert asked.returncode == 0, asked.stderr
    task_id = asked.stdout.strip()
    waited = cli("tasks", "wait", task_id, "--tasks", cluster.url)
    assert waited.returncode == 0, waited.stderr
    listed = cli("tasks", "list", "--json", "--tasks", cluster.url)
    assert task_id in {t["id"] for t in json.loads(listed.stdout)}


async def test_kill_9_of_a_worker_mid_run_every_task_ends_exactly_once(
    redis_server: RedisServer, scripted: tuple[ScriptedLLMServer, ScriptedLLMServer], tmp_path: Path
) -> None:
    fast, slow = scripted
    url = f"{redis_server.url}?prefix=kill"
    env = child_env(write_config(tmp_path / "w.toml", fast.openai_base_url, slow.openai_base_url, heartbeat=0.5), tmp_path / "xdg")
    # the victim says it is on another host: no PID check can see it die, SAQ's heartbeat sweep must
    victim, survivor = await asyncio.gather(
        start_worker("victim", url + "&host=elsewhere", env, tmp_path, "--concurrency", "8"),
        start_worker("survivor", url, env, tmp_path, "--concurrency", "8"),
    )
    try:
        async with TaskManager(url, execute=False) as client:
            ids = [await client.submit({"model": "openai/x", "prompt": f"kill-test {i}"}) for i in range(40)]

            async def victim_busy() -> list[str]:
                running = await client.list_tasks(TaskStatus.RUNNING, limit=100)
                return [r.id for r in running if r.worker == victim.worker_id]

            lost = await wait_until(victim_busy, 30, "the victim to run tasks")
            victim.kill9()
            victim.popen.wait(timeout=10)
            records = [await client.wait(i, timeout=60) for i in ids]
            assert {r.status for r in records} == {TaskStatus.SUCCEEDED}
            for rec in records:
                events = await client.store.read_events(rec.id)
                assert final_events(events) == ["finished"], [e.kind for e in events]
                if rec.id in lost:
                    assert rec.worker == survivor.worker_id and rec.attempts >= 2
                    requeued = [e.data for e in events if e.kind == "requeued"]
                    assert requeued and requeued[0]["by"] == "swept", requeued
    finally:
        victim.stop()
        survivor.stop()


async def test_empty_lanes_are_dropped_so_model_names_cannot_grow_redis(store: RedisTaskStore) -> None:
    """A lane is a queue per (priority, owner, route), and a route is whatever model a request
    names: one request per made-up model used to leave a lane in Redis for ever, and every claim
    of every worker read them all. A lane is dropped once its tasks are done (and comes back with
    the next task)."""
    routes = [f"made-up/model-{i}" for i in range(40)]
    for route in routes:
        await store.submit(task(route))
    await store.heartbeat(WorkerInfo(id="w1", kind="worker", claims="all"))
    claimed = await store.claim("w1", limit=100)
    assert len(claimed) == len(routes)
    for rec in claimed:
        assert await store.finish(rec.id, "w1", Outcome(TaskStatus.FAILED, error={"type": "ModelNotFound"}))
    assert await store.claim("w1", limit=100) == []
    assert await store._r.hlen(f"{store.prefix}:lanes") == 0
    again, _ = await store.submit(task(routes[0]))
    assert [r.id for r in await store.claim("w1", limit=10)] == [again.id]
