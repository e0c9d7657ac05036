"""What a request over HTTP may not do: read server files through validation specs, run a
client regex that freezes the server, start MCP servers or enable tools it was not given by the
operator, or load a model file from a path (issue 12, request side).

Every test runs against the real app on a socket (``serve_llm``) with a plain HTTP client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]


def _file_kinds(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "adir").mkdir()
    (tmp_path / "notjson.txt").write_text("not json at all")
    (tmp_path / "schema.json").write_text(json.dumps({"type": "object"}))
    return {
        "missing": tmp_path / "no-such-file.json",
        "directory": tmp_path / "adir",
        "not json": tmp_path / "notjson.txt",
        "a valid schema": tmp_path / "schema.json",
    }


SPELLINGS = [
    lambda p: f"schema:@{p}",
    lambda p: f"schema: @{p}",
    lambda p: f"schema:  @{p}",
    lambda p: f"json_schema:schema=@{p}",
    lambda p: f"json_schema:schema= @{p}",
    lambda p: {"type": "schema", "params": {"schema": f"@{p}"}},
    lambda p: {"type": "json_schema", "params": {"schema": f"  @{p}"}},
]


def test_validation_specs_never_read_server_files_and_say_the_same_whatever_the_path(serve_llm: Any, tmp_path: Path) -> None:
    served = serve_llm()
    kinds = _file_kinds(tmp_path)
    messages: dict[str, str] = {}
    for spelling in SPELLINGS:
        for kind, path in kinds.items():
            spec = spelling(path)
            r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": ["json", spec]})
            assert r.status_code == 422, (spec, r.text)
            error = r.json()["error"]
            assert error["param"] == "validation.1"
            messages[f"{spec!r} ({kind})"] = error["message"]
    assert len(set(messages.values())) == 1, messages
    message = next(iter(messages.values()))
    assert "inline" in message and str(tmp_path) not in message
    assert not served.upstream.requests


def test_tasks_and_responses_refuse_file_specs_too(serve_llm: Any, tmp_path: Path) -> None:
    served = serve_llm()
    path = _file_kinds(tmp_path)["a valid schema"]
    spec = f"schema: @{path}"
    r1 = httpx.post(served.base_url + "/tasks", json={"model": "up/x", "prompt": "hi", "validation": [spec]})
    r2 = httpx.post(served.base_url + "/responses", json={"model": "up/x", "input": "hi", "validation": [spec]})
    assert r1.status_code == r2.status_code == 422
    assert r1.json()["error"]["message"] == r2.json()["error"]["message"]
    assert not served.upstream.requests


def test_inline_schema_still_validates(serve_llm: Any) -> None:
    from llm_call.testing import Reply

    served = serve_llm([Reply(text="[1]"), Reply(text='{"a": 1}')])
    spec = {"type": "schema", "params": {"schema": {"type": "object", "properties": {"a": {"const": 1}}}}}
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": [spec]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == '{"a": 1}'


CATASTROPHIC = "^((.)*)*!$"  # exponential in Python's re: hours on a few dozen characters


def test_catastrophic_regex_fails_as_validation_while_another_client_is_served(serve_llm: Any) -> None:
    from llm_call.testing import Reply

    served = serve_llm(default=Reply(text="a" * 30_000))
    outcome: dict[str, httpx.Response] = {}

    def attack() -> None:
        outcome["attack"] = httpx.post(
            served.base_url + "/chat/completions",
            json={"model": "up/x", "messages": HI, "validation": [f"regex:{CATASTROPHIC}", {"type": "schema", "params": {"schema": {"type": "string", "pattern": CATASTROPHIC}}}], "max_attempts": 2},
            timeout=30,
        )

    import threading

    thread = threading.Thread(target=attack)
    thread.start()
    try:
        for _ in range(3000):  # until the attacker's answer arrived and its validation started
            if served.upstream.requests:
                break
            threading.Event().wait(0.01)
        other = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI}, timeout=30)
        assert other.status_code == 200
        assert other.json()["choices"][0]["message"]["content"] == "a" * 30_000
    finally:
        thread.join(60)
    attack_response = outcome["attack"]
    assert attack_response.status_code == 502
    assert attack_response.json()["error"]["code"] == "ValidationExhausted"


@pytest.mark.parametrize("pattern", [r"(a)\1", "a(?=b)", "(?<!x)y"])
def test_regex_syntax_re2_lacks_is_422_naming_the_fix(serve_llm: Any, pattern: str) -> None:
    served = serve_llm()
    for spec in (f"regex:{pattern}", {"type": "schema", "params": {"schema": {"type": "string", "pattern": pattern}}}):
        r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": [spec]})
        assert r.status_code == 422
        message = r.json()["error"]["message"]
        assert "RE2" in message and "backreferences" in message and "lookaround" in message
    assert not served.upstream.requests
