"""Credentials out of provider errors: an upstream may echo the key it was sent.

An OpenAI-compatible server answering 401 with ``"Incorrect API key provided: sk-..."``, a proxy
whose 500 page prints the request headers, a LiteLLM exception quoting the request: the text
becomes the error's message (and ``body``), which the HTTP server sends to whichever key made the
call, the task store keeps, and logs print. Providers therefore pass every error they raise
through :func:`scrub_error` with the secrets they hold, and each secret becomes ``***``.

Only values long enough to be a credential (:data:`MIN_SECRET_LEN` characters) are replaced: a
short header value such as ``"1"`` would otherwise turn every ``1`` of a message into ``***``.

Example::

    exc = AuthError("up returned HTTP 401: bad key sk-abc123456")
    scrub_error(exc, ["sk-abc123456"])
    exc.message  # 'up returned HTTP 401: bad key ***'
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..errors import LLMCallError

__all__ = ["MIN_SECRET_LEN", "env_secrets", "scrub", "scrub_error"]

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


def _usable(secrets: Iterable[str | None]) -> list[str]:
    # longest first, so that a key containing another key is replaced whole
    return sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret replaced by ``***``."""
    for secret in _usable(secrets):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, list):
        return [_scrub_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    return value


def scrub_error(exc: LLMCallError, secrets: Iterable[str | None]) -> LLMCallError:
    """Replace every secret in ``exc``'s message, hint and fields, in place; returns ``exc``."""
    usable = _usable(secrets)
    if not usable:
        return exc
    exc.message = scrub(exc.message, usable)
    exc.args = (exc.message, *exc.args[1:])
    if exc.hint:
        exc.hint = scrub(exc.hint, usable)
    for name in exc._fields:
        value = getattr(exc, name, None)
        if value is not None:
            setattr(exc, name, _scrub_value(value, usable))
    return exc
