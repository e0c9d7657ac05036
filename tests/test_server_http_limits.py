"""Limits below the app: the request line and headers are bounded before any key is checked.

httptools (uvicorn's fast parser) buffers a header or a URL until it ends, without a limit: a
client that never ended one grew the server by every byte it sent, keyless. Past 64 KiB the
server answers 431 and closes the connection; a large body after a small head is not a head.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from support.llm_server import serve_llm

__all__ = ["serve_llm"]

pytestmark = pytest.mark.timeout(60)


def _exchange(port: int, head: bytes, chunks: list[bytes]) -> bytes:
    """Send ``head`` and ``chunks``, then read until the server closes (or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server closed the connection while we were still sending: expected
        out = b""
        try:
            while data := sock.recv(65536):
                out += data
                if b"\r\n\r\n" in out and b"connection: close" not in out.lower() and b"content-length" in out.lower():
                    length = int(out.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
                    if len(out.split(b"\r\n\r\n", 1)[1]) >= length:
                        break
        except (TimeoutError, ConnectionResetError):
            pass
        return out


@pytest.mark.parametrize("where", ["header", "url"])
def test_a_head_that_never_ends_is_refused(serve_llm: Any, where: str) -> None:
    served = serve_llm(server={"api_keys": ["a-key-0123456789"]})
    if where == "header":
        head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: "
    else:
        head = b"GET /health?x="
    out = _exchange(served.server.port, head, [b"a" * 65536] * 16)  # 1 MiB, never ended
    assert out.startswith(b"HTTP/1.1 431 "), out[:200]


def test_heads_and_bodies_within_the_limits_are_served(serve_llm: Any) -> None:
    served = serve_llm(server={"api_keys": ["a-key-0123456789"]})
    port = served.server.port
    big_header = b"X-Fine: " + b"b" * 32_000 + b"\r\n"
    out = _exchange(port, b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n" + big_header + b"\r\n", [])
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    # a small head and a large body arriving in one piece: the body is not counted as head
    body = json.dumps({"model": "up/x", "messages": [{"role": "user", "content": "x" * 500_000}]}).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer a-key-0123456789\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    out = _exchange(port, head + body, [])
    assert out.startswith(b"HTTP/1.1 200 "), out[:300]


def test_connections_past_max_connections_get_503_and_the_server_keeps_working(serve_llm: Any) -> None:
    """Idle connections (re-opened every header_timeout) could take every file descriptor, and
    then the server's own sockets to its upstream fail. Past ``server.max_connections`` a new
    connection is answered 503 and closed; once others close, requests are served again."""
    import httpx

    served = serve_llm(server={"max_connections": 3})
    port = served.server.port
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            got = b""
            while data := extra.recv(65536):  # the server closes it: no hang
                got += data
        assert got.startswith(b"HTTP/1.1 503"), got
        assert b"server.max_connections" in got
    finally:
        for sock in held:
            sock.close()
    for _ in range(100):  # the closes reach the server's event loop
        r = httpx.get(served.url + "/health", timeout=10)
        if r.status_code == 200:
            break
    assert r.status_code == 200, r.text


def test_the_default_cap_leaves_room_below_the_file_limit() -> None:
    import resource

    from llm_call.server._http_limits import default_max_connections

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = default_max_connections()
    assert cap is not None and cap < soft and cap >= soft * 0.8
