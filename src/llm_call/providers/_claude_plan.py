"""The ``max/*`` route's plan: a Request as one Claude Code CLI call, without the SDK.

:func:`plan_call` checks the options and builds the :class:`CallPlan` (model, prompt, system
prompt, working directory, CLI keywords, timeout); :func:`render_prompt` turns a conversation
into the CLI's one prompt. No ``claude_agent_sdk`` import here: ``claude_cli`` (the provider)
and ``_claude_messages`` (SDK messages -> chunks and errors) import this module, and the CLI's
``doctor`` finds the CLI with :func:`bundled_cli_path` / :func:`resolve_cli_path` without
loading the SDK.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, UsageError
from ..types import Message, Request
from ._claude_content import Content, render_content
from .base import CLAUDE_ONLY_OPTIONS

if TYPE_CHECKING:
    from ..config import ClaudeConfig

__all__ = [
    "DEFAULT_PERMISSION_MODE",
    "LOGIN_HINT",
    "NAME",
    "OPTIONS",
    "PERMISSION_MODES",
    "CallPlan",
    "bundled_cli_path",
    "plan_call",
    "render_content",
    "render_prompt",
    "resolve_cli_path",
]

_log = logging.getLogger("llm_call.providers.claude_cli")

NAME = "max"
LOGIN_HINT = (
    "run `claude /login` to log in with your Claude subscription "
    "(or set LLM_CALL_CLAUDE_USE_API_KEY=1 to use ANTHROPIC_API_KEY)"
)
PERMISSION_MODES = frozenset({"default", "acceptEdits", "plan", "bypassPermissions", "dontAsk", "auto"})
DEFAULT_PERMISSION_MODE = "dontAsk"
OPTIONS = CLAUDE_ONLY_OPTIONS
#: options other layers may pass along that mean nothing to the CLI
_IGNORED = frozenset({"progress", "user", "stream_options", "metadata"})


# -- the request as a CLI call ------------------------------------------------------------


def render_prompt(messages: list[Message]) -> tuple[str | None, str]:
    """``(system prompt, prompt)`` for the CLI from a text-only OpenAI-shaped conversation.

    System and developer messages become the system prompt. One user message is the prompt as
    is. Earlier turns are rendered as a delimited transcript before the latest user message::

        <conversation_history>
        <turn role="user">
        My name is Ada.
        </turn>
        <turn role="assistant">
        Hello Ada!
        </turn>
        </conversation_history>

        Continue the conversation above. The user's latest message:

        What is my name?

    A conversation with images raises :class:`UsageError`; :func:`render_content` keeps them.
    """
    system_prompt, content = render_content(messages)
    if not isinstance(content, str):
        raise UsageError("render_prompt takes text only; the conversation has images (use render_content)")
    return system_prompt, content


def _str_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"option {name} must be a list of strings (or a comma list)")
    return [v for v in value if v]


@dataclasses.dataclass(slots=True)
class CallPlan:
    """Everything one CLI run needs, checked before any process starts."""

    model: str
    prompt: Content  # the user message: text, or text and image blocks
    system_prompt: str | None
    cwd: str | None  # None: a fresh temporary workspace
    sdk_options: dict[str, Any]  # keyword arguments of ClaudeAgentOptions (cwd excluded)
    timeout: float | None
    #: True when a warm pooled process may serve the call (it needs no workspace of its own)
    poolable: bool = False


def _mcp_servers(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("mcpServers"), dict):
        raise UsageError('option mcp_config must be a dict like {"mcpServers": {"name": {...}}}')
    extra = set(value) - {"mcpServers"}
    if extra:
        raise UsageError(f"option mcp_config has unknown keys {sorted(extra)} (only mcpServers)")
    servers: dict[str, Any] = value["mcpServers"]
    for name, server in servers.items():
        if not isinstance(server, dict):
            raise UsageError(f"mcp_config server {name!r} must be a dict")
    return servers


def _named_servers(cfg: ClaudeConfig, opts: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """The ``mcpServers`` entries for the ``mcp_servers`` and ``tool_profile`` options (names the
    operator declared under ``[claude.mcp_servers]`` / ``[claude.tool_profiles]``); a profile's
    tools are appended to ``allowed`` in place."""
    names = _str_list(opts.get("mcp_servers") or [], "mcp_servers")
    profile_name = opts.get("tool_profile")
    if profile_name is not None:
        profile = cfg.tool_profiles.get(str(profile_name))
        if profile is None:
            raise UsageError(
                f"tool profile {profile_name!r} is not declared",
                hint=f"declare it under [claude.tool_profiles.{profile_name}]; declared: {sorted(cfg.tool_profiles) or 'none'}",
            )
        names = [*names, *profile.mcp_servers]
        allowed.extend(t for t in profile.allowed_tools if t not in allowed)
    servers: dict[str, Any] = {}
    for name in names:
        server = cfg.mcp_servers.get(name)
        if server is None:
            raise UsageError(
                f"MCP server {name!r} is not declared",
                hint=f"declare it under [claude.mcp_servers.{name}]; declared: {sorted(cfg.mcp_servers) or 'none'}",
            )
        servers[name] = server.cli_entry()
    return servers


def _refuse_client_tools(opts: dict[str, Any]) -> None:
    """Client-defined function tools cannot reach the CLI: it runs its own tools in its own loop.

    With no tools given, ``tool_choice``/``parallel_tool_calls`` mean nothing and are dropped.
    """
    if opts.get("tools"):
        raise UsageError(
            "the max/* route (Claude Code CLI) runs its own tools and cannot return calls of "
            "client-defined tools: remove tools/tool_choice, or use an API route (anthropic/..., openai/...)",
            hint="the CLI's own tools are chosen with allowed_tools=[...] and mcp_config={...}",
        )
    for key in ("tools", "tool_choice", "parallel_tool_calls"):
        opts.pop(key, None)


def plan_call(cfg: ClaudeConfig, request: Request, *, environ: dict[str, str] | None = None) -> CallPlan:
    """Check ``request`` and turn it into a :class:`CallPlan`. Raises UsageError/ConfigError."""
    model = request.model.strip()
    if not model or any(c.isspace() for c in model):
        raise UsageError(f"invalid Claude model name {request.model!r}", hint="use max/sonnet, max/opus, max/haiku or max/<model id>")
    system_prompt, prompt = render_content(request.messages, allow_image_urls=cfg.image_urls)
    opts = dict(request.options)
    _refuse_client_tools(opts)
    unknown = sorted(k for k, v in opts.items() if k not in OPTIONS and k not in _IGNORED and v is not None)
    if unknown:
        raise UsageError(
            f"option(s) {unknown} are not supported by the max/* route (Claude Code CLI)",
            hint=f"supported: {', '.join(sorted(OPTIONS))}",
        )
    env = os.environ if environ is None else environ
    cli_env: dict[str, str] = {}
    if not cfg.use_api_key and env.get("ANTHROPIC_API_KEY"):
        cli_env["ANTHROPIC_API_KEY"] = ""  # the CLI treats an empty key as none: subscription login
    if request.max_tokens is not None:
        cli_env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(request.max_tokens)
    extra_env = opts.get("env")
    if extra_env is not None:
        if not isinstance(extra_env, dict) or not all(isinstance(v, str) for v in extra_env.values()):
            raise UsageError("option env must be a dict of strings")
        cli_env.update(extra_env)

    allowed = _str_list(opts.get("allowed_tools") or [], "allowed_tools")
    named = _named_servers(cfg, opts, allowed)
    builtin = sorted({t.split("(", 1)[0] for t in allowed if not t.startswith("mcp__")})
    kw: dict[str, Any] = {
        "model": model,
        "system_prompt": system_prompt,
        "tools": builtin,  # [] turns every built-in tool off
        "allowed_tools": allowed,
        "strict_mcp_config": True,
        "setting_sources": [],
        "env": cli_env,
        "include_partial_messages": True,  # text deltas, and activity for the idle watchdog
        # the prompt is request text: never a CLI slash command (``/model haiku`` would switch a
        # pooled process's model for later calls) nor an ``@path`` the CLI inlines from disk
        "verbatim_prompts": True,
    }
    if cfg.cli_path:
        kw["cli_path"] = resolve_cli_path(cfg.cli_path)
    if opts.get("mcp_config") is not None:
        kw["mcp_servers"] = _mcp_servers(opts["mcp_config"])
    if named:
        kw["mcp_servers"] = {**named, **kw.get("mcp_servers", {})}
    if opts.get("disallowed_tools") is not None:
        kw["disallowed_tools"] = _str_list(opts["disallowed_tools"], "disallowed_tools")
    mode = opts.get("permission_mode") or DEFAULT_PERMISSION_MODE
    if mode not in PERMISSION_MODES:
        raise UsageError(f"permission_mode {mode!r} is not one of {sorted(PERMISSION_MODES)}")
    kw["permission_mode"] = mode
    resume = opts.get("resume")
    if resume is not None:
        if not isinstance(resume, str) or not resume.strip():
            raise UsageError("option resume must be a CLI session id (Response.extra['session_id'])")
        kw["resume"] = resume.strip()
    max_turns = opts.get("max_turns", cfg.max_turns)
    if max_turns is not None:
        if not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1:
            raise UsageError(f"max_turns must be an integer >= 1, not {max_turns!r}")
        kw["max_turns"] = max_turns
    budget = opts.get("max_budget_usd")
    if budget is not None:
        if not isinstance(budget, int | float) or budget <= 0:
            raise UsageError(f"max_budget_usd must be > 0, not {budget!r}")
        kw["max_budget_usd"] = float(budget)
    persist = opts.get("persist_session")
    if persist is None:
        persist = cfg.persist_sessions  # None: the CLI's default (saved, so resume= works)
    if persist is not None:
        if not isinstance(persist, bool):
            raise UsageError("option persist_session must be True or False")
        if not persist:
            kw["extra_args"] = {"no-session-persistence": None}
    if opts.get("effort") is not None:
        kw["effort"] = str(opts["effort"])
    if opts.get("add_dirs") is not None:
        kw["add_dirs"] = _str_list(opts["add_dirs"], "add_dirs")
    if opts.get("setting_sources") is not None:
        kw["setting_sources"] = _str_list(opts["setting_sources"], "setting_sources")
    cwd = opts.get("cwd")
    if cwd is not None:
        path = Path(cwd).expanduser()
        if not path.is_dir():
            raise UsageError(f"cwd {str(cwd)!r} is not an existing directory")
        cwd = str(path.resolve())
    timeout = request.timeout if request.timeout is not None else cfg.total_timeout
    # a call that touches files (built-in tools, extra dirs, a given cwd), resumes a session or
    # caps its spend (the CLI counts per process) gets a fresh process in a fresh workspace
    poolable = not (
        cwd is not None
        or builtin
        or "add_dirs" in kw
        or "resume" in kw
        or "max_budget_usd" in kw
        or ("mcp_servers" in kw and not cfg.pool_mcp)
    )
    return CallPlan(model, prompt, system_prompt, cwd, kw, timeout, poolable)


def bundled_cli_path() -> str | None:
    """The CLI bundled in the installed claude-agent-sdk wheel (found without importing it)."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "_bundled" / ("claude.exe" if os.name == "nt" else "claude")
    return str(path) if path.is_file() else None


def resolve_cli_path(configured: str | None) -> str | None:
    """The configured CLI as an executable path; ConfigError if it names nothing runnable."""
    if not configured:
        return None
    found = shutil.which(os.path.expanduser(configured))
    if found is None:
        # the path is the operator's and the message reaches HTTP clients: the log has it
        _log.warning("Claude CLI %r (claude.cli_path / LLM_CALL_CLAUDE_CLI) is not an executable", configured)
        raise ConfigError(
            "the Claude CLI set in claude.cli_path / LLM_CALL_CLAUDE_CLI is not an executable (the log names it)",
            hint="point it at a `claude` executable, or unset it to use the CLI bundled with claude-agent-sdk",
        )
    return found
