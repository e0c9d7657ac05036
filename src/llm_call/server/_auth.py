"""API keys and the per-key limit on requests in flight.

Keys come from ``[server] api_keys`` or ``LLM_CALL_API_KEYS`` (comma list, mapped by config.py).
A presented ``Authorization: Bearer <key>`` (or ``x-api-key: <key>``, as Anthropic clients send
it) is hashed and compared with the SHA-256 of every
configured key using :func:`hmac.compare_digest`, all of them every time, so the time taken says
nothing about which key or how much of it matched. Keys are identified in logs and metrics only
as ``key1``, ``key2``... (their position in the list), never by value.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence

__all__ = ["KeyAuth", "KeyLimiter", "is_loopback"]


class KeyAuth:
    """Checks bearer tokens against the configured keys in constant time."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys if k]
        self._ids = [f"key{i + 1}" for i in range(len(self._digests))]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def identify(self, authorization: bytes | None) -> str | None:
        """The id of the key in an ``Authorization`` header value, or None if it matches none."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        return self.identify_key(token)

    def identify_key(self, token: bytes) -> str | None:
        """The id of a bare key (the ``x-api-key`` header of Anthropic clients), or None."""
        presented = hashlib.sha256(token.strip()).digest()
        found: str | None = None
        for digest, key_id in zip(self._digests, self._ids, strict=True):
            if hmac.compare_digest(presented, digest):
                found = key_id
        return found


class KeyLimiter:
    """Counts requests in flight per key; ``acquire`` is refused at the limit (the caller sends 429)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def acquire(self, key_id: str) -> bool:
        n = self._in_flight.get(key_id, 0)
        if n >= self.limit:
            return False
        self._in_flight[key_id] = n + 1
        return True

    def release(self, key_id: str) -> None:
        n = self._in_flight.get(key_id, 0) - 1
        if n <= 0:
            self._in_flight.pop(key_id, None)
        else:
            self._in_flight[key_id] = n

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)


def is_loopback(host: str) -> bool:
    """True when binding ``host`` only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
