"""Every other model string, through LiteLLM (imported on first use: it costs ~3 s and ~200 MB).

``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set before the import so LiteLLM never fetches its price
list over the network. LiteLLM's exceptions are translated to llm_call's tree in one place.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

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
from ..types import Chunk, Request, Response, Usage

__all__ = ["LiteLLMProvider", "import_litellm"]

_CLAUDE_ONLY = frozenset({"mcp_config", "allowed_tools", "cwd", "permission_mode", "resume", "max_turns"})


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


class LiteLLMProvider:
    name = "litellm"

    def __init__(self) -> None:
        self._litellm: Any = None

    def _lib(self) -> Any:
        if self._litellm is None:
            self._litellm = import_litellm()
        return self._litellm

    def _check_route(self, model: str) -> None:
        lib = self._lib()
        prefix = model.split("/", 1)[0]
        providers = {str(getattr(p, "value", p)) for p in lib.provider_list}
        if prefix not in providers:
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
            if key in _CLAUDE_ONLY:
                raise UsageError(
                    f"option {key!r} is not supported by the LiteLLM route (it applies to max/* models)"
                )
            kw[key] = value
        kw.setdefault("num_retries", 0)  # retries are llm_call's job (retry.py)
        return kw

    @contextmanager
    def _translate(self, model: str) -> Iterator[None]:
        lib = self._lib()
        ex = lib.exceptions
        try:
            yield
        except ProviderError:
            raise
        except ex.AuthenticationError as exc:
            raise AuthError(str(exc), hint="check the provider's API key variable", provider="litellm", model=model) from exc
        except ex.NotFoundError as exc:
            raise ModelNotFound(str(exc), provider="litellm", model=model) from exc
        except ex.RateLimitError as exc:
            raise RateLimited(str(exc), provider="litellm", model=model, retry_after=_retry_after(exc)) from exc
        except ex.Timeout as exc:
            raise ProviderTimeout(str(exc), provider="litellm", model=model) from exc
        except ex.APIConnectionError as exc:
            raise ProviderConnectionError(str(exc), provider="litellm", model=model) from exc
        except ex.BadRequestError as exc:
            if "LLM Provider NOT provided" in str(exc):
                raise ConfigError(f"unknown route in model {model!r}: {exc}") from exc
            raise ProviderHTTPError(str(exc), provider="litellm", model=model, status=400, body=str(exc)[:2000]) from exc
        except ex.APIError as exc:
            status = int(getattr(exc, "status_code", 0) or 500)
            raise ProviderHTTPError(str(exc), provider="litellm", model=model, status=status, body=str(exc)[:2000]) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedResponse(f"litellm could not use the answer: {exc}", provider="litellm", model=model) from exc

    async def complete(self, request: Request) -> Response:
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
            tool_calls=[t.model_dump() for t in tool_calls] if tool_calls else None,
        )

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        self._check_route(request.model)
        kw = self._kwargs(request)
        kw["stream"] = True
        kw.setdefault("stream_options", {"include_usage": True})
        finish: str | None = None
        usage: Usage | None = None
        parts: list[str] = []
        with self._translate(request.model):
            stream = await self._lib().acompletion(**kw)
            async for chunk in stream:
                u = getattr(chunk, "usage", None)
                if u:
                    usage = Usage(int(u.prompt_tokens or 0), int(u.completion_tokens or 0))
                for choice in chunk.choices or ():
                    piece = getattr(choice.delta, "content", None)
                    if piece:
                        parts.append(piece)
                        yield Chunk(text=piece, model=request.model)
                    if choice.finish_reason:
                        finish = choice.finish_reason
        if finish is None:
            raise StreamInterrupted(
                "litellm stream ended without finish_reason",
                provider="litellm",
                model=request.model,
                partial="".join(parts),
            )
        yield Chunk(model=request.model, finish_reason=finish, usage=usage)

    async def aclose(self) -> None:
        return None


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    from .openai_compat import parse_retry_after

    return parse_retry_after(headers.get("retry-after"))
