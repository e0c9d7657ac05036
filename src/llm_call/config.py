"""Settings: one pydantic model loaded from a TOML file plus the environment, validated strictly.

Where the file comes from, first match wins: ``llm-call --config FILE``/``load_settings(path)``,
the ``LLM_CALL_CONFIG`` environment variable, ``./llm_call.toml``. No file is fine (defaults).
An unknown key or a bad value raises :class:`~llm_call.errors.ConfigError` naming the file and the
key path (``aliases.fast.modle: unknown key``); nothing falls back to defaults silently.

Environment overrides (applied after the file): ``LLM_CALL_DEFAULT_MODEL``, ``LLM_CALL_TASKS``
(task store path or ``redis://`` URL), ``LLM_CALL_API_KEYS`` and ``LLM_CALL_ADMIN_KEYS`` (server keys,
comma lists; a blank item is an error),
``LLM_CALL_CLAUDE_CLI``, ``LLM_CALL_CLAUDE_USE_API_KEY``, ``LLM_CALL_CLAUDE_POOL_SIZE``. Provider keys stay in their own
variables (``OPENAI_API_KEY`` ...) and are read when a call needs them.

Example ``llm_call.toml``::

    default_model = "fast"

    [aliases.fast]
    model = "openai/gpt-4o-mini"
    system = "Answer briefly."

    [aliases]
    smart = "openai/gpt-4o"          # string shorthand
    "claude-*" = "fast"              # a glob: any model name it matches (exact names win)

    [endpoints.vllm]
    base_url = "http://127.0.0.1:8001/v1"
    api_key_env = "VLLM_KEY"         # optional

This module imports pydantic, so it is imported lazily (first call), never by ``import llm_call``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ._config_errors import format_validation_errors
from .errors import ConfigError

__all__ = [
    "AliasConfig",
    "ClaudeConfig",
    "EndpointConfig",
    "LocalConfig",
    "LocalModelConfig",
    "McpServerConfig",
    "OpenAIConfig",
    "RetryConfig",
    "ServerConfig",
    "Settings",
    "TasksConfig",
    "ToolProfileConfig",
    "get_settings",
    "load_settings",
    "set_settings",
]

DEFAULT_MODEL = "local/smollm2"
_GLOB_CHARS = re.compile(r"[*?\[]")

#: endpoint header names whose values are secrets (masked by ``config show``)
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)
#: the password of ``scheme://user:password@host`` URLs (e.g. a redis:// task store)
_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/@]*@")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class EndpointConfig(_Strict):
    """An OpenAI-compatible endpoint, used as ``NAME/<model>``."""

    base_url: str = Field(description="The server's OpenAI API root, e.g. http://127.0.0.1:8001/v1")
    api_key_env: str | None = Field(default=None, description="Environment variable holding its key (sent as a bearer token); none: no key")
    api_key: str | None = Field(default=None, description="Prefer api_key_env; masked in output")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers on every request (values masked by config show when secret-looking)")
    max_connections: int | None = Field(default=None, ge=1, description="Connections to it at once per event loop; default: openai.max_connections")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class AliasConfig(_Strict):
    """A model alias: a model plus default system prompt and options."""

    model: str = Field(description="The model it stands for (a model string or another alias)")
    system: str | None = Field(default=None, description="System prompt used when the call gives none")
    options: dict[str, Any] = Field(default_factory=dict, description="Call options bundled with it (provider options, or validate/fallbacks/...); the caller's own win")
    mcp_config: dict[str, Any] | None = Field(default=None, description="max/*: an MCP config ({\"mcpServers\": {...}}) the CLI gets for calls through this alias")
    allowed_tools: list[str] | None = Field(default=None, description="max/*: tools the model may use")
    description: str | None = Field(default=None, description="Shown by llm-call models and GET /v1/models")


class OpenAIConfig(_Strict):
    """The native OpenAI-compatible provider (``openai/*`` and bare OpenAI model names)."""

    base_url: str | None = Field(default=None, description="Default: $OPENAI_BASE_URL or api.openai.com")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable holding the key")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to open a connection (TCP + TLS)")
    read_timeout: float = Field(default=600.0, gt=0, description="Max silence between bytes")
    total_timeout: float | None = Field(default=None, gt=0, description="Default limit of a whole request when the call gives no timeout (None: none)")
    max_connections: int = Field(default=1000, ge=1, description="Per event loop, all hosts")
    max_connections_per_host: int = Field(default=0, ge=0, description="0 = no per-host limit")


class McpServerConfig(_Strict):
    """An MCP server the operator declares; requests pick it by name (``"mcp_servers": ["NAME"]``)."""

    type: Literal["stdio", "http", "sse"] = Field(default="stdio", description="stdio: a command the CLI starts; http/sse: a URL")
    command: str | None = Field(default=None, description="stdio: the program to run")
    args: list[str] = Field(default_factory=list, description="stdio: the program's arguments")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the server (never shown to clients)")
    url: str | None = Field(default=None, description="http/sse: the server's URL")
    headers: dict[str, str] = Field(default_factory=dict, description="http/sse: headers sent to the server (never shown to clients)")
    description: str | None = Field(default=None, description="A note for the operator (llm_call does not use it)")

    @model_validator(mode="after")
    def _shape(self) -> McpServerConfig:
        if self.type == "stdio" and not (self.command or "").strip():
            raise ValueError("a stdio MCP server needs command (or set type = \"http\" with url)")
        if self.type != "stdio" and not (self.url or "").startswith(("http://", "https://")):
            raise ValueError(f"an {self.type} MCP server needs url = \"http(s)://...\"")
        return self

    def cli_entry(self) -> dict[str, Any]:
        """The server as an entry of the CLI's ``mcpServers``."""
        if self.type == "stdio":
            return {"type": "stdio", "command": self.command, "args": list(self.args), "env": dict(self.env)}
        return {"type": self.type, "url": self.url, "headers": dict(self.headers)}


class ToolProfileConfig(_Strict):
    """A named set of tools (built-in CLI tools and MCP servers) a request may pick with ``"tool_profile"``."""

    allowed_tools: list[str] = Field(default_factory=list, description="Tools the model may use, e.g. Read, WebSearch, mcp__files")
    mcp_servers: list[str] = Field(default_factory=list, description="Names from claude.mcp_servers")
    description: str | None = Field(default=None, description="A note for the operator (llm_call does not use it)")


class ClaudeConfig(_Strict):
    """The Claude Code CLI route (``max/*``)."""

    mcp_servers: dict[str, McpServerConfig] = Field(
        default_factory=dict, description="MCP servers requests may name ([claude.mcp_servers.NAME]: command, args, env)"
    )
    tool_profiles: dict[str, ToolProfileConfig] = Field(
        default_factory=dict, description="Tool sets requests may name ([claude.tool_profiles.NAME]: allowed_tools, mcp_servers)"
    )

    cli_path: str | None = Field(default=None, description="Default: $LLM_CALL_CLAUDE_CLI or the SDK's bundled CLI")
    use_api_key: bool = Field(default=False, description="Keep ANTHROPIC_API_KEY in the CLI's environment")
    default_model: str = Field(default="sonnet", description="The model a bare `max` names (max/sonnet, max/opus ...)")
    max_concurrency: int = Field(default=4, ge=1, description="CLI processes running at once in this process; more calls wait (the wait counts in their timeout)")
    idle_timeout: float = Field(default=120.0, gt=0, description="Seconds without any output from the CLI (tools included) before it is killed (ProviderTimeout)")
    total_timeout: float | None = Field(default=None, gt=0, description="Default limit of a whole run when the call gives no timeout (None: none)")
    exit_timeout: float = Field(default=10.0, gt=0, description="Seconds the CLI may take to exit after its result before it is killed")
    max_turns: int | None = Field(default=None, ge=1, description="Default agent turns of a run (a call's max_turns= wins; None: the CLI's own default)")
    pool_size: int = Field(
        default=0, ge=0, le=64, description="Warm CLI processes kept for reuse (0, the default: a fresh CLI per call; why it is off by default: docs/claude.md)"
    )
    persist_sessions: bool | None = Field(default=None, description="CLI saves sessions to ~/.claude (resume=); unset: yes, but not under llm-call serve or worker")
    pool_max_calls: int = Field(default=100, ge=1, description="Calls one pooled process serves before it is replaced")
    pool_idle_ttl: float = Field(default=300.0, gt=0, description="Seconds a pooled process may sit idle before it is stopped")
    pool_max_rss_mb: int = Field(
        default=400, ge=64, description="A pooled process using more memory (RSS, MB) after a call is replaced"
    )
    pool_mcp: bool = Field(
        default=False, description="Pool calls that name MCP servers too (their servers' state then outlives a call)"
    )
    image_urls: bool = Field(
        default=False, description="Pass remote image URLs on to the CLI (default: only inline base64 images)"
    )
    # quota scheduling (docs/claude.md "Quota" and "Scheduling on the quota")
    account: str = Field(
        default="default", min_length=1, description="Name of the subscription the CLI is logged into; quota state is kept per account"
    )
    on_quota_exhausted: Literal["wait", "fallback", "fail"] = Field(
        default="wait",
        description="A background/auto max/* task whose usage window is used up: wait for the reset, run on quota_fallback, or fail",
    )
    quota_fallback: str | None = Field(
        default=None, description='Model for on_quota_exhausted = "fallback" (e.g. an API route such as anthropic/claude-sonnet-4-5)'
    )
    allow_overage: bool = Field(
        default=True, description="false: stop before a call would spend extra usage (overage) once a window is used up"
    )
    slowdown_at: float = Field(
        default=0.9, ge=0, le=1, description="Above this utilization of any window, run at most slowdown_concurrency max/* calls (1 = never)"
    )
    slowdown_concurrency: int = Field(default=1, ge=1, description="max/* calls at once above slowdown_at")

    @model_validator(mode="after")
    def _profiles_name_declared_servers(self) -> ClaudeConfig:
        for name in self.mcp_servers:
            if not name or "__" in name or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"mcp_servers.{name}: a server name is letters, digits, - and _ (no '__')")
        for name, profile in self.tool_profiles.items():
            missing = [s for s in profile.mcp_servers if s not in self.mcp_servers]
            if missing:
                raise ValueError(f"tool_profiles.{name}.mcp_servers names {missing}, not declared under claude.mcp_servers")
        return self

    @field_validator("quota_fallback")
    @classmethod
    def _fallback_not_max(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.strip().split("/", 1)[0] == "max"):
            raise ValueError("quota_fallback must name a model outside max/* (e.g. an API route), or be left out")
        return value.strip() if value else value


class LocalModelConfig(_Strict):
    """A GGUF model the operator declares; used as ``local/NAME`` (the only local models HTTP requests may name)."""

    path: str = Field(description="The .gguf file (~ expanded)")
    description: str | None = Field(default=None, description="Shown by llm-call models and GET /v1/models (the path never is)")


class LocalConfig(_Strict):
    """The embedded llama-cpp route (``local/*``). Sampling defaults suit SmolLM2-135M (docs/local.md)."""

    models: dict[str, LocalModelConfig] = Field(
        default_factory=dict, description="Declared models: [local.models.NAME] path = \"...gguf\"; used as local/NAME"
    )
    max_loaded: int = Field(default=2, ge=1, description="Models kept loaded at once; the least recently used is closed")

    max_concurrency: int = Field(default=1, ge=1, description="Generations at once per model (one llama instance each)")
    n_ctx: int = Field(default=2048, ge=128, description="Context window in tokens")
    n_threads: int | None = Field(default=None, ge=1, description="None: llama.cpp's default (half the CPUs)")
    temperature: float = Field(default=0.2, ge=0, description="Sampling temperature when the call gives none")
    top_p: float = Field(default=0.9, gt=0, le=1, description="Nucleus sampling")
    top_k: int = Field(default=40, ge=0, description="Top-k sampling (0: off)")
    min_p: float = Field(default=0.05, ge=0, le=1, description="Min-p sampling")
    repeat_penalty: float = Field(default=1.0, gt=0, description="1.0 = off; 1.1 derails a 135M model")
    seed: int | None = Field(default=42, description="Fixed seed: repeatable answers; a negative seed = random")
    max_tokens: int = Field(default=256, ge=1, description="Answer length in tokens when the call gives no max_tokens")
    system: str | None = Field(
        default="You are a helpful assistant. Answer the question directly and briefly.",
        description="System prompt added when the conversation has none",
    )

    @field_validator("models")
    @classmethod
    def _model_names(cls, v: dict[str, LocalModelConfig]) -> dict[str, LocalModelConfig]:
        for name in v:
            if name == "smollm2" or not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"model name {name!r}: use letters, digits, '-', '_' and '.' (smollm2 is the bundled model)")
        return v


class RetryConfig(_Strict):
    """Transient-failure retries (429, 5xx, timeouts, connection errors)."""

    max_retries: int = Field(default=3, ge=0, description="Retries of a transient failure (408, 429, 5xx, timeouts, resets) after the first call")
    base_delay: float = Field(default=0.5, ge=0, description="Backoff: a retry waits uniform(0, min(max_delay, base_delay * 2**n)) seconds")
    max_delay: float = Field(default=30.0, ge=0, description="Longest backoff wait, in seconds")
    max_retry_after: float = Field(default=60.0, ge=0, description="A server's Retry-After is obeyed up to this many seconds")
    breaker_threshold: int = Field(default=5, ge=1, description="Consecutive transient failures of a route that open its circuit breaker")
    breaker_window: float = Field(default=60.0, gt=0, description="Seconds within which those failures count")
    breaker_cooldown: float = Field(default=30.0, gt=0, description="Seconds an open breaker fails calls fast (CircuitOpen) before one probe call")
    routes: dict[str, RetryRouteConfig] = Field(default_factory=dict, description="Per-route overrides: [retry.routes.\"PATTERN\"], PATTERN a glob on the model (\"max/*\") or a route key (openai, endpoint:NAME); first match wins")


class RetryRouteConfig(_Strict):
    """Retry settings of the routes a pattern matches; a key left out keeps the [retry] value."""
    max_retries: int | None = Field(default=None, ge=0, description="Overrides retry.max_retries for the route")
    base_delay: float | None = Field(default=None, ge=0, description="Overrides retry.base_delay for the route")
    max_delay: float | None = Field(default=None, ge=0, description="Overrides retry.max_delay for the route")


class TasksConfig(_Strict):
    """The task manager and its store."""

    store: str | None = Field(default=None, description="SQLite path or redis:// URL; default XDG data dir")
    global_limit: int = Field(default=10_000, ge=1, description="Tasks running at once in one task manager (llm-call worker -j overrides)")
    route_limits: dict[str, int] = Field(default_factory=lambda: {"max/*": 4, "local/*": 1}, description="Glob on the model -> tasks of it running at once in one process")
    queue_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Glob on the model -> most tasks waiting (queued) for it; a submit past it raises QueueFull (HTTP 429)",
    )
    retention_s: float = Field(default=7 * 86400, gt=0, description="Seconds finished tasks and their events are kept")
    max_executions: int = Field(default=3, ge=1, description="Runs of one task before it is interrupted")
    heartbeat_s: float = Field(default=5.0, gt=0, description="Seconds between a running task's heartbeats; a worker silent for 3 is dead and its tasks run again")
    fallback_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="With a store that pushes cancel requests and events (Redis), how often they are "
        "still polled in case a notice was lost",
    )


class ServerConfig(_Strict):
    """``llm-call serve``. See docs/security.md for what each protection is for."""

    host: str = Field(default="127.0.0.1", description="Address to bind (llm-call serve --host); anything but loopback needs api_keys")
    port: int = Field(default=8000, ge=0, le=65535, description="Port (llm-call serve --port)")
    api_keys: list[str] = Field(
        default_factory=list, description="Bearer keys; each key sees only its own tasks. Required off loopback"
    )
    admin_keys: list[str] = Field(
        default_factory=list, description="Bearer keys that see and control every key's tasks"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names accepted besides localhost, 127.0.0.1, [::1] and the bound address (\"*\": any)",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed cross-origin requests (CORS is off when empty)"
    )
    allowed_models: list[str] | None = Field(
        default=None,
        description="Glob patterns of the models requests may name (model, fallbacks, escalate, a judge's "
        "model), matched against the name as sent and the model it resolves to (e.g. [\"max/*\", "
        "\"openai/gpt-4o*\", \"fast\"]); others get 403. Unset: every model a route serves",
    )
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest request body; larger gets 413")
    body_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a request body may take to arrive in full; slower gets 408"
    )
    header_timeout: float = Field(default=30.0, gt=0, description="Seconds a request's headers may take; slower: closed")
    max_connections: int | None = Field(default=None, ge=1, description="Open connections at most (503 past it); default: 90% of the file limit")
    sse_heartbeat: float = Field(default=15.0, ge=0, description="Seconds of silence before a stream gets a keep-alive; 0: never")
    max_concurrent_per_key: int = Field(
        default=10_000, ge=1, description="Requests in flight per key (or in all, without keys), each counting once per 64 KiB of body; more get 429"
    )
    request_timeout: float = Field(default=600.0, gt=0, description="Seconds a direct call (chat, messages, a non-background response, an MCP ask) may run; longer gets 504")
    grace_period: float = Field(default=30.0, ge=0, description="On SIGTERM/SIGINT, seconds requests in flight get to finish")
    debug: bool = Field(default=False, description="Request log lines include the prompt (messages)")
    stream_rescue: Literal["off", "continue"] = Field(
        default="off",
        description="What a chat/messages/responses stream cut after its first chunk does when a request does not say: "
        "\"off\": an error event ends it; \"continue\": the next retry or fallback continues it",
    )

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _no_blank_keys(cls, v: list[str]) -> list[str]:
        for i, key in enumerate(v):
            if not key.strip():
                raise ValueError(
                    f"item {i} is a blank key, which would leave the server open; remove it or set a real key"
                )
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not name.strip() or "/" in name:
                raise ValueError(f"{name!r} is not a host name (give names like \"llm.example.org\", no scheme or path)")
        return [name.strip().lower() for name in v]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(
                    f"{origin!r} is not an origin: give scheme://host[:port] without a path, e.g. \"http://localhost:3000\""
                )
        return [o.rstrip("/") for o in v]


class Settings(_Strict):
    default_model: str | None = Field(default=None, description="Model of a call that names none (LLM_CALL_DEFAULT_MODEL); unset: local/smollm2")
    aliases: dict[str, AliasConfig] = Field(default_factory=dict, description="[aliases.NAME] model = ...; or NAME = \"model\" under [aliases]; a NAME with * ? [ is a glob")
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict, description="OpenAI-compatible servers: [endpoints.NAME] base_url = ...; used as NAME/<model>")
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    claude: ClaudeConfig = Field(default_factory=ClaudeConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    source: str | None = Field(default=None, exclude=True, description="File the settings came from")

    @field_validator("aliases", mode="before")
    @classmethod
    def _alias_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: ({"model": a} if isinstance(a, str) else a) for k, a in v.items()}
        return v

    @field_validator("endpoints")
    @classmethod
    def _endpoint_names(cls, v: dict[str, EndpointConfig]) -> dict[str, EndpointConfig]:
        reserved = {"max", "local", "openai"}
        bad = reserved & set(v)
        if bad:
            raise ValueError(f"endpoint name(s) {sorted(bad)} are reserved routes; pick another name")
        return v

    def alias_name(self, model: str) -> str | None:
        """The alias ``model`` names: the alias of that exact name, else the first alias whose name
        is a glob (``*``, ``?``, ``[``) matching it, in config order; None when none does.

        Globs let clients that send model names you do not choose (Claude Code sends
        ``claude-sonnet-...`` for ``--model sonnet``) reach any llm_call model.
        """
        aliases = self.aliases
        if model in aliases:
            return model
        for name in aliases:
            if _GLOB_CHARS.search(name) and fnmatch.fnmatchcase(model, name):
                return name
        return None

    def masked(self) -> dict[str, Any]:
        """The effective settings as a dict with secrets replaced by ``***``."""
        data = self.model_dump(mode="json")
        for ep in data.get("endpoints", {}).values():
            if ep.get("api_key"):
                ep["api_key"] = "***"
            headers = ep.get("headers") or {}
            for name in headers:
                if _SECRET_HEADER.search(name):
                    headers[name] = "***"
            ep["base_url"] = _URL_PASSWORD.sub(r"\1***@", ep["base_url"])
        for mcp in data.get("claude", {}).get("mcp_servers", {}).values():
            for section in ("env", "headers"):
                values = mcp.get(section) or {}
                for name in values:
                    if _SECRET_HEADER.search(name):
                        values[name] = "***"
        server = data.get("server", {})
        for key in ("api_keys", "admin_keys"):
            server[key] = ["***" for _ in server.get(key, [])]
        for section, key in (("tasks", "store"), ("openai", "base_url")):
            value = data.get(section, {}).get(key)
            if isinstance(value, str):
                data[section][key] = _URL_PASSWORD.sub(r"\1***@", value)
        data["source"] = self.source
        return data


RetryConfig.model_rebuild()


def _env_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"environment variable {name}={value!r} is not a boolean (use 1 or 0)")


def _env_keys(name: str, value: str) -> list[str]:
    """A comma list of keys; a blank item (``a,,b``, a trailing comma, only spaces) is an error:
    a server that counts it as a key but cannot match it would run without auth."""
    keys = [k.strip() for k in value.split(",")]
    if not all(keys):
        raise ConfigError(
            f"environment variable {name} has a blank key (an empty item in {value!r}); "
            "give comma-separated keys with no empty items, or unset it"
        )
    return keys


def _apply_env(data: dict[str, Any], env: os._Environ[str] | dict[str, str]) -> None:
    if v := env.get("LLM_CALL_DEFAULT_MODEL"):
        data["default_model"] = v
    if v := env.get("LLM_CALL_TASKS"):
        data.setdefault("tasks", {})["store"] = v
    for name, key in (("LLM_CALL_API_KEYS", "api_keys"), ("LLM_CALL_ADMIN_KEYS", "admin_keys")):
        if v := env.get(name):
            data.setdefault("server", {})[key] = _env_keys(name, v)
    if v := env.get("LLM_CALL_CLAUDE_CLI"):
        data.setdefault("claude", {})["cli_path"] = v
    if (v := env.get("LLM_CALL_CLAUDE_USE_API_KEY")) is not None:
        data.setdefault("claude", {})["use_api_key"] = _env_bool("LLM_CALL_CLAUDE_USE_API_KEY", v)
    if (v := env.get("LLM_CALL_CLAUDE_POOL_SIZE")) is not None:
        try:
            data.setdefault("claude", {})["pool_size"] = int(v)
        except ValueError:
            raise ConfigError(f"environment variable LLM_CALL_CLAUDE_POOL_SIZE={v!r} is not an integer") from None


def find_config_file(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read, or None. An explicitly named file must exist."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            problem = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise ConfigError(f"config file {p} {problem}", hint="check the --config path")
        return p
    env = os.environ.get("LLM_CALL_CONFIG")
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConfigError(
                f"config file {p} (from LLM_CALL_CONFIG) {'is a directory, not a file' if p.is_dir() else 'does not exist'}",
                hint="fix or unset LLM_CALL_CONFIG",
            )
        return p
    p = Path("llm_call.toml")
    return p if p.is_file() else None


def load_settings(
    path: str | os.PathLike[str] | None = None, *, env: dict[str, str] | None = None
) -> Settings:
    """Read and validate settings. Raises ConfigError naming the file and key path."""
    file = find_config_file(path)
    data: dict[str, Any] = {}
    source = "the environment"  # without a file, only the environment can be wrong
    if file is not None:
        source = str(file)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8-sig"))  # a leading BOM is not TOML
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file} is not valid TOML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file} is not UTF-8 text: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
    if "source" in data:  # a field of Settings (where they came from), not a setting
        raise ConfigError(f"invalid configuration in {source}: source: unknown key")
    environ = os.environ if env is None else env
    _apply_env(data, environ)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(exc, source, Settings, environ)) from None
    settings.source = str(file) if file else None
    return settings


_lock = threading.Lock()
_current: Settings | None = None
_config_path: str | None = None


def set_settings(settings: Settings | None = None, *, path: str | None = None) -> None:
    """Replace the process-wide settings (or forget them, so the next call reloads from ``path``)."""
    global _current, _config_path
    with _lock:
        _current = settings
        _config_path = path


def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    global _current
    cur = _current
    if cur is not None:
        return cur
    with _lock:
        if _current is None:
            _current = load_settings(_config_path)
        return _current


Kind = Literal["openai", "max", "local", "litellm", "endpoint"]
