"""Credentials out of provider errors: an upstream may echo the key it was sent.

An OpenAI-compatible server answering 401 with ``"Incorrect API key provided: sk-..."``, a proxy
whose 500 page prints the request headers, a LiteLLM exception quoting the request: the text
becomes the error's message (and ``body``), which the HTTP server sends to whichever key made the
call, the task store keeps, and logs print. Providers therefore pass every error they raise
through :func:`scrub_error` with the secrets they hold, and each secret becomes ``***``.

Only values long enough to be a credential (:data:`MIN_SECRET_LEN` characters) are replaced: a
short header value such as ``"1"`` would otherwise turn every ``1`` of a message into ``***``.

Addresses are the operator's too: LiteLLM and the Claude CLI read their base URLs from the
environment (``OLLAMA_API_BASE``, ``ANTHROPIC_BASE_URL``...) and write ``Cannot connect to host
10.0.0.5:11434`` into their errors. :func:`env_locations` gives each such URL, its ``host:port``
and its host (when it has a dot or a colon) with the variable's name to put in their place.

Example::

    exc = AuthError("up returned HTTP 401: bad key sk-abc123456")
    scrub_error(exc, ["sk-abc123456"])
    exc.message  # 'up returned HTTP 401: bad key ***'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from ..errors import LLMCallError

__all__ = ["MIN_SECRET_LEN", "env_locations", "env_secrets", "scrub", "scrub_error"]

#: shorter values are not treated as secrets (they would mangle ordinary text)
MIN_SECRET_LEN = 8
#: environment variable names whose values are credentials (LiteLLM reads keys from the environment)
_SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")


def env_secrets() -> list[str]:
    """Values of environment variables whose names say they hold a credential
    (``OPENAI_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``...)."""
    return [
        value
        for name, value in os.environ.items()
        if len(value) >= MIN_SECRET_LEN and any(marker in name.upper() for marker in _SECRET_MARKERS)
    ]


#: environment variable names (suffixes) that hold an upstream's base URL
_LOCATION_SUFFIXES = ("_API_BASE", "_BASE_URL", "_API_URL", "_ENDPOINT", "_API_HOST")


def env_locations() -> list[tuple[str, str]]:
    """``(text, "$NAME")`` for every base URL in the environment: the URL, its ``host:port`` and
    its host name or address (only one with a dot or a colon: a bare ``localhost`` is no secret
    and a short word would mangle messages)."""
    found: list[tuple[str, str]] = []
    for name, value in os.environ.items():
        if not name.upper().endswith(_LOCATION_SUFFIXES) or "://" not in value:
            continue
        parts = urlsplit(value.strip())
        label = f"${name}"
        found.append((value.strip().rstrip("/"), label))
        if parts.netloc:
            found.append((parts.netloc.rpartition("@")[2], label))
        host = parts.hostname or ""
        if len(host) >= 4 and ("." in host or ":" in host):
            found.append((host, label))
    return found


def _usable(secrets: Iterable[str | None]) -> list[str]:
    # longest first, so that a key containing another key is replaced whole
    return sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in _usable(secrets):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _replace(text: str, secrets: list[str], locations: list[tuple[str, str]]) -> str:
    text = scrub(text, secrets)
    for found, label in locations:
        if found in text:
            text = text.replace(found, label)
    return text


def _replace_value(value: Any, secrets: list[str], locations: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        return _replace(value, secrets, locations)
    if isinstance(value, list):
        return [_replace_value(v, secrets, locations) for v in value]
    if isinstance(value, dict):
        return {k: _replace_value(v, secrets, locations) for k, v in value.items()}
    return value


def scrub_error(
    exc: LLMCallError, secrets: Iterable[str | None], locations: Iterable[tuple[str, str]] = ()
) -> LLMCallError:
    """Replace every secret (with ``***``) and location (with its label) in ``exc``'s message,
    hint and fields, in place; returns ``exc``."""
    usable = _usable(secrets)
    # longest first: a URL before its host:port before its host
    places = sorted({(t, label) for t, label in locations if t}, key=lambda p: len(p[0]), reverse=True)
    if not usable and not places:
        return exc
    exc.message = _replace(exc.message, usable, places)
    exc.args = (exc.message, *exc.args[1:])
    if exc.hint:
        exc.hint = _replace(exc.hint, usable, places)
    for name in exc._fields:
        value = getattr(exc, name, None)
        if value is not None:
            setattr(exc, name, _replace_value(value, usable, places))
    return exc
