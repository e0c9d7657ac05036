"""``POST /v1/embeddings`` on a real port, with the official openai SDK as the client and the
scripted LLM server as the upstream (endpoint ``up``): OpenAI's shape in float and base64,
retries and fallbacks behind it, routes without embeddings refused, the key and allowed_models
checks, and a 400 that names the field."""

from __future__ import annotations

import base64
import struct
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from llm_call.testing import DEFAULT_DIMENSIONS, Fault, Reply, embedding_vector
from support.llm_server import Served, serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

NO_WAIT = {"base_delay": 0, "max_delay": 0}


def _post(served: Served, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(served.base_url + "/embeddings", json=body, headers=headers, timeout=30)


def test_openai_sdk_gets_float_vectors_in_openais_shape(serve_llm: Any) -> None:
    served: Served = serve_llm(default=Reply(times=None, prompt_tokens=6))
    result = served.client().embeddings.create(
        model="up/e5", input=["red apple", "blue sky"], dimensions=12, encoding_format="float"
    )
    assert [d.embedding for d in result.data] == [embedding_vector("red apple", 12), embedding_vector("blue sky", 12)]
    assert [(d.object, d.index) for d in result.data] == [("embedding", 0), ("embedding", 1)]
    assert result.object == "list" and result.model == "up/e5"
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (6, 6)
    # the upstream was asked in OpenAI's form, for floats
    assert served.upstream.requests[-1].path == "/v1/embeddings"
    assert served.upstream.requests[-1].body == {"model": "e5", "input": ["red apple", "blue sky"], "dimensions": 12}


def test_base64_the_sdk_default_is_decoded_by_the_sdk_to_the_same_vector(serve_llm: Any) -> None:
    served: Served = serve_llm(default=Reply(times=None))
    result = served.client().embeddings.create(model="up/e5", input="one text")  # SDK sends encoding_format=base64
    assert result.data[0].embedding == embedding_vector("one text")
    raw = _post(served, {"model": "up/e5", "input": "one text", "encoding_format": "base64"}).json()
    assert set(raw) == {"object", "data", "model", "usage", "llm_call"}
    assert raw["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    (item,) = raw["data"]
    assert set(item) == {"object", "index", "embedding"}
    packed = base64.b64decode(item["embedding"])
    assert list(struct.unpack(f"<{DEFAULT_DIMENSIONS}f", packed)) == embedding_vector("one text")


def test_a_transient_upstream_503_is_retried_behind_the_endpoint(serve_llm: Any) -> None:
    served: Served = serve_llm([Reply(fault=Fault.http(503))], default=Reply(times=None), retry=NO_WAIT)
    result = served.client().embeddings.create(model="up/e5", input="steady", encoding_format="float")
    assert result.data[0].embedding == embedding_vector("steady")
    assert len(served.upstream.requests) == 2
    attempts = (result.model_extra or {})["llm_call"]["attempts"]
    assert [a["kind"] for a in attempts] == ["provider_error", "answer"]
    metrics = httpx.get(served.url + "/metrics").text
    assert 'llm_call_retries_total{model="up/*"} 1.0' in metrics
    assert 'llm_call_http_requests_total{method="POST",route="/v1/embeddings",status="200"} 1.0' in metrics


def test_a_fallback_answers_when_the_model_keeps_failing(serve_llm: Any) -> None:
    served: Served = serve_llm(
        [Reply(fault=Fault.http(503), match_model="broken", times=None)], default=Reply(times=None), retry={"max_retries": 0}
    )
    result = served.client().embeddings.create(
        model="up/broken", input="x", encoding_format="float", extra_body={"fallbacks": ["up/healthy"]}
    )
    assert result.model == "up/healthy"
    assert result.data[0].embedding == embedding_vector("x")
    assert [r.model for r in served.upstream.requests] == ["broken", "healthy"]


def test_upstream_failure_with_no_fallback_is_a_502_in_openais_error_shape(serve_llm: Any) -> None:
    served: Served = serve_llm([Reply(fault=Fault.http(500), times=None)], retry={"max_retries": 1, **NO_WAIT})
    with pytest.raises(openai.APIStatusError) as caught:
        served.client().embeddings.create(model="up/e5", input="x")
    assert caught.value.status_code == 502
    assert "HTTP 500" in caught.value.message
    assert len(served.upstream.requests) == 2
    assert 'llm_call_upstream_errors_total{type="ProviderHTTPError"} 1.0' in httpx.get(served.url + "/metrics").text


def test_max_has_no_embeddings_a_clear_400(serve_llm: Any) -> None:
    served: Served = serve_llm()
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().embeddings.create(model="max/sonnet", input="x")
    assert "Claude Code CLI, which has no embeddings" in caught.value.message
    assert served.upstream.requests == []


def test_the_local_model_embeds_and_a_path_is_refused(serve_llm: Any) -> None:
    pytest.importorskip("llama_cpp")
    served: Served = serve_llm()
    client = served.client()
    result = client.embeddings.create(model="local/smollm2", input=["a cat", "a cat"], encoding_format="float")
    assert result.model == "local/smollm2"
    assert len(result.data) == 2 and result.data[0].embedding == result.data[1].embedding
    assert len(result.data[0].embedding) > 100  # the model's own width (576 for SmolLM2-135M)
    with pytest.raises(openai.BadRequestError, match="cannot shorten"):
        client.embeddings.create(model="local/smollm2", input="x", dimensions=8)
    with pytest.raises(openai.NotFoundError, match="not available to requests"):
        client.embeddings.create(model="local//etc/passwd", input="x")


def test_a_keys_allowed_models_are_enforced(serve_llm: Any) -> None:
    served: Served = serve_llm(
        default=Reply(times=None), server={"api_keys": ["key-one"], "allowed_models": ["up/allowed-*"]}
    )
    client = served.client(api_key="key-one")
    ok = client.embeddings.create(model="up/allowed-e5", input="x", encoding_format="float")
    assert ok.data[0].embedding == embedding_vector("x")
    with pytest.raises(openai.PermissionDeniedError, match="not allowed on this server"):
        client.embeddings.create(model="up/other", input="x")
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.embeddings.create(model="up/allowed-e5", input="x", extra_body={"fallbacks": ["up/other"]})
    assert caught.value.body["param"] == "fallbacks.0"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        served.client(api_key="wrong").embeddings.create(model="up/allowed-e5", input="x")
    assert len(served.upstream.requests) == 1


def test_a_keys_requests_in_flight_are_limited_as_for_chat(serve_llm: Any) -> None:
    served: Served = serve_llm([Reply(latency=3.0)], default=Reply(times=None),
                               server={"api_keys": ["key-one"], "max_concurrent_per_key": 1})
    slow: list[httpx.Response] = []
    t = threading.Thread(target=lambda: slow.append(_post(served, {"model": "up/e5", "input": "slow"}, "key-one")))
    t.start()
    deadline = time.monotonic() + 20  # a bound against a hang, not a timing check
    while not served.upstream.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    second = _post(served, {"model": "up/e5", "input": "second"}, "key-one")
    t.join(30)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "concurrency_limit_exceeded"
    assert slow[0].status_code == 200
    assert _post(served, {"model": "up/e5", "input": "again"}, "key-one").status_code == 200  # the slot is free again


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"model": "up/e5"}, "input", "missing required parameter: input"),
        ({"model": "up/e5", "input": []}, "input", "non-empty list of strings"),
        ({"model": "up/e5", "input": ["a", ""]}, "input.1", "input[1] is an empty string"),
        ({"model": "up/e5", "input": [[101, 2023]]}, "input", "check_embedding_ctx_length=False"),
        ({"model": "up/e5", "input": "a", "encoding_format": "int8"}, "encoding_format", "invalid value for encoding_format"),
        ({"model": "up/e5", "input": "a", "dimensions": 0}, "dimensions", "invalid value for dimensions"),
        ({"model": "up/e5", "input": "a", "validation": ["json"]}, "validation", "unrecognized request argument"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(serve_llm: Any, body: dict[str, Any], param: str, says: str) -> None:
    served: Served = serve_llm()
    resp = _post(served, body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert says in error["message"]
    assert served.upstream.requests == []


def test_openapi_lists_the_embeddings_operation(serve_llm: Any) -> None:
    served: Served = serve_llm()
    doc = httpx.get(served.url + "/openapi.json").json()
    op = doc["paths"]["/v1/embeddings"]["post"]
    assert op["operationId"] == "create_embeddings"
    assert "EmbeddingsRequest" in doc["components"]["schemas"]
