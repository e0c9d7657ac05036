"""The embeddings wire format shared by the routes that have one (OpenAI-compatible, LiteLLM).

``POST {base}/embeddings`` takes ``{"model", "input": [texts], "dimensions"?, "encoding_format"?}``
and answers ``{"data": [{"index", "embedding"}], "model", "usage": {"prompt_tokens"}}``; with
``encoding_format="base64"`` each embedding is the base64 of little-endian float32 values
(what the openai SDK asks for by default, a quarter of the JSON). :func:`parse_embeddings` reads
either form into float lists; :func:`encode_base64` / :func:`decode_base64` are the codec, also
used by the server (its own ``encoding_format``) and the scripted test server.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from typing import Any

from ..errors import MalformedResponse, ProviderHTTPError, UsageError
from ..types import EmbeddingRequest, Embeddings, Usage

__all__ = [
    "ENCODING_FORMATS",
    "check_options",
    "decode_base64",
    "encode_base64",
    "load_answer",
    "openai_body",
    "parse_embeddings",
]

ENCODING_FORMATS = ("float", "base64")


def encode_base64(vector: list[float]) -> str:
    """A vector as OpenAI's base64 embedding: little-endian float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_base64(text: str) -> list[float]:
    """The floats of an OpenAI base64 embedding. Raises ValueError when it is not one."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def check_options(request: EmbeddingRequest) -> None:
    """``dimensions`` a positive int and ``encoding_format`` float or base64, or UsageError."""
    dims = request.options.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise UsageError(f"dimensions must be a positive integer, not {dims!r}")
    fmt = request.options.get("encoding_format")
    if fmt is not None and fmt not in ENCODING_FORMATS:
        raise UsageError(f"encoding_format must be 'float' or 'base64', not {fmt!r}")


def openai_body(request: EmbeddingRequest, route: str, claude_only: frozenset[str]) -> dict[str, Any]:
    """The JSON body of ``POST /embeddings``: model, input and the provider options given
    (``extra_body`` merged in; options only the Claude route has are a UsageError by name)."""
    check_options(request)
    body: dict[str, Any] = {"model": request.model, "input": request.input}
    for key, value in request.options.items():
        if value is None or key == "progress":
            continue
        if key in claude_only:
            raise UsageError(f"option {key!r} is not supported by the {route} route (it applies to max/* models)")
        if key == "extra_body" and isinstance(value, dict):
            body.update(value)
        else:
            body[key] = value
    return body


def load_answer(raw: bytes, content_type: str, provider: str, model: str) -> Any:
    """The JSON of an embeddings answer; MalformedResponse when it is not JSON, and an error
    object in a 200 answer a ProviderHTTPError (502) carrying it."""
    try:
        data = json.loads(raw)
    except ValueError:
        kind = "HTML" if b"<html" in raw[:200].lower() else "invalid JSON"
        raise MalformedResponse(
            f"{provider} answered {kind} ({content_type or 'no content type'}), not an embeddings list: {raw[:120]!r}",
            hint="is the base URL an OpenAI-compatible /v1 endpoint?",
            provider=provider,
            model=model,
        ) from None
    if isinstance(data, dict) and "data" not in data and "error" in data:
        err = data["error"]
        detail = err.get("message") if isinstance(err, dict) else err
        raise ProviderHTTPError(
            f"{provider} sent an error instead of embeddings: {detail}",
            provider=provider,
            model=model,
            status=502,
            body=raw.decode("utf-8", "replace")[:2000],
        )
    return data


def parse_embeddings(data: Any, request: EmbeddingRequest, provider: str, shown_model: str | None = None) -> Embeddings:
    """The vectors of an OpenAI-shaped embeddings answer, in input order. ``Embeddings.model`` is
    ``shown_model``, or ``provider/<the model the answer names>``.

    MalformedResponse when it is not one: no ``data`` list, an entry without a numeric or base64
    embedding, or not one vector per input (a silently short answer would shift every vector).
    """
    model = request.model
    try:
        if not isinstance(data, Mapping):
            raise TypeError(f"the answer is a {type(data).__name__}, not an object")
        items = data["data"]
        if not isinstance(items, list):
            raise TypeError("'data' is not a list")
        vectors: list[list[float] | None] = [None] * len(request.input)
        for position, item in enumerate(items):
            index = item.get("index", position)
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(vectors):
                raise ValueError(f"data[{position}].index {index!r} is not the position of an input")
            if vectors[index] is not None:
                raise ValueError(f"two embeddings for input {index}")
            vectors[index] = _vector(item["embedding"])
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            raise ValueError(f"{len(items)} embeddings for {len(vectors)} inputs (none for input {missing[0]})")
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
        raise MalformedResponse(
            f"{provider} answered something that is not an embeddings list for model {model!r}: {exc}",
            hint="is the model an embedding model, and the base URL an OpenAI-compatible /v1 endpoint?",
            provider=provider,
            model=model,
        ) from None
    return Embeddings(
        vectors=[v for v in vectors if v is not None],
        model=shown_model or f"{provider}/{data.get('model') or model}",
        usage=Usage(prompt_tokens=prompt_tokens),
    )


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):
        return decode_base64(value)
    if not isinstance(value, list) or not value:
        raise TypeError("an embedding is neither a list of numbers nor a base64 string")
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise TypeError(f"an embedding holds {type(x).__name__} {x!r}, not a number")
    return [float(x) for x in value]
