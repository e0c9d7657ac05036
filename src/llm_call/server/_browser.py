"""Protections against web pages: the Host check, the JSON content type rule and opt-in CORS.

A page on any site, open in a browser on the server's machine, can send requests to
``http://127.0.0.1:8000``. Three rules stop it (docs/security.md has the threat model):

- **Content type.** A request with a body (POST, PUT, PATCH, DELETE) must say
  ``Content-Type: application/json``. A page can send ``text/plain``, form and multipart bodies
  cross-origin without asking (no CORS preflight); ``application/json`` needs a preflight, which
  this server refuses unless the origin is in ``server.cors_origins``. Answer: 415.
- **Host.** The ``Host`` header must be a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``;
  any port) or a name in ``server.allowed_hosts`` (``"*"`` turns the check off). A DNS-rebinding
  page (its own name, re-pointed to 127.0.0.1) sends its own name and gets 421.
- **CORS** is off unless ``server.cors_origins`` lists origins: then a preflight from a listed
  origin is answered (204) and its responses carry ``Access-Control-Allow-Origin``; other origins
  get no CORS headers at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["BODY_METHODS", "BrowserRules", "content_type_message", "host_message"]

#: methods whose requests carry a body (and so must be JSON)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_ALLOW_METHODS = b"GET, POST, OPTIONS"
_ALLOW_HEADERS = b"authorization, content-type, x-request-id, last-event-id"
_EXPOSE_HEADERS = b"x-request-id, retry-after"
_MAX_AGE = b"600"


def _host_name(host: str) -> str:
    """``Host`` header value without its port, lower case (``[::1]:8000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def _is_loopback_name(name: str) -> bool:
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class BrowserRules:
    """The three rules for one server's settings (see the module docstring)."""

    def __init__(self, allowed_hosts: Sequence[str], cors_origins: Sequence[str], bind_host: str) -> None:
        self.any_host = "*" in allowed_hosts
        names = {h.lower() for h in allowed_hosts}
        bind = bind_host.strip().strip("[]").lower()
        if bind and bind not in ("0.0.0.0", "::"):
            names.add(bind)  # a server bound to one address answers to that address
        self.allowed_hosts = frozenset(names)
        self.any_origin = "*" in cors_origins
        self.origins = frozenset(o.encode() for o in cors_origins if o != "*")

    def host_ok(self, host: bytes | None) -> bool:
        if host is None or self.any_host:
            return True  # no Host (HTTP/1.0, a raw client): not a browser
        name = _host_name(host.decode("latin-1"))
        return _is_loopback_name(name) or name in self.allowed_hosts

    @staticmethod
    def json_ok(content_type: bytes | None) -> bool:
        if content_type is None:
            return False
        return content_type.partition(b";")[0].strip().lower() == b"application/json"

    def origin_allowed(self, origin: bytes | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.origins)

    @staticmethod
    def preflight_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-allow-headers", _ALLOW_HEADERS),
            (b"access-control-max-age", _MAX_AGE),
            (b"vary", b"Origin"),
        ]

    @staticmethod
    def response_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", _EXPOSE_HEADERS),
            (b"vary", b"Origin"),
        ]


def host_message(host: bytes) -> str:
    shown = host.decode("latin-1")[:100]
    return (
        f"the Host header {shown!r} is not a name this server answers to: add it to server.allowed_hosts "
        "(localhost, 127.0.0.1 and [::1] are always allowed). This check stops DNS-rebinding web pages."
    )


def content_type_message(content_type: bytes | None) -> str:
    got = "no Content-Type" if content_type is None else f"Content-Type {content_type.decode('latin-1')[:100]!r}"
    return (
        f"this endpoint takes JSON; the request has {got}: send the header 'Content-Type: application/json'"
    )
