"""``POST /v1/embeddings`` of the scripted LLM server: deterministic vectors, scripted faults.

An embeddings request plays the next matching :class:`~llm_call.testing.Reply` of the same
script as chat requests (``match_model``; ``match_text`` against the input texts joined by
newlines): its ``fault`` is played as for a chat reply, ``latency`` waited, ``headers`` added,
``model`` shown and ``prompt_tokens`` reported (default: the words of the input). Its ``text``
is not used: each vector is :func:`embedding_vector` of its input, ``dimensions`` long (the
request's, default :data:`DEFAULT_DIMENSIONS`), as float lists or, with
``"encoding_format": "base64"``, as base64 float32 (what the openai SDK asks for by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import struct
from typing import Any

from aiohttp import web

from llm_call.providers._embeddings import encode_base64
from llm_call.testing._faults import JSON_TYPE, error_response, play_fault
from llm_call.testing._script import RecordedRequest, Script

__all__ = ["DEFAULT_DIMENSIONS", "answer_embeddings", "embedding_vector"]

#: vector length when the request does not ask for ``dimensions``
DEFAULT_DIMENSIONS = 8
#: the most ``dimensions`` the scripted server makes (a test server, not a memory test)
MAX_DIMENSIONS = 8192


def embedding_vector(text: str, dimensions: int = DEFAULT_DIMENSIONS) -> list[float]:
    """The scripted server's vector for ``text``: unit length, float32-exact values, the same for
    the same text and length in every process (derived from SHA-256, no randomness).

    >>> embedding_vector("hi") == embedding_vector("hi")
    True
    """
    seed = hashlib.sha256(text.encode("utf-8")).digest()
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(seed + block.to_bytes(4, "little")).digest()
        values.extend(n / 2**31 - 1.0 for n in struct.unpack("<8I", digest))
        block += 1
    del values[dimensions:]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def input_texts(value: Any) -> list[str] | None:
    """The request's ``input`` as texts (token arrays as their numbers joined by spaces), or None
    when it is not one of OpenAI's input forms."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return [" ".join(map(str, value))]
    texts: list[str] = []
    for item in value:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            texts.append(" ".join(map(str, item)))
        else:
            return None
    return texts


def _invalid(message: str) -> web.Response:
    return error_response("openai", 400, message)


async def answer_embeddings(script: Script, request: web.BaseRequest, rec: RecordedRequest) -> web.StreamResponse:
    """Answer one embeddings request from ``script`` (see the module docstring)."""
    body = rec.body
    if not isinstance(body, dict):
        return _invalid("the request body must be a JSON object")
    texts = input_texts(body.get("input"))
    if texts is None:
        return _invalid("input must be a string, a list of strings, or token arrays")
    dims = body.get("dimensions", DEFAULT_DIMENSIONS)
    if dims is None:
        dims = DEFAULT_DIMENSIONS
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= MAX_DIMENSIONS:
        return _invalid(f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}, not {dims!r}")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        return _invalid(f"encoding_format must be 'float' or 'base64', not {fmt!r}")
    model = body.get("model")
    if not isinstance(model, str):
        model = "scripted"
    reply = script.select(model, rec)
    if reply is None:
        shown = rec.last_user_text[:200]
        return error_response("openai", 500, f"script exhausted: no reply for model={model} input={shown!r}")
    if reply.latency > 0:
        await asyncio.sleep(reply.latency)
    fault = reply.fault
    if fault is not None and fault.kind not in ("cut_stream", "truncated_json"):
        return await play_fault(request, "openai", fault, reply.headers)
    data = []
    for i, text in enumerate(texts):
        vector = embedding_vector(text, dims)
        embedding = encode_base64(vector) if fmt == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    prompt = reply.prompt_tokens
    if prompt is None:
        prompt = max(1, sum(len(t.split()) for t in texts))
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    payload = json.dumps({"object": "list", "data": data, "model": reply.model or model, "usage": usage})
    if fault is not None:  # truncated_json (or cut_stream: there is no stream to cut)
        payload = fault.body if fault.body is not None else payload[: len(payload) // 2]
    return web.Response(text=payload, content_type=JSON_TYPE, headers=reply.headers or None)
