"""Map a model string to a route and a provider.

=====================================  ==========================================
model string                           route
=====================================  ==========================================
an alias from config (exact name, or  whatever its ``model`` resolves to
a glob such as ``claude-*``)
``max``, ``max/<name>``                Claude Code CLI (``claude_cli.py``)
``local/<name or path.gguf>``          embedded llama-cpp (``local.py``)
``openai/<m>``, ``gpt-*``, ``o1*`` ... native OpenAI-compatible (``openai_compat.py``)
``<endpoint>/<m>`` for a configured    native OpenAI-compatible, that endpoint
endpoint
anything else with a ``/``             LiteLLM (``litellm.py``, imported lazily)
=====================================  ==========================================

Providers are created once per process and shared; each keeps its own per-event-loop state.

Dispatch: :func:`complete_once` and :func:`stream_once` make one provider call for a request
(aliases applied: system prompt, bundled provider options), no retries, no validation; the retry
layer above calls them. :func:`embed_once` is their embeddings twin: OpenAI-compatible routes,
LiteLLM and the local route embed; ``max/*`` is refused by name (UsageError) before any CLI
process is started.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._settings import current_settings
from ..errors import ConfigError, UsageError
from ..types import CALL_OPTION_NAMES, Chunk, EmbeddingRequest, Embeddings, Request, Response

if TYPE_CHECKING:
    from ..config import AliasConfig, Settings
    from .base import Provider

__all__ = ["Route", "check_models", "close_providers", "embed_once", "resolve", "takes_prefill"]

_BARE_OPENAI = re.compile(r"^(gpt-|chatgpt-|o[1-9](-|$)|o[1-9][a-z]*-|ft:gpt|text-embedding-|davinci|babbage)")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model string goes.

    ``kind`` is ``openai`` | ``endpoint`` | ``max`` | ``local`` | ``litellm``; ``model`` the full
    model string after aliases (``openai/gpt-4o``, what limits and breakers match on);
    ``provider_model`` what the provider is asked for (``gpt-4o``); ``key`` identifies the provider
    instance (``openai``, ``endpoint:vllm``, ``max``, ``local``, ``litellm``).
    """

    kind: str
    model: str
    provider_model: str
    key: str
    endpoint: str | None = None
    aliases: tuple[AliasConfig, ...] = field(default=(), compare=False)

    @property
    def system(self) -> str | None:
        """The alias's default system prompt (the outermost alias that sets one)."""
        for alias in self.aliases:
            if alias.system:
                return alias.system
        return None

    def alias_options(self) -> dict[str, Any]:
        """Options bundled by the aliases (outer aliases override inner ones)."""
        merged: dict[str, Any] = {}
        for alias in reversed(self.aliases):
            merged.update(alias.options)
            if alias.mcp_config is not None:
                merged["mcp_config"] = alias.mcp_config
            if alias.allowed_tools is not None:
                merged["allowed_tools"] = list(alias.allowed_tools)
        return merged


def known_routes(settings: Settings) -> list[str]:
    return ["max/*", "local/*", "openai/*", *(f"{n}/*" for n in settings.endpoints), "<litellm-provider>/*"]


def resolve(model: str, settings: Settings) -> Route:
    """Resolve ``model`` (alias or model string) to a :class:`Route`. Raises ConfigError; when
    an alias led to the bad name, the error names the alias (``[aliases.fast] model = "foo"``)."""
    try:
        return _resolve(model, settings)
    except ConfigError as exc:
        chain = _alias_chain(model, settings)
        if not chain or settings.alias_name(settings.aliases[chain[-1]].model.strip()) is not None:
            raise  # no alias involved, or an alias loop (its message names the aliases)
        # no file path: the server sends this message to its clients
        raise ConfigError(
            f"{exc.message} (reached through alias {' -> '.join(repr(n) for n in chain)}: "
            f"fix model = ... of [aliases.{_toml_key(chain[-1])}] in the configuration)",
            hint=exc.hint,
        ) from None


def check_models(settings: Settings) -> list[str]:
    """Problems with the models the configuration names (``default_model``, every alias,
    ``claude.quota_fallback``), each naming its key; [] when every one resolves to a route. For
    ``llm-call serve`` to refuse to start on a typo rather than fail each request that reaches it."""
    problems = []
    for key, model in (("default_model", settings.default_model), ("claude.quota_fallback", settings.claude.quota_fallback)):
        if model:
            try:
                resolve(model, settings)
            except ConfigError as exc:
                problems.append(f"{key} = {model!r}: {exc.message}")
    for name in settings.aliases:
        try:
            resolve(name, settings)
        except ConfigError as exc:
            problems.append(exc.message)  # names the alias
    return problems


def _alias_chain(model: str, settings: Settings) -> list[str]:
    """The aliases ``model`` goes through, outermost first (each named once)."""
    chain: list[str] = []
    name = (model or "").strip()
    while (key := settings.alias_name(name)) is not None and key not in chain:
        chain.append(key)
        name = settings.aliases[key].model.strip()
    return chain


def _toml_key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else f'"{name}"'


def _resolve(model: str, settings: Settings) -> Route:
    if not model or not model.strip():
        raise ConfigError("no model given", hint="pass model=... or set default_model in config")
    aliases: list[AliasConfig] = []
    seen: list[str] = []
    name = model.strip()
    while (key := settings.alias_name(name)) is not None:
        if key in seen:
            raise ConfigError(
                f"alias loop in config: {' -> '.join([*seen, key])}",
                hint="make one of these aliases name a model (ROUTE/MODEL)",
            )
        seen.append(key)
        alias = settings.aliases[key]
        aliases.append(alias)
        name = alias.model.strip()
    chain = tuple(aliases)
    if name == "max" or name.startswith("max/"):
        sub = name[4:] if name.startswith("max/") else ""
        return Route("max", name, sub or settings.claude.default_model, "max", None, chain)
    if name.startswith("local/"):
        sub = name[6:]
        if not sub:
            raise ConfigError("model 'local/' names no model", hint="use local/smollm2 or local/<path.gguf>")
        return Route("local", name, sub, "local", None, chain)
    if name.startswith("openai/"):
        if not name[7:]:
            raise ConfigError("model 'openai/' names no model", hint="use e.g. openai/gpt-4o-mini")
        return Route("openai", name, name[7:], "openai", None, chain)
    prefix, sep, rest = name.partition("/")
    if sep and prefix in settings.endpoints:
        if not rest:
            raise ConfigError(f"model {name!r} names no model for endpoint {prefix!r}")
        return Route("endpoint", name, rest, f"endpoint:{prefix}", prefix, chain)
    if _BARE_OPENAI.match(name):
        return Route("openai", f"openai/{name}", name, "openai", None, chain)
    if not sep:
        raise ConfigError(
            f"unknown model {name!r}: not an alias, not a known model name, and no route prefix",
            hint="use ROUTE/MODEL, e.g. openai/gpt-4o-mini, max/sonnet, local/smollm2, "
            "anthropic/claude-... (LiteLLM), or define an alias in llm_call.toml; "
            "`llm-call models` lists routes and aliases",
        )
    return Route("litellm", name, name, "litellm", None, chain)


#: LiteLLM providers whose API continues a last assistant message (assistant prefill)
_PREFILL_PROVIDERS = frozenset({"anthropic"})


def takes_prefill(model: str, settings: Settings) -> bool:
    """Whether ``model``'s route continues a conversation that ends with an assistant message
    (Anthropic's Messages API, through LiteLLM). The others (OpenAI and compatible endpoints, the
    Claude CLI, the local model) answer such a message anew, so they need an instruction."""
    try:
        route = resolve(model, settings)
    except ConfigError:
        return False
    return route.kind == "litellm" and route.model.partition("/")[0] in _PREFILL_PROVIDERS


#: route key -> (the configuration the provider was built from, the provider)
_providers: dict[str, tuple[Any, Provider]] = {}
_lock = threading.Lock()


def _built_from(route: Route, settings: Settings) -> Any:
    """What a route's provider is built from; a change (new settings, other base URL) rebuilds it."""
    kind = route.kind
    if kind == "openai":
        return (settings.openai, os.environ.get("OPENAI_BASE_URL"))
    if kind == "endpoint":
        return settings.endpoints.get(route.endpoint or "")
    if kind == "max":
        return settings.claude
    if kind == "local":
        return settings.local
    return None


def get_provider(route: Route, settings: Settings) -> Provider:
    """The shared provider instance for ``route``, created on first use and again when the
    configuration it was built from changes. A replaced provider is not closed here (calls may
    still be using it): its sessions close when it is garbage-collected or its loop shuts down."""
    config = _built_from(route, settings)
    entry = _providers.get(route.key)
    if entry is not None and entry[0] == config:
        return entry[1]
    with _lock:
        old = _providers.get(route.key)
        if old is not None and old[0] == config:
            return old[1]
        provider = _create(route, settings)
        _providers[route.key] = (config, provider)
    return provider


def _create(route: Route, settings: Settings) -> Provider:
    if route.kind == "openai":
        from .openai_compat import OpenAICompatProvider

        return OpenAICompatProvider.from_openai_settings(settings.openai)
    if route.kind == "endpoint":
        from .openai_compat import OpenAICompatProvider

        assert route.endpoint is not None
        return OpenAICompatProvider.from_endpoint(
            route.endpoint, settings.endpoints[route.endpoint], settings.openai
        )
    if route.kind == "litellm":
        from .litellm import LiteLLMProvider

        return LiteLLMProvider()
    if route.kind == "max":
        try:
            from .claude_cli import ClaudeCLIProvider
        except ImportError as exc:
            raise ConfigError(
                f"the max/* route is not available: {exc}",
                hint="pip install 'llm-call[claude]'",
            ) from None
        return ClaudeCLIProvider(settings.claude)
    if route.kind == "local":
        try:
            from .local import LocalProvider
        except ImportError as exc:
            raise ConfigError(
                f"the local/* route is not available: {exc}",
                hint="pip install 'llm-call[local]'",
            ) from None
        return LocalProvider(settings.local)
    raise ConfigError(f"unknown route kind {route.kind!r}")


async def close_providers() -> None:
    """Close every provider (sessions, processes). Safe to call more than once."""
    with _lock:
        providers = [p for _, p in _providers.values()]
        _providers.clear()
    for p in providers:
        await p.aclose()


def reset_providers() -> None:
    """Forget provider instances without closing them (tests that change settings)."""
    with _lock:
        _providers.clear()


_REQUEST_FIELDS = frozenset({"temperature", "max_tokens", "timeout"})


def provider_request(request: Request, settings: Settings) -> tuple[Route, Request]:
    """Resolve the route and apply the alias's system prompt and options."""
    route = resolve(request.model, settings)
    if not route.aliases:
        if route.provider_model == request.model:
            return route, request
        return route, Request(
            model=route.provider_model,
            messages=request.messages,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            timeout=request.timeout,
            options=request.options,
        )
    messages = request.messages
    if route.system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": route.system}, *messages]
    options = request.options
    temperature, max_tokens, timeout = request.temperature, request.max_tokens, request.timeout
    alias_opts = {k: v for k, v in route.alias_options().items() if k not in CALL_OPTION_NAMES}
    if alias_opts:
        # an alias's options are defaults: the caller's arguments win
        if temperature is None:
            temperature = alias_opts.get("temperature")
        if max_tokens is None:
            max_tokens = alias_opts.get("max_tokens")
        if timeout is None:
            timeout = alias_opts.get("timeout")
        options = {
            **{k: v for k, v in alias_opts.items() if k not in _REQUEST_FIELDS},
            **options,
        }
    return route, Request(
        model=route.provider_model,
        messages=messages,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        options=options,
    )


async def complete_once(request: Request) -> Response:
    """One provider call for ``request.model`` (aliases applied), no retries, no validation.

    The ``attempt`` progress event is emitted by the retry layer (it knows the attempt number).
    """
    settings = current_settings()
    route, preq = provider_request(request, settings)
    provider = get_provider(route, settings)
    started = time.perf_counter()
    response = await provider.complete(preq)
    response.latency_s = time.perf_counter() - started
    return response


def stream_once(request: Request) -> AsyncIterator[Chunk]:
    """One provider stream for ``request.model`` (aliases applied), no retries, no validation.

    Returns the provider's own iterator (one generator layer less per chunk); routing and
    configuration errors raise here, before iteration.
    """
    settings = current_settings()
    route, preq = provider_request(request, settings)
    provider = get_provider(route, settings)
    return provider.stream(preq)


#: an alias's bundled options that mean something to an embeddings call (its chat options, such
#: as temperature or a system prompt, do not)
_EMBEDDING_ALIAS_OPTIONS = frozenset({"dimensions", "encoding_format", "user", "extra_body"})

_NO_EMBEDDINGS = {"max": "max/* models are served by the Claude Code CLI, which has no embeddings API"}


async def embed_once(request: EmbeddingRequest) -> Embeddings:
    """One embeddings call for ``request.model`` (aliases applied), no retries.

    Raises :class:`UsageError` naming the route for ``max/*``, which has no embeddings, before
    any provider is created (no CLI process).
    """
    settings = current_settings()
    route = resolve(request.model, settings)
    refused = _NO_EMBEDDINGS.get(route.kind)
    if refused is not None:
        raise UsageError(
            f"{refused} (model {request.model!r})",
            hint="use an embedding model on an OpenAI-compatible endpoint, LiteLLM or local/*, e.g. openai/text-embedding-3-small",
        )
    from .base import Embedder

    provider = get_provider(route, settings)
    if not isinstance(provider, Embedder):
        raise UsageError(f"the {route.kind} route serves no embeddings (model {request.model!r})")
    options = request.options
    timeout = request.timeout
    if route.aliases:
        bundled = route.alias_options()
        options = {**{k: v for k, v in bundled.items() if k in _EMBEDDING_ALIAS_OPTIONS}, **options}
        if timeout is None and bundled.get("timeout") is not None:
            timeout = float(bundled["timeout"])
    preq = EmbeddingRequest(model=route.provider_model, input=request.input, timeout=timeout, options=options)
    started = time.perf_counter()
    result = await provider.embed(preq)
    result.latency_s = time.perf_counter() - started
    return result
