"""JSON for the task store and batch output: orjson when installed, the standard library otherwise.

Every task stores its request, result, error and events as JSON, so encoding is on the hot path.
orjson writes the same text as ``json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)``
for what tasks hold; anything it refuses (integers beyond 64 bits, non-string keys, lone
surrogates) is encoded by the standard library instead, so the output never depends on whether
orjson is installed except for non-finite floats (``NaN`` is not JSON; orjson writes ``null``).
Dataclasses and datetimes go to ``default`` as they do with the standard library.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "loads", "unjsonable"]

_log = logging.getLogger("llm_call.tasks")


def unjsonable(value: Any) -> Any:
    """``default`` for values JSON cannot hold: their ``to_dict()``, else their ``repr``."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    _log.warning("task store: a %s is not JSON; storing its repr", type(value).__name__)
    return repr(value)


_std_dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=unjsonable
).encode
_std_loads: Callable[[str | bytes], Any] = json.loads

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is optional
    dumps = _std_dumps
    loads = _std_loads
else:
    _OPTS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
    _odumps = orjson.dumps
    _oloads = orjson.loads
    _OErr = orjson.JSONEncodeError

    def dumps(value: Any) -> str:  # type: ignore[misc]
        """``value`` as compact JSON text."""
        try:
            return _odumps(value, default=unjsonable, option=_OPTS).decode()
        except _OErr:
            return _std_dumps(value)

    def loads(text: str | bytes) -> Any:  # type: ignore[misc]
        """The value of JSON ``text`` (also the ``NaN`` the standard library writes)."""
        try:
            return _oloads(text)
        except ValueError:
            return _std_loads(text)
