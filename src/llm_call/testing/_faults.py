"""Faults and error bodies of the scripted LLM server, shared by its chat and embeddings replies.

:func:`play_fault` turns a :class:`~llm_call.testing.Fault` into what goes on the wire (an HTTP
error in the API's shape, a reset connection, a malformed or HTML body, a hang);
:func:`error_response` is the OpenAI or Anthropic error body for a status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

from aiohttp import web

from llm_call.testing._script import Fault

__all__ = ["JSON_TYPE", "error_response", "json_response", "play_fault"]

JSON_TYPE = "application/json"

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_MALFORMED = '{"id": "scripted", "choices": [{"message": {"content": oops}},'
_HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"


async def play_fault(
    request: web.BaseRequest, api: str, fault: Fault, headers: dict[str, str]
) -> web.StreamResponse:
    resp = await _fault_response(request, api, fault)
    resp.headers.update(headers)
    return resp


async def _fault_response(request: web.BaseRequest, api: str, fault: Fault) -> web.StreamResponse:
    kind = fault.kind
    if kind == "status":
        if fault.body is None:
            resp = error_response(api, fault.status, f"scripted fault: HTTP {fault.status}")
        else:
            lowered = {k.lower() for k in fault.headers}
            ctype = JSON_TYPE if fault.body[:1] in ("{", "[") else "text/plain"
            resp = web.Response(status=fault.status, text=fault.body)
            if "content-type" not in lowered:
                resp.content_type = ctype
        resp.headers.update(fault.headers)
        return resp
    if kind == "malformed_json":
        resp = web.Response(text=fault.body or _MALFORMED, content_type=JSON_TYPE)
    elif kind == "html":
        resp = web.Response(text=fault.body or _HTML, content_type="text/html")
    elif kind == "reset":
        _reset(request)
        await asyncio.sleep(3600)  # connection_lost cancels this handler
        resp = web.Response()
    else:  # hang: until the client disconnects or the server stops (both cancel us)
        while True:
            await asyncio.sleep(3600)
    resp.headers.update(fault.headers)
    return resp


def _reset(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # linger 0: close() sends RST instead of FIN
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type=JSON_TYPE)


def error_response(api: str, status: int, message: str) -> web.Response:
    if api == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status) or (
            "api_error" if status >= 500 else "invalid_request_error"
        )
        data: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind, code = _OPENAI_ERRORS.get(status) or (
            ("server_error", None) if status >= 500 else ("invalid_request_error", None)
        )
        if status == 404 and api == "other":
            kind, code = "not_found_error", None
        data = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json_response(data, status)
