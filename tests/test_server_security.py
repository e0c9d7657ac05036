"""The server against hostile browsers and misconfiguration: JSON-only bodies, the Host check,
opt-in CORS, blank keys and the public-bind rule of ``create_app``, keyless ``/health``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.config import Settings, load_settings
from llm_call.errors import ConfigError
from llm_call.server import ServerThread, create_app
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "up/x", "messages": HI}


# -- content type ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_chat_fast_path_refuses_a_body_that_is_not_declared_json(serve_llm: Any, content_type: str | None) -> None:
    """A web page can POST text/plain (or a form) to 127.0.0.1 without a CORS preflight: the
    chat endpoint must not run what such a body says."""
    served = serve_llm()
    headers = {} if content_type is None else {"content-type": content_type}
    import json

    r = httpx.post(served.base_url + "/chat/completions", content=json.dumps(CHAT), headers=headers)
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"]
    assert not served.upstream.requests, "the call was made although the request was refused"


def test_every_json_endpoint_refuses_text_plain_and_runs_nothing(serve_llm: Any) -> None:
    served = serve_llm()
    task = httpx.post(served.base_url + "/tasks", json={"model": "up/x", "prompt": "hi"}).json()
    bodies = {
        "/responses": '{"model": "up/x", "input": "hi", "background": true}',
        "/tasks": '{"model": "up/x", "prompt": "hi"}',
        f"/tasks/{task['id']}/cancel": "{}",
        f"/tasks/{task['id']}/review": '{"approve": true}',
        f"/responses/resp_{task['id']}/cancel": "{}",
    }
    for path, body in bodies.items():
        r = httpx.post(served.base_url + path, content=body, headers={"content-type": "text/plain"})
        assert r.status_code == 415, (path, r.text)
    listed = httpx.get(served.base_url + "/tasks").json()["data"]
    assert [t["id"] for t in listed] == [task["id"]], "a refused request created a task"
    assert httpx.get(served.base_url + f"/tasks/{task['id']}").json()["status"] != "cancelled"


def test_json_with_a_charset_is_accepted(serve_llm: Any) -> None:
    served = serve_llm()
    import json

    r = httpx.post(served.base_url + "/chat/completions", content=json.dumps(CHAT),
                   headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200, r.text


# -- Host header ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "192.168.1.9:8000"])
def test_a_foreign_host_header_is_refused(serve_llm: Any, host: str) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: the Host header gives it away."""
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions", json=CHAT, headers={"host": host})
    assert r.status_code == 421, r.text
    assert "server.allowed_hosts" in r.json()["error"]["message"]
    assert not served.upstream.requests
    assert httpx.get(served.base_url + "/tasks", headers={"host": host}).status_code == 421


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1234", "[::1]:8000", "LOCALHOST"])
def test_loopback_host_names_are_accepted(serve_llm: Any, host: str) -> None:
    served = serve_llm()
    r = httpx.post(served.base_url + "/chat/completions", json=CHAT, headers={"host": host})
    assert r.status_code == 200, r.text


def test_allowed_hosts_adds_names(serve_llm: Any) -> None:
    served = serve_llm(server={"allowed_hosts": ["llm.internal"]})
    assert httpx.get(served.base_url + "/models", headers={"host": "llm.internal:8000"}).status_code == 200
    assert httpx.get(served.base_url + "/models", headers={"host": "other.internal"}).status_code == 421


# -- CORS -----------------------------------------------------------------------------------------------

PREFLIGHT = {
    "origin": "http://localhost:3000",
    "access-control-request-method": "POST",
    "access-control-request-headers": "content-type, authorization",
}


def test_no_cors_by_default(serve_llm: Any) -> None:
    served = serve_llm()
    r = httpx.options(served.base_url + "/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code >= 400
    r = httpx.post(served.base_url + "/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_for_configured_origins_only(serve_llm: Any) -> None:
    served = serve_llm(server={"cors_origins": ["http://localhost:3000"]})
    r = httpx.options(served.base_url + "/chat/completions", headers=PREFLIGHT)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"]
    assert not served.upstream.requests
    r = httpx.post(served.base_url + "/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = {**PREFLIGHT, "origin": "http://evil.example"}
    r = httpx.options(served.base_url + "/chat/completions", headers=other)
    assert "access-control-allow-origin" not in r.headers and r.status_code >= 400


def test_cors_origins_must_be_origins() -> None:
    with pytest.raises(Exception, match="not an origin"):
        Settings.model_validate({"server": {"cors_origins": ["http://localhost:3000/app"]}})


# -- keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ['[""]', '["   "]', '["good-key-123", ""]'])
@pytest.mark.parametrize("section", ["api_keys", "admin_keys"])
def test_blank_key_in_toml_is_a_config_error_naming_it(tmp_path: Path, keys: str, section: str) -> None:
    cfg = tmp_path / "llm_call.toml"
    cfg.write_text(f"[server]\n{section} = {keys}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert str(cfg) in str(info.value) and f"server.{section}" in str(info.value)
    assert "blank key" in str(info.value)


@pytest.mark.parametrize("value", [" ", "k1,,k2", "k1, k2,", ",k1"])
@pytest.mark.parametrize("name", ["LLM_CALL_API_KEYS", "LLM_CALL_ADMIN_KEYS"])
def test_blank_key_in_environment_is_a_config_error_naming_it(value: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={name: value})
    assert name in str(info.value) and "blank key" in str(info.value)


def test_create_app_refuses_a_public_bind_without_keys() -> None:
    """Apps that mount create_app themselves get the rule ``llm-call serve`` has."""
    settings = Settings.model_validate({"server": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="without API keys"):
        create_app(settings)
    settings.server.api_keys = ["   "]  # set after validation: still refused
    with pytest.raises(ConfigError, match="blank"):
        create_app(settings)
    settings.server.api_keys = ["a-real-key-0123"]
    create_app(settings)  # keys: fine


def _public_address() -> str | None:
    """A non-loopback address of this machine, if it has one (for a connection that arrives
    on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent (UDP connect only picks a route)
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_keyless_app_run_on_a_public_address_answers_only_loopback(tmp_path: Path) -> None:
    """create_app() configured for loopback, then run by its embedder on 0.0.0.0: requests that
    arrive on a public interface are refused."""
    addr = _public_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address to connect to")
    settings = Settings.model_validate({"tasks": {"store": str(tmp_path / "t.db")}})
    with ServerThread(create_app(settings), host="0.0.0.0") as srv:
        local = httpx.get(f"http://127.0.0.1:{srv.port}/v1/models")
        assert local.status_code == 200
        remote = httpx.get(f"http://{addr}:{srv.port}/v1/models", headers={"host": "localhost"})
        assert remote.status_code == 403, remote.text
        assert "server.api_keys" in remote.json()["error"]["message"]


# -- health -----------------------------------------------------------------------------------------------


def test_health_shows_paths_to_admin_keys_only(serve_llm: Any, tmp_path: Path) -> None:
    served = serve_llm(server={"api_keys": ["health-key-0123"], "admin_keys": ["health-admin-0123"]})
    body = httpx.get(served.url + "/health").text
    assert str(tmp_path) not in body and "tasks.db" not in body
    ordinary = httpx.get(served.url + "/health", headers={"authorization": "Bearer health-key-0123"})
    assert ordinary.status_code == 200 and "tasks.db" not in ordinary.text and str(tmp_path) not in ordinary.text
    detailed = httpx.get(served.url + "/health", headers={"authorization": "Bearer health-admin-0123"})
    assert "tasks.db" in detailed.text
    open_server = serve_llm()
    assert "tasks.db" not in httpx.get(open_server.url + "/health").text


# -- metrics labels --------------------------------------------------------------------------------------


def test_metric_labels_take_no_client_chosen_values(serve_llm: Any) -> None:
    """Every new label value is a time series kept forever: a client must not be able to mint them."""
    served = serve_llm(aliases={"fast": "up/the-fast-one"})
    for i in range(3):
        r = httpx.post(served.base_url + "/chat/completions", json={"model": f"up/client-chosen-{i}", "messages": HI})
        assert r.status_code == 200
    assert httpx.post(served.base_url + "/chat/completions", json={"model": "fast", "messages": HI}).status_code == 200
    httpx.request("PROPFIND", served.url + "/health")
    text = httpx.get(served.url + "/metrics").text
    assert "client-chosen" not in text
    assert 'model="up/*"' in text
    assert 'method="PROPFIND"' not in text and 'method="other"' in text

