"""API keys, who a key is (its tenant), the public-bind rule and the per-key in-flight limit.

Keys come from ``[server] api_keys`` / ``admin_keys`` or ``LLM_CALL_API_KEYS`` /
``LLM_CALL_ADMIN_KEYS`` (comma lists, mapped by config.py). A blank key is a ConfigError
wherever it comes from: counted as "keys set" but never matched, it would leave a public server
open. A presented ``Authorization: Bearer <key>`` (or ``x-api-key: <key>``, as Anthropic
clients send it) is hashed and compared with the SHA-256 of
every configured key using :func:`hmac.compare_digest`, all of them every time, so the time taken
says nothing about which key or how much of it matched. Keys are identified in logs and metrics
only as ``key1``, ``key2``... / ``admin1``... (their position in the list), never by value.

Each key is a **tenant**: the tasks and background responses it creates are recorded with
``tenant_of(key)`` (``k_`` + 16 hex digits of the key's SHA-256: stable across restarts and
reordering of the list, and not the key), and it sees only those. An admin key sees every
tenant's. Without keys there is one tenant (``None``), as before keys existed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = [
    "ANONYMOUS",
    "BODY_BYTES_PER_REQUEST",
    "OPEN",
    "Caller",
    "KeyAuth",
    "KeyLimiter",
    "check_public_bind",
    "is_loopback",
    "local_address_is_public",
    "no_keys_message",
    "opaque_worker",
    "request_weight",
    "sees_operator_details",
    "tenant_of",
]


def tenant_of(key: str) -> str:
    """The tenant id recorded on a key's tasks: a short hash of the key, never the key."""
    return "k_" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: ``key_id`` for logs, ``tenant`` for the task store (None: the single
    tenant of a server without keys), ``admin``: sees every tenant's tasks."""

    key_id: str
    tenant: str | None
    admin: bool

    def may_see(self, tenant: str | None) -> bool:
        return self.admin or tenant == self.tenant


#: the caller of a server without keys: one tenant, sees everything (as before keys existed)
OPEN = Caller("anonymous", None, True)
#: a request without a key to a public path of a server with keys: sees no one's tasks
ANONYMOUS = Caller("anonymous", "-", False)


class KeyAuth:
    """Checks bearer tokens against the configured keys in constant time."""

    def __init__(self, keys: Sequence[str], admin_keys: Sequence[str] = ()) -> None:
        for source, group in (("server.api_keys", keys), ("server.admin_keys", admin_keys)):
            for i, key in enumerate(group):
                if not key.strip():
                    raise ConfigError(
                        f"{source}[{i}] is a blank API key, which would leave the server open",
                        hint="remove it or set a real key",
                    )
        admins = set(admin_keys)
        entries: list[tuple[bytes, Caller]] = []
        for i, key in enumerate(k for k in keys if k not in admins):
            entries.append((hashlib.sha256(key.encode()).digest(), Caller(f"key{i + 1}", tenant_of(key), False)))
        for i, key in enumerate(admin_keys):
            entries.append((hashlib.sha256(key.encode()).digest(), Caller(f"admin{i + 1}", tenant_of(key), True)))
        self._entries = entries

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def caller(self, authorization: bytes | None) -> Caller | None:
        """Who the ``Authorization`` header value belongs to, or None if it matches no key."""
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        return self.caller_of_key(token)

    def caller_of_key(self, token: bytes) -> Caller | None:
        """Who a bare key belongs to (the ``x-api-key`` header of Anthropic clients), or None."""
        token = token.strip()
        if not token:
            return None
        presented = hashlib.sha256(token).digest()
        found: Caller | None = None
        for digest, caller in self._entries:
            if hmac.compare_digest(presented, digest):
                found = caller
        return found

    def identify(self, authorization: bytes | None) -> str | None:
        """The id of the key in an ``Authorization`` header value, or None if it matches none."""
        caller = self.caller(authorization)
        return None if caller is None else caller.key_id


#: bytes of request body that count as one request in flight: a waiting request costs tens of
#: kilobytes, one holding a 10 MB body tens of megabytes (the body, its parsed form, the upstream
#: request), so a key's limit of requests is a bound on its memory only if big bodies weigh more
BODY_BYTES_PER_REQUEST = 64 * 1024


def request_weight(body_bytes: int) -> int:
    """How many requests in flight a request with a body of ``body_bytes`` counts as (at least 1)."""
    return max(1, -(-body_bytes // BODY_BYTES_PER_REQUEST))


class KeyLimiter:
    """Counts requests in flight per key; ``acquire`` is refused at the limit (the caller sends 429).

    A request counts as :func:`request_weight` of its body; one is always admitted when the key
    has nothing in flight, so a body heavier than the whole limit is slow, never impossible."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    def acquire(self, key_id: str, weight: int = 1) -> bool:
        n = self._in_flight.get(key_id, 0)
        if n and n + weight > self.limit:
            return False
        self._in_flight[key_id] = n + weight
        return True

    def release(self, key_id: str, weight: int = 1) -> None:
        n = self._in_flight.get(key_id, 0) - weight
        if n <= 0:
            self._in_flight.pop(key_id, None)
        else:
            self._in_flight[key_id] = n

    def in_flight(self, key_id: str) -> int:
        return self._in_flight.get(key_id, 0)


def sees_operator_details(caller: Caller, auth: KeyAuth) -> bool:
    """Whether ``caller`` is shown the operator's details (base URLs, file paths, host names):
    an admin key of a server with keys. A server without keys serves everyone on the machine,
    so no one."""
    return auth.enabled and caller.admin


def opaque_worker(worker: str | None) -> str | None:
    """A task's worker id (``server-HOSTNAME-PID-xxxxxx``) as a caller without operator details
    sees it: a stable digest, so tasks of one worker still share it."""
    return None if worker is None else "w_" + hashlib.sha256(worker.encode()).hexdigest()[:12]


def is_loopback(host: str) -> bool:
    """True when binding ``host`` only accepts connections from this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def no_keys_message(host: str) -> str:
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach that address could use your "
        "models and credentials.\n"
        "Set keys with the environment variable LLM_CALL_API_KEYS=key1,key2 or in llm_call.toml:\n"
        "    [server]\n"
        '    api_keys = ["a-long-random-key"]\n'
        "or bind to 127.0.0.1 (the default)."
    )


def check_public_bind(host: str, auth: KeyAuth) -> None:
    """The public-bind rule: a non-loopback address needs keys (ConfigError otherwise)."""
    if not auth.enabled and not is_loopback(host):
        raise ConfigError(no_keys_message(host))


def local_address_is_public(server: Any) -> bool:
    """Whether the ASGI ``scope["server"]`` (the address a connection came in on) is not loopback:
    an app bound to ``0.0.0.0`` by whoever runs it still sees which interface each request used."""
    if not isinstance(server, (tuple, list)) or not server:
        return False  # a Unix socket, or a server that does not say: local
    return not is_loopback(str(server[0]))
