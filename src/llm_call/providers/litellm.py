"""Every other model string, through LiteLLM (imported on first use: it costs ~3 s and ~200 MB).

``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set before the import so LiteLLM never fetches its price
list over the network. LiteLLM's own retries are switched off (``num_retries=0``,
``max_retries=0``): retrying is llm_call's job (``retry.py``), and one call is one request.

LiteLLM's exceptions are translated to llm_call's tree in one place, :meth:`LiteLLMProvider._translate`.
They derive from the ``openai`` SDK's classes; the mapping goes by class, then by status:

=========================================  =====================================
AuthenticationError, PermissionDeniedError  AuthError
NotFoundError                               ModelNotFound
RateLimitError                              RateLimited(retry_after from headers)
Timeout                                     ProviderTimeout
MidStreamFallbackError (a stream broke)     StreamInterrupted(partial)
APIConnectionError "Unable to get json"     MalformedResponse (HTML, truncated JSON)
APIConnectionError, "connection reset"      ProviderConnectionError
BadRequestError "LLM Provider NOT provided" ConfigError (unknown route)
any other status error                      ProviderHTTPError(status)
=========================================  =====================================

Every error leaves with the credentials of the environment (``*_API_KEY``, ``*_TOKEN``...)
replaced by ``***`` (``_redact.py``): an upstream's 401 may quote the key LiteLLM sent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthError,
    ConfigError,
    LLMCallError,
    MalformedResponse,
    ModelNotFound,
    ProviderConnectionError,
    ProviderError,
    ProviderFailed,
    ProviderHTTPError,
    ProviderTimeout,
    RateLimited,
    StreamInterrupted,
    UsageError,
)
from ..types import Chunk, Request, Response, ToolCall, ToolCallDelta, Usage
from ._embeddings import openai_body, parse_embeddings
from ._redact import env_locations, env_secrets, scrub_error
from .base import CLAUDE_ONLY_OPTIONS

if TYPE_CHECKING:
    from ..types import EmbeddingRequest, Embeddings

__all__ = ["LiteLLMProvider", "import_litellm"]

_CONNECTION_BROKE = ("Connection reset", "Server disconnected", "Connection aborted", "ConnectionResetError")


def import_litellm() -> Any:
    """Import litellm offline-safe, or raise ConfigError with the install command."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError:
        raise ConfigError(
            "this model needs the LiteLLM route, and litellm is not installed",
            hint="pip install 'llm-call[litellm]'",
        ) from None
    litellm.suppress_debug_info = True
    return litellm


#: schema nodes a tool's parameters (or a response_format schema) may expand to once every $ref
#: is inlined, as LiteLLM does for some providers (Gemini, Vertex AI) without a bound of its own
MAX_EXPANDED_SCHEMA_NODES = 20_000


def _expanded_nodes(schema: Any, cap: int) -> int:
    """Nodes of ``schema`` with its ``#/$defs/...`` (``#/definitions/...``) references inlined,
    counting a reference back into a definition being expanded once; stops counting past ``cap``."""
    defs: dict[str, Any] = {}
    if isinstance(schema, dict):
        for key in ("definitions", "$defs"):
            if isinstance(schema.get(key), dict):
                defs.update(schema[key])
    memo: dict[str, int] = {}
    expanding: set[str] = set()

    def of_def(name: str) -> int:
        if name in memo:
            return memo[name]
        if name in expanding:
            return 1  # a recursive schema: LiteLLM stops there too
        expanding.add(name)
        n = size(defs[name])
        expanding.discard(name)
        memo[name] = n
        return n

    def size(node: Any) -> int:
        total = 1
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
                name = ref.rsplit("/", 1)[-1]
                if name in defs:
                    total += of_def(name)
            for key, value in node.items():
                if key not in ("$defs", "definitions"):
                    total += size(value)
                if total > cap:
                    return cap + 1
        elif isinstance(node, list):
            for item in node:
                total += size(item)
                if total > cap:
                    return cap + 1
        return min(total, cap + 1)

    return size(schema)


def _check_schema_expansion(kw: dict[str, Any]) -> None:
    """A few hundred bytes of ``$defs`` that reference each other twice per level expand to 2**N
    nodes: LiteLLM inlines them for Gemini and Vertex AI before any request, on a thread that
    cannot be stopped, until memory runs out. UsageError naming the schema instead."""
    schemas: list[tuple[str, Any]] = []
    for i, tool in enumerate(kw.get("tools") or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("parameters"), dict):
            schemas.append((f"tools[{i}].function.parameters", function["parameters"]))
    fmt = kw.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        schemas.append(("response_format.json_schema.schema", fmt["json_schema"].get("schema")))
    for where, schema in schemas:
        try:
            too_big = _expanded_nodes(schema, MAX_EXPANDED_SCHEMA_NODES) > MAX_EXPANDED_SCHEMA_NODES
        except RecursionError:
            too_big = True
        if too_big:
            raise UsageError(
                f"{where} expands to more than {MAX_EXPANDED_SCHEMA_NODES} schema nodes once its $refs are "
                "inlined (as LiteLLM does for some providers): refer to each definition from fewer places, "
                "or flatten the schema"
            )


class LiteLLMProvider:
    name = "litellm"

    def __init__(self) -> None:
        self._litellm: Any = None
        self._known: frozenset[str] = frozenset()

    async def _load(self) -> None:
        """Import litellm on a thread the first time: the import runs ~3 s of module code, and on
        the event loop it froze every other call, stream and heartbeat of the process (a server's
        first LiteLLM request stopped the whole server for seconds)."""
        if self._litellm is None:
            await asyncio.to_thread(self._lib)

    def _lib(self) -> Any:
        if self._litellm is None:
            lib = import_litellm()
            self._known = frozenset(str(getattr(p, "value", p)) for p in lib.provider_list)
            self._litellm = lib
        return self._litellm

    def _check_route(self, model: str) -> None:
        self._lib()
        prefix = model.split("/", 1)[0]
        if prefix not in self._known:
            raise ConfigError(
                f"unknown route {prefix!r} in model {model!r}: not max/, local/, openai/, a configured "
                "endpoint, or a LiteLLM provider",
                hint="`llm-call models` lists routes; declare [endpoints."
                f"{prefix}] in llm_call.toml for an OpenAI-compatible server",
            )

    def _kwargs(self, request: Request) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.temperature is not None:
            kw["temperature"] = request.temperature
        if request.max_tokens is not None:
            kw["max_tokens"] = request.max_tokens
        if request.timeout is not None:
            kw["timeout"] = request.timeout
        for key, value in request.options.items():
            if key == "progress" or value is None:
                continue
            if key in CLAUDE_ONLY_OPTIONS:
                raise UsageError(
                    f"option {key!r} is not supported by the LiteLLM route (it applies to max/* models)"
                )
            kw[key] = value
        _check_schema_expansion(kw)
        kw.setdefault("num_retries", 0)  # retries are llm_call's job (retry.py)
        kw.setdefault("max_retries", 0)  # nor may the provider SDK underneath retry
        return kw

    @contextmanager
    def _translate(self, model: str, parts: list[str] | None = None) -> Iterator[None]:
        """Turn LiteLLM failures into llm_call errors (the one place that does), with no
        credential of the environment in them (an upstream or LiteLLM may quote the key)."""
        try:
            with self._translate_errors(model, parts):
                yield
        except LLMCallError as exc:
            scrub_error(exc, env_secrets(), env_locations())
            raise

    @contextmanager
    def _translate_errors(self, model: str, parts: list[str] | None = None) -> Iterator[None]:
        ex = self._lib().exceptions
        import openai  # a LiteLLM dependency: the base classes of its exceptions
        kw: dict[str, Any] = {"provider": "litellm", "model": model}
        try:
            yield
        except ProviderError:
            raise
        except (ex.AuthenticationError, ex.PermissionDeniedError) as exc:
            prefix = model.split("/", 1)[0]
            hint = f"set the API key LiteLLM reads for {prefix}/* models (usually ${prefix.upper()}_API_KEY)"
            raise AuthError(_text(exc), hint=hint, **kw) from exc
        except ex.NotFoundError as exc:
            raise ModelNotFound(_text(exc), hint="check the model name and the provider's base URL", **kw) from exc
        except ex.RateLimitError as exc:
            raise RateLimited(_text(exc), retry_after=_retry_after(exc), **kw) from exc
        except ex.Timeout as exc:
            raise ProviderTimeout(_text(exc), **kw) from exc
        except ex.MidStreamFallbackError as exc:
            partial = "".join(parts) if parts else str(getattr(exc, "generated_content", "") or "")
            raise StreamInterrupted(f"the stream broke: {_text(exc)}", partial=partial, **kw) from exc
        except ex.APIConnectionError as exc:
            text = _text(exc)
            if "Unable to get json response" in text:
                raise MalformedResponse(
                    text, hint="is the base URL the provider's API endpoint?", **kw
                ) from exc
            raise ProviderConnectionError(text, **kw) from exc
        except ex.BadRequestError as exc:
            text = _text(exc)
            if "LLM Provider NOT provided" in text:
                raise ConfigError(f"unknown route in model {model!r}: {text}") from exc
            raise ProviderHTTPError(text, status=_status(exc, 400), body=text[:2000], **kw) from exc
        except openai.OpenAIError as exc:  # the base of every other LiteLLM (and openai SDK) error
            text = _text(exc)
            if any(marker in text for marker in _CONNECTION_BROKE):
                raise ProviderConnectionError(text, **kw) from exc
            status = _status(exc, 0)
            if status:
                raise ProviderHTTPError(text, status=status, body=text[:2000], **kw) from exc
            raise ProviderFailed(text, subtype=type(exc).__name__, **kw) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedResponse(
                f"litellm could not use the answer: {type(exc).__name__}: {exc}", **kw
            ) from exc

    async def complete(self, request: Request) -> Response:
        await self._load()
        self._check_route(request.model)
        kw = self._kwargs(request)
        started = time.perf_counter()
        with self._translate(request.model):
            result = await self._lib().acompletion(**kw)
        latency = time.perf_counter() - started
        try:
            choice = result.choices[0]
            text = choice.message.content or ""
        except (AttributeError, IndexError) as exc:
            raise MalformedResponse(f"litellm answer without choices: {exc}", provider="litellm", model=request.model) from exc
        usage = getattr(result, "usage", None)
        cost = None
        hidden = getattr(result, "_hidden_params", None) or {}
        if isinstance(hidden, dict) and hidden.get("response_cost") is not None:
            cost = float(hidden["response_cost"])
        tool_calls = getattr(choice.message, "tool_calls", None)
        return Response(
            text=text,
            model=request.model,
            usage=Usage(
                int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)
            ),
            cost_usd=cost,
            latency_s=latency,
            raw=result.model_dump() if hasattr(result, "model_dump") else None,
            finish_reason=getattr(choice, "finish_reason", None),
            tool_calls=[ToolCall.from_dict(t.model_dump()) for t in tool_calls or ()],
        )

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        await self._load()
        self._check_route(request.model)
        kw = self._kwargs(request)
        kw["stream"] = True
        kw.setdefault("stream_options", {"include_usage": True})
        finish: str | None = None
        usage: Usage | None = None
        parts: list[str] = []
        with self._translate(request.model, parts):
            stream = await self._lib().acompletion(**kw)
            try:
                async for chunk in stream:
                    u = getattr(chunk, "usage", None)
                    if u:
                        usage = Usage(int(u.prompt_tokens or 0), int(u.completion_tokens or 0))
                    for choice in chunk.choices or ():
                        piece = getattr(choice.delta, "content", None)
                        calls = getattr(choice.delta, "tool_calls", None)
                        if calls:
                            if piece:
                                parts.append(piece)
                            yield Chunk(text=piece or "", model=request.model, tool_calls=_tool_deltas(calls))
                        elif piece:
                            parts.append(piece)
                            yield Chunk(text=piece, model=request.model)
                        if choice.finish_reason:
                            finish = choice.finish_reason
            finally:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    await aclose()  # a consumer that stops early must not leave the response open
        if finish is None:
            raise StreamInterrupted(
                f"litellm stream of {request.model!r} ended without finish_reason",
                provider="litellm",
                model=request.model,
                partial="".join(parts),
            )
        yield Chunk(model=request.model, finish_reason=finish, usage=usage)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """``litellm.aembedding``, whose answer has OpenAI's shape; its retries off, as for chat."""
        await self._load()
        self._check_route(request.model)
        kw = openai_body(request, "LiteLLM", CLAUDE_ONLY_OPTIONS)
        if request.timeout is not None:
            kw["timeout"] = request.timeout
        kw.setdefault("num_retries", 0)
        kw.setdefault("max_retries", 0)
        with self._translate(request.model):
            result = await self._lib().aembedding(**kw)
            data = result.model_dump() if hasattr(result, "model_dump") else result
        return parse_embeddings(data, request, "litellm", request.model)

    async def aclose(self) -> None:
        return None


def _tool_deltas(calls: list[Any]) -> list[ToolCallDelta]:
    """LiteLLM's ``delta.tool_calls`` objects as ToolCallDelta."""
    out = []
    for i, c in enumerate(calls):
        fn = getattr(c, "function", None)
        index = getattr(c, "index", None)
        out.append(
            ToolCallDelta(
                i if index is None else int(index),
                getattr(c, "id", None),
                getattr(fn, "name", None),
                getattr(fn, "arguments", None) or "",
            )
        )
    return out


def _text(exc: BaseException) -> str:
    """The error's message, without the Python traceback LiteLLM appends to some (an internal
    failure, a missing module): its file paths and code are no business of an HTTP client, and
    the exception chain keeps them for the operator."""
    text = str(getattr(exc, "message", None) or exc)
    return text.split("\nTraceback (most recent call last):", 1)[0].rstrip()


def _status(exc: BaseException, default: int) -> int:
    try:
        return int(getattr(exc, "status_code", None) or default)
    except (TypeError, ValueError):
        return default


def _retry_after(exc: Any) -> float | None:
    from .base import parse_retry_after

    for source in (getattr(exc, "litellm_response_headers", None), getattr(getattr(exc, "response", None), "headers", None)):
        if source is not None:
            value = source.get("retry-after") or source.get("Retry-After")
            if value:
                return parse_retry_after(str(value))
    return None
