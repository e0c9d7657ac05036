"""Benchmark of the ``max/*`` route: ``llm_call.acall("max/sonnet")`` (warm pool and one-shot)
versus ``claude_agent_sdk.query``.

All drive the real Claude Code CLI (bundled with claude-agent-sdk) against the scripted
Anthropic server on 127.0.0.1, in the same run, interleaved call by call so that machine load
hits all alike:

- ``llm_call.acall (pool)``: the whole public call on the warm CLI pool
  (``claude.pool_size`` = the concurrency): a warm process per call, ``/clear`` between calls;
- ``llm_call.acall (one-shot, cwd=)``: the whole public call with ``cwd=`` (a call with its own
  working directory never uses the pool): a fresh CLI per call, plus routing, retry layer,
  watchdogs, process-tree bookkeeping;
- ``sdk query (same flags)``: ``claude_agent_sdk.query`` with the CLI flags llm_call passes
  (no tools, strict MCP config, no setting sources, ``dontAsk``, partial messages), in a fixed
  directory: the difference to the row above is what llm_call adds per call;
- ``sdk query (defaults)``: ``query`` with only ``model`` set (the CLI loads its default tools).

20 sequential calls, then rounds of 20 concurrent calls (at most 4 at a time: llm_call's
default ``claude.max_concurrency``, a semaphore for the SDK), the clients taking turns. While the concurrent runs go on, a sampler
reads the RSS of every CLI process from ``/proc`` (Linux) to report peak memory per CLI process.
Last, ``--reuse-calls`` (100) sequential pooled calls with the same options, counting the CLI
processes the pool started for them (``pool_state()["started"]``; goal: at most 5 per 100).

Goals (issue 16): the pool's sequential median at most 0.2x the SDK's ``query`` (same flags).

Run: ``.venv/bin/python bench/claude_route.py [--calls 20] [--concurrency 4] [--reuse-calls 100]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

Call = Callable[[], Awaitable[str]]
POOL = "llm_call.acall (pool)"
ONE_SHOT = "llm_call.acall (one-shot, cwd=)"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            data = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Peak RSS of single CLI processes and of all of them together, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak_one = 0
        self.peak_total = 0
        self.peak_count = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        me = os.getpid()
        while True:
            rss = [_rss_kib(p) for p in _descendants(me)]
            rss = [r for r in rss if r]
            if rss:
                self.peak_one = max(self.peak_one, *rss)
                self.peak_total = max(self.peak_total, sum(rss))
                self.peak_count = max(self.peak_count, len(rss))
            await asyncio.sleep(0.02)

    def __enter__(self) -> MemorySampler:
        self._task = asyncio.get_running_loop().create_task(self._run())  # peaks accumulate
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


def _stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "mean": statistics.fmean(times) * 1000,
        "median": statistics.median(times) * 1000,
        "p95": p95 * 1000,
    }


async def _timed(call: Call, expected: str, cpu: list[float] | None = None) -> float:
    """Wall time of one call; with ``cpu``, also this process's CPU time (sequential runs only)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    text = await call()
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    if text != expected:
        raise RuntimeError(f"unexpected answer {text!r}")
    return elapsed


def _with_limit(call: Call, limit: asyncio.Semaphore) -> Call:
    async def run() -> str:
        async with limit:
            return await call()

    return run


async def main(calls: int, concurrency: int, rounds: int, reuse_calls: int) -> None:
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

    import llm_call
    from llm_call.testing import Reply, ScriptedLLMServer

    answer = "The quick brown fox jumps over the lazy dog."
    home = tempfile.mkdtemp(prefix="bench-claude-home-")
    fixed_cwd = tempfile.mkdtemp(prefix="bench-claude-cwd-")
    for name in list(os.environ):
        if name.startswith(("ANTHROPIC_", "CLAUDE", "LLM_CALL_")):
            del os.environ[name]
    async with ScriptedLLMServer([], default=Reply(text=answer)) as srv:
        os.environ.update(
            HOME=home,
            ANTHROPIC_BASE_URL=srv.anthropic_base_url,
            ANTHROPIC_API_KEY="bench",
            LLM_CALL_CLAUDE_USE_API_KEY="1",
            DISABLE_TELEMETRY="1",
            DISABLE_AUTOUPDATER="1",
            DISABLE_ERROR_REPORTING="1",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            LLM_CALL_CLAUDE_POOL_SIZE=str(concurrency),
        )
        from llm_call.providers.claude_cli import pool_state
        from llm_call.providers.router import close_providers

        same_flags = ClaudeAgentOptions(
            model="sonnet",
            tools=[],
            strict_mcp_config=True,
            setting_sources=[],
            permission_mode="dontAsk",
            include_partial_messages=True,
            cwd=fixed_cwd,
        )
        defaults = ClaudeAgentOptions(model="sonnet", cwd=fixed_cwd)

        async def via_pool() -> str:
            return (await llm_call.acall("max/sonnet", "Say the sentence.")).text

        async def via_one_shot() -> str:
            return (await llm_call.acall("max/sonnet", "Say the sentence.", cwd=fixed_cwd)).text

        def via_sdk(options: ClaudeAgentOptions) -> Call:
            async def run() -> str:
                text = ""
                async for message in query(prompt="Say the sentence.", options=options):
                    if isinstance(message, ResultMessage):
                        text = message.result or ""
                return text

            return run

        contenders: dict[str, Call] = {
            POOL: via_pool,
            ONE_SHOT: via_one_shot,
            "sdk query (same flags)": via_sdk(same_flags),
            "sdk query (defaults)": via_sdk(defaults),
        }
        for call in contenders.values():  # warm up: imports, first CLI start
            await _timed(call, answer)
        # the pool's warm processes for the concurrent runs (started once, as a server would)
        await asyncio.gather(*(_timed(via_pool, answer) for _ in range(concurrency)))

        seq: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(calls):
            for name, call in contenders.items():
                seq[name].append(await _timed(call, answer, cpu[name]))

        conc: dict[str, tuple[list[float], list[float], MemorySampler]] = {
            name: ([], [], MemorySampler()) for name in contenders
        }
        for _ in range(rounds):  # alternate, so that load changes hit every contender
            for name, call in contenders.items():
                if name in (POOL, ONE_SHOT):
                    limited = call  # llm_call queues itself (claude.max_concurrency, default 4)
                else:
                    limited = _with_limit(call, asyncio.Semaphore(concurrency))
                times, walls, sampler = conc[name]
                with sampler:
                    started = time.perf_counter()
                    times += await asyncio.gather(*(_timed(limited, answer) for _ in range(calls)))
                    walls.append(time.perf_counter() - started)

        await asyncio.sleep(0.5)  # the last pooled calls' /clear
        before = pool_state()
        for _ in range(reuse_calls):
            await _timed(via_pool, answer)
        after = pool_state()
        reuse = (reuse_calls, after["started"] - before["started"], after["replaced_by_reason"])
        await close_providers()

    _report(seq, cpu, conc, calls, concurrency, rounds)
    n, started, reasons = reuse
    print(
        f"\n{n} sequential pooled calls with the same options started {started} CLI process(es) "
        f"({started * 100 / n:.1f} per 100 calls; goal <= 5); replacements so far by reason: {reasons or 'none'}"
    )


def _report(
    seq: dict[str, list[float]],
    cpu: dict[str, list[float]],
    conc: dict[str, tuple[list[float], list[float], MemorySampler]],
    calls: int,
    concurrency: int,
    rounds: int,
) -> None:
    print(f"\n{calls} sequential calls (per call, ms; CPU = this Python process, the CLI excluded)\n")
    print("| client | wall mean | wall median | wall p95 | CPU median |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, times in seq.items():
        s = _stats(times)
        print(
            f"| {name} | {s['mean']:.0f} | {s['median']:.0f} | {s['p95']:.0f} | "
            f"{statistics.median(cpu[name]) * 1000:.1f} |"
        )
    base = "sdk query (same flags)"
    diffs = [a - b for a, b in zip(seq[ONE_SHOT], seq[base], strict=True)]
    cpu_diff = statistics.median(cpu[ONE_SHOT]) - statistics.median(cpu[base])
    print(
        f"\nllm_call one-shot over the SDK (same flags): wall, paired per call: mean "
        f"{statistics.fmean(diffs) * 1000:+.1f} ms, median {statistics.median(diffs) * 1000:+.1f} ms; "
        f"CPU median {cpu_diff * 1000:+.1f} ms"
    )
    pool_median = statistics.median(seq[POOL])
    for other in (base, "sdk query (defaults)"):
        ratio = pool_median / statistics.median(seq[other])
        print(f"pool median / {other} median: {ratio:.3f}x (goal <= 0.2x)")
    print(f"\n{calls} concurrent calls, at most {concurrency} at a time ({rounds} rounds, alternating)\n")
    print("| client | mean per call (ms) | median (ms) | p95 (ms) | wall per round (s) | calls/s | peak CLI processes | peak RSS per CLI process (MiB) | peak RSS all CLIs (MiB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (times, walls, mem) in conc.items():
        s = _stats(times)
        wall = statistics.fmean(walls)
        print(
            f"| {name} | {s['mean']:.0f} | {s['median']:.0f} | {s['p95']:.0f} | {wall:.2f} | {calls / wall:.1f} | "
            f"{mem.peak_count} | {mem.peak_one / 1024:.0f} | {mem.peak_total / 1024:.0f} |"
        )
    print(
        "\nPer-call times in the concurrent run include the wait for a free slot "
        f"(calls {concurrency + 1}..{calls} queue)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="concurrent batches per client")
    parser.add_argument("--reuse-calls", type=int, default=100, help="pooled calls for the processes-started count")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.concurrency, args.rounds, args.reuse_calls))
