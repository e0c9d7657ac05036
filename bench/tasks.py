"""Task manager benchmark: N calls at once through the TaskManager with SQLite persistence,
against baselines in the same run (raw aiohttp ``gather``, one thread per request).

The scripted LLM server runs in its own process (``python -m llm_call.testing``) and answers
every chat completion after ``--latency`` seconds. Each scenario runs in a fresh child process so
that its peak RSS is its own. Prints a Markdown table (docs/benchmarks.md keeps a copy).

    .venv/bin/python bench/tasks.py                 # 10,000 calls, 1 s replies
    .venv/bin/python bench/tasks.py -n 2000 --only manager

Columns: wall = first submit/request to last answer; RSS/task = (peak RSS - RSS before the
run) / N, persistence included for the manager; submit/s = durable submits per second (the
manager's ``submit`` returns after the task is committed to SQLite, ``synchronous=FULL``);
status p50/p99 = ``TaskManager.status(id)`` latency sampled while the tasks run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _scripted import start_scripted_server

BODY = {"model": "x", "messages": [{"role": "user", "content": "hello"}]}


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- scenarios (each in its own process) ---------------------------------------------------------


async def scenario_raw(url: str, n: int) -> dict[str, Any]:
    import aiohttp

    base = rss_kb()
    cpu0 = cpu_s()
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as session:

        async def one() -> bool:
            async with session.post(f"{url}/v1/chat/completions", json=BODY) as resp:
                data = await resp.json()
                return bool(resp.status == 200 and data["choices"][0]["message"]["content"])

        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    wall = time.perf_counter() - started
    ok = sum(r is True for r in results)
    return {"ok": ok, "wall": wall, "base_kb": base, "peak_kb": peak_kb(), "cpu_s": cpu_s() - cpu0}


def scenario_threads(url: str, n: int) -> dict[str, Any]:
    import http.client
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlparse

    parsed = urlparse(url)
    payload = json.dumps(BODY)

    def one(_: int) -> bool:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        try:
            conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            return bool(resp.status == 200 and data["choices"][0]["message"]["content"])
        finally:
            conn.close()

    base = rss_kb()
    cpu0 = cpu_s()
    workers = n
    started = time.perf_counter()
    ok = 0
    while True:
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                ok = sum(1 for r in pool.map(_guard(one), range(n)) if r)
            break
        except RuntimeError as exc:  # "can't start new thread": use as many as the machine allows
            if workers <= 100:
                raise
            workers //= 2
            print(f"threads: {exc}; retrying with {workers}", file=sys.stderr)
            started = time.perf_counter()
    wall = time.perf_counter() - started
    return {"ok": ok, "wall": wall, "base_kb": base, "peak_kb": peak_kb(), "workers": workers, "cpu_s": cpu_s() - cpu0}


def _guard(fn: Any) -> Any:
    def call(i: int) -> bool:
        try:
            return bool(fn(i))
        except OSError:
            return False

    return call


async def scenario_manager(url: str, n: int, db: str) -> dict[str, Any]:
    from llm_call.config import Settings, set_settings
    from llm_call.tasks import TaskManager

    os.environ["OPENAI_BASE_URL"] = f"{url}/v1"
    os.environ["OPENAI_API_KEY"] = "bench"
    settings = Settings.model_validate(
        {
            # as the raw baseline: n connections, no connect limit shorter than the run
            "openai": {"max_connections": n, "connect_timeout": 120},
            "tasks": {"global_limit": n},
            "retry": {"max_retries": 0},
        }
    )
    set_settings(settings)
    async with TaskManager(db, settings=settings, claims="own") as mgr:
        # warm up imports and the HTTP session outside the measurement
        warm = await mgr.submit({"model": "openai/x", "prompt": "warm up"})
        await mgr.wait(warm)
        base = rss_kb()
        cpu0 = cpu_s()
        samples: list[float] = []
        started = time.perf_counter()
        ids = await asyncio.gather(*(mgr.submit({"model": "openai/x", "prompt": f"hello {i}"}) for i in range(n)))
        submitted = time.perf_counter() - started

        async def sample_status() -> None:
            rng = random.Random(7)
            while True:
                task_id = ids[rng.randrange(n)]
                t0 = time.perf_counter()
                await mgr.status(task_id)
                samples.append(time.perf_counter() - t0)
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample_status())
        records = await asyncio.gather(*(mgr.wait(t) for t in ids))
        wall = time.perf_counter() - started
        sampler.cancel()
        peak = peak_kb()
        cpu = cpu_s() - cpu0
        ok = sum(r.status.value == "succeeded" for r in records)
        errors: dict[str, int] = {}
        for r in records:
            if r.error:
                key = f"{r.error.get('type')}: {str(r.error.get('message'))[:80]}"
                errors[key] = errors.get(key, 0) + 1
        counts = await mgr.store.counts()
    samples.sort()
    return {
        "ok": ok,
        "wall": wall,
        "base_kb": base,
        "peak_kb": peak,
        "submit_s": submitted,
        "cpu_s": cpu,
        "status_p50_ms": 1000 * statistics.median(samples) if samples else None,
        "status_p99_ms": 1000 * samples[int(len(samples) * 0.99) - 1] if samples else None,
        "status_samples": len(samples),
        "counts": counts,
        "errors": errors,
    }


async def scenario_submit(n: int, db: str) -> dict[str, Any]:
    """Durable submits alone: a client-only manager (nothing runs), N at once, then one by one."""
    from llm_call.config import Settings
    from llm_call.tasks import TaskManager

    settings = Settings.model_validate({})
    async with TaskManager(db, settings=settings, execute=False) as mgr:
        await mgr.submit({"model": "openai/x", "prompt": "warm up"})
        base = rss_kb()
        cpu0 = cpu_s()
        started = time.perf_counter()
        await asyncio.gather(*(mgr.submit({"model": "openai/x", "prompt": f"hello {i}"}) for i in range(n)))
        submitted = time.perf_counter() - started
        cpu = cpu_s() - cpu0
        one_by_one = []
        for i in range(200):
            t0 = time.perf_counter()
            await mgr.submit({"model": "openai/x", "prompt": f"single {i}"})
            one_by_one.append(time.perf_counter() - t0)
    return {
        "ok": n,
        "wall": submitted,
        "submit_s": submitted,
        "cpu_s": cpu,
        "base_kb": base,
        "peak_kb": peak_kb(),
        "single_p50_ms": 1000 * statistics.median(one_by_one),
    }


def child(args: argparse.Namespace) -> None:
    if args.gc == "tuned":  # what `llm-call worker` does at start (see cli/_tasks.py)
        import gc

        gc.freeze()
        gc.set_threshold(50_000, 20, 10)
    if args.scenario == "raw":
        out = asyncio.run(scenario_raw(args.url, args.n))
    elif args.scenario == "threads":
        out = scenario_threads(args.url, args.n)
    elif args.scenario == "submit":
        out = asyncio.run(scenario_submit(args.n, args.db))
    else:
        out = asyncio.run(scenario_manager(args.url, args.n, args.db))
        out["db_mb"] = os.path.getsize(args.db) / 1e6
    print("RESULT " + json.dumps(out), flush=True)


# -- driver ------------------------------------------------------------------------------------------


def start_server(latency: float, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    return start_scripted_server(workdir, latency=latency)


def run_child(scenario: str, url: str, n: int, db: str, gc_mode: str) -> dict[str, Any]:
    if os.path.exists(db):
        os.remove(db)
    cmd = [sys.executable, __file__, "--child", scenario, "--url", url, "-n", str(n), "--db", db, "--gc", gc_mode]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT ") :]))
    raise SystemExit(f"{scenario} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def median_run(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every numeric metric's median over the runs (other fields from the median-wall run)."""
    out = dict(sorted(rs, key=lambda r: r["wall"])[len(rs) // 2])
    for key, value in out.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values = [r[key] for r in rs if isinstance(r.get(key), int | float)]
            out[key] = statistics.median(values)
    out["walls"] = [r["wall"] for r in rs]
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="calls per scenario")
    parser.add_argument("--latency", type=float, default=1.0, help="scripted reply latency (s)")
    parser.add_argument("--only", choices=["raw", "threads", "manager", "submit"], action="append")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario, interleaved; medians reported")
    parser.add_argument("--gc", choices=["default", "tuned"], default="default", help="tuned: gc.freeze() and gc.set_threshold(50000, 20, 10) in every scenario")
    parser.add_argument("--child", choices=["raw", "threads", "manager", "submit"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.scenario = args.child
        child(args)
        return
    scenarios = args.only or ["raw", "threads", "manager", "submit"]
    with tempfile.TemporaryDirectory(prefix="llm_call-bench-") as tmp:
        server, url = start_server(args.latency, Path(tmp))
        try:
            runs: dict[str, list[dict[str, Any]]] = {sc: [] for sc in scenarios}
            for i in range(args.repeat):
                for sc in scenarios:
                    print(f"run {i + 1}/{args.repeat}: {sc} ...", file=sys.stderr, flush=True)
                    runs[sc].append(run_child(sc, url, args.n, str(Path(tmp) / f"{sc}.db"), args.gc))
            results = {sc: median_run(rs) for sc, rs in runs.items()}
        finally:
            server.terminate()
            server.wait(timeout=30)
    names = {
        "raw": "raw aiohttp gather",
        "threads": "thread per request",
        "manager": "TaskManager + SQLite",
        "submit": "durable submits only (no execution)",
    }
    load = os.getloadavg()[0]
    print(
        f"\n{args.n:,} calls, scripted server replying after {args.latency:g} s (separate process), "
        f"{os.cpu_count()} CPUs, load average {load:.1f}, GC {args.gc}, median of {args.repeat} run(s)\n"
    )
    print("| scenario | ok | wall (s) | vs raw | CPU (s) | peak RSS (MB) | RSS/task (KB) | submit/s | status p50 / p99 (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    raw_wall = results.get("raw", {}).get("wall")
    for sc, r in results.items():
        per_task = (r["peak_kb"] - r["base_kb"]) / args.n
        label = names[sc] + (f" ({r['workers']:,} threads)" if "workers" in r else "")
        submit = args.n / r["submit_s"] if r.get("submit_s") else None
        ratio = r["wall"] / raw_wall if raw_wall and sc != "submit" else None
        status = (
            f"{fmt(r.get('status_p50_ms'), '.3f')} / {fmt(r.get('status_p99_ms'), '.3f')}" if "status_p50_ms" in r else "-"
        )
        print(
            f"| {label} | {r['ok']:,} | {r['wall']:.2f} | {fmt(ratio, '.2f')}{'x' if ratio else ''} | {r['cpu_s']:.1f} | {r['peak_kb'] / 1024:.0f} | "
            f"{per_task:.1f} | {fmt(submit, ',.0f')} | {status} |"
        )
    if args.repeat > 1:
        for sc, r in results.items():
            print(f"{sc}: wall of each run {', '.join(f'{w:.2f}' for w in r['walls'])} s")
    if "submit" in results:
        print(f"\none submit at a time (commit + fsync each): p50 {results['submit']['single_p50_ms']:.2f} ms")
    if "manager" in results:
        m = results["manager"]
        print(f"\nmanager: task states {m['counts']}, database {m['db_mb']:.1f} MB, {m['status_samples']} status reads sampled")
        for err, count in sorted(m["errors"].items(), key=lambda kv: -kv[1])[:5]:
            print(f"manager error x{count}: {err}")


if __name__ == "__main__":
    main()
