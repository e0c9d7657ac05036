"""Embeddings on the local route (``local/*``): a GGUF model loaded by llama-cpp-python with
``Llama(embedding=True)``.

The instance is a separate registry entry from the chat one (``model_for(..., embedding=True)``):
its own instances, its own ``local.max_concurrency`` slots, counted in ``local.max_loaded``. Like a
generation it runs in a worker thread that frees its slot itself; one ``timeout`` covers the wait
for a slot and the work. A text is embedded whole or not at all: one longer than ``local.n_ctx``
tokens is a :class:`UsageError`, never silently truncated.

Pooling is the model's own (an embedding GGUF declares it: mean, CLS ...). A model without one,
such as a chat model like ``local/smollm2``, gives one vector per token; those are averaged (mean
pooling, what llama.cpp's ``--pooling mean`` computes). Vectors are L2-normalised, as OpenAI's are.
A chat model's pooled states are a weak embedding: declare an embedding GGUF under
``[local.models.NAME]`` for retrieval. ``dimensions`` is refused: a vector cannot be shortened
honestly unless the model was trained for it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import TYPE_CHECKING, Any

from ..errors import LLMCallError, ProviderFailed, ProviderTimeout, UsageError
from ..types import EmbeddingRequest, Embeddings, Usage
from ._local_models import model_for, resolve_model_path

if TYPE_CHECKING:
    from ..config import LocalConfig

__all__ = ["embed_local"]

#: options accepted and ignored: the vectors are floats whatever the wire format, and ``user``
#: identifies the end user to hosted APIs
_IGNORED = frozenset({"encoding_format", "user", "progress"})


def _check(request: EmbeddingRequest) -> None:
    options = {k for k, v in request.options.items() if v is not None and k not in _IGNORED}
    if "dimensions" in options:
        raise UsageError(
            f"the local route cannot shorten the vectors of local/{request.model}: dimensions is not supported",
            hint="leave dimensions out (the model's own size), or use an API model that takes it",
        )
    if options:
        raise UsageError(f"unknown option(s) for local embeddings: {', '.join(sorted(options))}")


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _pooled(output: Any) -> list[float]:
    """One input's output as one vector: the model's pooled vector, or the mean of its tokens'."""
    if output and isinstance(output[0], list):
        n = len(output)
        return [sum(column) / n for column in zip(*output, strict=True)]
    return [float(x) for x in output]


def _run(llm: Any, texts: list[str], n_ctx: int) -> tuple[list[list[float]], int]:
    """One ``Llama.embed`` call per text: llama-cpp-python 0.3's ``embed`` of several texts in one
    batch gives the later ones the wrong token vectors when the model has no pooling (a repeated
    text came back with a cosine of ~0 to itself), and one text at a time is what a vector must
    not depend on anyway: the other texts of the request."""
    vectors: list[list[float]] = []
    total = 0
    for i, text in enumerate(texts):
        try:
            outputs, tokens = llm.embed([text], normalize=False, truncate=False, return_count=True)
        except ValueError as exc:
            if "exceed" in str(exc):
                raise UsageError(
                    f"input[{i}] is longer than the local model's context of {n_ctx} tokens ({exc})",
                    hint="split the text, or raise local.n_ctx in the config",
                ) from None
            raise
        vectors.append(_unit(_pooled(outputs[0])))
        total += int(tokens)
    return vectors, total


async def embed_local(cfg: LocalConfig, request: EmbeddingRequest) -> Embeddings:
    """Embed ``request.input`` with ``local/<request.model>`` (see the module docstring)."""
    _check(request)
    model = model_for(resolve_model_path(request.model, cfg), cfg, embedding=True)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[tuple[list[list[float]], int]] = loop.create_future()
    launched = False

    def settle(result: Any, exc: BaseException | None) -> None:
        if not future.done():
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            instance = model.checkout()
            try:
                result = _run(instance.llm, request.input, model.key.n_ctx)
            finally:
                model.checkin(instance)
        except BaseException as exc:  # delivered to the caller, which raises a typed error
            error = exc
        finally:
            model.slots.release()
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the caller's loop has closed: nobody waits for this answer

    try:
        async with asyncio.timeout(request.timeout):
            await model.slots.acquire()
            try:
                threading.Thread(target=work, name="llm_call-local-embed", daemon=True).start()
            except BaseException:
                model.slots.release()
                raise
            launched = True
            vectors, tokens = await future
    except TimeoutError:
        what = "did not finish" if launched else "had no free slot"
        raise ProviderTimeout(
            f"local model {request.model!r} {what} within {request.timeout}s (embeddings)",
            provider="local",
            model=request.model,
        ) from None
    except LLMCallError:
        raise
    except Exception as exc:
        raise ProviderFailed(
            f"local model {request.model!r} failed while embedding: {type(exc).__name__}: {exc}",
            provider="local",
            model=request.model,
            subtype="embedding_error",
        ) from exc
    return Embeddings(vectors=vectors, model=f"local/{request.model}", usage=Usage(prompt_tokens=tokens))
