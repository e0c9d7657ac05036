"""API keys: bearer tokens compared in constant time, 401 in the OpenAI shape, public health."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from llm_call.errors import ConfigError
from llm_call.server._auth import KeyAuth, KeyLimiter, is_loopback, request_weight
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]
KEYS = {"api_keys": ["first-key-aaaaaaaa", "second-key-bbbbbbbb"]}


def test_request_without_key_is_refused(serve_llm: Any) -> None:
    served = serve_llm(server=KEYS)
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    assert not served.upstream.requests


def test_wrong_key_raises_sdk_authentication_error(serve_llm: Any) -> None:
    served = serve_llm(server=KEYS)
    with pytest.raises(openai.AuthenticationError) as info:
        served.client(api_key="first-key-aaaaaaaX").chat.completions.create(model="up/x", messages=HI)
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        served.client(api_key="first-key-aaaaaaaa").with_options(default_headers={"Authorization": "Basic Zm9vOmJhcg=="}).models.list()
    assert not served.upstream.requests


def test_every_configured_key_is_accepted(serve_llm: Any) -> None:
    served = serve_llm(server=KEYS)
    for key in KEYS["api_keys"]:
        answer = served.client(api_key=key).chat.completions.create(model="up/x", messages=HI)
        assert answer.choices[0].message.content == "ok"


def test_routes_need_a_key_but_health_and_schema_do_not(serve_llm: Any) -> None:
    served = serve_llm(server=KEYS)
    for path in ("/v1/models", "/v1/tasks", "/metrics", "/v1/responses/resp_x"):
        assert httpx.get(served.url + path).status_code == 401, path
    assert httpx.get(served.url + "/health").status_code == 200
    assert httpx.get(served.url + "/openapi.json").status_code == 200
    headers = {"Authorization": "Bearer second-key-bbbbbbbb"}
    assert httpx.get(served.url + "/metrics", headers=headers).status_code == 200


def test_no_keys_configured_means_open_access(serve_llm: Any) -> None:
    served = serve_llm()
    assert httpx.get(served.base_url + "/models").status_code == 200


def test_key_auth_identifies_keys() -> None:
    auth = KeyAuth(["alpha", "beta"])
    assert auth.enabled
    assert auth.identify(b"Bearer alpha") == "key1"
    assert auth.identify(b"bearer beta") == "key2"
    assert auth.identify(b"Bearer  beta ") == "key2"
    assert auth.identify(b"Bearer alph") is None
    assert auth.identify(b"Bearer alphaa") is None
    assert auth.identify(b"Basic alpha") is None
    assert auth.identify(b"alpha") is None
    assert auth.identify(None) is None
    assert not KeyAuth([]).enabled
    with pytest.raises(ConfigError, match="blank"):
        KeyAuth([""])
    assert KeyAuth(["x"], admin_keys=["y"]).caller(b"Bearer y").admin  # type: ignore[union-attr]


def test_key_limiter_counts_in_flight() -> None:
    limiter = KeyLimiter(2)
    assert limiter.acquire("k") and limiter.acquire("k")
    assert not limiter.acquire("k")
    assert limiter.acquire("other")
    limiter.release("k")
    assert limiter.in_flight("k") == 1
    assert limiter.acquire("k")


def test_key_limiter_weighs_bodies_and_always_admits_a_lone_request() -> None:
    assert request_weight(0) == 1 and request_weight(64 * 1024) == 1 and request_weight(64 * 1024 + 1) == 2
    limiter = KeyLimiter(8)
    assert limiter.acquire("k", 5)
    assert not limiter.acquire("k", 5)  # 10 > 8
    assert limiter.acquire("k", 3)
    limiter.release("k", 5)
    limiter.release("k", 3)
    assert limiter.in_flight("k") == 0
    assert limiter.acquire("k", 100)  # heavier than the whole limit: admitted alone, never impossible
    assert not limiter.acquire("k", 1)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
