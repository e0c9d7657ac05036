"""``server.header_timeout``: a connection whose request headers do not arrive in time is closed.

uvicorn arms no timer before a request's headers are complete, so a client that connects and
sends nothing, or drips its headers (the "slowloris" pattern), held its connection and file
descriptor for ever; a few thousand such sockets exhaust the process. Each test reads from a raw
socket with a 20 s socket timeout: on a server without the deadline the read times out and the
test fails (it never hangs).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from llm_call.config import Settings
from llm_call.server import uvicorn_config
from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(120)

HI = [{"role": "user", "content": "hi"}]


def _connect(served: Any) -> socket.socket:
    address = urlsplit(served.url)
    return socket.create_connection((address.hostname, address.port), timeout=20)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; socket.timeout if it never does."""
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"],
    ids=["nothing", "half the headers"],
)
def test_a_connection_without_complete_headers_is_closed(serve_llm: Any, sent: bytes) -> None:
    served = serve_llm(server={"header_timeout": 0.5})
    with _connect(served) as sock:
        sock.sendall(sent)
        assert _read_until_closed(sock) == b""  # closed, nothing answered
    assert not served.upstream.requests
    assert httpx.get(served.url + "/health", timeout=30).status_code == 200  # the server is fine


def test_dripped_headers_on_a_kept_alive_connection_are_cut_too(serve_llm: Any) -> None:
    """The first byte of the next request cancels uvicorn's keep-alive timer: a client that
    finished one request could then hold the connection with a dripped second one."""
    served = serve_llm(server={"header_timeout": 0.5})
    with _connect(served) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, first
            first += chunk
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        assert _read_until_closed(sock) == b""


def test_a_slow_body_or_a_long_answer_is_not_cut_by_the_header_deadline(serve_llm: Any) -> None:
    """Only the headers are timed: a body sent after a pause longer than header_timeout (it has
    server.body_timeout) and an answer that takes longer (the scripted reply waits) both work."""
    import json
    import time

    from llm_call.testing import Reply

    served = serve_llm([Reply(text="late but fine", latency=1.5)], server={"header_timeout": 0.5})
    body = json.dumps({"model": "up/x", "messages": HI}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with _connect(served) as sock:
        sock.sendall(head)
        time.sleep(1.0)  # twice the header deadline, within body_timeout
        sock.sendall(body)
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"late but fine" in answer


def test_serve_uses_the_configured_header_deadline() -> None:
    """``llm-call serve`` builds its uvicorn config with the deadline of its settings."""
    settings = Settings.model_validate({"server": {"header_timeout": 7}})
    config = uvicorn_config(object(), settings)
    assert isinstance(config.http, type) and config.http.__name__.startswith("Limited")
    proto = config.http.__new__(config.http)
    proto.loop, proto.cycle, proto.transport = None, None, None  # what _arm reads
    scheduled: list[float] = []

    class Loop:
        def call_later(self, delay: float, callback: Any) -> Any:
            scheduled.append(delay)
            return None

    proto.loop = Loop()
    proto._arm()
    assert scheduled == [7]


def test_header_timeout_must_be_positive() -> None:
    with pytest.raises(Exception, match="header_timeout"):
        Settings.model_validate({"server": {"header_timeout": 0}})


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_both_uvicorn_protocols_get_the_deadline(http: str) -> None:
    """Without httptools installed uvicorn speaks h11: the deadline must hold there too, and a
    complete request must still be answered."""
    import threading
    import time

    import uvicorn

    from llm_call.server._http_limits import http_limits_protocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=http_limits_protocol(http, 0.5), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _read_until_closed(conn).endswith(b"ok")
        with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: 1")
            assert _read_until_closed(conn) == b""
    finally:
        server.should_exit = True
        thread.join(timeout=15)
