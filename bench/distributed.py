"""Distributed backend throughput: 1, 2 and 4 ``llm-call worker`` processes on Redis (SAQ) versus
the embedded SQLite backend, in the same run.

Every contender runs the same flow: worker processes (``llm-call worker --concurrency C``) are
started and registered, then this process submits N tasks (``TaskManager(execute=False)``, the
client API; 1 s scripted replies from ``python -m llm_call.testing`` in its own process) and waits
until every task is final. Measured from the records in the store:

- ``submit/s``: how fast the client queued the N tasks (workers already running meanwhile);
- ``makespan``: first ``created_at`` to last ``finished_at``; ``tasks/s`` = N / makespan;
- ``ideal``: what the slots allow (workers × C / latency) and ``eff`` = tasks/s ÷ ideal;
- ``exec overhead``: ``finished_at - started_at - latency`` per task (claim → LLM call → stored
  result: the queue, HTTP and store costs of one execution), p50 / p95;
- ``CPU ms/task``: CPU time of the worker processes (+ Redis) per task, from ``/proc``: the
  budget that decides where adding processes stops paying on a machine with 2 cores.

Usage: ``python bench/distributed.py [--tasks 5000] [--latency 1.0] [--concurrency 250]
[--workers 1,2,4] [--update-docs]``; with ``--update-docs`` the table replaces the "Distributed
backend" section of docs/benchmarks.md. Needs ``redis-server`` (``make system-deps``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from _scripted import start_scripted_server  # noqa: E402

from support.redis_server import RedisServer  # noqa: E402

SECTION = "## Distributed backend (bench/distributed.py)"
DOCS = ROOT / "docs" / "benchmarks.md"
LLM_CALL = str(Path(sys.executable).parent / "llm-call")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    backend: str
    workers: int
    concurrency: int
    tasks: int
    submit_s: float
    makespan_s: float
    exec_p50_ms: float
    exec_p95_ms: float
    cpu_ms: dict[str, float]
    spread: str
    latency: float

    @property
    def rate(self) -> float:
        return self.tasks / self.makespan_s

    @property
    def ideal(self) -> float:
        return max(self.workers, 1) * self.concurrency / self.latency

    @property
    def where(self) -> str:
        return f"{self.workers} worker process{'es' if self.workers != 1 else ''}" if self.workers else "in-process manager"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its reaped children) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


def start_scripted(latency: float, tmp: Path) -> tuple[subprocess.Popen[str], str]:
    proc, url = start_scripted_server(tmp, latency=latency)
    return proc, url + "/v1"


def start_workers(n: int, store: str, concurrency: int, env: dict[str, str], tmp: Path) -> list[tuple[subprocess.Popen[bytes], Path]]:
    procs = []
    for i in range(n):
        log = tmp / f"worker{i}.log"
        with open(log, "wb") as out:
            procs.append(
                (subprocess.Popen([LLM_CALL, "worker", "--tasks", store, "--concurrency", str(concurrency)],
                                  stdout=out, stderr=subprocess.STDOUT, env=env), log)
            )
    deadline = time.monotonic() + 60
    for proc, log in procs:
        while not re.search(r"worker \S+ running tasks from", log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
    return procs


def stop(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def submit_and_wait(store: str, n: int, timeout: float, *, run_here: bool, concurrency: int) -> tuple[float, list[Any]]:
    from llm_call.tasks import TaskManager

    manager = TaskManager(store, execute=run_here, concurrency=concurrency if run_here else None)
    async with manager as client:
        t0 = time.perf_counter()
        for start in range(0, n, 500):
            await asyncio.gather(
                *(client.submit({"model": "openai/bench", "prompt": f"task {i}"}) for i in range(start, min(n, start + 500)))
            )
        submit_s = time.perf_counter() - t0
        deadline = time.monotonic() + timeout
        while True:
            counts = await client.store.counts()
            if sum(counts.get(s, 0) for s in ("succeeded", "failed", "cancelled", "interrupted")) >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tasks not done after {timeout}s: {counts}")
            await asyncio.sleep(0.25)
        records = await client.list_tasks(limit=n)
    return submit_s, records


def run_one(
    backend: str, workers: int, args: argparse.Namespace, scripted: subprocess.Popen[bytes], base_url: str,
    redis: RedisServer | None, tmp: Path,
) -> Row:
    """One row. ``workers == 0``: the tasks run in this process (an in-process manager)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{backend[:6]}{workers}-", dir=tmp))
    store = f"{redis.url}?prefix=bench{workers}" if redis is not None else str(run_dir / "tasks.db")
    config = run_dir / "llm_call.toml"
    config.write_text(f'[openai]\nbase_url = "{base_url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_"))}
    env.update(LLM_CALL_CONFIG=str(config), OPENAI_API_KEY="bench", XDG_DATA_HOME=str(run_dir / "xdg"))
    os.environ.update(LLM_CALL_CONFIG=str(config), OPENAI_API_KEY="bench")
    from llm_call.config import set_settings

    set_settings(None)
    procs = start_workers(workers, store, args.concurrency, env, run_dir)
    pids = {"workers": [p.pid for p, _ in procs], "LLM server": [scripted.pid], "client": [os.getpid()]}
    if redis is not None and redis.proc:
        pids["redis"] = [redis.proc.pid]
    cpu0 = {k: [cpu_seconds(pid) for pid in v] for k, v in pids.items()}
    try:
        submit_s, records = asyncio.run(
            submit_and_wait(store, args.tasks, timeout=args.tasks * args.latency + 120, run_here=workers == 0, concurrency=args.concurrency)
        )
        cpu = {k: sum(cpu_seconds(pid) - c for pid, c in zip(v, cpu0[k], strict=True)) for k, v in pids.items()}
    finally:
        stop(procs)
    bad = [r for r in records if r.status.value != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} task(s) did not succeed, e.g. {bad[0].status} {bad[0].error}")
    makespan = max(r.finished_at for r in records) - min(r.created_at for r in records)
    overhead = sorted((r.finished_at - r.started_at - args.latency) * 1000 for r in records)
    per_worker: dict[str, int] = {}
    for r in records:
        per_worker[r.worker] = per_worker.get(r.worker, 0) + 1
    return Row(
        backend, workers, args.concurrency, len(records), submit_s, makespan,
        statistics.median(overhead), overhead[int(len(overhead) * 0.95)], {k: v * 1000 / len(records) for k, v in cpu.items()},
        "/".join(str(n) for n in sorted(per_worker.values(), reverse=True)), args.latency,
    )


async def follow_latency(store: str, n: int) -> list[float]:
    """Submit ``n`` tasks and follow each one's events from this process (a client that does not
    run them): the delay from a ``finished`` event's timestamp (the worker's clock, same host)
    to its arrival here, in ms."""
    from llm_call.tasks import TaskManager

    async with TaskManager(store, execute=False) as client:
        ids = await asyncio.gather(*(client.submit({"model": "openai/bench", "prompt": f"ev {i}"}) for i in range(n)))

        async def one(task_id: str) -> float:
            async for ev in client.events(task_id):
                if ev.kind == "finished":
                    return (time.time() - ev.at) * 1000
            raise RuntimeError(f"task {task_id} did not finish")

        return sorted(await asyncio.wait_for(asyncio.gather(*(one(t) for t in ids)), 120))


def event_latency(backend: str, n: int, base_url: str, redis: RedisServer | None, tmp: Path) -> str:
    run_dir = Path(tempfile.mkdtemp(prefix=f"ev-{backend[:6]}-", dir=tmp))
    store = f"{redis.url}?prefix=ev" if redis is not None else str(run_dir / "tasks.db")
    config = run_dir / "llm_call.toml"
    config.write_text(f'[openai]\nbase_url = "{base_url}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_"))}
    env.update(LLM_CALL_CONFIG=str(config), OPENAI_API_KEY="bench", XDG_DATA_HOME=str(run_dir / "xdg"))
    os.environ.update(LLM_CALL_CONFIG=str(config), OPENAI_API_KEY="bench")
    procs = start_workers(1, store, n, env, run_dir)
    try:
        got = asyncio.run(follow_latency(store, n))
    finally:
        stop(procs)
    p99 = got[min(len(got) - 1, int(len(got) * 0.99))]
    return f"| {backend} | {len(got)} | {statistics.median(got):.1f} | {p99:.1f} |"


def table(rows: list[Row]) -> str:
    head = (
        "| backend | runs in | slots | submit/s | makespan s | tasks/s | eff | exec overhead p50 / p95 ms | "
        "CPU ms/task: workers + Redis + client + LLM server = total | tasks per worker |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    )

    def cpu(r: Row) -> str:
        parts = [r.cpu_ms.get(k, 0.0) for k in ("workers", "redis", "client", "LLM server")]
        return " + ".join(f"{p:.2f}" for p in parts) + f" = **{sum(parts):.2f}**"

    lines = [
        f"| {r.backend} | {r.where} | {r.ideal * r.latency:.0f} | {r.tasks / r.submit_s:.0f} | {r.makespan_s:.1f} | {r.rate:.0f} | "
        f"{r.rate / r.ideal:.0%} | {r.exec_p50_ms:.0f} / {r.exec_p95_ms:.0f} | {cpu(r)} | {r.spread} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=250, help="per worker process")
    parser.add_argument("--workers", default="1,2,4", help="Redis worker process counts")
    parser.add_argument("--sqlite-workers", default="0,1", help="SQLite worker process counts (0: in this process)")
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--event-latency", type=int, default=0, metavar="N",
                        help="only measure event delivery to a following client over N tasks (Redis pushed vs SQLite polled)")
    args = parser.parse_args()
    if args.event_latency:
        with tempfile.TemporaryDirectory(prefix="llm_call-bench-") as tmp_name:
            tmp = Path(tmp_name)
            scripted, base_url = start_scripted(args.latency, tmp)
            try:
                lines = ["| backend | tasks followed | finished event delivery p50 ms | p99 ms |", "| --- | ---: | ---: | ---: |"]
                with RedisServer() as redis:
                    lines.append(event_latency("Redis (pub/sub, polling fallback)", args.event_latency, base_url, redis, tmp))
                lines.append(event_latency("SQLite (polled)", args.event_latency, base_url, None, tmp))
            finally:
                scripted.send_signal(signal.SIGTERM)
                scripted.wait(timeout=10)
        print("\n".join(lines))
        return
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="llm_call-bench-") as tmp_name:
        tmp = Path(tmp_name)
        scripted, base_url = start_scripted(args.latency, tmp)
        try:
            for n in [int(x) for x in args.sqlite_workers.split(",") if x]:
                rows.append(run_one("SQLite", n, args, scripted, base_url, None, tmp))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            with RedisServer() as redis:
                for n in [int(x) for x in args.workers.split(",") if x]:
                    rows.append(run_one("Redis (SAQ)", n, args, scripted, base_url, redis, tmp))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        finally:
            scripted.send_signal(signal.SIGTERM)
            scripted.wait(timeout=10)
    intro = (
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs (shared with the scripted server, Redis and "
        f"this process), {args.tasks} tasks per row, {args.latency:g} s scripted replies (separate process), "
        f"{args.concurrency} tasks at once per worker process (slots = processes × that); one run. "
        "eff = tasks/s ÷ (slots / latency). CPU from /proc: worker processes, redis-server, this process "
        "(submits, polls; the in-process row also runs the tasks here), the scripted LLM server. "
        f"Load average {os.getloadavg()[0]:.1f} at the end (other work shares the CPUs)."
    )
    body = f"{intro}\n\n{table(rows)}"
    print("\n" + body)
    if args.update_docs:
        update_docs(body)


def update_docs(body: str) -> None:
    """Replace (or append) this script's section of docs/benchmarks.md; the notes after the
    table (a ``<!-- notes -->`` block) are kept."""
    docs = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    notes = ""
    if SECTION in docs:
        start = docs.index(SECTION)
        nxt = docs.find("\n## ", start + len(SECTION))
        old = docs[start: nxt + 1 if nxt != -1 else len(docs)]
        if "<!-- notes -->" in old:
            notes = "\n" + old[old.index("<!-- notes -->"):].rstrip("\n") + "\n"
        docs = docs[:start] + f"{SECTION}\n\n{body}\n{notes}" + ("\n" + docs[nxt + 1:] if nxt != -1 else "")
    else:
        docs = docs.rstrip("\n") + f"\n\n{SECTION}\n\n{body}\n"
    DOCS.write_text(docs)


if __name__ == "__main__":
    main()
