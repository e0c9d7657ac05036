"""Client overhead of one LLM call: llm_call against raw aiohttp, the openai SDK and LiteLLM.

The scripted LLM server runs in a separate process (``python -m llm_call.testing``) on
127.0.0.1, so the client process's CPU time (``time.process_time``, all threads) is the cost
of the client alone. Each client makes N non-streamed and N streamed chat completions at a
fixed concurrency after a warm-up; the table gives CPU milliseconds per call and calls per
second. It also times ``python -c "import llm_call"`` and ``llm-call --help`` (median of 5) and
lists which heavy SDKs stay unimported.

Run::

    .venv/bin/python bench/overhead.py                 # 2,000 calls each, concurrency 100
    .venv/bin/python bench/overhead.py --calls 500 --only llm_call,aiohttp

Goals (issue 2): llm_call <= 0.5 ms CPU per non-streamed call and <= 0.6 ms per streamed call;
``import llm_call`` <= 150 ms; ``llm-call --help`` <= 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _scripted import start_scripted_server

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ANSWER = "The quick brown fox jumps over the lazy dog, then naps in the afternoon sun."
PROMPT = "Describe a fox in one sentence."
MESSAGES = [{"role": "user", "content": PROMPT}]
MODEL = "bench-model"
PY = sys.executable
BIN = Path(PY).parent

Call = Callable[[], Awaitable[str]]


# -- the server, in its own process ----------------------------------------------------------


def start_server(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    return start_scripted_server(workdir, text=ANSWER)


# -- clients ---------------------------------------------------------------------------------


async def aiohttp_client(url: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    endpoint = url + "/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench"}

    async def plain() -> str:
        async with session.post(endpoint, json={"model": MODEL, "messages": MESSAGES}, headers=headers) as resp:
            data = json.loads(await resp.read())
        return str(data["choices"][0]["message"]["content"])

    async def stream() -> str:
        body = {"model": MODEL, "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        parts: list[str] = []
        async with session.post(endpoint, json=body, headers=headers) as resp:
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                for choice in json.loads(payload)["choices"]:
                    piece = choice["delta"].get("content")
                    if piece:
                        parts.append(piece)
        return "".join(parts)

    return plain, stream, session.close


async def llm_call_client(url: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    os.environ["OPENAI_BASE_URL"] = url + "/v1"
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    import llm_call
    from llm_call.config import Settings, set_settings
    from llm_call.providers.router import close_providers

    set_settings(Settings())  # defaults, whatever ./llm_call.toml says
    model = f"openai/{MODEL}"

    async def plain() -> str:
        return (await llm_call.acall(model, PROMPT)).text

    async def stream() -> str:
        return "".join([c.text async for c in llm_call.astream(model, PROMPT)])

    return plain, stream, close_providers


async def llm_call_provider_client(url: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    """The native provider alone (no argument checks, routing, retry layer): the floor."""
    from llm_call.providers.openai_compat import OpenAICompatProvider
    from llm_call.types import Request

    provider = OpenAICompatProvider(
        name="openai", base_url=url + "/v1", api_key="sk-bench", api_key_env=None, key_required=True
    )

    async def plain() -> str:
        return (await provider.complete(Request(MODEL, list(MESSAGES)))).text

    async def stream() -> str:
        return "".join([c.text async for c in provider.stream(Request(MODEL, list(MESSAGES)))])

    return plain, stream, provider.aclose


async def openai_client(url: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    import openai

    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-bench", max_retries=0)

    async def plain() -> str:
        resp = await client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        return resp.choices[0].message.content or ""

    async def stream() -> str:
        parts: list[str] = []
        resp = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}  # type: ignore[arg-type]
        )
        async for chunk in resp:
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
        return "".join(parts)

    return plain, stream, client.close


async def litellm_client(url: str) -> tuple[Call, Call, Callable[[], Awaitable[None]]]:
    import litellm

    litellm.suppress_debug_info = True
    base = url + "/v1"

    async def plain() -> str:
        resp = await litellm.acompletion(model=f"openai/{MODEL}", messages=MESSAGES, api_base=base, api_key="sk-bench")
        return str(resp.choices[0].message.content)

    async def stream() -> str:
        parts: list[str] = []
        resp = await litellm.acompletion(
            model=f"openai/{MODEL}", messages=MESSAGES, api_base=base, api_key="sk-bench", stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in resp:
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
        return "".join(parts)

    async def close() -> None:
        return None

    return plain, stream, close


CLIENTS: dict[str, Callable[[str], Awaitable[tuple[Call, Call, Callable[[], Awaitable[None]]]]]] = {
    "aiohttp (raw)": aiohttp_client,
    "llm_call.acall": llm_call_client,
    "llm_call provider only": llm_call_provider_client,
    "openai.AsyncOpenAI": openai_client,
    "litellm.acompletion": litellm_client,
}


# -- measurement -----------------------------------------------------------------------------


async def drive(fn: Call, calls: int, concurrency: int) -> tuple[float, float]:
    """Run ``calls`` calls, ``concurrency`` at a time; return (CPU ms per call, calls per second)."""
    remaining = calls
    bad: list[str] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            text = await fn()
            if text != ANSWER:
                bad.append(text)

    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if bad:
        raise SystemExit(f"wrong answers, e.g. {bad[0]!r}")
    return cpu * 1000 / calls, calls / wall


async def bench_client(name: str, url: str, calls: int, concurrency: int, warmup: int) -> list[tuple[str, str, float, float]]:
    plain, stream, close = await CLIENTS[name](url)
    rows = []
    try:
        for mode, fn in (("non-streamed", plain), ("streamed", stream)):
            await drive(fn, warmup, concurrency)
            cpu_ms, rate = await drive(fn, calls, concurrency)
            rows.append((name, mode, cpu_ms, rate))
            print(f"  {name:24} {mode:13} {cpu_ms:7.3f} ms CPU/call {rate:8.0f} calls/s", file=sys.stderr, flush=True)
    finally:
        await close()
    return rows


def median_start(cmd: list[str], runs: int = 5) -> tuple[float, float]:
    """Median wall ms and median CPU ms (user + system of the child) of ``cmd``.

    CPU time is reported too because wall time on a shared, loaded machine mostly measures the
    wait for a core.
    """
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def unimported(code: str, modules: tuple[str, ...]) -> list[str]:
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {modules!r} if m not in sys.modules))"
    out = subprocess.run([PY, "-c", probe], check=True, capture_output=True, text=True).stdout.strip()
    return [m for m in out.split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--only", help="comma list of clients: " + ", ".join(CLIENTS))
    args = parser.parse_args()
    names = list(CLIENTS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        names = [n for n in names if any(w in n for w in wanted)]

    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(Path(tmp))
        try:
            rows: list[tuple[str, str, float, float]] = []
            for name in names:
                rows.extend(asyncio.run(bench_client(name, url, args.calls, args.concurrency, args.warmup)))
        finally:
            server.terminate()
            server.wait(10)

    heavy = ("aiohttp", "pydantic", "litellm", "claude_agent_sdk", "llama_cpp", "openai", "anthropic")
    import_ms, import_cpu = median_start([PY, "-c", "import llm_call"])
    help_ms, help_cpu = median_start([str(BIN / "llm-call"), "--help"])
    free_import = unimported("import llm_call", heavy)
    free_help = unimported("import llm_call.cli", heavy)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\n{args.calls:,} calls per row, concurrency {args.concurrency}, warm-up {args.warmup}; "
          f"server: `python -m llm_call.testing` in its own process; Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average at the end {load}.\n")
    print("| client | mode | CPU ms / call | calls / s |")
    print("| --- | --- | ---: | ---: |")
    for name, mode, cpu_ms, rate in rows:
        print(f"| {name} | {mode} | {cpu_ms:.3f} | {rate:,.0f} |")
    print()
    print("| start-up (median of 5) | wall ms | CPU ms | heavy modules not imported |")
    print("| --- | ---: | ---: | --- |")
    print(f"| `python -c \"import llm_call\"` | {import_ms:.0f} | {import_cpu:.0f} | {', '.join(free_import)} |")
    print(f"| `llm-call --help` | {help_ms:.0f} | {help_cpu:.0f} | {', '.join(free_help)} (on `import llm_call.cli`) |")


if __name__ == "__main__":
    main()
