"""The default in-flight limit holds ordinary batch concurrency: 2,000 requests at once from one
client on loopback, against ``llm-call serve`` and the scripted upstream (each in its own
process, real sockets), all answered 200."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

LLM_CALL = str(Path(sys.executable).with_name("llm-call"))
N = 2000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_", "ANTHROPIC_"))}


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"process exited {proc.returncode}: {log.read_text()[-2000:]}"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer: {log.read_text()[-2000:]}"
        time.sleep(0.05)


async def _send_all(url: str, body: dict[str, object]) -> list[int]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=90)) as http:

        async def one() -> int:
            async with http.post(url, json=body) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one() for _ in range(N))))


def test_two_thousand_concurrent_requests_all_succeed(tmp_path: Path) -> None:
    up_port, port = _free_port(), _free_port()
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"script": [], "default": {"text": "ok", "latency": 1.0, "times": None}}))
    config = tmp_path / "llm_call.toml"
    config.write_text(f'[endpoints.up]\nbase_url = "http://127.0.0.1:{up_port}/v1"\n\n[retry]\nmax_retries = 0\n')
    procs: list[subprocess.Popen[bytes]] = []
    up_log, server_log = tmp_path / "upstream.log", tmp_path / "server.log"
    try:
        with up_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "llm_call.testing", "--port", str(up_port), "--script", str(script)],
                env=_env(), stdout=out, stderr=subprocess.STDOUT))
        with server_log.open("wb") as out:
            procs.append(subprocess.Popen(
                [LLM_CALL, "serve", "--port", str(port), "--config", str(config), "--tasks", str(tmp_path / "t.db")],
                env=_env(), stdout=out, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"
        _ready(f"http://127.0.0.1:{up_port}/v1/models", procs[0], up_log)
        _ready(base + "/health", procs[1], server_log)
        body = {"model": "up/x", "messages": [{"role": "user", "content": "hi"}]}
        statuses = asyncio.run(_send_all(base + "/v1/chat/completions", body))
        assert statuses.count(200) == N, {s: statuses.count(s) for s in set(statuses)}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)
