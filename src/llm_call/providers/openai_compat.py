"""The native OpenAI-compatible provider, on aiohttp.

One ``ClientSession`` per event loop, created on first use and reused by every call on that loop
(``call()`` runs on a private loop thread, so sync callers share one session too). The session is
closed when its loop shuts down (``asyncio.run`` and pytest-asyncio finalise async generators at
the end; a suspended one closes the session), so repeated ``asyncio.run(...)`` neither leaks
sockets nor warns about unclosed sessions. :func:`_translate` is the one place where aiohttp
and HTTP failures become llm_call errors:

=====================================  ===================================
401 / 403                              AuthError (hint names the key env var)
404                                    ModelNotFound
429                                    RateLimited(retry_after)
other status >= 400                    ProviderHTTPError(status, body)
connection refused / reset             ProviderConnectionError
connect / read / total timeout         ProviderTimeout
not JSON, HTML, truncated JSON         MalformedResponse
stream ends without [DONE]/finish,     StreamInterrupted(partial)
or breaks once it has started
=====================================  ===================================

Errors reach HTTP clients of ``llm-call serve``, so they carry no credential (the key and header
values an upstream echoes become ``***``, see ``_redact.py``) and name a configured base URL by its
setting (``endpoints.NAME.base_url``), with the OS error instead of aiohttp's host-bearing text.

Cancelling the calling task closes the HTTP connection (the request is not left running).
The stop string that ended an answer, when the upstream names it (vLLM, SGLang), is
``Response.extra["stop_sequence"]``; a stream has it, and a refusal (``delta.refusal``), in the
``data`` of its last chunk.

The hot path is kept lean (it is measured by ``bench/overhead.py``): the body is encoded once
(orjson when installed), SSE is split from raw socket blocks rather than awaited line by line,
and default timeouts and auth headers are built once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import aiohttp

from ..errors import (
    AuthError,
    ConfigError,
    MalformedResponse,
    ModelNotFound,
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderTimeout,
    RateLimited,
    StreamInterrupted,
    UsageError,
)
from ..types import Chunk, Request, Response, ToolCall, ToolCallDelta, Usage
from ._embeddings import load_answer, openai_body, parse_embeddings
from ._http_sessions import LoopSessions
from ._redact import scrub_error
from .base import CLAUDE_ONLY_OPTIONS, parse_retry_after, tool_deltas

if TYPE_CHECKING:
    from ..config import EndpointConfig, OpenAIConfig
    from ..types import EmbeddingRequest, Embeddings

__all__ = ["OpenAICompatProvider", "parse_retry_after"]

_log = logging.getLogger("llm_call.openai")

_DEFAULT_BASE = "https://api.openai.com/v1"
#: options only the Claude route understands; elsewhere they are an error, not silently dropped
_DROP = frozenset({"progress"})
#: OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...): they take ``max_completion_tokens`` only
_REASONING = re.compile(r"^(o[1-9]|gpt-5)")
_MALFORMED_SHAPE = (KeyError, IndexError, TypeError, AttributeError, ValueError)


_loads: Callable[[bytes], Any]
try:
    import orjson

    _loads = orjson.loads

    def _dumps(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj)
        except TypeError:  # e.g. non-str keys: the stdlib is more lenient; it raises if it cannot
            return json.dumps(obj).encode()

except ImportError:  # pragma: no cover - orjson is optional
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj).encode()


def _reason(exc: BaseException) -> str:
    """What went wrong on the connection, without the host and URL aiohttp writes into its
    messages (``Cannot connect to host 10.0.0.5:8000 ...``): the OS error's text, else the type."""
    err = getattr(exc, "os_error", None) or exc
    if isinstance(err, socket.gaierror) and err.strerror:
        return f"{type(exc).__name__}: {err.strerror}"
    if isinstance(err, OSError) and isinstance(err.errno, int) and err.errno > 0:
        return f"{type(exc).__name__}: {os.strerror(err.errno)}"
    return type(exc).__name__


def _usage(data: Any) -> Usage:
    if not data:
        return Usage()
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


def _matched_stop(choice: Any) -> dict[str, Any]:
    """``{"stop_sequence": s}`` when the upstream says which stop string ended the answer (vLLM's
    ``stop_reason``, SGLang's ``matched_stop``; OpenAI does not say); else ``{}``."""
    matched = choice.get("stop_reason")
    if not isinstance(matched, str):
        matched = choice.get("matched_stop")
    return {"stop_sequence": matched} if isinstance(matched, str) and matched else {}


class _StreamState:
    __slots__ = ("calls", "details", "done", "finish", "model", "parts", "pending", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.pending: list[ToolCallDelta] = []  # tool-call fragments of the current event
        self.calls = 0  # tool-call fragments seen in all
        self.finish: str | None = None
        self.details: dict[str, Any] = {}  # the last chunk's data: stop_sequence, refusal
        self.usage: Usage | None = None
        self.done = False


class OpenAICompatProvider:
    """Chat completions and embeddings against any OpenAI-compatible base URL."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None,
        api_key_env: str | None,
        key_required: bool,
        headers: dict[str, str] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        total_timeout: float | None = None,
        max_connections: int = 1000,
        max_connections_per_host: int = 0,
        base_url_source: str = "base_url",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{base_url_source}={base_url!r} is not an http:// or https:// URL",
                hint="use e.g. http://127.0.0.1:8000/v1",
            )
        self.name = name
        self.base_url = base_url.rstrip("/")
        # errors name where the base URL is configured, not the URL: they reach HTTP clients
        self._where = self.base_url if base_url_source == "base_url" else base_url_source
        self._url = self.base_url + "/chat/completions"
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._key_required = key_required
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._header_values = list((headers or {}).values())  # may be credentials (api-key: ...)
        self._keyed: tuple[str, dict[str, str]] | None = None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._default_timeout = aiohttp.ClientTimeout(
            total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._http = LoopSessions(max_connections, max_connections_per_host)

    @classmethod
    def from_openai_settings(cls, cfg: OpenAIConfig) -> OpenAICompatProvider:
        if cfg.base_url:
            base, source = cfg.base_url, "openai.base_url"
        elif os.environ.get("OPENAI_BASE_URL"):
            base, source = os.environ["OPENAI_BASE_URL"], "OPENAI_BASE_URL"
        else:
            base, source = _DEFAULT_BASE, "base_url"
        return cls(
            name="openai",
            base_url=base,
            api_key=None,
            api_key_env=cfg.api_key_env,
            key_required=True,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            total_timeout=cfg.total_timeout,
            max_connections=cfg.max_connections,
            max_connections_per_host=cfg.max_connections_per_host,
            base_url_source=source,
        )

    @classmethod
    def from_endpoint(cls, name: str, ep: EndpointConfig, cfg: OpenAIConfig) -> OpenAICompatProvider:
        return cls(
            name=name,
            base_url=ep.base_url,
            api_key=ep.api_key,
            api_key_env=ep.api_key_env,
            key_required=ep.api_key_env is not None,
            headers=ep.headers,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            total_timeout=cfg.total_timeout,
            max_connections=ep.max_connections or cfg.max_connections,
            max_connections_per_host=cfg.max_connections_per_host,
            base_url_source=f"endpoints.{name}.base_url",
        )

    # -- plumbing -------------------------------------------------------------------------

    def _auth_headers(self, model: str) -> dict[str, str]:
        key = self._api_key
        if key is None and self._api_key_env:
            key = os.environ.get(self._api_key_env)
        if not key:
            if self._key_required:
                raise AuthError(
                    f"no API key for {self.name}: environment variable {self._api_key_env} is not set",
                    hint=f"export {self._api_key_env}=...",
                    provider=self.name,
                    model=model,
                )
            return self._headers
        keyed = self._keyed
        if keyed is None or keyed[0] != key:
            keyed = (key, {**self._headers, "Authorization": f"Bearer {key}"})
            self._keyed = keyed
        return keyed[1]

    def _session(self) -> aiohttp.ClientSession:
        return self._http.get()

    def _timeout(self, request: Request | EmbeddingRequest) -> aiohttp.ClientTimeout:
        if request.timeout is None:
            return self._default_timeout
        return aiohttp.ClientTimeout(
            total=request.timeout, sock_connect=self._connect_timeout, sock_read=self._read_timeout
        )

    def _body(self, request: Request, stream: bool) -> bytes:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:  # OpenAI's reasoning models refuse the older name
            body["max_completion_tokens" if _REASONING.match(request.model) else "max_tokens"] = request.max_tokens
        if request.options:
            for key, value in request.options.items():
                if key in _DROP or value is None:
                    continue
                if key in CLAUDE_ONLY_OPTIONS:
                    raise UsageError(
                        f"option {key!r} is not supported by the {self.name} route "
                        "(it applies to max/* models served by the Claude Code CLI)",
                    )
                if key == "extra_body" and isinstance(value, dict):
                    body.update(value)
                else:
                    body[key] = value
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        try:
            return _dumps(body)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"the request for {self.name} cannot be sent as JSON: {exc}") from None

    @contextmanager
    def _translate(self, model: str) -> Iterator[None]:
        """Turn transport failures into llm_call errors (the one place that does)."""
        try:
            yield
        except ProviderError as exc:
            scrub_error(exc, self._secrets())
            raise
        except TimeoutError as exc:  # includes aiohttp's ServerTimeoutError/ConnectionTimeoutError
            raise ProviderTimeout(
                f"{self.name}: request timed out ({type(exc).__name__})",
                hint="raise timeout= or the configured timeouts if the model is just slow",
                provider=self.name,
                model=model,
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise ProviderConnectionError(
                f"{self.name}: response body cut short: {_reason(exc)}", provider=self.name, model=model
            ) from exc
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise ProviderConnectionError(
                f"{self.name}: cannot reach {self._where}: {_reason(exc)}",
                hint="is the server running and the base URL right?",
                provider=self.name,
                model=model,
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderConnectionError(
                f"{self.name}: HTTP exchange with {self._where} failed: {_reason(exc)}",
                provider=self.name,
                model=model,
            ) from exc

    def _secrets(self) -> list[str | None]:
        """Credentials this provider sends: its key and the configured headers' values."""
        key = self._api_key or (os.environ.get(self._api_key_env) if self._api_key_env else None)
        return [key, *self._header_values]

    def _status_error(self, status: int, headers: Any, text: str, model: str) -> ProviderError:
        detail = text[:500]
        try:
            err = json.loads(text).get("error")
            if isinstance(err, dict) and err.get("message"):
                detail = str(err["message"])
            elif isinstance(err, str):
                detail = err
        except (ValueError, AttributeError):
            pass
        msg = f"{self.name} returned HTTP {status} for model {model!r}: {detail}"
        if status in (401, 403):
            hint = (
                f"check the key in ${self._api_key_env}" if self._api_key_env else "check the endpoint's api_key"
            )
            return AuthError(msg, hint=hint, provider=self.name, model=model)
        if status == 404:
            return ModelNotFound(
                msg, hint="check the model name and the base URL", provider=self.name, model=model
            )
        if status == 429:
            return RateLimited(
                msg,
                provider=self.name,
                model=model,
                retry_after=parse_retry_after(headers.get("Retry-After")),
            )
        return ProviderHTTPError(msg, provider=self.name, model=model, status=status, body=text[:2000])

    def _error_in_body(self, err: Any, raw: bytes, model: str, where: str) -> ProviderHTTPError:
        detail = err.get("message") if isinstance(err, dict) else err
        return ProviderHTTPError(
            f"{self.name} sent an error {where}: {detail}",
            provider=self.name,
            model=model,
            status=502,
            body=raw.decode("utf-8", "replace")[:2000],
        )

    # -- Provider protocol ----------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model
        headers = self._auth_headers(model)
        body = self._body(request, stream=False)
        started = time.perf_counter()
        with self._translate(model):
            async with self._session().post(
                self._url, data=body, headers=headers, timeout=self._timeout(request)
            ) as resp:
                raw_bytes = await resp.read()
                if resp.status >= 400:
                    raise self._status_error(
                        resp.status, resp.headers, raw_bytes.decode("utf-8", "replace"), model
                    )
                content_type = resp.headers.get("Content-Type", "")
            return self._parse(raw_bytes, content_type, model, time.perf_counter() - started)

    def _parse(self, raw_bytes: bytes, content_type: str, model: str, latency: float) -> Response:
        try:
            data = _loads(raw_bytes)
        except ValueError:
            kind = "HTML" if b"<html" in raw_bytes[:200].lower() else "invalid JSON"
            raise MalformedResponse(
                f"{self.name} answered {kind} ({content_type or 'no content type'}), not a chat completion: "
                f"{raw_bytes[:120]!r}",
                hint="is the base URL an OpenAI-compatible /v1 endpoint?",
                provider=self.name,
                model=model,
            ) from None
        try:
            if "choices" not in data and "error" in data:
                raise self._error_in_body(data["error"], raw_bytes, model, "instead of an answer")
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content")
            if text is None:
                text = ""
            elif not isinstance(text, str):
                text = "".join(p["text"] for p in text if p.get("type") == "text")
            return Response(
                text=text,
                model=f"{self.name}/{data.get('model') or model}",
                usage=_usage(data.get("usage")),
                latency_s=latency,
                raw=data,
                finish_reason=choice.get("finish_reason"),
                tool_calls=[ToolCall.from_dict(c) for c in message.get("tool_calls") or ()],
                extra=_matched_stop(choice),
            )
        except _MALFORMED_SHAPE:
            raise MalformedResponse(
                f"{self.name} answered JSON that is not a chat completion: {raw_bytes[:200]!r}",
                provider=self.name,
                model=model,
            ) from None

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        model = request.model
        headers = self._auth_headers(model)
        body = self._body(request, stream=True)
        st = _StreamState(f"{self.name}/{model}")
        with self._translate(model):
            async with self._session().post(
                self._url, data=body, headers=headers, timeout=self._timeout(request)
            ) as resp:
                if resp.status >= 400:
                    text = (await resp.read()).decode("utf-8", "replace")
                    raise self._status_error(resp.status, resp.headers, text, model)
                ctype = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in ctype:
                    # some servers ignore stream=true and answer JSON: accept a whole answer
                    whole = self._parse(await resp.read(), ctype, model, 0.0)
                    deltas = [
                        ToolCallDelta(i, c.id, c.name, c.arguments) for i, c in enumerate(whole.tool_calls)
                    ]
                    yield Chunk(text=whole.text, model=whole.model, tool_calls=deltas)
                    yield Chunk(
                        model=whole.model, finish_reason=whole.finish_reason or "stop", usage=whole.usage, data=whole.extra or None
                    )
                    return
                try:
                    buf = b""
                    async for block in resp.content.iter_any():
                        if buf:
                            block = buf + block
                        lines = block.split(b"\n")
                        buf = lines.pop()
                        for line in lines:
                            if not line.startswith(b"data:"):
                                continue  # blank separators, comments, event: and id: lines
                            piece = self._event(line, st, model)
                            if st.pending:
                                yield self._tool_chunk(piece, st)
                            elif piece:
                                yield Chunk(text=piece, model=st.model)
                            elif st.done:
                                break
                        if st.done:
                            break
                    else:
                        if buf:  # a last line without its newline
                            piece = self._event(buf, st, model)
                            if st.pending:
                                yield self._tool_chunk(piece, st)
                            elif piece:
                                yield Chunk(text=piece, model=st.model)
                except asyncio.CancelledError:
                    resp.close()
                    raise
                except TimeoutError:
                    resp.close()
                    raise
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError) as exc:
                    resp.close()
                    raise self._interrupted(st, model, f"the connection broke: {_reason(exc)}") from exc
                if not st.done and st.finish is None:
                    resp.close()
                    raise self._interrupted(st, model, "the stream ended without [DONE] or finish_reason")
                yield Chunk(model=st.model, finish_reason=st.finish or "stop", usage=st.usage, data=st.details or None)
                if not resp.content.at_eof():
                    await self._drain(resp)

    async def _drain(self, resp: aiohttp.ClientResponse) -> None:
        """Read what follows ``[DONE]`` so the connection can be reused (as the openai SDK does)."""
        try:
            async for _ in resp.content.iter_any():
                pass
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            # the answer is complete; only the connection is lost
            _log.debug("%s: error after [DONE], closing the connection: %r", self.name, exc)
            resp.close()

    @staticmethod
    def _tool_chunk(piece: str | None, st: _StreamState) -> Chunk:
        deltas, st.pending = st.pending, []
        st.calls += len(deltas)
        return Chunk(text=piece or "", model=st.model, tool_calls=deltas)

    def _interrupted(self, st: _StreamState, model: str, why: str) -> StreamInterrupted:
        return StreamInterrupted(
            f"{self.name}: stream of {model!r} interrupted after {len(st.parts)} chunks: {why}",
            provider=self.name,
            model=model,
            partial="".join(st.parts),
        )

    def _event(self, line: bytes, st: _StreamState, model: str) -> str | None:
        """Apply one SSE line to ``st``; return its text delta, if any."""
        if not line.startswith(b"data:"):
            return None
        payload = line[5:].strip()
        if not payload:
            return None
        if payload == b"[DONE]":
            st.done = True
            return None
        try:
            data = _loads(payload)
        except ValueError:
            raise MalformedResponse(
                f"{self.name} sent a stream event that is not JSON: {payload[:120]!r}",
                provider=self.name,
                model=model,
            ) from None
        text: str | None = None
        try:
            choices = data.get("choices")
            if choices is None and "error" in data:
                raise self._error_in_body(data["error"], payload, model, "in the stream")
            answered = data.get("model")
            if answered:
                st.model = f"{self.name}/{answered}"
            u = data.get("usage")
            if u:
                st.usage = _usage(u)
            for choice in choices or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                calls = delta.get("tool_calls")
                if calls:
                    st.pending.extend(tool_deltas(calls))
                if isinstance(delta.get("refusal"), str):
                    st.details["refusal"] = st.details.get("refusal", "") + delta["refusal"]
                if piece:
                    if not isinstance(piece, str):
                        raise TypeError("content is not a string")
                    st.parts.append(piece)
                    text = piece if text is None else text + piece
                reason = choice.get("finish_reason")
                if reason:
                    st.finish = reason
                    st.details.update(_matched_stop(choice))
        except _MALFORMED_SHAPE:
            raise MalformedResponse(
                f"{self.name} sent a stream event that is not a chat completion chunk: {payload[:200]!r}",
                provider=self.name,
                model=model,
            ) from None
        return text

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """``POST {base_url}/embeddings``, failures translated as for chat (``_embeddings.py``)."""
        model = request.model
        body = _dumps(openai_body(request, self.name, CLAUDE_ONLY_OPTIONS))
        headers = self._auth_headers(model)
        with self._translate(model):
            async with self._session().post(
                self.base_url + "/embeddings", data=body, headers=headers, timeout=self._timeout(request)
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._status_error(resp.status, resp.headers, raw.decode("utf-8", "replace"), model)
                content_type = resp.headers.get("Content-Type", "")
        data = load_answer(raw, content_type, self.name, model)
        return parse_embeddings(data, request, self.name)

    async def aclose(self) -> None:
        await self._http.aclose()
