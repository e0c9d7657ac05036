"""The local route's model slots (``local.max_concurrency``) with a fake model: a call's timeout
(and deadline) covers the wait for a free slot as well as the generation, a call that gives up
while waiting never generates, and its slot is not leaked.

The fake stands in for ``llama_cpp.Llama`` behind ``Instance.load`` (the one place models are
loaded), so these tests need neither llama-cpp-python nor the model file. Its generations wait
for ``gate`` before their first token, which lets a test hold the only slot as long as it likes.
Waits are bounded only to turn a hang into a failure; nothing here is a timing threshold.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llm_call
from llm_call.config import LocalConfig
from llm_call.errors import BudgetExceeded, ProviderTimeout
from llm_call.providers import _local_models
from llm_call.providers.local import LocalProvider
from llm_call.types import Request, Response

EOG = 0
WORDS = 3
HANG_GUARD = 30.0  # seconds; only reached when the code under test hangs


class FakeLlama:
    """Just enough of ``llama_cpp.Llama`` for one generation: ``WORDS`` tokens, then end of text."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.generating = threading.Event()
        self.generations = 0
        self._model = SimpleNamespace(vocab=None)

    def tokenize(self, text: bytes, add_bos: bool, special: bool) -> list[int]:
        return list(range(1, len(text.split()) + 2))

    def n_ctx(self) -> int:
        return 2048

    def reset(self) -> None:
        pass

    def set_seed(self, seed: int) -> None:
        pass

    def detokenize(self, tokens: list[int]) -> bytes:
        return b" word"

    def generate(self, prompt: list[int], **sampling: Any) -> Iterator[int]:
        self.generations += 1
        self.generating.set()
        if not self.gate.wait(HANG_GUARD):
            raise AssertionError("the test never opened the gate")
        yield from range(1, WORDS + 1)
        yield EOG

    def close(self) -> None:
        pass


def _render(messages: list[dict[str, str]]) -> SimpleNamespace:
    return SimpleNamespace(prompt=" ".join(m["content"] for m in messages), added_special=False, stop=None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeLlama]:
    """Every local model loads as one shared ``FakeLlama`` (its generations run one at a time:
    ``max_concurrency`` is 1 by default)."""
    llama = FakeLlama(threading.Event())
    lib = SimpleNamespace(llama_vocab_is_eog=lambda vocab, token: token == EOG)

    def load(cls: type[_local_models.Instance], key: Any) -> _local_models.Instance:
        return cls(llama, _render, lib)  # type: ignore[arg-type]

    monkeypatch.setattr(_local_models.Instance, "load", classmethod(load))
    yield llama
    llama.gate.set()  # never leave a generation thread waiting
    _local_models.unload_models()


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")  # never read: the fake loader stands in for llama.cpp
    return path


def _request(gguf: Path, timeout: float | None) -> Request:
    return Request(model=str(gguf), messages=[{"role": "user", "content": "Say three words."}], timeout=timeout)


async def _ask(provider: LocalProvider, request: Request, how: str) -> str:
    if how == "complete":
        return (await provider.complete(request)).text
    return "".join([chunk.text async for chunk in provider.stream(request)])


async def _hold_the_slot(provider: LocalProvider, gguf: Path, fake: FakeLlama) -> asyncio.Task[Response]:
    """A call without a timeout that holds the model's only slot until ``fake.gate`` opens."""
    holder = asyncio.create_task(provider.complete(_request(gguf, None)))
    assert await asyncio.to_thread(fake.generating.wait, HANG_GUARD), "the first call never started"
    return holder


@pytest.mark.parametrize("how", ["complete", "stream"])
async def test_timeout_expiring_while_waiting_for_a_slot_is_provider_timeout_without_generating(
    fake: FakeLlama, gguf: Path, how: str
) -> None:
    provider = LocalProvider(LocalConfig())
    holder = await _hold_the_slot(provider, gguf, fake)

    with pytest.raises(ProviderTimeout, match="no free slot") as info:
        await asyncio.wait_for(_ask(provider, _request(gguf, 0.2), how), HANG_GUARD)
    assert info.value.provider == "local"
    assert fake.generations == 1  # the call that timed out never started generating
    assert not holder.done()  # and it gave up while the other call still held the slot

    fake.gate.set()
    assert (await asyncio.wait_for(holder, HANG_GUARD)).text == " word" * WORDS
    # the slot came back: with one slot, a leaked one would leave this call waiting forever
    assert await asyncio.wait_for(_ask(provider, _request(gguf, HANG_GUARD), how), HANG_GUARD) == " word" * WORDS
    assert fake.generations == 2


async def test_many_callers_timing_out_in_the_queue_leak_no_slot(fake: FakeLlama, gguf: Path) -> None:
    provider = LocalProvider(LocalConfig())
    holder = await _hold_the_slot(provider, gguf, fake)
    waiting = [provider.complete(_request(gguf, 0.1 + i / 100)) for i in range(5)]
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), HANG_GUARD)
    assert all(isinstance(r, ProviderTimeout) for r in results), results
    fake.gate.set()
    await asyncio.wait_for(holder, HANG_GUARD)
    after = await asyncio.wait_for(provider.complete(_request(gguf, HANG_GUARD)), HANG_GUARD)
    assert after.text == " word" * WORDS
    assert fake.generations == 2


async def test_deadline_covers_the_wait_for_a_slot(fake: FakeLlama, gguf: Path) -> None:
    """Through ``acall``: ``deadline_s`` passing while the model is busy is BudgetExceeded."""
    provider = LocalProvider(LocalConfig())  # the same process-wide model entry as acall's route
    holder = await _hold_the_slot(provider, gguf, fake)
    with pytest.raises(BudgetExceeded):
        await asyncio.wait_for(llm_call.acall(f"local/{gguf}", "Say three words.", deadline_s=0.3), HANG_GUARD)
    assert fake.generations == 1
    fake.gate.set()
    await asyncio.wait_for(holder, HANG_GUARD)


async def test_a_slow_consumer_of_a_stream_gets_the_answer_or_a_timeout_never_a_cancellation(
    fake: FakeLlama, gguf: Path
) -> None:
    """The timeout of a stream applies to its own waits: handling a chunk for longer than the
    timeout must not cancel the consumer (a raw CancelledError in the caller before the fix)."""
    fake.gate.set()
    provider = LocalProvider(LocalConfig())
    text = ""
    try:
        async for chunk in provider.stream(_request(gguf, 0.2)):
            text += chunk.text
            await asyncio.sleep(0.4)  # e.g. writing the chunk to a slow client
    except ProviderTimeout:
        text = "<timeout>"
    assert text in (" word" * WORDS, "<timeout>")
