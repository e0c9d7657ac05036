"""``POST /v1/embeddings``: OpenAI's embeddings API onto :func:`llm_call.aembed`.

The request is OpenAI's (``model``, ``input``: a string or a list of strings, ``dimensions``,
``encoding_format``, ``user``) plus llm_call's ``fallbacks``; the answer is OpenAI's list
(``object: "list"``, ``data[{object: "embedding", index, embedding}]``, ``model``, ``usage``) with
the attempt record in an extra ``llm_call`` field, as on chat completions. Everything else a
chat request gets applies: the gateway's key check, per-key in-flight limit and metrics, the
operator's ``allowed_models`` (for ``model`` and each fallback), the server's request timeout,
cancellation when the client goes away, errors in OpenAI's shape (a 400 names the field).

``encoding_format`` is honoured here, not forwarded: the upstream is asked for floats (every
OpenAI-compatible server has them; base64 is an optional extra some lack) and the vectors are
encoded as the client asked. The openai SDK asks for base64 unless told otherwise, and decodes it.
Token arrays as ``input`` (langchain's ``OpenAIEmbeddings`` sends them unless
``check_embedding_ctx_length=False``) are refused with a 400 saying so: the token ids are one
model's tokenizer, and the routes behind this server take texts.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from ..client import aembed
from ..errors import LLMCallError
from ..providers._embeddings import encode_base64
from ._chat import attempt_dict, call_failure, cancelled_on_disconnect, timeout_failure
from ._errors import HTTPFailure
from ._request_policy import check_model
from ._schemas import parse_json_body

if TYPE_CHECKING:
    from ._chat import Receive
    from ._middleware import RequestInfo
    from ._state import ServerState

__all__ = ["EmbeddingsRequest", "handle_embeddings"]

#: inputs in one request, as OpenAI allows
MAX_INPUTS = 2048


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: the OpenAI request plus llm_call's ``fallbacks``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Embedding model or alias, e.g. openai/text-embedding-3-small")
    input: Any = Field(description=f"A text, or a list of up to {MAX_INPUTS} non-empty texts")
    dimensions: int | None = Field(default=None, ge=1, le=65536, description="Vector length, for models that can shorten theirs")
    encoding_format: Literal["float", "base64"] | None = Field(
        default=None, description="float (default): number lists; base64: little-endian float32, base64-encoded"
    )
    user: str | None = Field(default=None, max_length=256)
    fallbacks: list[str] | None = Field(default=None, max_length=16, description="Models to try when the provider fails")


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _texts(value: Any) -> list[str]:
    """The request's input as a list of texts, or a 400 naming what is wrong with it."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise HTTPFailure(400, "input must be a string or a non-empty list of strings", param="input", code="invalid_value")
    if _is_tokens(value) or any(_is_tokens(item) for item in value):
        raise HTTPFailure(
            400,
            "input holds token arrays; this server embeds texts, so send the strings themselves "
            "(langchain's OpenAIEmbeddings: check_embedding_ctx_length=False)",
            param="input",
            code="invalid_value",
        )
    if len(value) > MAX_INPUTS:
        raise HTTPFailure(400, f"input has {len(value)} items; at most {MAX_INPUTS} per request", param="input", code="invalid_value")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            what = "an empty string" if item == "" else f"a {type(item).__name__}"
            raise HTTPFailure(400, f"input[{i}] is {what}; every input must be a non-empty string",
                              param=f"input.{i}", code="invalid_value")
    return value


async def handle_embeddings(state: ServerState, info: RequestInfo, raw: bytes, receive: Receive | None = None) -> Response:
    """One embeddings request, from its raw JSON body to the response to send."""
    req = parse_json_body(EmbeddingsRequest, raw)
    texts = _texts(req.input)
    info.model = req.model
    check_model(req.model, state.settings, "model")
    for i, name in enumerate(req.fallbacks or ()):
        check_model(name, state.settings, f"fallbacks.{i}")
    kwargs: dict[str, Any] = {}
    if req.dimensions is not None:
        kwargs["dimensions"] = req.dimensions
    if req.user is not None:
        kwargs["user"] = req.user
    if req.fallbacks:
        kwargs["fallbacks"] = list(req.fallbacks)
    try:
        async with cancelled_on_disconnect(receive), asyncio.timeout(state.settings.server.request_timeout):
            result = await aembed(req.model, texts, **kwargs)
    except TimeoutError:
        raise timeout_failure(state, info) from None
    except LLMCallError as exc:
        raise call_failure(state, info, exc) from None
    info.attempts = len(result.attempts) or 1
    state.metrics.observe_usage(result.model, result.usage, info)
    state.metrics.observe_attempts(result.model, result.attempts)
    packed = req.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": encode_base64(vector) if packed else vector}
        for i, vector in enumerate(result.vectors)
    ]
    tokens = result.usage.prompt_tokens
    body = {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "llm_call": {
            "model": result.model,
            "attempts": [attempt_dict(a) for a in result.attempts],
            "latency_s": result.latency_s,
        },
    }
    return Response(json.dumps(body).encode(), media_type="application/json")
