"""``llm-call serve`` as a real process: refusing a public bind without keys, keys from the
environment, graceful shutdown on SIGTERM/SIGINT, and background tasks surviving a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.testing import Fault, Reply, ScriptedLLMServer

pytestmark = pytest.mark.timeout(120)

LLM_CALL = str(Path(sys.executable).with_name("llm-call"))
HI = [{"role": "user", "content": "hi"}]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_CALL_", "OPENAI_", "ANTHROPIC_"))}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, upstream: ScriptedLLMServer, extra: str = "") -> Path:
    path = tmp_path / "llm_call.toml"
    path.write_text(
        f'[endpoints.up]\nbase_url = "{upstream.openai_base_url}"\n\n[retry]\nmax_retries = 0\n\n'
        f"[server]\ngrace_period = 20\n{extra}\n"
    )
    return path


@contextmanager
def _serving(args: list[str], env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    proc = subprocess.Popen(
        [LLM_CALL, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                _out, err = proc.communicate()
                raise AssertionError(f"llm-call serve exited {proc.returncode}: {err.decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "llm-call serve did not become ready"
            time.sleep(0.05)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_public_bind_without_keys_refuses_to_start(tmp_path: Path) -> None:
    r = subprocess.run([LLM_CALL, "serve", "--host", "0.0.0.0", "--port", "1"], env=_env(), capture_output=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "LLM_CALL_API_KEYS" in err and "api_keys" in err
    assert "0.0.0.0" in err


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nmax_body_bytes = -1\n")
    r = subprocess.run([LLM_CALL, "serve", "--config", str(bad)], env=_env(), capture_output=True, timeout=60)
    assert r.returncode == 2
    assert "server.max_body_bytes" in r.stderr.decode()


def test_a_configured_model_that_routes_nowhere_exits_2_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('default_model = "fast"\n[aliases.fast]\nmodel = "gtp-4o"\n')
    r = subprocess.run([LLM_CALL, "serve", "--config", str(bad), "--port", str(_free_port())], env=_env(), capture_output=True, timeout=60)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "unknown model 'gtp-4o'" in err and "[aliases.fast]" in err and str(bad) in err and "Traceback" not in err


def test_unusable_task_store_exits_2(tmp_path: Path) -> None:
    r = subprocess.run([LLM_CALL, "serve", "--port", str(_free_port()), "--tasks", "redis://127.0.0.1:1/0"],
                       env=_env(), capture_output=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "task store" in err and "Traceback" not in err


def test_keys_from_environment_and_structured_logs(tmp_path: Path) -> None:
    with ScriptedLLMServer([], default=Reply(text="ok")).running() as up:
        cfg = _config(tmp_path, up)
        env = _env(LLM_CALL_API_KEYS="env-key-1, env-key-2")
        with _serving(["--config", str(cfg), "--tasks", str(tmp_path / "t.db")], env) as (proc, url):
            body = {"model": "up/x", "messages": HI}
            assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
            ok = httpx.post(url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer env-key-2"})
            assert ok.status_code == 200
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    text = err.decode()
    assert '"route": "/v1/chat/completions"' in text and '"key": "key2"' in text
    assert "env-key" not in text
    assert (tmp_path / "t.db").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_finishes_requests_in_flight(tmp_path: Path, sig: signal.Signals) -> None:
    with ScriptedLLMServer([Reply(text="finished anyway", latency=1.5)], default=Reply(text="ok")).running() as up:
        cfg = _config(tmp_path, up)
        with _serving(["--config", str(cfg), "--tasks", str(tmp_path / "t.db")], _env()) as (proc, url):
            result: dict[str, Any] = {}

            def call() -> None:
                result["r"] = httpx.post(url + "/v1/chat/completions", json={"model": "up/x", "messages": HI}, timeout=30)

            t = threading.Thread(target=call)
            t.start()
            deadline = time.monotonic() + 20
            while not up.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert up.requests, "the request did not reach the upstream"
            proc.send_signal(sig)
            t.join(30)
            proc.communicate(timeout=30)
            assert proc.returncode == 0
            r = result["r"]
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "finished anyway"
            with pytest.raises(httpx.TransportError):
                httpx.get(url + "/health", timeout=2)


def test_background_task_survives_a_restart(tmp_path: Path) -> None:
    store = str(tmp_path / "tasks.db")
    with ScriptedLLMServer([Reply(fault=Fault.hang())], default=Reply(text="done after restart")).running() as up:
        cfg = _config(tmp_path, up)
        args = ["--config", str(cfg), "--tasks", store]
        with _serving(args, _env()) as (proc, url):
            r = httpx.post(url + "/v1/responses", json={"model": "up/x", "input": "long job", "background": True})
            assert r.status_code == 200
            response_id = r.json()["id"]
            deadline = time.monotonic() + 20
            while not up.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            assert httpx.get(f"{url}/v1/responses/{response_id}").json()["status"] == "in_progress"
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
            assert proc.returncode == 0
        with _serving(args, _env()) as (proc, url):
            deadline = time.monotonic() + 30
            while True:
                body = httpx.get(f"{url}/v1/responses/{response_id}").json()
                if body["status"] not in ("queued", "in_progress") or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert body["status"] == "completed"
            assert body["output_text"] == "done after restart"
            proc.send_signal(signal.SIGTERM)
