"""What a request over HTTP may ask for: only what the operator declared in the config file.

The HTTP surface is untrusted; operator configuration is trusted (docs/security.md). Anything that
starts a process (an MCP server), enables a tool, or loads a file (a model) comes from the config
file, and a request picks it by name:

- ``"mcp_servers": ["files"]``        servers declared under ``[claude.mcp_servers.files]``
- ``"tool_profile": "research"``      ``[claude.tool_profiles.research]`` (allowed tools + servers)
- ``"tools_mcp_servers": [...]``      the same names, for the validation loop's tool stage
- ``allowed_tools``                   only ``mcp__SERVER`` / ``mcp__SERVER__TOOL`` of servers the
                                      request selected, one tool name per entry (no separators the
                                      CLI would split on); built-in CLI tools come from a profile
- ``validation`` agent judges         ``mcp_servers=NAME`` instead of ``mcp_config``
- ``local/NAME`` models               ``local/smollm2`` or ``[local.models.NAME]``; never a path
                                      (in ``model``, ``escalate``, ``fallbacks`` or a judge's model)
- LiteLLM providers on this machine   ``ollama/...`` and the others LiteLLM sends to a localhost
                                      server by default: only when the operator set their base
                                      URL, declared an endpoint of that name, or an alias

A raw ``mcp_config``, ``tools_mcp_config``, a judge's ``mcp_config``, a built-in tool name or an
undeclared name is a 400 naming the config key to use. Library callers (``acall`` in their own
process) are operators and keep the raw options; this module only runs for HTTP requests.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import TYPE_CHECKING, Any

from ._errors import HTTPFailure

if TYPE_CHECKING:
    from ..config import ClaudeConfig, Settings
    from ._schemas import LLMCallExtras

__all__ = ["check_judge", "check_model", "check_models", "tool_options"]

_CODE = "not_declared_by_operator"
#: one MCP tool: the CLI splits ``--allowedTools`` on commas and spaces outside parentheses, so an
#: entry holding one (``mcp__files__x,Bash``) would add a built-in tool rule of the request's own
_MCP_TOOL = re.compile(r"^mcp__[A-Za-z0-9_.-]+\Z")


def _refuse(message: str, param: str) -> HTTPFailure:
    return HTTPFailure(400, message, param=param, code=_CODE)


def _declared_servers(names: list[str], claude: ClaudeConfig, param: str) -> None:
    for i, name in enumerate(names):
        if name not in claude.mcp_servers:
            raise _refuse(
                f"{param}[{i}]: MCP server {name!r} is not declared by the server's operator; "
                f"servers are declared in the config file under [claude.mcp_servers.{name}] "
                f"(declared: {', '.join(sorted(claude.mcp_servers)) or 'none'})",
                f"{param}.{i}",
            )


def tool_options(extras: LLMCallExtras, claude: ClaudeConfig) -> dict[str, Any]:
    """The acall options for the request's MCP servers, tool profile and allowed tools. Raises
    a 400 :class:`HTTPFailure` for anything not declared under ``[claude.*]``."""
    if extras.mcp_config is not None:
        raise _refuse(
            "mcp_config cannot be sent over HTTP: an MCP server is a process started on the server. "
            "Declare it in the config file under [claude.mcp_servers.NAME] (command, args, env) and send "
            '"mcp_servers": ["NAME"]',
            "mcp_config",
        )
    if extras.tools_mcp_config is not None:
        raise _refuse(
            "tools_mcp_config cannot be sent over HTTP: an MCP server is a process started on the server. "
            "Declare it in the config file under [claude.mcp_servers.NAME] and send "
            '"tools_mcp_servers": ["NAME"] with tools_after',
            "tools_mcp_config",
        )
    opts: dict[str, Any] = {}
    selected: list[str] = []
    if extras.mcp_servers:
        _declared_servers(extras.mcp_servers, claude, "mcp_servers")
        opts["mcp_servers"] = list(extras.mcp_servers)
        selected.extend(extras.mcp_servers)
    if extras.tool_profile is not None:
        profile = claude.tool_profiles.get(extras.tool_profile)
        if profile is None:
            raise _refuse(
                f"tool profile {extras.tool_profile!r} is not declared by the server's operator; profiles are "
                f"declared in the config file under [claude.tool_profiles.{extras.tool_profile}] "
                f"(declared: {', '.join(sorted(claude.tool_profiles)) or 'none'})",
                "tool_profile",
            )
        opts["tool_profile"] = extras.tool_profile
        selected.extend(profile.mcp_servers)
    if extras.tools_mcp_servers:
        _declared_servers(extras.tools_mcp_servers, claude, "tools_mcp_servers")
        opts["tools_mcp_servers"] = list(extras.tools_mcp_servers)
        selected.extend(extras.tools_mcp_servers)
    if extras.allowed_tools is not None:
        for i, tool in enumerate(extras.allowed_tools):
            if tool.startswith("mcp__") and not _MCP_TOOL.match(tool):
                raise _refuse(
                    f"allowed_tools[{i}] {tool[:100]!r} is not one tool name: over HTTP an allowed tool is "
                    "mcp__SERVER or mcp__SERVER__TOOL, made of letters, digits, '_', '-' and '.' (no spaces, "
                    "commas or parentheses, which the Claude CLI reads as separators of more tool rules); send "
                    "one list entry per tool",
                    f"allowed_tools.{i}",
                )
            server = tool[len("mcp__"):].split("__", 1)[0] if tool.startswith("mcp__") else None
            if server is None or server not in selected:
                raise _refuse(
                    f"allowed_tools[{i}] {tool!r} is not a tool of an MCP server this request selected. Over HTTP, "
                    "allowed_tools may name only mcp__SERVER or mcp__SERVER__TOOL for servers in mcp_servers, "
                    "tools_mcp_servers or the tool profile; built-in Claude Code tools (Bash, Read, WebFetch ...) are "
                    'enabled only by a profile declared under [claude.tool_profiles.NAME] (send "tool_profile": "NAME")',
                    f"allowed_tools.{i}",
                )
        opts["allowed_tools"] = list(extras.allowed_tools)
    return opts


def check_models(extras: LLMCallExtras, settings: Settings) -> None:
    """Every model the request names (``model``, ``escalate``, ``fallbacks``) may be loaded for it."""
    model = getattr(extras, "model", None)
    if isinstance(model, str) and model.strip():
        check_model(model, settings, "model")
    elif settings.server.allowed_models is not None and not settings.default_model:
        # no model and no configured default_model (that one is the operator's choice): the call
        # would take the built-in default, which the operator's list may leave out
        from .._request import default_model

        default = default_model(settings)
        try:
            check_model(default, settings, "model")
        except HTTPFailure as exc:
            if exc.status_code != 403:
                raise
            shown = ", ".join(settings.server.allowed_models) or "none"
            raise HTTPFailure(
                403,
                f"model: the request names none and the built-in default model {default!r} is not one "
                f"requests may use; name a model: {shown[:400]} (the operator's [server] allowed_models), "
                "or the operator sets default_model",
                param="model",
                code="model_not_allowed",
            ) from None
    for field in ("escalate", "fallbacks"):
        for i, name in enumerate(getattr(extras, field) or ()):
            check_model(name, settings, f"{field}.{i}")


def check_model(name: str, settings: Settings, param: str) -> None:
    """``local/...`` over HTTP: the bundled model or a declared name, never a path on the disk.

    One message for every refused name, whatever is (or is not) at that path: a client cannot
    tell a missing file from a directory or a file that does not load.
    """
    from ..errors import ConfigError
    from ..providers.router import resolve

    try:
        route = resolve(name, settings)
    except ConfigError:
        route = None
    allowed = settings.server.allowed_models
    if allowed is not None:
        names = [name.strip()] if route is None else [name.strip(), route.model]
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in allowed):
            shown = ", ".join(allowed) if allowed else "none"
            raise HTTPFailure(
                403,
                f"{param}: model {name[:100]!r} is not allowed on this server; requests may use "
                f"{shown[:400]} (the operator's [server] allowed_models)",
                param=param,
                code="model_not_allowed",
            )
    if route is None:
        return  # not a model at all: the call reports it
    if route.aliases:  # an alias is the operator's choice
        return
    if route.kind == "litellm":
        _check_litellm_provider(route.model.partition("/")[0], name, param)
        return
    if route.kind != "local":
        return
    if route.provider_model == "smollm2" or route.provider_model in settings.local.models:
        return
    declared = ", ".join(f"local/{n}" for n in ["smollm2", *sorted(settings.local.models)])
    raise HTTPFailure(
        404,
        f"{param}: that local model is not available to requests. Requests may use {declared}; the "
        "operator declares more in the config file under [local.models.NAME] (path = \"....gguf\")",
        param=param,
        code="model_not_found",
    )


#: LiteLLM providers that talk to a server on this machine unless their base URL is configured
#: (LiteLLM's defaults), by the environment variable that configures it
_LOOPBACK_PROVIDERS = {
    "ollama": "OLLAMA_API_BASE",
    "ollama_chat": "OLLAMA_API_BASE",
    "llamafile": "LLAMAFILE_API_BASE",
    "lemonade": "LEMONADE_API_BASE",
    "docker_model_runner": "DOCKER_MODEL_RUNNER_API_BASE",
    "xinference": "XINFERENCE_API_BASE",
    "langgraph": "LANGGRAPH_API_BASE",
    "langflow": "LANGFLOW_API_BASE",
}
#: LiteLLM providers that load a model into this process
_IN_PROCESS_PROVIDERS = frozenset({"vllm"})


def _check_litellm_provider(provider: str, model: str, param: str) -> None:
    """Over HTTP, a LiteLLM provider that would reach a server on this machine by LiteLLM's default
    (``ollama/x`` posts the prompt to ``localhost:11434``), or load a model into this process,
    needs the operator's word: its base URL variable, an alias, or an ``[endpoints.NAME]``."""
    env = _LOOPBACK_PROVIDERS.get(provider)
    if provider in _IN_PROCESS_PROVIDERS:
        why = f"LiteLLM's {provider} provider loads the model into this server's process"
        how = "declare an alias for it under [aliases] in the config file"
    elif env is not None and not os.environ.get(env):
        why = (f"LiteLLM's {provider} provider would send the request to a server on this machine "
               f"(its default base URL) that the operator has not configured")
        how = (f"the operator declares it in the config file as [endpoints.{provider}] (base_url = ...) or "
               f"an alias under [aliases], or sets {env}")
    else:
        return
    raise HTTPFailure(400, f"{param}: model {model[:100]!r} is not available to requests: {why}; {how}",
                      param=param, code=_CODE)


def check_judge(validator: Any, index: int, settings: Settings) -> None:
    """A parsed validation spec: an agent judge may name declared MCP servers, never a raw config,
    and only models a request may use."""
    claude = settings.claude
    judge_model = getattr(validator, "model", None)
    if getattr(validator, "expensive", False) and isinstance(judge_model, str):
        check_model(judge_model, settings, f"validation.{index}")
    if getattr(validator, "mcp_config", None) is not None:
        raise _refuse(
            f"validation[{index}]: the agent validator's mcp_config cannot be sent over HTTP (an MCP server is "
            "a process started on the server). Declare the server under [claude.mcp_servers.NAME] and give the "
            "judge mcp_servers=NAME",
            f"validation.{index}",
        )
    names = getattr(validator, "mcp_servers", None)
    if names:
        _declared_servers(list(names), claude, f"validation[{index}].mcp_servers")
