"""The public call API: ``acall``/``astream`` argument checks and the sync twins ``call``/``stream``
(plain code, threads, one shared connection, refusal inside a running event loop).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_call
from llm_call import AuthError, ProviderHTTPError, StreamInterrupted, UsageError
from llm_call._retry import reset_breakers
from llm_call.testing import Fault, Reply, ScriptedLLMServer


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture
def threaded_srv(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedLLMServer]:
    with ScriptedLLMServer(default=Reply(text="default answer", times=None)).running() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        yield server


def wait_until(predicate: Callable[[], bool], what: str, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.01)


# -- argument checks (no request is sent) ------------------------------------------------------


BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({}, "no prompt and no messages"),
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "   \n"}, "the prompt is empty"),
    ({"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, "either prompt or messages, not both"),
    ({"messages": []}, "non-empty list"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": ["hi"]}, r"messages\[0\] must be a dict"),
    ({"messages": [{"content": "hi"}]}, r"messages\[0\] must be a dict with 'role'"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, r"messages\[0\]\.role 'robot'"),
    ({"prompt": 42}, "prompt must be a string"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens must be >= 1"),
    ({"prompt": "hi", "timeout": 0}, "timeout must be > 0"),
    ({"prompt": "hi", "timeout": -1.5}, "timeout must be > 0"),
    ({"prompt": "hi", "mode": "sometimes"}, "mode must be"),
    ({"prompt": "hi", "stream": True}, "stream= is not an option"),
    # a wrong type names the argument and the value instead of a TypeError deep inside a layer
    ({"prompt": "hi", "timeout": "soon"}, "timeout must be a number, not str 'soon'"),
    ({"prompt": "hi", "timeout": True}, "timeout must be a number, not bool True"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature must be a number, not str 'hot'"),
    ({"prompt": "hi", "temperature": -0.5}, "temperature must be >= 0"),
    ({"prompt": "hi", "max_tokens": 1.5}, "max_tokens must be an integer, not float 1.5"),
    ({"prompt": "hi", "validate": ["json"], "max_attempts": "3"}, "max_attempts must be an integer, not str '3'"),
    ({"prompt": "hi", "max_attempts": 0}, "max_attempts must be >= 1"),
    ({"prompt": "hi", "deadline_s": "1m"}, "deadline_s must be a number, not str '1m'"),
    # a near miss of llm_call's own option is a typo, not a provider option to send on
    ({"prompt": "hi", "tiemout": 3}, "unknown option 'tiemout': did you mean 'timeout'"),
    ({"prompt": "hi", "fallback": ["openai/y"]}, "unknown option 'fallback': did you mean 'fallbacks'"),
    ({"prompt": "hi", "validation": ["json"]}, "unknown option 'validation': did you mean 'validate'"),
    ({"prompt": "hi", "max_attempt": 3}, "unknown option 'max_attempt': did you mean 'max_attempts'"),
    ({"prompt": "hi", "validate": ["json"], "escalate": 5}, "escalate must be a model name or a list of model names, not int 5"),
    ({"prompt": "hi", "progress": "x"}, "progress must be a callable progress\\(kind, data\\), not str 'x'"),
    ({"prompt": "hi", "system": 5}, "system must be a string, not int"),
    ({"prompt": "hi", "retry": {"max_retries": "x"}}, "retry dict: max_retries must be a number >= 0, not str 'x'"),
    ({"prompt": "hi", "retry": {"max_retrys": 2}}, "retry dict has unknown key 'max_retrys' \\(did you mean 'max_retries'\\?\\)"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS)
async def test_acall_rejects_bad_arguments(kwargs: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with ScriptedLLMServer(default=Reply(text="x", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        with pytest.raises(UsageError, match=message):
            await llm_call.acall("openai/m", **kwargs)
        with pytest.raises(UsageError, match=message):
            async for _ in llm_call.astream("openai/m", **kwargs):
                pass
        assert srv.requests == []


async def test_acall_rejects_a_model_that_is_not_a_string() -> None:
    with pytest.raises(UsageError, match="model must be a string such as 'openai/gpt-4o-mini', not int 123"):
        await llm_call.acall(123, "hi")  # type: ignore[call-overload]


async def test_provider_options_that_are_no_near_miss_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    async with ScriptedLLMServer(default=Reply(text="x", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        await llm_call.acall("openai/m", "hi", seed=1, response_format={"type": "json_object"}, top_p=0.5)
        assert srv.requests[0].body["seed"] == 1
        assert srv.requests[0].body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS[:5])
def test_call_rejects_bad_arguments(kwargs: dict[str, Any], message: str, threaded_srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match=message):
        llm_call.call("openai/m", **kwargs)
    with pytest.raises(UsageError, match=message):
        list(llm_call.stream("openai/m", **kwargs))
    assert threaded_srv.requests == []


async def test_system_argument_replaces_system_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    async with ScriptedLLMServer(default=Reply(text="x", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        messages = [
            {"role": "system", "content": "old"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ]
        await llm_call.acall("openai/m", messages=messages, system="new")
        assert srv.requests[0].messages == [
            {"role": "system", "content": "new"},
            {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2"},
        ]
        assert messages[0]["content"] == "old"  # the caller's list is not modified


# -- sync call -------------------------------------------------------------------------------


def test_call_from_plain_code(threaded_srv: ScriptedLLMServer) -> None:
    threaded_srv.add(Reply(text="sync answer"))
    resp = llm_call.call("openai/m", "hi", temperature=0.5)
    assert resp.text == "sync answer"
    assert resp.model == "openai/m"
    assert threaded_srv.requests[0].body["temperature"] == 0.5


def test_call_raises_typed_errors(threaded_srv: ScriptedLLMServer) -> None:
    threaded_srv.add(Reply(fault=Fault.http(401)))
    with pytest.raises(AuthError):
        llm_call.call("openai/m", "hi", retry=False)
    threaded_srv.add(Reply(fault=Fault.http(500)))
    with pytest.raises(ProviderHTTPError) as info:
        llm_call.call("openai/m", "hi", retry=False)
    assert info.value.status == 500


def test_calls_from_threads_share_one_connection(threaded_srv: ScriptedLLMServer) -> None:
    results: list[str] = []

    def worker(i: int) -> None:
        results.append(llm_call.call("openai/m", f"hello {i}").text)

    for i in range(6):  # one after another, each from a new thread
        t = threading.Thread(target=worker, args=(i,))
        t.start()
        t.join()
    assert results == ["default answer"] * 6
    assert len(threaded_srv.requests) == 6
    assert threaded_srv.active_connections == 1
    assert all(r.headers.get("connection", "keep-alive").lower() != "close" for r in threaded_srv.requests)


def test_concurrent_calls_from_threads(threaded_srv: ScriptedLLMServer) -> None:
    for i in range(8):
        threaded_srv.add(Reply(text=f"answer {i}", match_text=f"question {i}", latency=0.05))
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            results[i] = llm_call.call("openai/m", f"question {i}").text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {i: f"answer {i}" for i in range(8)}
    assert threaded_srv.active_connections <= 8


async def test_call_inside_running_loop_is_usage_error_pointing_to_acall() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UsageError, match="inside a running event loop") as info:
            llm_call.call("openai/m", "hi")
        gc.collect()
    assert info.value.hint is not None and "await llm_call.acall" in info.value.hint
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_stream_inside_running_loop_is_usage_error_pointing_to_astream() -> None:
    with pytest.raises(UsageError, match="inside a running event loop") as info:
        llm_call.stream("openai/m", "hi")  # raised at once, not on first iteration
    assert info.value.hint is not None and "astream" in info.value.hint


# -- sync stream -----------------------------------------------------------------------------


def test_stream_sync_yields_chunks(threaded_srv: ScriptedLLMServer) -> None:
    threaded_srv.add(Reply(chunks=["a", "b", "c"], completion_tokens=3))
    chunks = list(llm_call.stream("openai/m", "go"))
    assert [c.text for c in chunks] == ["a", "b", "c", ""]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_stream_sync_cut_raises_stream_interrupted(threaded_srv: ScriptedLLMServer) -> None:
    threaded_srv.add(Reply(chunks=["a", "b", "c"], fault=Fault.cut_stream(after_chunks=1)))
    seen: list[str] = []
    with pytest.raises(StreamInterrupted) as info:
        for chunk in llm_call.stream("openai/m", "go", retry=False):
            seen.append(chunk.text)
    assert seen == ["a"]
    assert info.value.partial == "a"


def test_breaking_out_of_sync_stream_closes_the_connection(threaded_srv: ScriptedLLMServer) -> None:
    threaded_srv.add(Reply(chunks=[f"{i} " for i in range(100)], chunk_delay=0.05))
    it = llm_call.stream("openai/m", "count")
    for chunk in it:
        assert chunk.text == "0 "
        break
    it.close()  # type: ignore[attr-defined]
    wait_until(lambda: threaded_srv.in_flight == 0, "the server to see the client leave")
    assert llm_call.call("openai/m", "again").text == "default answer"


def test_plain_script_exits_cleanly(tmp_path: Path) -> None:
    """A script using call() and stream() exits without hanging or resource warnings."""
    script = tmp_path / "script.py"
    script.write_text(
        "import llm_call\n"
        "print(llm_call.call('openai/m', 'hi').text)\n"
        "print(''.join(c.text for c in llm_call.stream('openai/m', 'hi')))\n",
        encoding="utf-8",
    )
    with ScriptedLLMServer(default=Reply(text="from script", times=None)).running() as srv:
        env = {**os.environ, "OPENAI_BASE_URL": srv.openai_base_url, "OPENAI_API_KEY": "k", "PYTHONWARNINGS": "error"}
        proc = subprocess.run(
            [sys.executable, "-X", "dev", str(script)], env=env, capture_output=True, text=True, timeout=60
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["from script", "from script"]
    assert "Unclosed" not in proc.stderr and "ResourceWarning" not in proc.stderr, proc.stderr


def test_repeated_asyncio_run_reuses_nothing_stale(tmp_path: Path) -> None:
    """Each asyncio.run gets a working session; closed loops leave no open connections."""
    script = tmp_path / "runs.py"
    script.write_text(
        "import asyncio, gc, llm_call\n"
        "async def main():\n"
        "    r = await llm_call.acall('openai/m', 'hi')\n"
        "    s = ''.join([c.text async for c in llm_call.astream('openai/m', 'hi')])\n"
        "    return r.text + '|' + s\n"
        "for _ in range(3):\n"
        "    print(asyncio.run(main()))\n"
        "    gc.collect()\n",
        encoding="utf-8",
    )
    with ScriptedLLMServer(default=Reply(text="ok", times=None)).running() as srv:
        env = {**os.environ, "OPENAI_BASE_URL": srv.openai_base_url, "OPENAI_API_KEY": "k", "PYTHONWARNINGS": "error"}
        proc = subprocess.run(
            [sys.executable, "-X", "dev", str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: srv.active_connections == 0, "the script's connections to close")
    assert proc.stdout.splitlines() == ["ok|ok"] * 3
    assert "Unclosed" not in proc.stderr and "ResourceWarning" not in proc.stderr, proc.stderr


async def test_acall_and_call_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    async with ScriptedLLMServer(default=Reply(text="same", times=None)) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        a = await llm_call.acall("openai/m", "hi")
        b = await asyncio.to_thread(llm_call.call, "openai/m", "hi")
        assert (a.text, a.model) == (b.text, b.model)


def test_a_claude_option_close_to_an_own_name_is_not_taken_for_a_typo() -> None:
    """max_budget_usd (the Claude CLI's spending cap) is within difflib's reach of budget_usd, but
    it is an option of the max/* route, not a misspelling of llm_call's own."""
    from llm_call._request import _check_unknown

    _check_unknown({"max_budget_usd": 1.0, "stop": ["x"]})
    with pytest.raises(UsageError, match="did you mean 'timeout'"):
        _check_unknown({"tiemout": 3})
