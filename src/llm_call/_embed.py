"""Embeddings below the public call: check ``aembed``'s arguments, then one embeddings call
through the very walk chat calls take (``_retry.Tries``): transient retries with the route's
policy, the route's circuit breaker, then each fallback; failed calls recorded as attempts.

What chat has and embeddings do not: validation (there is no text to check), streaming, tasks
and ``mode``, ``deadline_s``. Those options are a :class:`UsageError` naming them rather than
being ignored. Routes: see ``providers.router.embed_once``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._request import CallOptions
from ._retry import Tries
from ._settings import current_settings
from .errors import UsageError
from .providers import router
from .providers._embeddings import check_options
from .types import CALL_OPTION_NAMES, Attempt, EmbeddingRequest, Embeddings

__all__ = ["build_embedding_request", "embed_with_retries"]

#: llm_call's own options that apply to an embeddings call
EMBED_CALL_OPTIONS = frozenset({"fallbacks", "retry"})


def _texts(input: Any) -> list[str]:
    if isinstance(input, str):
        texts = [input]
    elif isinstance(input, Sequence) and not isinstance(input, bytes | bytearray):
        texts = list(input)
    else:
        raise UsageError(f"input must be a string or a list of strings, not {type(input).__name__}")
    if not texts:
        raise UsageError("input is an empty list: give a text or a list of texts")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UsageError(f"input[{i}] is a {type(text).__name__}, not a string")
        if not text:
            raise UsageError(f"input[{i}] is an empty string: there is nothing to embed")
    return texts


def build_embedding_request(
    model: str,
    input: str | Sequence[str],
    *,
    dimensions: int | None = None,
    encoding_format: str | None = None,
    timeout: float | None = None,
    **options: Any,
) -> tuple[EmbeddingRequest, CallOptions]:
    """Check ``aembed``'s arguments and split them into the request and the retry options."""
    if not isinstance(model, str) or not model.strip():
        raise UsageError("aembed needs a model, e.g. 'openai/text-embedding-3-small'")
    texts = _texts(input)
    foreign = sorted(k for k in options if k in CALL_OPTION_NAMES and k not in EMBED_CALL_OPTIONS)
    if foreign:
        raise UsageError(
            f"{', '.join(foreign)}: not an option of an embeddings call",
            hint="aembed takes fallbacks= and retry= of llm_call's own options; the others apply to acall",
        )
    if "stream" in options:
        raise UsageError("stream= is not an option of an embeddings call")
    settings = current_settings()
    name = model.strip()
    if settings.aliases and settings.alias_name(name) is not None:
        # an alias may bundle fallbacks= or retry=: the caller's own win
        for key, value in router.resolve(name, settings).alias_options().items():
            if key in EMBED_CALL_OPTIONS and key not in options:
                options[key] = value
    opts = CallOptions.pop_from(options)
    if timeout is not None and not timeout > 0:
        raise UsageError(f"timeout must be > 0 seconds, not {timeout}")
    if dimensions is not None:
        options["dimensions"] = dimensions
    if encoding_format is not None:
        options["encoding_format"] = encoding_format
    request = EmbeddingRequest(model=name, input=texts, timeout=timeout, options=options)
    check_options(request)
    return request, opts


async def embed_with_retries(request: EmbeddingRequest, opts: CallOptions) -> Embeddings:
    """One embeddings answer: transient retries, breakers, then fallbacks. Raises the last error."""
    tries: Tries[EmbeddingRequest] = Tries(request, opts, 1, None)
    records: list[Attempt] = []
    while True:
        try:
            result = await router.embed_once(tries.begin())
        except BaseException as exc:
            if await tries.failed(exc, records):
                continue
            raise
        tries.succeeded()
        records.append(
            Attempt(number=1, model=tries.model, kind="answer", ok=True, latency_s=result.latency_s, usage=result.usage)
        )
        result.attempts = records
        return result
