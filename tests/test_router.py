"""Model strings to routes and providers: prefixes, bare OpenAI names, configured endpoints,
aliases (chains, loops, system prompts, options), the shared provider instances, and endpoints
and aliases end to end against the scripted server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import llm_call
from llm_call import AuthError, Chunk, ConfigError, ProviderHTTPError
from llm_call.config import Settings
from llm_call.providers.openai_compat import OpenAICompatProvider
from llm_call.providers.router import check_models, get_provider, known_routes, resolve
from llm_call.testing import Fault, Reply, ScriptedLLMServer

ENDPOINTS = {"endpoints": {"vllm": {"base_url": "http://127.0.0.1:8001/v1"}, "ollama": {"base_url": "http://127.0.0.1:11434/v1"}}}


@pytest.mark.parametrize(
    ("model", "kind", "full", "provider_model", "key"),
    [
        ("openai/gpt-4o", "openai", "openai/gpt-4o", "gpt-4o", "openai"),
        ("openai/org/custom-model", "openai", "openai/org/custom-model", "org/custom-model", "openai"),
        ("gpt-4o-mini", "openai", "openai/gpt-4o-mini", "gpt-4o-mini", "openai"),
        ("chatgpt-4o-latest", "openai", "openai/chatgpt-4o-latest", "chatgpt-4o-latest", "openai"),
        ("o1", "openai", "openai/o1", "o1", "openai"),
        ("o3-mini", "openai", "openai/o3-mini", "o3-mini", "openai"),
        ("o4-mini-2025-04-16", "openai", "openai/o4-mini-2025-04-16", "o4-mini-2025-04-16", "openai"),
        ("ft:gpt-4o-mini:org::abc", "openai", "openai/ft:gpt-4o-mini:org::abc", "ft:gpt-4o-mini:org::abc", "openai"),
        ("  openai/gpt-4o  ", "openai", "openai/gpt-4o", "gpt-4o", "openai"),
        ("vllm/meta/llama-3", "endpoint", "vllm/meta/llama-3", "meta/llama-3", "endpoint:vllm"),
        ("ollama/llama3", "endpoint", "ollama/llama3", "llama3", "endpoint:ollama"),
        ("max/sonnet", "max", "max/sonnet", "sonnet", "max"),
        ("max", "max", "max", "sonnet", "max"),
        ("local/smollm2", "local", "local/smollm2", "smollm2", "local"),
        ("local//models/x.gguf", "local", "local//models/x.gguf", "/models/x.gguf", "local"),
        ("anthropic/claude-x", "litellm", "anthropic/claude-x", "anthropic/claude-x", "litellm"),
        ("vertex_ai/gemini-pro", "litellm", "vertex_ai/gemini-pro", "vertex_ai/gemini-pro", "litellm"),
        ("nosuchprovider/x", "litellm", "nosuchprovider/x", "nosuchprovider/x", "litellm"),
    ],
)
def test_resolve_routes(model: str, kind: str, full: str, provider_model: str, key: str) -> None:
    route = resolve(model, Settings.model_validate(ENDPOINTS))
    assert (route.kind, route.model, route.provider_model, route.key) == (kind, full, provider_model, key)


def test_endpoint_route_names_its_endpoint() -> None:
    route = resolve("vllm/m", Settings.model_validate(ENDPOINTS))
    assert route.endpoint == "vllm"


@pytest.mark.parametrize("model", ["foo", "claude-3-5-sonnet", "llama3", "gpt4"])
def test_bare_unknown_name_is_config_error_with_hint(model: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown model '{model}'") as info:
        resolve(model, Settings())
    assert info.value.hint is not None
    assert "llm-call models" in info.value.hint
    assert "ROUTE/MODEL" in info.value.hint


@pytest.mark.parametrize("model", ["", "   "])
def test_empty_model_is_config_error(model: str) -> None:
    with pytest.raises(ConfigError, match="no model given"):
        resolve(model, Settings())


@pytest.mark.parametrize("model", ["local/", "openai/", "vllm/"])
def test_route_without_model_is_config_error(model: str) -> None:
    with pytest.raises(ConfigError, match="names no model"):
        resolve(model, Settings.model_validate(ENDPOINTS))


def test_max_route_uses_configured_default_model() -> None:
    settings = Settings.model_validate({"claude": {"default_model": "opus"}})
    assert resolve("max", settings).provider_model == "opus"


def test_alias_chain_resolves_with_system_and_options() -> None:
    settings = Settings.model_validate(
        {
            "aliases": {
                "base": {"model": "openai/gpt-4o", "system": "inner system", "options": {"seed": 1, "stop": ["x"]}},
                "mid": {"model": "base", "options": {"seed": 2}},
                "top": {"model": "mid", "system": "outer system", "allowed_tools": ["Read"]},
            }
        }
    )
    route = resolve("top", settings)
    assert (route.kind, route.model, route.provider_model) == ("openai", "openai/gpt-4o", "gpt-4o")
    assert route.system == "outer system"
    assert route.alias_options() == {"seed": 2, "stop": ["x"], "allowed_tools": ["Read"]}
    assert resolve("mid", settings).system == "inner system"


@pytest.mark.parametrize(
    ("aliases", "start", "chain"),
    [
        ({"a": "a"}, "a", "a -> a"),
        ({"a": "b", "b": "a"}, "a", "a -> b -> a"),
        ({"x": "y", "y": "z", "z": "y"}, "x", "x -> y -> z -> y"),
    ],
)
def test_alias_loop_is_config_error_showing_the_chain(aliases: dict[str, str], start: str, chain: str) -> None:
    with pytest.raises(ConfigError, match="alias loop") as info:
        resolve(start, Settings.model_validate({"aliases": aliases}))
    assert chain in info.value.message


def test_alias_to_unknown_bare_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model 'nonsense'"):
        resolve("fast", Settings.model_validate({"aliases": {"fast": "nonsense"}}))


def test_an_unknown_model_reached_through_aliases_names_the_alias_to_fix() -> None:
    settings = Settings.model_validate({"aliases": {"claude-*": "fast", "fast": "nonsense"}})
    settings.source = "/etc/llm_call.toml"
    with pytest.raises(ConfigError) as info:
        resolve("claude-x", settings)
    assert "unknown model 'nonsense'" in info.value.message
    assert "reached through alias 'claude-*' -> 'fast': fix model = ... of [aliases.fast]" in info.value.message
    assert "/etc/llm_call.toml" not in info.value.message  # the server sends it to clients
    assert info.value.hint and "ROUTE/MODEL" in info.value.hint


def test_check_models_names_every_configured_model_that_routes_nowhere() -> None:
    settings = Settings.model_validate({"default_model": "nosuch", "aliases": {"fast": "nonsense", "ok": "openai/x"}})
    problems = check_models(settings)
    assert len(problems) == 2
    assert problems[0].startswith("default_model = 'nosuch': unknown model 'nosuch'")
    assert "[aliases.fast]" in problems[1]
    assert check_models(Settings.model_validate({"default_model": "ok", "aliases": {"ok": "openai/x"}})) == []
    fallback = check_models(Settings.model_validate({"claude": {"quota_fallback": "sonet"}}))
    assert fallback == [f"claude.quota_fallback = 'sonet': {fallback[0].split(': ', 1)[1]}"] and "unknown model 'sonet'" in fallback[0]


async def test_an_unknown_default_model_names_default_model(use_settings: Callable[..., Any]) -> None:
    use_settings(default_model="nosuch")
    with pytest.raises(ConfigError) as info:
        await llm_call.acall(prompt="hi")
    assert "the default model 'nosuch'" in info.value.message
    assert "LLM_CALL_DEFAULT_MODEL" in info.value.message


def test_glob_aliases_exact_name_first_then_first_matching_glob() -> None:
    settings = Settings.model_validate(
        {
            "aliases": {
                "claude-*haiku*": "openai/gpt-4o-mini",
                "claude-*": "openai/gpt-4o",
                "claude-opus-4": "vllm/big",
                "fast": "claude-x",  # an alias may lead into a glob alias
            },
            **ENDPOINTS,
        }
    )
    assert resolve("claude-3-5-haiku-20241022", settings).model == "openai/gpt-4o-mini"
    assert resolve("claude-sonnet-4-5", settings).model == "openai/gpt-4o"
    assert resolve("claude-opus-4", settings).model == "vllm/big"
    assert resolve("fast", settings).model == "openai/gpt-4o"
    with pytest.raises(ConfigError, match="unknown model 'gemini'"):
        resolve("gemini", settings)


def test_glob_alias_matching_its_own_target_is_a_loop() -> None:
    with pytest.raises(ConfigError, match="alias loop"):
        resolve("claude-a", Settings.model_validate({"aliases": {"claude-*": "claude-b"}}))


def test_known_routes_lists_endpoints() -> None:
    routes = known_routes(Settings.model_validate(ENDPOINTS))
    assert {"max/*", "local/*", "openai/*", "vllm/*", "ollama/*"} <= set(routes)


def test_providers_are_shared_per_route(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.model_validate(ENDPOINTS)
    a = get_provider(resolve("openai/a", settings), settings)
    b = get_provider(resolve("gpt-4o", settings), settings)
    v1 = get_provider(resolve("vllm/x", settings), settings)
    v2 = get_provider(resolve("vllm/y", settings), settings)
    o = get_provider(resolve("ollama/x", settings), settings)
    assert a is b
    assert v1 is v2
    assert v1 is not o
    assert isinstance(v1, OpenAICompatProvider) and v1.base_url == "http://127.0.0.1:8001/v1"


def test_provider_is_rebuilt_when_its_configuration_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    first = Settings.model_validate(ENDPOINTS)
    p1 = get_provider(resolve("vllm/x", first), first)
    same = Settings.model_validate(ENDPOINTS)  # equal values: the provider is kept
    assert get_provider(resolve("vllm/x", same), same) is p1
    moved = Settings.model_validate({"endpoints": {"vllm": {"base_url": "http://127.0.0.1:9001/v1"}}})
    p2 = get_provider(resolve("vllm/x", moved), moved)
    assert p2 is not p1
    assert isinstance(p2, OpenAICompatProvider) and p2.base_url == "http://127.0.0.1:9001/v1"

    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    o1 = get_provider(resolve("openai/x", first), first)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:2/v1")
    o2 = get_provider(resolve("openai/x", first), first)
    assert isinstance(o2, OpenAICompatProvider) and o2.base_url == "http://127.0.0.1:2/v1"
    assert o1 is not o2


def test_openai_base_url_that_is_not_a_url_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    settings = Settings()
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        get_provider(resolve("openai/x", settings), settings)


def test_configured_openai_base_url_that_is_not_a_url_names_the_key() -> None:
    settings = Settings.model_validate({"openai": {"base_url": "ftp://x"}})
    with pytest.raises(ConfigError, match=r"openai\.base_url"):
        get_provider(resolve("openai/x", settings), settings)


async def test_unknown_bare_model_through_acall_is_config_error(use_settings: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match="unknown model 'foo'"):
        await llm_call.acall("foo", "hi")


# -- endpoints and aliases end to end (through acall, against the scripted server) -----------


async def collect(model: str, prompt: str | None = "hi", **kw: Any) -> list[Chunk]:
    return [c async for c in llm_call.astream(model, prompt, **kw)]


async def test_endpoint_from_config(srv: ScriptedLLMServer, use_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(
        endpoints={
            "vllm": {
                "base_url": srv.openai_base_url,
                "api_key_env": "VLLM_KEY",
                "headers": {"X-Team": "core"},
            }
        }
    )
    monkeypatch.setenv("VLLM_KEY", "vk-1")
    srv.add(Reply(text="from vllm", model="meta/llama"))
    resp = await llm_call.acall("vllm/meta/llama", "hi")
    assert resp.text == "from vllm"
    assert resp.model == "vllm/meta/llama"
    rec = srv.requests[0]
    assert rec.model == "meta/llama"
    assert rec.headers["authorization"] == "Bearer vk-1"
    assert rec.headers["x-team"] == "core"
    chunks = await collect("vllm/meta/llama")
    assert chunks[-1].finish_reason == "stop"


async def test_endpoint_missing_key_names_its_env_var(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(endpoints={"vllm": {"base_url": srv.openai_base_url, "api_key_env": "VLLM_KEY"}})
    with pytest.raises(AuthError, match="VLLM_KEY"):
        await llm_call.acall("vllm/m", "hi", retry=False)
    assert srv.requests == []


async def test_endpoint_without_key_sends_no_authorization(srv: ScriptedLLMServer, use_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    use_settings(endpoints={"local-llm": {"base_url": srv.openai_base_url}})
    resp = await llm_call.acall("local-llm/tiny", "hi")
    assert resp.text == "default answer"
    assert "authorization" not in srv.requests[0].headers


async def test_endpoint_with_inline_key(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(endpoints={"ep": {"base_url": srv.openai_base_url, "api_key": "inline-secret"}})
    await llm_call.acall("ep/m", "hi")
    assert srv.requests[0].headers["authorization"] == "Bearer inline-secret"


async def test_endpoint_401_hint_names_the_env_var(srv: ScriptedLLMServer, use_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    use_settings(endpoints={"vllm": {"base_url": srv.openai_base_url, "api_key_env": "VLLM_KEY"}})
    monkeypatch.setenv("VLLM_KEY", "wrong")
    srv.add(Reply(fault=Fault.http(401)))
    with pytest.raises(AuthError) as info:
        await llm_call.acall("vllm/m", "hi", retry=False)
    assert info.value.hint is not None and "VLLM_KEY" in info.value.hint
    assert info.value.provider == "vllm"


async def test_configured_openai_base_url_wins_over_env(srv: ScriptedLLMServer, use_settings: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    use_settings(openai={"base_url": srv.openai_base_url, "api_key_env": "MY_OPENAI_KEY"})
    monkeypatch.setenv("MY_OPENAI_KEY", "k2")
    await llm_call.acall("openai/m", "hi")
    assert srv.requests[0].headers["authorization"] == "Bearer k2"


async def test_alias_applies_model_system_prompt_and_options(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(
        aliases={
            "fast": {"model": "openai/small", "system": "Answer briefly.", "options": {"seed": 7, "temperature": 0.1}},
            "quick": "fast",
        }
    )
    resp = await llm_call.acall("quick", "hi")
    assert resp.model == "openai/small"
    body = srv.requests[0].body
    assert body["model"] == "small"
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert body["seed"] == 7
    assert body["temperature"] == 0.1
    # explicit arguments beat the alias's options and system prompt
    await llm_call.acall("fast", "hi", seed=9, temperature=0.9, system="Be loud.")
    body = srv.requests[1].body
    assert body["seed"] == 9
    assert body["temperature"] == 0.9
    assert body["messages"][0] == {"role": "system", "content": "Be loud."}
    # streaming uses the alias too
    await collect("fast")
    assert srv.requests[2].body["messages"][0]["content"] == "Answer briefly."


async def test_alias_loop_is_config_error(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(aliases={"a": "b", "b": "a"})
    with pytest.raises(ConfigError, match="alias loop"):
        await llm_call.acall("a", "hi", retry=False)
    assert srv.requests == []


async def test_default_model_from_config(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(default_model="openai/dflt")
    resp = await llm_call.acall(prompt="hi")
    assert resp.model == "openai/dflt"


async def test_alias_options_for_llm_call_layers_are_applied_not_sent(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(aliases={"strict": {"model": "openai/m", "options": {"retry": False, "seed": 3}}})
    srv.add(Reply(fault=Fault.http(500)))
    with pytest.raises(ProviderHTTPError):
        await llm_call.acall("strict", "hi")
    assert len(srv.requests) == 1  # the alias's retry=False applied: no retry of the 500
    assert srv.requests[0].body["seed"] == 3
    assert "retry" not in srv.requests[0].body
