"""An attacker's requests against the server, found by the audit after issue 12: each one used to
reach the network, the disk, a tool, or freeze or crash the server. The server runs on a real
port (``serve_llm``) in front of the scripted LLM server; the client is plain httpx.
"""

from __future__ import annotations

import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_call.testing import Reply
from support.claude_env import MARKER_VAR, MCP_FILES_SERVER, ClaudeEnv, claude_env
from support.llm_server import serve_llm

__all__ = ["claude_env", "serve_llm"]

pytestmark = pytest.mark.timeout(60)

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A web server on 127.0.0.1 standing for an internal service: records every request and
    answers a JSON Schema holding a secret."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = json.dumps({"enum": ["INTERNAL-SECRET"]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def _schema_spec(schema: Any) -> dict[str, Any]:
    return {"type": "schema", "params": {"schema": schema}}


def test_schema_refs_never_fetch_urls_or_read_files(serve_llm: Any, listener: tuple[str, list[str]], tmp_path: Path) -> None:
    """``$ref`` to a URL made the server fetch it (SSRF) and ``file://`` read any JSON file; the
    content came back in the validation feedback. Now a 422 before any model call."""
    url, hits = listener
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"enum": ["FILE-SECRET"]}))
    served = serve_llm(default=Reply(text='"x"'))
    refs = [
        f"{url}/internal",
        f"file://{secret}",
        f"file://{tmp_path}/missing.json",
        "other.json",
    ]
    for ref in refs:
        for schema in ({"$ref": ref}, {"type": "object", "properties": {"a": {"$ref": ref}}}, {"$dynamicRef": ref}):
            for path, base in (
                ("/chat/completions", {"model": "up/x", "messages": HI, "max_attempts": 1}),
                ("/tasks", {"model": "up/x", "prompt": "hi", "max_attempts": 1}),
            ):
                r = httpx.post(served.base_url + path, json={**base, "validation": [_schema_spec(schema)]}, timeout=30)
                assert r.status_code == 422, (ref, path, r.text)
                error = r.json()["error"]
                assert error["param"] == "validation.0"
                assert "$defs" in error["message"] and "SECRET" not in r.text, error
    assert hits == []
    assert not served.upstream.requests


def test_schema_refs_inside_the_schema_still_work(serve_llm: Any) -> None:
    served = serve_llm([Reply(text='{"a": "no"}'), Reply(text='{"a": 1}')])
    schema = {
        "$id": "https://example.com/answer.json",
        "$defs": {"one": {"const": 1}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/one"}, "b": {"$ref": "https://example.com/answer.json#/$defs/one"}},
    }
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={"model": "up/x", "messages": HI, "validation": [_schema_spec(schema)]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == '{"a": 1}'


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", ["mcp__files__read Bash", "mcp__files__read,Bash", "mcp__files__read(x),Bash"])
def test_allowed_tools_cannot_smuggle_a_builtin_tool_past_a_profile(
    claude_env: ClaudeEnv, serve_llm: Any, tmp_path: Path, entry: str
) -> None:
    """The CLI splits ``--allowedTools`` on commas and spaces outside parentheses: an entry that
    starts with ``mcp__files`` passed the policy and added a bare ``Bash`` to a profile that allows
    only ``Bash(echo safe:*)``. The model's ``touch`` then ran on the server."""
    from llm_call.testing import ToolCall

    marker = tmp_path / "pwned"
    script = [Reply(tool_calls=[ToolCall("Bash", {"command": f"touch {marker}"})]), Reply(text="done")]
    files = {"command": sys.executable, "args": [str(MCP_FILES_SERVER)], "env": {MARKER_VAR: claude_env.marker}}
    served = serve_llm(
        script,
        default=Reply(text="done"),
        claude={
            "use_api_key": True,
            "mcp_servers": {"files": files},
            "tool_profiles": {"git": {"allowed_tools": ["Bash(echo safe:*)"], "mcp_servers": ["files"]}},
        },
    )
    claude_env.use_server(served.upstream)
    body = {"model": "max/sonnet", "messages": HI, "tool_profile": "git"}
    r = httpx.post(served.base_url + "/chat/completions", json={**body, "allowed_tools": [entry]}, timeout=100)
    assert not marker.exists(), "the smuggled Bash ran"
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "allowed_tools.0" and "mcp__SERVER__TOOL" in error["message"], error
    assert not served.upstream.requests
    assert not claude_env.processes()
    # the control: the same call with one tool name per entry runs, and the profile's rule holds
    r = httpx.post(served.base_url + "/chat/completions", json={**body, "allowed_tools": ["mcp__files__read"]}, timeout=100)
    assert r.status_code == 200, r.text
    assert not marker.exists()


def _doubling_schema(levels: int) -> dict[str, Any]:
    """A JSON Schema of a few hundred bytes whose check takes 2**levels steps on any answer."""
    defs: dict[str, Any] = {"s0": {"type": "string"}}
    for i in range(1, levels + 1):
        defs[f"s{i}"] = {"allOf": [{"$ref": f"#/$defs/s{i - 1}"}, {"$ref": f"#/$defs/s{i - 1}"}]}
    return {"$defs": defs, "$ref": f"#/$defs/s{levels}"}


@pytest.mark.parametrize(
    "schema",
    [
        _doubling_schema(18),  # seconds on the event loop before; 40 levels: days
        {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"},  # endless: was a 500
    ],
    ids=["exponential", "endless"],
)
def test_a_schema_too_costly_to_check_is_422_before_any_model_call(serve_llm: Any, schema: dict[str, Any]) -> None:
    served = serve_llm(default=Reply(text='"x"'))
    for path, base in (
        ("/chat/completions", {"model": "up/x", "messages": HI}),
        ("/tasks", {"model": "up/x", "prompt": "hi"}),
    ):
        r = httpx.post(served.base_url + path, json={**base, "validation": ["json", _schema_spec(schema)]}, timeout=30)
        assert r.status_code == 422, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == "validation.1" and "JSON Schema" in error["message"], error
    assert not served.upstream.requests


def test_an_answer_that_makes_a_schema_exponential_fails_within_its_budget(serve_llm: Any) -> None:
    """The schema is cheap on small answers; an answer nested 22 deep made the check take 2**22
    steps on the event loop. Now the check moves to a worker thread and stops at its step budget:
    a validation failure saying so, while the server answers others."""
    schema = {"anyOf": [{"items": {"$ref": "#"}, "maxItems": 0}, {"items": {"$ref": "#"}}]}
    deep = "[" * 22 + "]" * 22
    served = serve_llm(default=Reply(text=deep))
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={"model": "up/x", "messages": HI, "validation": [_schema_spec(schema)], "max_attempts": 1},
        timeout=50,
    )
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert error["code"] == "ValidationExhausted" and "too costly" in error["message"], error
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI}, timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tasks", '{"model": "up/x", "prompt": "hi", "timeout": Infinity}', "timeout"),
        ("/chat/completions", '{"model": "up/x", "messages": [{"role": "user", "content": "hi"}], "deadline_s": Infinity}', "deadline_s"),
        ("/responses", '{"model": "up/x", "input": "hi", "deadline_s": NaN}', "deadline_s"),
        ("/tasks", '{"model": "up/x", "prompt": "hi", "priority": 1000000000000000000000000000000}', "priority"),
        ("/responses", '{"model": "up/x", "input": "hi", "background": true, "priority": -1000000000000000000000}', "priority"),
    ],
)
def test_numbers_out_of_range_are_400_naming_the_field(serve_llm: Any, tmp_path: Path, path: str, body: str, param: str) -> None:
    """``Infinity`` (which both JSON parsers accept) made a task fail with OverflowError and a chat
    call a 500; a huge priority was a 503 "task store failed" naming the store's path."""
    served = serve_llm()
    r = httpx.post(served.base_url + path, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert str(tmp_path) not in r.text
    assert not served.upstream.requests
    listed = httpx.get(served.base_url + "/tasks", timeout=30).json()["data"]
    assert listed == []


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/tasks", "/v1/responses", "/mcp"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_that_never_finishes_is_408_after_body_timeout(serve_llm: Any, path: str, framing: str) -> None:
    """A client that declares a body (up to max_body_bytes) and sends it slower than a drip held
    its connection, its key's slot and the bytes received so far for ever: thousands of them
    hold gigabytes. The whole body must now arrive within server.body_timeout."""
    import socket
    from urllib.parse import urlsplit

    served = serve_llm(server={"body_timeout": 1})
    address = urlsplit(served.url)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    if framing == "length":
        raw = (head + "Content-Length: 100000\r\n\r\n").encode() + b'{"model": "up/x", "prompt": "'
    else:
        raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b'1e\r\n{"model": "up/x", "prompt": "x\r\n'
    with socket.create_connection((address.hostname, address.port), timeout=20) as sock:
        sock.sendall(raw)
        answer = b""
        while b"server.body_timeout" not in answer:
            got = sock.recv(65536)  # the socket's timeout: a server that never answers fails here
            if not got:
                break
            answer += got
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"server.body_timeout" in answer, answer
    assert not served.upstream.requests


@pytest.mark.parametrize(
    ("field", "value", "most"),
    [
        ("validation", ["not_empty"] * 33, 32),
        ("fallbacks", [f"up/f{i}" for i in range(17)], 16),
        ("escalate", [f"up/e{i}" for i in range(17)], 16),
        ("mcp_servers", [f"s{i}" for i in range(33)], 32),
    ],
)
def test_lists_that_multiply_model_calls_are_bounded(serve_llm: Any, field: str, value: list[Any], most: int) -> None:
    """Each judge in ``validation`` is a model call per attempt, each fallback or escalation one
    more: one request with 200 judges made 201 upstream calls, and with failing attempts up to
    max_attempts times that, all billed to the operator. A list longer than its bound is a 400."""
    served = serve_llm()
    for path, base in (
        ("/chat/completions", {"model": "up/x", "messages": HI}),
        ("/tasks", {"model": "up/x", "prompt": "hi"}),
    ):
        r = httpx.post(served.base_url + path, json={**base, field: value}, timeout=30)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == field and str(most) in error["message"], error
    assert not served.upstream.requests


def test_messages_and_tools_per_request_are_bounded(serve_llm: Any) -> None:
    """A 10 MB body holds 300,000 empty messages, and each costs parsing, conversion and storing
    on the event loop: one such request held the loop for seconds while every other key waited.
    Past 10,000 messages (input items) or 1,000 tools a request is a 400 naming the field."""
    served = serve_llm()
    msg = {"role": "user", "content": "hi"}
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    cases = [
        ("/chat/completions", {"model": "up/x", "messages": [msg] * 10_001}, "messages"),
        ("/chat/completions", {"model": "up/x", "messages": [msg], "tools": [tool] * 1_001}, "tools"),
        ("/messages", {"model": "up/x", "max_tokens": 5, "messages": [msg] * 10_001}, "messages"),
        ("/messages", {"model": "up/x", "max_tokens": 5, "messages": [msg], "tools": [{"name": "f", "input_schema": {}}] * 1_001}, "tools"),
        ("/messages/count_tokens", {"model": "up/x", "messages": [msg] * 10_001}, "messages"),
        ("/responses", {"model": "up/x", "input": [msg] * 10_001}, "input"),
        ("/responses", {"model": "up/x", "input": "hi", "tools": [{"type": "function", "name": "f"}] * 1_001}, "tools"),
        ("/tasks", {"model": "up/x", "messages": [msg] * 10_001}, "messages"),
    ]
    for path, body, field in cases:
        r = httpx.post(served.base_url + path, json=body, timeout=30)
        assert r.status_code == 400, (path, field, r.text[:300])
        assert field in r.text and ("10000" in r.text or "1000" in r.text), (path, r.text[:300])
    ok = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": [msg] * 10_000}, timeout=30)
    assert ok.status_code == 200, ok.text[:300]
    assert len(served.upstream.requests) == 1


def test_a_schema_spec_too_big_to_check_quickly_is_422(serve_llm: Any) -> None:
    """jsonschema checks a schema against its metaschema at ~0.5 ms per subschema on the event
    loop: a 6 MB schema of 60,000 properties held it for 50 s. Past 1,000 objects in a request's
    specs it is a 422 before any model call; 1,000 are fine."""
    served = serve_llm()

    def spec(n: int) -> str:
        return "schema:" + json.dumps({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(n)}})

    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": [spec(1_000)]}, timeout=30)
    assert r.status_code == 422 and "at most 1000" in r.json()["error"]["message"], r.text[:300]
    r = httpx.post(served.base_url + "/tasks", json={"model": "up/x", "prompt": "hi", "validation": [spec(600), spec(600)]}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "validation", r.text[:300]
    assert not served.upstream.requests
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": [spec(998)]}, timeout=30)
    assert r.status_code == 502 and "json_schema" in r.text, r.text[:300]  # checked, and "ok" is not JSON


def test_big_validation_specs_are_not_kept_in_the_parse_cache(serve_llm: Any) -> None:
    """Parsed specs are cached for the life of the process (1,024 entries): a client sending
    distinct 9 MB schema specs made the server keep ~27 MB for each."""
    from llm_call.validation import _specs

    served = serve_llm()
    sent = []
    for i in range(3):
        spec = "schema:" + json.dumps({"type": "object", "description": f"{i}" + "x" * 100_000})
        sent.append(spec)
        r = httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": [spec]}, timeout=30)
        assert r.status_code == 502 and "json_schema" in r.text, r.text[:300]
    small = "schema:" + json.dumps({"type": "object", "description": "kept"})
    assert httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI, "validation": [small]}, timeout=30).status_code == 502
    caches: list[Any] = [_specs._cache, _specs._cache_no_files, _specs._list_cache]
    kept = [key for cache in caches for key in cache]
    assert not any(spec in kept or (spec,) in kept for spec in sent)
    assert small in _specs._cache_no_files


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"$ref": "https://127.0.0.1:9/schema.json"}, "points outside the schema"),
        ({"type": "object", "properties": {"a": {"$ref": "https://127.0.0.1:9/a.json#/x"}}}, "points outside the schema"),
        ({"$ref": "#/$defs/missing"}, "points to nothing in the schema"),
    ],
)
def test_local_response_format_refs_are_refused_not_fetched(serve_llm: Any, schema: dict[str, Any], says: str) -> None:
    """llama-cpp-python turns a response_format schema into a grammar and fetches ``https://``
    $refs with ``requests`` unless an ``assert`` stops it (gone under ``python -O``): the request
    was a 502 "local model failed: AssertionError", blaming the model. Now a 400 naming the ref,
    before the model is loaded."""
    served = serve_llm()
    body = {
        "model": "local/smollm2",
        "messages": HI,
        "max_tokens": 5,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=100)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("spec", "answer"),
    [
        ("python", "-" * 100_000 + "1"),
        ("python", "f" + "()" * 100_000),
        ("python", "1" + "+1" * 200_000),
        ("json", "[" * 100_000 + "]" * 100_000),
        ("field_present:a", "[" * 100_000 + "]" * 100_000),
    ],
)
def test_an_answer_too_nested_to_parse_fails_validation(serve_llm: Any, spec: str, answer: str) -> None:
    """Python's parser and ``json.loads`` give up on deeply nested input with RecursionError or
    MemoryError, not SyntaxError/ValueError: a prompt asking for such an answer made the python
    and JSON validators a 500."""
    served = serve_llm(default=Reply(text=answer))
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={"model": "up/x", "messages": HI, "validation": [spec], "max_attempts": 1},
        timeout=30,
    )
    assert r.status_code == 502, r.text[:300]
    error = r.json()["error"]
    assert error["code"] == "ValidationExhausted" and "nested too deeply" in error["message"], error


def test_an_answer_nested_near_the_recursion_limit_cannot_break_task_reads(serve_llm: Any) -> None:
    """``[[[...]]]`` 900 deep parsed (under json's limit) and became the task's ``parsed`` result;
    then reading the task, and listing tasks (an admin's list, the dashboard's), was a 500
    RecursionError for good. JSON answers deeper than 200 levels now fail validation."""
    deep = "[" * 900 + "]" * 900
    served = serve_llm(default=Reply(text=deep))
    r = httpx.post(
        served.base_url + "/chat/completions",
        json={"model": "up/x", "messages": HI, "validation": ["json"], "max_attempts": 1},
        timeout=30,
    )
    assert r.status_code == 502, r.text[:300]
    assert "nested too deeply" in r.json()["error"]["message"]
    submitted = httpx.post(
        served.base_url + "/tasks", json={"model": "up/x", "prompt": "hi", "validation": ["json"], "max_attempts": 1}, timeout=30
    ).json()
    events = httpx.get(f"{served.base_url}/tasks/{submitted['id']}/events", timeout=30)
    assert events.status_code == 200 and "event: failed" in events.text, events.text[-300:]
    task = httpx.get(f"{served.base_url}/tasks/{submitted['id']}", timeout=30)
    assert task.status_code == 200, task.text[:300]
    assert task.json()["status"] == "failed" and task.json()["error"]["type"] == "ValidationExhausted"
    assert httpx.get(served.base_url + "/tasks", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tasks", '{"model": "up/x", "messages": [{"role": "user", "content": "hi", "x": DEEP}]}'),
        ("/tasks", '{"model": "up/x", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi", "x": DEEP}]}]}'),
        ("/tasks", '{"model": "up/x", "prompt": "hi", "validation": [{"type": "schema", "params": {"schema": {"enum": [DEEP]}}}]}'),
    ],
)
def test_a_deeply_nested_body_cannot_poison_the_task_list(serve_llm: Any, path: str, body: str) -> None:
    """The chat fast path's parser stops at 200 levels, but ``/v1/tasks`` (json.loads) took a
    message with 900 nested lists: the task was stored, the answer was a 500 RecursionError, and
    from then on every task list holding it (the key's own, an admin's, the dashboard's) was a 500."""
    served = serve_llm()
    deep = "[" * 900 + "]" * 900
    r = httpx.post(served.base_url + path, content=body.replace("DEEP", deep), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text[:300]
    assert "nested" in r.json()["error"]["message"]
    listed = httpx.get(served.base_url + "/tasks", timeout=30)
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_health_and_metrics_count_the_store_once_for_a_burst(serve_llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``/health`` needs no key and is outside the per-key limit, and each call counted every
    task in the store (``GROUP BY status``: ~70 ms at a million tasks): anyone could keep the store
    busy with a stream of cheap requests. A burst now shares one count."""
    import asyncio

    from llm_call.tasks.sqlite_store import SQLiteTaskStore

    calls = 0
    original = SQLiteTaskStore.counts

    async def counting(self: SQLiteTaskStore) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return await original(self)

    served = serve_llm(server={"api_keys": ["k1"]})
    monkeypatch.setattr(SQLiteTaskStore, "counts", counting)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            health = [client.get(served.url + "/health") for _ in range(40)]
            metrics = [client.get(served.url + "/metrics", headers={"authorization": "Bearer k1"}) for _ in range(40)]
            return [r.status_code for r in await asyncio.gather(*health, *metrics)]

    assert asyncio.run(burst()) == [200] * 80
    assert 1 <= calls <= 4, calls


@pytest.mark.parametrize("model", ["ollama/llama3", "ollama_chat/x", "llamafile/x", "xinference/x", "vllm/facebook/opt-125m"])
def test_litellm_providers_on_this_machine_need_the_operator(serve_llm: Any, model: str) -> None:
    """``"model": "ollama/x"`` made the server POST the request's prompt to localhost:11434 (and
    LiteLLM's other local providers to their own ports): a service on the server's machine that
    the operator never configured. ``vllm/`` would load a model into the server's process."""
    served = serve_llm()
    for path, body in (
        ("/chat/completions", {"model": model, "messages": HI}),
        ("/chat/completions", {"model": "up/x", "messages": HI, "fallbacks": [model]}),
        ("/tasks", {"model": model, "prompt": "hi"}),
    ):
        r = httpx.post(served.base_url + path, json=body, timeout=30)
        assert r.status_code == 400, (path, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == "not_declared_by_operator" and "[aliases]" in error["message"], error
    assert not served.upstream.requests


def test_an_alias_or_endpoint_declares_a_local_litellm_provider(serve_llm: Any) -> None:
    served = serve_llm()
    # as [endpoints.ollama] in the config file would (the scripted server's URL is known only now)
    served.settings.endpoints["ollama"] = served.settings.endpoints["up"]
    r = httpx.post(served.base_url + "/chat/completions", json={"model": "ollama/llama3", "messages": HI}, timeout=30)
    assert r.status_code == 200, r.text[:300]


def test_event_positions_beyond_any_seq_are_handled(serve_llm: Any) -> None:
    """``?after=`` (or ``Last-Event-ID``) larger than SQLite's 64-bit integers passed validation and
    broke the event stream mid-response (OverflowError after the 200 had started)."""
    served = serve_llm()
    task_id = httpx.post(served.base_url + "/tasks", json={"model": "up/x", "prompt": "hi"}, timeout=30).json()["id"]
    done = httpx.get(f"{served.base_url}/tasks/{task_id}/events", timeout=30)  # follows until the task ends
    assert "event: finished" in done.text
    huge = "1" + "0" * 29
    r = httpx.get(f"{served.base_url}/tasks/{task_id}/events?after={huge}&follow=false", timeout=30)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["param"] == "query.after"
    r = httpx.get(f"{served.base_url}/tasks/{task_id}/events", headers={"last-event-id": huge}, timeout=30)
    assert r.status_code == 200 and "data:" not in r.text  # nothing after it, and a clean end


def test_allowed_models_limits_what_requests_may_name(serve_llm: Any) -> None:
    """With ``[server] allowed_models`` the operator lists the models requests may use: any other
    model, fallback or escalation target (here a LiteLLM cloud model whose credentials the server
    might hold) is a 403 naming the setting, on every route, and nothing is sent upstream."""
    served = serve_llm(server={"allowed_models": ["up/*", "fast"]}, aliases={"fast": {"model": "up/quick"}})
    ok = httpx.post(served.base_url + "/chat/completions", json={"model": "fast", "messages": HI}, timeout=30)
    assert ok.status_code == 200, ok.text[:300]
    assert httpx.post(served.base_url + "/chat/completions", json={"model": "up/x", "messages": HI}, timeout=30).status_code == 200
    sent = len(served.upstream.requests)
    for path, body in (
        ("/chat/completions", {"model": "anthropic/claude-x", "messages": HI}),
        ("/chat/completions", {"model": "up/x", "messages": HI, "fallbacks": ["openai/gpt-4o"]}),
        ("/chat/completions", {"model": "up/x", "messages": HI, "escalate": ["max/opus"]}),
        ("/tasks", {"model": "max/sonnet", "prompt": "hi"}),
        ("/responses", {"model": "openai/gpt-4o", "input": "hi"}),
    ):
        r = httpx.post(served.base_url + path, json=body, timeout=30)
        assert r.status_code == 403, (path, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == "model_not_allowed" and "allowed_models" in error["message"], error
    r = httpx.post(served.url + "/v1/messages", json={"model": "max/opus", "max_tokens": 5, "messages": HI}, timeout=30)
    assert r.status_code == 403 and "allowed_models" in r.text, r.text[:300]
    assert len(served.upstream.requests) == sent
    listed = {m["id"] for m in httpx.get(served.base_url + "/models", params={"all": "true"}, timeout=30).json()["data"]}
    assert "fast" in listed and "up/*" in listed and not {"max/*", "openai/*", "local/*"} & listed, listed


def test_the_mcp_models_tool_lists_only_allowed_models(serve_llm: Any) -> None:
    """``/v1/models`` lists only what ``allowed_models`` lets requests use; the MCP ``models`` tool
    listed every route, alias and endpoint (with its base URL) to any key."""
    served = serve_llm(server={"allowed_models": ["up/*", "fast"]}, aliases={"fast": {"model": "up/quick"}})
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "models", "arguments": {}}}
    r = httpx.post(served.url + "/mcp", json=body, headers={"accept": "application/json, text/event-stream"}, timeout=30)
    assert r.status_code == 200, r.text[:300]
    data = json.loads(next(line[5:] for line in r.text.splitlines() if line.startswith("data:")))
    listed = {json.loads(part["text"])["id"] for part in data["result"]["content"]}
    assert listed == {"fast", "up/*"}, listed
    assert served.upstream.openai_base_url not in r.text  # an endpoint's base URL is the operator's


def test_a_request_without_a_model_gets_no_model_outside_allowed_models(serve_llm: Any) -> None:
    """A request that names no model runs the default model: with ``allowed_models`` set and the
    default (here the bundled local model, loaded on first use) not in it, naming nothing was a
    way around the list. It is a 403 that says so; a configured default_model is the operator's
    choice (documented as not checked) and still answers."""
    served = serve_llm(server={"allowed_models": ["up/*"]})
    for path, body in (
        ("/chat/completions", {"messages": HI}),
        ("/tasks", {"prompt": "hi"}),
        ("/responses", {"input": "hi"}),
    ):
        r = httpx.post(served.base_url + path, json=body, timeout=30)
        assert r.status_code == 403, (path, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == "model_not_allowed" and "names none" in error["message"], error
    configured = serve_llm(server={"allowed_models": ["max/*"]}, default_model="up/x")
    r = httpx.post(configured.base_url + "/chat/completions", json={"messages": HI}, timeout=30)
    assert r.status_code == 200, r.text[:300]
