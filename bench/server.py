"""Server overhead: ``llm-call serve`` against the upstream directly and the LiteLLM proxy.

Three processes on 127.0.0.1, all in front of one upstream (the scripted LLM server,
``python -m llm_call.testing``, immediate replies, OpenAI wire format):

(a) the upstream directly, (b) ``llm-call serve`` (endpoint ``up``), (c) the LiteLLM proxy
(``litellm --config cfg.yaml`` from ``litellm[proxy]``, one worker, a master key, no database).

Each answers the same non-streamed chat completion (``POST /v1/chat/completions``); (b) and (c)
also the same question as an Anthropic Messages request (``POST /v1/messages``, key in
``x-api-key`` for llm-call as Claude Code sends it), which both translate to a chat completion
of the upstream: so the upstream's chat completion is the baseline of both APIs.

The load generator is this process (aiohttp, uvloop when installed). Per round and target:
latency with one request at a time (``--latency-calls`` after a warm-up: p50/p99), then
throughput with ``--concurrency`` requests in flight for ``--seconds``. Targets are interleaved
over ``--rounds`` rounds and the table gives the median over rounds. "Added" latency is the
target's percentile minus the upstream's in the same round. Both servers keep their default
per-request logging (to a file).

Waiting requests (issue 12): at the end, ``--waiting`` requests (default 2,000) are sent at
once to a second upstream that answers after 15 s, through ``llm-call serve`` (endpoint ``slow``,
as many connections as requests). Once all are in flight, the growth of the resident memory (RSS)
of ``llm-call serve`` over its idle RSS, divided by the number of requests, is the memory a
waiting request costs; the slow upstream (an aiohttp server holding the same requests) is the
peer in the same run. Every request must then succeed (no 429 at the default limits).

Run::

    .venv/bin/python bench/server.py                       # 3 rounds, about 2 minutes
    .venv/bin/python bench/server.py --rounds 1 --no-litellm --waiting 0

Goals (issue 6): added latency p50 <= 1 ms over the upstream; throughput >= 5x the LiteLLM
proxy's. Issue 15: the same added p50 <= 1 ms for ``/v1/messages``. Issue 12: 2,000 waiting
requests on the default limits with no error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from _scripted import start_scripted_server

PY = sys.executable
BIN = Path(PY).parent
MESSAGES = [{"role": "user", "content": "Say something short."}]
ANSWER = "Something short."
MASTER_KEY = "sk-bench-" + "0123456789abcdef" * 2
SERVER_KEY = "bench-server-key"
MESSAGES_OURS = "llm-call serve /v1/messages"
MESSAGES_LITELLM = "LiteLLM proxy /v1/messages"


@dataclass
class Target:
    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    pid: int | None = None  # the serving process (its children count too)
    body: bytes = b""  # the request body (default: the chat completion)


@dataclass
class Sample:
    p50: float
    p99: float
    rps: float
    errors: int
    cpu_us: float  # the target's CPU time per request in the latency phase (robust to a busy machine)


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(name))
    return tree


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Linux /proc)."""
    if pid is None or not Path("/proc").is_dir():
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    tree = _children()
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / tick
        stack.extend(tree.get(p, []))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> str | None:
    """None when ``url`` answers 2xx before ``timeout``; else why not."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.exists() else []
            return f"exited with status {proc.returncode}: " + " | ".join(tail)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if 200 <= r.status < 300:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return f"not ready after {timeout:.0f} s"


def start_upstream(work: Path, procs: list[subprocess.Popen[bytes]]) -> tuple[str, int]:
    proc, url = start_scripted_server(work, text=ANSWER)
    procs.append(proc)  # type: ignore[arg-type]  # text mode; only terminated
    return url, proc.pid


def start_llm_call(
    work: Path, upstream: str, procs: list[subprocess.Popen[bytes]], slow: str | None = None, waiting: int = 0
) -> Target:
    port = free_port()
    cfg = work / "llm_call.toml"
    slow_cfg = f'[endpoints.slow]\nbase_url = "{slow}/v1"\nmax_connections = {max(waiting, 1)}\n\n' if slow else ""
    cfg.write_text(f'[endpoints.up]\nbase_url = "{upstream}/v1"\n\n{slow_cfg}[server]\napi_keys = ["{SERVER_KEY}"]\n')
    log = work / "llm_call.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_CALL_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "llm-call"), "serve", "--port", str(port), "--config", str(cfg), "--tasks", str(work / "tasks.db")],
            stdout=out,
            stderr=out,
            env=env,
        )
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    target = Target("llm-call serve", url + "/v1/chat/completions", "up/x", {"Authorization": f"Bearer {SERVER_KEY}"}, pid=proc.pid)
    target.error = wait_http(url + "/health", proc, 60, log)
    return target


def messages_target(chat: Target, name: str, model: str, headers: dict[str, str]) -> Target:
    """The same server's ``/v1/messages`` (Anthropic Messages API)."""
    url = chat.url.replace("/v1/chat/completions", "/v1/messages")
    body = json.dumps({"model": model, "max_tokens": 100, "messages": MESSAGES}).encode()
    return Target(name, url, model, {"anthropic-version": "2023-06-01", **headers}, chat.error, chat.pid, body)


def start_litellm(work: Path, upstream: str, procs: list[subprocess.Popen[bytes]]) -> Target:
    port = free_port()
    cfg = work / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: x\n"
        "    litellm_params:\n"
        "      model: openai/x\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: test\n"
        "litellm_settings:\n"
        "  use_chat_completions_url_for_anthropic_messages: true\n"  # else /v1/messages goes to /v1/responses
    )
    log = work / "litellm.log"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=MASTER_KEY)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            stdout=out,
            stderr=out,
            env=env,
            cwd=work,
        )
    procs.append(proc)
    url = f"http://127.0.0.1:{port}"
    target = Target("LiteLLM proxy", url + "/v1/chat/completions", "x", {"Authorization": f"Bearer {MASTER_KEY}"}, pid=proc.pid)
    target.error = wait_http(url + "/health/liveliness", proc, 180, log)
    return target


async def one(session: aiohttp.ClientSession, target: Target, body: bytes) -> bool:
    async with session.post(target.url, data=body, headers=target.headers) as r:
        data = await r.read()
        return r.status == 200 and ANSWER.encode() in data


async def measure(target: Target, latency_calls: int, concurrency: int, seconds: float) -> Sample:
    body = target.body or json.dumps({"model": target.model, "messages": MESSAGES}).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    pid = target.pid
    target = Target(target.name, target.url, target.model, headers)
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(max(50, latency_calls // 10)):  # warm-up: connections, caches, JIT-free paths
            await one(session, target, body)
        lat: list[float] = []
        cpu0 = cpu_seconds(pid)
        for _ in range(latency_calls):
            t = time.perf_counter()
            ok = await one(session, target, body)
            lat.append(time.perf_counter() - t)
            errors += not ok
        cpu_us = (cpu_seconds(pid) - cpu0) / latency_calls * 1e6
        lat.sort()
        done = 0
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop_at:
                if await one(session, target, body):
                    done += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Sample(lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], done / elapsed, errors, cpu_us)


def run(args: argparse.Namespace) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    work = Path(tempfile.mkdtemp(prefix="llm_call-bench-server-"))
    try:
        upstream, upstream_pid = start_upstream(work, procs)
        slow: tuple[str, int] | None = None
        if args.waiting:
            (work / "slow").mkdir()
            slow_proc, slow_url = start_scripted_server(work / "slow", text=ANSWER, latency=WAIT_LATENCY_S)
            procs.append(slow_proc)  # type: ignore[arg-type]  # text mode; only terminated
            slow = (slow_url, slow_proc.pid)
        targets = [Target("upstream (direct)", upstream + "/v1/chat/completions", "x", pid=upstream_pid)]
        ours = start_llm_call(work, upstream, procs, slow[0] if slow else None, args.waiting)
        targets.append(ours)
        if not args.no_messages:
            targets.append(messages_target(ours, MESSAGES_OURS, "up/x", {"x-api-key": SERVER_KEY}))
        if not args.no_litellm:
            theirs = start_litellm(work, upstream, procs)
            targets.append(theirs)
            if not args.no_messages:
                targets.append(messages_target(theirs, MESSAGES_LITELLM, "x", theirs.headers))
        for t in targets:
            if t.error:
                print(f"{t.name}: did not start: {t.error}", file=sys.stderr)
        live = [t for t in targets if not t.error]
        samples: dict[str, list[Sample]] = {t.name: [] for t in live}
        added: dict[str, list[tuple[float, float]]] = {t.name: [] for t in live}
        for r in range(args.rounds):
            base: Sample | None = None
            for t in live:
                time.sleep(args.settle)  # the previous target's throughput phase may leave work behind
                s = asyncio.run(measure(t, args.latency_calls, args.concurrency, args.seconds))
                samples[t.name].append(s)
                if base is None:
                    base = s
                added[t.name].append((s.p50 - base.p50, s.p99 - base.p99))
                print(f"round {r + 1}: {t.name:28s} {s.rps:8.0f} req/s  p50 {s.p50 * 1e3:6.2f} ms  "
                      f"p99 {s.p99 * 1e3:6.2f} ms  cpu {s.cpu_us:6.0f} us/req  errors {s.errors}", file=sys.stderr)
        report(targets, samples, added, args)
        if slow is not None and not ours.error:
            held = asyncio.run(hold_waiting(ours, args.waiting, slow[1]))
            report_waiting(held, args.waiting)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if args.keep:
            print(f"logs and configs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


WAIT_LATENCY_S = 15.0


def rss_kib(pid: int | None) -> int:
    """Resident memory of ``pid`` and its descendants in KiB (Linux /proc)."""
    if pid is None:
        return 0
    total, stack, tree = 0, [pid], _children()
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        stack.extend(tree.get(p, []))
    return total


@dataclass
class Waiting:
    ours_kib: int  # RSS growth of llm-call serve with every request in flight
    peer_kib: int  # the same for the slow upstream
    in_flight: int
    ok: int
    statuses: dict[int, int]
    seconds: float


async def hold_waiting(target: Target, n: int, peer_pid: int) -> Waiting:
    """Send ``n`` requests at once to the slow endpoint; measure RSS once all are in flight."""
    body = json.dumps({"model": "slow/x", "messages": MESSAGES}).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    base = target.url.removesuffix("/v1/chat/completions")
    ours0, peer0 = rss_kib(target.pid), rss_kib(peer_pid)
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=WAIT_LATENCY_S * 8)) as session:

        async def call() -> bool:
            try:
                async with session.post(target.url, data=body, headers=headers) as r:
                    data = await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                    return r.status == 200 and ANSWER.encode() in data
            except (aiohttp.ClientError, TimeoutError):
                statuses[0] = statuses.get(0, 0) + 1
                return False

        started = time.perf_counter()
        calls = [asyncio.ensure_future(call()) for _ in range(n)]
        in_flight = 0
        while time.perf_counter() - started < WAIT_LATENCY_S * 0.8:
            await asyncio.sleep(0.25)
            async with session.get(base + "/metrics", headers=target.headers) as r:
                for line in (await r.text()).splitlines():
                    if line.startswith("llm_call_http_requests_in_flight "):
                        in_flight = int(float(line.split()[1])) - 1  # less this scrape
            if in_flight >= n:
                break
        await asyncio.sleep(0.5)  # the upstream side settles
        ours1, peer1 = rss_kib(target.pid), rss_kib(peer_pid)
        ok = sum(await asyncio.gather(*calls))
    return Waiting(ours1 - ours0, peer1 - peer0, in_flight, ok, statuses, time.perf_counter() - started)


def report_waiting(w: Waiting, n: int) -> None:
    print(f"\n{n} requests waiting at once on a {WAIT_LATENCY_S:g} s upstream ({w.in_flight} seen in flight by the server; "
          f"all done in {w.seconds:.1f} s):\n")
    print("| process | RSS growth, all waiting | KiB per waiting request |")
    print("| --- | ---: | ---: |")
    print(f"| llm-call serve | {w.ours_kib / 1024:.1f} MiB | {w.ours_kib / n:.1f} |")
    print(f"| scripted upstream (aiohttp server, peer) | {w.peer_kib / 1024:.1f} MiB | {w.peer_kib / n:.1f} |")
    verdict = "met" if w.ok == n else "NOT met"
    print(f"\nsucceeded: {w.ok} of {n}; statuses {dict(sorted(w.statuses.items()))} (goal: all, no 429: {verdict})")


def report(
    targets: list[Target],
    samples: dict[str, list[Sample]],
    added: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
) -> None:
    med = statistics.median
    print(f"\nPython {platform.python_version()}, {os.cpu_count()} CPUs (shared), all processes on 127.0.0.1; "
          f"median of {args.rounds} interleaved rounds; latency: {args.latency_calls} sequential calls; "
          f"throughput: {args.concurrency} in flight for {args.seconds:g} s.\n")
    print(f"| target | req/s (c={args.concurrency}) | p50 ms (c=1) | p99 ms (c=1) | added p50 ms | added p99 ms | "
          "CPU µs/req of the target | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rps: dict[str, float] = {}
    for t in targets:
        if t.error:
            print(f"| {t.name} | did not start: {t.error[:200]} | | | | | | |")
            continue
        ss = samples[t.name]
        rps[t.name] = med(s.rps for s in ss)
        a50 = med(a[0] for a in added[t.name]) * 1e3
        a99 = med(a[1] for a in added[t.name]) * 1e3
        print(f"| {t.name} | {rps[t.name]:.0f} | {med(s.p50 for s in ss) * 1e3:.2f} | {med(s.p99 for s in ss) * 1e3:.2f} | "
              f"{a50:+.2f} | {a99:+.2f} | {med(s.cpu_us for s in ss):.0f} | {sum(s.errors for s in ss)} |")
    ours = "llm-call serve"
    for name in (ours, MESSAGES_OURS):
        if name in added:
            a50 = med(a[0] for a in added[name]) * 1e3
            print(f"\nadded latency p50 of {name}: {a50:.2f} ms (goal <= 1 ms: {'met' if a50 <= 1.0 else 'NOT met'})")
    for mine, theirs in ((ours, "LiteLLM proxy"), (MESSAGES_OURS, MESSAGES_LITELLM)):
        if mine in rps and theirs in rps and rps[theirs] > 0:
            ratio = rps[mine] / rps[theirs]
            print(f"throughput {mine} / {theirs}: {ratio:.1f}x (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--no-messages", action="store_true", help="skip the /v1/messages targets")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of pause before each target")
    parser.add_argument("--waiting", type=int, default=2000, help="requests held waiting at once (0: skip)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
