"""The scripted LLM server: aiohttp's low-level server speaking the OpenAI and Anthropic formats
(embeddings in ``_embeddings.py``, faults and error bodies in ``_faults.py``).

The per-request path is kept lean because benchmarks push thousands of calls through it: one
JSON parse of the request, one ``json.dumps`` per response (stream chunks are built from a
pre-serialised prefix), no logging, and a whole stream written in one ``write`` unless
``chunk_delay`` asks for gaps. aiohttp's ``handler_cancellation`` is on, so a handler whose
client went away (a hang, a slow stream) is cancelled instead of lingering.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from functools import partial
from typing import Any

from aiohttp import web

from llm_call.testing._embeddings import answer_embeddings
from llm_call.testing._faults import JSON_TYPE as _JSON
from llm_call.testing._faults import error_response as _error
from llm_call.testing._faults import json_response as _json
from llm_call.testing._faults import play_fault as _play_fault
from llm_call.testing._script import RecordedRequest, Reply, ReplyLike, Script

__all__ = ["ScriptedLLMServer"]

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_ids = itertools.count(1)
_Route = Callable[[web.BaseRequest, RecordedRequest], Awaitable[web.StreamResponse]]



class ScriptedLLMServer:
    """An LLM server on 127.0.0.1 that plays a script and records every request.

    Use it as an async context manager (``async with ScriptedLLMServer([...]) as srv``), or in
    a thread of its own for synchronous code and subprocesses
    (``with ScriptedLLMServer([...]).running() as srv``). Point clients at
    :attr:`openai_base_url` or :attr:`anthropic_base_url`.

    For each request the first reply in script order that is not used up and whose ``match_*``
    fields match is played; if none, ``default`` (unlimited) if given, else HTTP 500
    ``script exhausted: …`` in the API's error shape.
    """

    def __init__(
        self,
        script: Sequence[ReplyLike] = (),
        *,
        default: ReplyLike | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.script = Script(script, default)
        self.host = host
        self.requests: list[RecordedRequest] = []
        self._want_port = port
        self._port: int | None = None
        self._runner: web.ServerRunner | None = None
        self._web_server: web.Server | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._routes: dict[tuple[str, str], _Route] = {
            ("POST", "/v1/chat/completions"): partial(self._answer, api="openai"),
            ("POST", "/chat/completions"): partial(self._answer, api="openai"),
            ("POST", "/v1/embeddings"): partial(answer_embeddings, self.script),
            ("POST", "/embeddings"): partial(answer_embeddings, self.script),
            ("POST", "/v1/messages"): partial(self._answer, api="anthropic"),
            ("POST", "/v1/messages/count_tokens"): self._count_tokens,
            ("GET", "/v1/models"): self._models,
            ("GET", "/models"): self._models,
            ("GET", "/"): self._health,
            ("HEAD", "/"): self._health,
            ("GET", "/health"): self._health,
            ("HEAD", "/health"): self._health,
        }

    # -- addresses -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for OpenAI clients: ``url + "/v1"``."""
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for Anthropic clients and ``ANTHROPIC_BASE_URL``: ``url``."""
        return self.url

    @property
    def in_flight(self) -> int:
        """Requests being handled right now."""
        return len(self._in_flight)

    @property
    def active_connections(self) -> int:
        """Open client connections (idle keep-alive ones included)."""
        return 0 if self._web_server is None else len(self._web_server.connections)

    # -- script --------------------------------------------------------------------------

    def add(self, *replies: ReplyLike) -> None:
        """Append replies to the script (safe from any thread)."""
        self.script.add(*replies)

    def clear_requests(self) -> None:
        self.requests.clear()

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving on the running loop."""
        if self._runner is not None:
            raise RuntimeError("the server is already started")
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._want_port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._web_server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(self._web_server, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        site = web.SockSite(runner, sock, backlog=4096)
        await site.start()
        self._runner = runner
        self._port = sock.getsockname()[1]

    async def stop(self) -> None:
        """Stop serving; cancels hanging and in-flight handlers, so it returns quickly."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.sleep(0)
        await runner.cleanup()
        self._web_server = None

    async def __aenter__(self) -> ScriptedLLMServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def start_in_thread(self) -> ScriptedLLMServer:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        if self._thread is not None:
            raise RuntimeError("the server is already running in a thread")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # handed to the starting thread below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        thread = threading.Thread(target=run, name="ScriptedLLMServer", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        self._thread, self._loop = thread, loop
        return self

    def stop_thread(self, timeout: float = 5.0) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._thread = self._loop = None
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    @contextlib.contextmanager
    def running(self) -> Iterator[ScriptedLLMServer]:
        """``with ScriptedLLMServer(...).running() as srv:`` serves from a thread."""
        self.start_in_thread()
        try:
            yield self
        finally:
            self.stop_thread()

    def __enter__(self) -> ScriptedLLMServer:
        return self.start_in_thread()

    def __exit__(self, *exc_info: object) -> None:
        self.stop_thread()

    # -- request handling ----------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            raw = await request.read()
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
            method, path = request.method, request.path
            headers = {k.lower(): v for k, v in request.headers.items()}
            if path.startswith("/v1/messages") or "anthropic-version" in headers:
                api = "anthropic"
            elif path.endswith(("/chat/completions", "/models", "/embeddings")):
                api = "openai"
            else:
                api = "other"
            rec = RecordedRequest(
                method, path, dict(request.query), headers, body, raw, api, time.time()
            )
            self.requests.append(rec)
            route = self._routes.get((method, path))
            if route is None:
                return _error(api, 404, f"not found: {method} {path}")
            return await route(request, rec)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _health(self, request: web.BaseRequest, rec: RecordedRequest) -> web.StreamResponse:
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def _models(self, request: web.BaseRequest, rec: RecordedRequest) -> web.StreamResponse:
        names = self.script.model_names() or ["scripted"]
        if rec.api == "anthropic":
            created = "2025-01-01T00:00:00Z"
            models = [dict(type="model", id=n, display_name=n, created_at=created) for n in names]
            return _json(dict(data=models, has_more=False, first_id=names[0], last_id=names[-1]))
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "scripted"} for n in names]
        return _json({"object": "list", "data": data})

    async def _count_tokens(
        self, request: web.BaseRequest, rec: RecordedRequest
    ) -> web.StreamResponse:
        return _json({"input_tokens": rec.prompt_words})

    async def _answer(
        self, request: web.BaseRequest, rec: RecordedRequest, api: str
    ) -> web.StreamResponse:
        body = rec.body
        if not isinstance(body, dict):
            return _error(api, 400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str):
            model = "scripted"
        reply = self.script.select(model, rec)
        if reply is None:
            text = rec.last_user_text
            if len(text) > 200:
                text = text[:200] + "…"
            return _error(api, 500, f"script exhausted: no reply for model={model} text={text!r}")
        if reply.latency > 0:
            await asyncio.sleep(reply.latency)
        fault = reply.fault
        if fault is not None and fault.kind not in ("cut_stream", "truncated_json"):
            return await _play_fault(request, api, fault, reply.headers)
        n = next(_ids)
        shown_model = reply.model or model
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = rec.prompt_words
        completion = reply.output_tokens()
        if rec.stream and (fault is None or fault.kind == "cut_stream"):
            if api == "openai":
                options = body.get("stream_options")
                usage = isinstance(options, dict) and bool(options.get("include_usage"))
                head, items, tail = _openai_stream(reply, shown_model, n, prompt, completion, usage)
            else:
                head, items, tail = _anthropic_stream(reply, shown_model, n, prompt, completion)
            cut = fault.after_chunks if fault is not None and fault.kind == "cut_stream" else None
            return await _send_stream(
                request, head, items, tail, reply.chunk_delay, cut, reply.headers
            )
        if api == "openai":
            data = _openai_completion(reply, shown_model, n, prompt, completion)
        else:
            data = _anthropic_message(reply, shown_model, n, prompt, completion)
        payload = json.dumps(data)
        if fault is not None:  # truncated_json, or cut_stream on a non-stream request
            payload = fault.body if fault.body is not None else payload[: len(payload) // 2]
        return web.Response(text=payload, content_type=_JSON, headers=reply.headers or None)


async def _send_stream(
    request: web.BaseRequest,
    head: str,
    items: list[str],
    tail: str,
    delay: float,
    cut: int | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={**_SSE_HEADERS, **headers} if headers else _SSE_HEADERS)
    await resp.prepare(request)
    try:
        if cut is not None:
            items = items[: max(cut, 0)]
        if delay <= 0:
            parts = [head, *items] if cut is not None else [head, *items, tail]
            await resp.write("".join(parts).encode())
        else:
            # head goes with the first item, tail with the last; `delay` between writes
            writes = [head + items[0], *items[1:]] if items else [head]
            if cut is None:
                writes.append(tail)
            for i, piece in enumerate(writes):
                if i:
                    await asyncio.sleep(delay)
                await resp.write(piece.encode())
        if cut is not None:
            transport = request.transport
            if transport is not None:
                transport.close()  # flushes what was written, then FIN: no end marker
            return resp
        await resp.write_eof()
    except ConnectionError:
        pass  # the client went away; nothing to tell it
    return resp


# -- wire formats ------------------------------------------------------------------------


def _tool_id(prefix: str, n: int, i: int, given: str | None) -> str:
    return given if given is not None else f"{prefix}_scripted{n:06d}{i}"


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return dict(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def _openai_completion(reply: Reply, model: str, n: int, prompt: int, completion: int) -> Any:
    text = reply.full_text
    content = text if text or not reply.tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": _tool_id("call", n, i, c.id),
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for i, c in enumerate(reply.tool_calls)
        ]
    finish = "tool_calls" if reply.tool_calls else "stop"
    return {
        "id": f"chatcmpl-scripted{n:06d}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(prompt, completion),
    }


def _openai_stream(
    reply: Reply, model: str, n: int, prompt: int, completion: int, include_usage: bool
) -> tuple[str, list[str], str]:
    envelope = dict(
        id=f"chatcmpl-scripted{n:06d}",
        object="chat.completion.chunk",
        created=int(time.time()),
        model=model,
    )
    base = "data: " + json.dumps(envelope)[:-1]
    pre = base + ',"choices":[{"index":0,"delta":'
    post = ',"logprobs":null,"finish_reason":null}]}\n\n'
    head = pre + '{"role":"assistant","content":""}' + post
    items = [pre + '{"content":' + p + "}" + post for p in reply.encoded_pieces()]
    for i, call in enumerate(reply.tool_calls):
        function = {"name": call.name, "arguments": ""}
        start = {"index": i, "id": _tool_id("call", n, i, call.id), "type": "function"}
        start["function"] = function
        items.append(pre + '{"tool_calls":[' + json.dumps(start) + "]}" + post)
        for piece in call.argument_pieces():
            delta = {"index": i, "function": {"arguments": piece}}
            items.append(pre + '{"tool_calls":[' + json.dumps(delta) + "]}" + post)
    finish = "tool_calls" if reply.tool_calls else "stop"
    tail = pre + '{},"logprobs":null,"finish_reason":"' + finish + '"}]}\n\n'
    if include_usage:
        tail += base + ',"choices":[],"usage":' + json.dumps(_usage(prompt, completion)) + "}\n\n"
    return head, items, tail + "data: [DONE]\n\n"


def _anthropic_message(
    reply: Reply | None, model: str, n: int, prompt: int, completion: int
) -> dict[str, Any]:
    """The message object; with ``reply=None`` the empty one that ``message_start`` carries."""
    content: list[dict[str, Any]] = []
    stop_reason = None
    if reply is not None:
        text = reply.full_text
        if text or not reply.tool_calls:
            content.append({"type": "text", "text": text})
        for i, c in enumerate(reply.tool_calls):
            tool_id = _tool_id("toolu", n, i, c.id)
            content.append(
                {"type": "tool_use", "id": tool_id, "name": c.name, "input": c.arguments}
            )
        stop_reason = "tool_use" if reply.tool_calls else "end_turn"
    usage = dict(input_tokens=prompt, output_tokens=completion)
    usage.update(cache_creation_input_tokens=0, cache_read_input_tokens=0)
    return dict(
        id=f"msg_scripted{n:06d}",
        type="message",
        role="assistant",
        model=model,
        content=content,
        stop_reason=stop_reason,
        stop_sequence=None,
        usage=usage,
    )


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _block_start(index: int, block: dict[str, Any]) -> str:
    return _sse(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def _block_stop(index: int) -> str:
    return f'event: content_block_stop\ndata: {{"type":"content_block_stop","index":{index}}}\n\n'


def _anthropic_stream(
    reply: Reply, model: str, n: int, prompt: int, completion: int
) -> tuple[str, list[str], str]:
    message = _anthropic_message(None, model, n, prompt, 1)
    head = _sse("message_start", {"type": "message_start", "message": message})
    head += 'event: ping\ndata: {"type": "ping"}\n\n'
    # (block start, its delta events); a block's start rides with its first delta
    blocks: list[tuple[str, list[str]]] = []
    pieces = reply.encoded_pieces()
    if pieces or not reply.tool_calls:
        start = _block_start(0, {"type": "text", "text": ""})
        pre = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        pre += '"delta":{"type":"text_delta","text":'
        blocks.append((start, [pre + p + "}}\n\n" for p in pieces]))
    for i, call in enumerate(reply.tool_calls):
        index = len(blocks)
        tool_id = _tool_id("toolu", n, i, call.id)
        start = _block_start(
            index, {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}
        )
        pre = f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index},'
        json_deltas = [
            pre + '"delta":{"type":"input_json_delta","partial_json":' + json.dumps(p) + "}}\n\n"
            for p in call.argument_pieces()
        ]
        blocks.append((start, json_deltas))
    items: list[str] = []
    for index, (start, deltas) in enumerate(blocks):
        prefix = _block_stop(index - 1) + start if index else start
        items.append(prefix + deltas[0] if deltas else prefix)
        items.extend(deltas[1:])
    stop_reason = "tool_use" if reply.tool_calls else "end_turn"
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    end = {"type": "message_delta", "delta": delta, "usage": {"output_tokens": completion}}
    tail = _block_stop(len(blocks) - 1) + _sse("message_delta", end)
    tail += 'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    return head, items, tail
