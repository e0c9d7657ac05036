"""LiteLLM as a client of the server (``litellm.acompletion(model="openai/<our model>",
api_base=<server>/v1)``): plain, streamed, errors, and a ``max/*`` model through the Claude CLI.
All LiteLLM tests live here (importing it costs seconds)."""

from __future__ import annotations

from typing import Any

import pytest

from llm_call.testing import Fault, Reply
from support.claude_env import ClaudeEnv, claude_env
from support.llm_server import Served, serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(120)

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def litellm() -> Any:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm as lib

    lib.suppress_debug_info = True
    return lib


async def test_litellm_completion(litellm: Any, serve_llm: Any) -> None:
    served: Served = serve_llm([Reply(text="hello litellm", prompt_tokens=4, completion_tokens=2)])
    resp = await litellm.acompletion(model="openai/up/x", messages=HI, api_base=served.base_url, api_key="k", num_retries=0)
    assert resp.choices[0].message.content == "hello litellm"
    assert resp.usage.prompt_tokens == 4
    assert served.upstream.requests[-1].body["messages"] == HI


async def test_litellm_streaming(litellm: Any, serve_llm: Any) -> None:
    served = serve_llm([Reply(text="streamed through two proxies")])
    stream = await litellm.acompletion(
        model="openai/up/x", messages=HI, api_base=served.base_url, api_key="k", stream=True, num_retries=0
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(parts) == "streamed through two proxies"


async def test_litellm_sees_typed_errors(litellm: Any, serve_llm: Any) -> None:
    served = serve_llm([Reply(fault=Fault.http(500))], retry={"max_retries": 0}, server={"api_keys": ["right"]})
    with pytest.raises(litellm.AuthenticationError):
        await litellm.acompletion(model="openai/up/x", messages=HI, api_base=served.base_url, api_key="wrong", num_retries=0)
    with pytest.raises(litellm.NotFoundError):
        await litellm.acompletion(model="openai/missing", messages=HI, api_base=served.base_url, api_key="right", num_retries=0)
    with pytest.raises(litellm.BadRequestError):
        await litellm.acompletion(
            model="openai/up/x", messages=HI, api_base=served.base_url, api_key="right", num_retries=0, extra_body={"nope": 1}
        )
    with pytest.raises(litellm.BadGatewayError, match="HTTP 500"):
        await litellm.acompletion(model="openai/up/x", messages=HI, api_base=served.base_url, api_key="right", num_retries=0)


async def test_litellm_max_model_through_the_claude_cli(litellm: Any, claude_env: ClaudeEnv, serve_llm: Any) -> None:
    served = serve_llm([Reply(text="Claude via LiteLLM via llm_call.")], claude={"use_api_key": True})
    claude_env.use_server(served.upstream)
    resp = await litellm.acompletion(
        model="openai/max/sonnet", messages=HI, api_base=served.base_url, api_key="k", num_retries=0
    )
    assert resp.choices[0].message.content == "Claude via LiteLLM via llm_call."
    assert [r.path for r in served.upstream.requests].count("/v1/messages") == 1


def test_litellm_errors_carry_no_server_traceback(serve_llm: Any) -> None:
    """LiteLLM puts a Python traceback in the text of some errors (a provider that needs a base
    URL, a missing module): over HTTP it named the server's paths and code to any key."""
    import httpx

    served: Served = serve_llm()
    r = httpx.post(f"{served.base_url}/chat/completions", json={"model": "triton/x", "messages": HI}, timeout=60)
    assert r.status_code >= 400
    message = r.json()["error"]["message"]
    assert "api_base is required" in message  # what is wrong stays
    assert "Traceback" not in message and "site-packages" not in message and ".py" not in message, message
