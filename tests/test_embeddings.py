"""``llm_call.aembed`` against the scripted LLM server's ``/v1/embeddings`` on real sockets: the
vectors a caller gets, what reached the upstream, retries, fallbacks, and the routes that have no
embeddings refused by name. The server endpoint is in test_server_embeddings.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import llm_call
from llm_call import AuthError, MalformedResponse, UsageError
from llm_call.testing import DEFAULT_DIMENSIONS, Fault, Reply, ScriptedLLMServer, embedding_vector

pytestmark = pytest.mark.timeout(60)

MODEL = "openai/text-embedding-3-small"


def _no_sleep() -> Any:
    """A retry policy on a fake clock: retries happen, nobody waits."""
    return llm_call.ManualClock().policy()


async def test_aembed_returns_one_float_vector_per_text_in_input_order(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(prompt_tokens=5))
    result = await llm_call.aembed(MODEL, ["red apple", "blue sky"], dimensions=16)
    assert result.vectors == [embedding_vector("red apple", 16), embedding_vector("blue sky", 16)]
    assert result.model == MODEL
    assert result.usage.prompt_tokens == 5 and result.usage.total_tokens == 5
    assert [a.kind for a in result.attempts] == ["answer"]
    (rec,) = srv.requests
    assert rec.path == "/v1/embeddings"
    assert rec.headers["authorization"] == "Bearer sk-test-123"
    assert rec.body == {"model": "text-embedding-3-small", "input": ["red apple", "blue sky"], "dimensions": 16}


async def test_aembed_of_one_string_gives_one_vector(srv: ScriptedLLMServer) -> None:
    result = await llm_call.aembed(MODEL, "just one")
    assert result.vectors == [embedding_vector("just one")]
    assert len(result.vectors[0]) == DEFAULT_DIMENSIONS
    assert srv.requests[-1].body["input"] == ["just one"]


async def test_base64_is_asked_of_the_upstream_and_decoded_to_the_same_floats(srv: ScriptedLLMServer) -> None:
    result = await llm_call.aembed(MODEL, ["a", "b"], encoding_format="base64", dimensions=32)
    assert srv.requests[-1].body["encoding_format"] == "base64"
    assert result.vectors == [embedding_vector("a", 32), embedding_vector("b", 32)]
    assert all(isinstance(x, float) for x in result.vectors[0])


async def test_a_transient_503_is_retried_and_recorded(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(503)))
    result = await llm_call.aembed(MODEL, "retry me", retry=_no_sleep())
    assert result.vectors == [embedding_vector("retry me")]
    assert len(srv.requests) == 2
    assert [(a.kind, a.error and a.error["fields"]["status"]) for a in result.attempts] == [("provider_error", 503), ("answer", None)]


async def test_a_fallback_answers_when_the_first_model_keeps_failing(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(endpoints={"up": {"base_url": srv.openai_base_url}})
    srv.add(Reply(fault=Fault.http(503), match_model="broken", times=None))
    result = await llm_call.aembed("up/broken", ["x"], fallbacks=["up/healthy"], retry=0)
    assert result.model == "up/healthy"
    assert result.vectors == [embedding_vector("x")]
    assert [(a.model, a.kind) for a in result.attempts] == [("up/broken", "provider_error"), ("up/healthy", "answer")]
    assert [r.model for r in srv.requests] == ["broken", "healthy"]


async def test_an_auth_failure_is_raised_at_once_not_retried(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.http(401), times=None))
    with pytest.raises(AuthError, match="HTTP 401"):
        await llm_call.aembed(MODEL, "x", retry=_no_sleep())
    assert len(srv.requests) == 1


async def test_an_answer_that_is_not_embeddings_is_a_typed_error(srv: ScriptedLLMServer) -> None:
    srv.add(Reply(fault=Fault.html()))
    with pytest.raises(MalformedResponse, match="HTML"):
        await llm_call.aembed(MODEL, "x")
    srv.add(Reply(fault=Fault.malformed_json('{"object": "list", "data": [{"index": 0, "embedding": [0.5]}]}')))
    with pytest.raises(MalformedResponse, match="1 embeddings for 2 inputs"):
        await llm_call.aembed(MODEL, ["x", "y"])


async def test_max_has_no_embeddings_and_is_refused_by_name(srv: ScriptedLLMServer) -> None:
    with pytest.raises(UsageError, match="Claude Code CLI, which has no embeddings") as caught:
        await llm_call.aembed("max/sonnet", "x", fallbacks=[MODEL])
    assert "openai/text-embedding-3-small" in (caught.value.hint or "")
    assert srv.requests == []  # a usage error is not a provider failure: no fallback either


async def test_an_alias_names_the_model_and_bundles_only_embedding_options(srv: ScriptedLLMServer, use_settings: Callable[..., Any]) -> None:
    use_settings(aliases={"vectors": {"model": MODEL, "system": "be brief", "options": {"dimensions": 4, "temperature": 0.1}}})
    result = await llm_call.aembed("vectors", "aliased")
    assert result.vectors == [embedding_vector("aliased", 4)]
    assert srv.requests[-1].body == {"model": "text-embedding-3-small", "input": ["aliased"], "dimensions": 4}


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        (([],), {}, "input is an empty list"),
        ((["ok", ""],), {}, "input\\[1\\] is an empty string"),
        ((["ok", 3],), {}, "input\\[1\\] is a int"),
        ((b"bytes",), {}, "not bytes"),
        (("x",), {"encoding_format": "int8"}, "encoding_format must be 'float' or 'base64'"),
        (("x",), {"dimensions": 0}, "dimensions must be a positive integer"),
        (("x",), {"validate": ["json"]}, "validate: not an option of an embeddings call"),
        (("x",), {"mode": "background"}, "mode: not an option"),
        (("x",), {"timeout": 0}, "timeout must be > 0"),
    ],
)
async def test_bad_arguments_are_a_usage_error_before_any_request(
    srv: ScriptedLLMServer, args: tuple[Any, ...], kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(UsageError, match=says):
        await llm_call.aembed(MODEL, *args, **kwargs)
    assert srv.requests == []
