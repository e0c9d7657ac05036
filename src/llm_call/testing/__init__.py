"""A scripted LLM server for tests: real sockets, OpenAI and Anthropic wire formats, faults.

:class:`ScriptedLLMServer` listens on ``127.0.0.1`` (a free port by default) and answers

- OpenAI ``POST /v1/chat/completions`` (JSON, or SSE with ``"stream": true``, including the
  ``stream_options.include_usage`` chunk and ``data: [DONE]``) and ``GET /v1/models``;
- Anthropic ``POST /v1/messages`` (JSON, or the real SSE event sequence; query strings such as
  ``?beta=true`` are fine, so the Claude Code CLI works through ``ANTHROPIC_BASE_URL``) and
  ``POST /v1/messages/count_tokens``;
- OpenAI ``POST /v1/embeddings``: deterministic vectors (:func:`embedding_vector` of each input,
  ``dimensions`` long, floats or ``encoding_format: "base64"``); each request plays the next
  matching reply of the same script, so a reply's fault, latency, headers, model and
  ``prompt_tokens`` apply (its text does not);
- ``GET``/``HEAD`` ``/`` and ``/health`` with 200; anything else with a 404 JSON error.

Each chat request plays the next matching :class:`Reply` of the script: text, tool calls, or a
:class:`Fault` (HTTP status, connection reset, malformed/HTML/truncated body, a stream cut
short, a hang), after ``latency`` seconds and with ``chunk_delay`` between stream chunks, with
the reply's extra ``headers`` (e.g. :func:`unified_ratelimit_headers`, a subscription's quota).
Every request is recorded in :attr:`ScriptedLLMServer.requests` as a :class:`RecordedRequest`.

Example::

    import openai
    from llm_call.testing import Fault, Reply, ScriptedLLMServer

    async def test_retries_after_429():
        script = [
            Reply(fault=Fault.http(429, {"Retry-After": "0"})),
            Reply(text="Paris", match_text="capital of France"),
        ]
        async with ScriptedLLMServer(script, default=Reply(text="?")) as srv:
            client = openai.AsyncOpenAI(base_url=srv.openai_base_url, api_key="x")
            answer = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "capital of France?"}]
            )
            assert answer.choices[0].message.content == "Paris"
            assert len(srv.requests) == 2  # the SDK retried the 429 itself
            assert srv.requests[-1].last_user_text == "capital of France?"

Synchronous code and subprocesses use the threaded mode::

    with ScriptedLLMServer([{"text": "hi"}]).running() as srv:
        subprocess.run(["claude", "-p", "hello"], env={..., "ANTHROPIC_BASE_URL": srv.url})

From a shell: ``python -m llm_call.testing --port 8123 --script script.json`` where
``script.json`` is a JSON list of reply dicts (see :meth:`Reply.from_dict`) or
``{"script": [...], "default": {...}}``.
"""

from llm_call.testing._embeddings import DEFAULT_DIMENSIONS, embedding_vector
from llm_call.testing._script import (
    FAULT_KINDS,
    Fault,
    RecordedRequest,
    Reply,
    ReplyLike,
    Script,
    ToolCall,
    unified_ratelimit_headers,
)
from llm_call.testing._server import ScriptedLLMServer

__all__ = [
    "DEFAULT_DIMENSIONS",
    "FAULT_KINDS",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ReplyLike",
    "Script",
    "ScriptedLLMServer",
    "ToolCall",
    "embedding_vector",
    "unified_ratelimit_headers",
]
