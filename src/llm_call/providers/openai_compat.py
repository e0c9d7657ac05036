"""The native OpenAI-compatible provider, on aiohttp.

One ``ClientSession`` per event loop, created on first use and reused by every call on that loop
(``call()`` runs on a private loop thread, so sync callers share one session too). Every transport
call goes through :func:`_translate`, the one place where aiohttp and HTTP failures become
llm_call errors:

=====================================  ===================================
401 / 403                              AuthError (hint names the key env var)
404                                    ModelNotFound
429                                    RateLimited(retry_after)
other status >= 400                    ProviderHTTPError(status, body)
connection refused / reset             ProviderConnectionError
connect / read / total timeout         ProviderTimeout
not JSON, HTML, truncated JSON         MalformedResponse
stream ends without [DONE]/finish      StreamInterrupted(partial)
=====================================  ===================================

Cancelling the calling task closes the HTTP connection (the request is not left running).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp

from ..errors import (
    AuthError,
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
from ..types import Chunk, Request, Response, Usage

if TYPE_CHECKING:
    from ..config import EndpointConfig, OpenAIConfig

__all__ = ["OpenAICompatProvider", "parse_retry_after"]

_DEFAULT_BASE = "https://api.openai.com/v1"
#: options only the Claude route understands; elsewhere they are an error, not silently dropped
_CLAUDE_ONLY = frozenset({"mcp_config", "allowed_tools", "cwd", "permission_mode", "resume", "max_turns"})
_DROP = frozenset({"progress"})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class OpenAICompatProvider:
    """Chat completions against any OpenAI-compatible base URL."""

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
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._url = self.base_url + "/chat/completions"
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._key_required = key_required
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._limit = max_connections
        self._limit_per_host = max_connections_per_host
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_openai_settings(cls, cfg: OpenAIConfig) -> OpenAICompatProvider:
        base = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE
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
        return {**self._headers, "Authorization": f"Bearer {key}"}

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, limit_per_host=self._limit_per_host, ttl_dns_cache=300
            )
            session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=json.dumps,
                skip_auto_headers=("User-Agent",),
            )
            self._sessions[loop] = session
        return session

    def _timeout(self, request: Request) -> aiohttp.ClientTimeout:
        total = request.timeout if request.timeout is not None else self._total_timeout
        return aiohttp.ClientTimeout(
            total=total, sock_connect=self._connect_timeout, sock_read=self._read_timeout
        )

    def _body(self, request: Request, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.options:
            for key, value in request.options.items():
                if key in _DROP or value is None:
                    continue
                if key in _CLAUDE_ONLY:
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
        return body

    @contextmanager
    def _translate(self, model: str) -> Iterator[None]:
        """Turn transport failures into llm_call errors (the one place that does)."""
        try:
            yield
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ProviderTimeout(
                f"{self.name}: request timed out ({type(exc).__name__})", provider=self.name, model=model
            ) from exc
        except aiohttp.ClientPayloadError as exc:
            raise StreamInterrupted(
                f"{self.name}: response body cut short: {exc}", provider=self.name, model=model
            ) from exc
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise ProviderConnectionError(
                f"{self.name}: cannot reach {self.base_url}: {exc}",
                hint="is the server running and the base URL right?",
                provider=self.name,
                model=model,
            ) from exc
        except aiohttp.ClientResponseError as exc:
            raise ProviderHTTPError(
                f"{self.name}: {exc.message}", provider=self.name, model=model, status=exc.status
            ) from exc

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

    # -- Provider protocol ----------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        model = request.model
        headers = self._auth_headers(model)
        body = self._body(request, stream=False)
        started = time.perf_counter()
        with self._translate(model):
            async with self._session().post(
                self._url, json=body, headers=headers, timeout=self._timeout(request)
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
            data = json.loads(raw_bytes)
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
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise MalformedResponse(
                f"{self.name} answered JSON without choices[0].message: {raw_bytes[:200]!r}",
                provider=self.name,
                model=model,
            ) from None
        usage = data.get("usage") or {}
        text = message.get("content") or ""
        if not isinstance(text, str):
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        return Response(
            text=text,
            model=f"{self.name}/{data.get('model') or model}",
            usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
            latency_s=latency,
            raw=data,
            finish_reason=choice.get("finish_reason"),
            tool_calls=message.get("tool_calls"),
        )

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        model = request.model
        headers = self._auth_headers(model)
        body = self._body(request, stream=True)
        answered_model = f"{self.name}/{model}"
        parts: list[str] = []
        finish: str | None = None
        usage: Usage | None = None
        done = False
        with self._translate(model):
            async with self._session().post(
                self._url, json=body, headers=headers, timeout=self._timeout(request)
            ) as resp:
                if resp.status >= 400:
                    text = (await resp.read()).decode("utf-8", "replace")
                    raise self._status_error(resp.status, resp.headers, text, model)
                ctype = resp.headers.get("Content-Type", "")
                if "text/event-stream" not in ctype:
                    # some servers ignore stream=true and answer JSON: accept a whole answer
                    whole = self._parse(await resp.read(), ctype, model, 0.0)
                    yield Chunk(text=whole.text, model=whole.model)
                    yield Chunk(model=whole.model, finish_reason=whole.finish_reason or "stop", usage=whole.usage)
                    return
                try:
                    async for line in resp.content:
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            done = True
                            break
                        try:
                            data = json.loads(payload)
                        except ValueError:
                            raise MalformedResponse(
                                f"{self.name} sent a stream event that is not JSON: {payload[:120]!r}",
                                provider=self.name,
                                model=model,
                            ) from None
                        if "error" in data and "choices" not in data:
                            err = data["error"]
                            raise ProviderHTTPError(
                                f"{self.name} sent an error in the stream: "
                                f"{err.get('message') if isinstance(err, dict) else err}",
                                provider=self.name,
                                model=model,
                                status=502,
                                body=payload.decode("utf-8", "replace")[:2000],
                            )
                        if data.get("model"):
                            answered_model = f"{self.name}/{data['model']}"
                        u = data.get("usage")
                        if u:
                            usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                        for choice in data.get("choices") or ():
                            delta = choice.get("delta") or {}
                            piece = delta.get("content")
                            if piece:
                                parts.append(piece)
                                yield Chunk(text=piece, model=answered_model)
                            if choice.get("finish_reason"):
                                finish = choice["finish_reason"]
                except asyncio.CancelledError:
                    resp.close()
                    raise
                if not done and finish is None:
                    resp.close()
                    raise StreamInterrupted(
                        f"{self.name}: stream ended after {len(parts)} chunks without [DONE] or finish_reason",
                        provider=self.name,
                        model=model,
                        partial="".join(parts),
                    )
        yield Chunk(model=answered_model, finish_reason=finish or "stop", usage=usage)

    async def aclose(self) -> None:
        sessions = list(self._sessions.items())
        self._sessions.clear()
        current: asyncio.AbstractEventLoop | None
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, session in sessions:
            if session.closed:
                continue
            if loop is current:
                await session.close()
            elif not loop.is_closed() and loop.is_running():
                fut = asyncio.run_coroutine_threadsafe(session.close(), loop)
                await asyncio.wrap_future(fut)
