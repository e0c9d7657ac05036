"""The script of the scripted LLM server: replies, faults, matching and recorded requests.

Nothing here does I/O; :mod:`llm_call.testing._server` turns a selected :class:`Reply` into
bytes on the wire. The selection logic is a small state machine (:class:`Script`) guarded by a
lock, so replies can be added from another thread while the server runs.
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "RecordedRequest",
    "Reply",
    "ReplyLike",
    "Script",
    "ToolCall",
    "content_text",
    "split_words",
    "unified_ratelimit_headers",
]

#: The fault kinds a :class:`Fault` can play.
FAULT_KINDS = frozenset(
    {"status", "reset", "malformed_json", "html", "truncated_json", "cut_stream", "hang"}
)


@dataclass
class ToolCall:
    """A tool call the scripted model makes.

    Sent as an OpenAI ``tool_calls`` entry or an Anthropic ``tool_use`` block. ``id`` is
    generated per response (``call_…`` / ``toolu_…``) when ``None``.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def argument_pieces(self) -> list[str]:
        """The JSON of ``arguments`` in about three pieces, as streams deliver it."""
        s = json.dumps(self.arguments)
        step = max(1, -(-len(s) // 3))
        return [s[i : i + step] for i in range(0, len(s), step)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "arguments": self.arguments}
        if self.id is not None:
            d["id"] = self.id
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ToolCall:
        _check_keys(cls, data, "tool call")
        return cls(
            name=str(data["name"]),
            arguments=dict(data.get("arguments") or {}),
            id=data.get("id"),
        )


@dataclass
class Fault:
    """A failure the server plays instead of a normal reply.

    Kinds:

    - ``"status"``: HTTP ``status`` with ``headers`` and a body in the API's error shape, or
      ``body`` verbatim (content type from ``headers``, else JSON/plain text by its first byte).
    - ``"reset"``: abort the TCP connection (RST) without a response.
    - ``"malformed_json"``: 200, ``application/json``, a body that is not JSON.
    - ``"html"``: 200, ``text/html``, an HTML error page (as some proxies answer).
    - ``"truncated_json"``: 200, ``application/json``, a valid reply cut in the middle.
    - ``"cut_stream"``: a stream request gets ``after_chunks`` content chunks, then the
      connection closes without the end marker; a non-stream request gets ``truncated_json``.
    - ``"hang"``: never answer (until the client disconnects or the server stops).

    ``body`` overrides the body of every kind that sends one.
    """

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    after_chunks: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {sorted(FAULT_KINDS)}")

    @classmethod
    def http(
        cls, status: int, headers: Mapping[str, str] | None = None, body: str | None = None
    ) -> Fault:
        """An HTTP error status, e.g. ``Fault.http(429, {"Retry-After": "1"})``."""
        return cls("status", status=status, headers=dict(headers or {}), body=body)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def malformed_json(cls, body: str | None = None) -> Fault:
        return cls("malformed_json", body=body)

    @classmethod
    def html(cls, body: str | None = None) -> Fault:
        return cls("html", body=body)

    @classmethod
    def truncated_json(cls) -> Fault:
        return cls("truncated_json")

    @classmethod
    def cut_stream(cls, after_chunks: int = 1) -> Fault:
        return cls("cut_stream", after_chunks=after_chunks)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")

    def to_dict(self) -> dict[str, Any]:
        return _non_default(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        _check_keys(cls, data, "fault")
        d = dict(data)
        if "headers" in d:
            d["headers"] = {str(k): str(v) for k, v in (d["headers"] or {}).items()}
        return cls(**d)


@dataclass
class Reply:
    """One scripted answer (or fault), and which requests it serves.

    ``text`` is the answer; ``chunks`` the explicit stream pieces (default: ``text`` split into
    word-sized pieces). A reply is used for a request when ``match_model`` (exact or fnmatch
    glob) and ``match_text`` (substring of the last user message's text) match, at most
    ``times`` times (``None``: unlimited). ``headers`` are added to the response, whatever it
    is (an answer, a stream or an HTTP fault), e.g. the subscription's
    ``anthropic-ratelimit-unified-*`` headers (:func:`unified_ratelimit_headers`).

    >>> Reply.from_dict({"text": "hi", "times": 2})
    Reply(text='hi', ..., times=2)  # doctest: +SKIP
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    fault: Fault | None = None
    latency: float = 0.0
    chunk_delay: float = 0.0
    chunks: list[str] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    match_model: str | None = None
    match_text: str | None = None
    times: int | None = 1
    headers: dict[str, str] = field(default_factory=dict)
    _cache: tuple[str, list[str], list[str], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def full_text(self) -> str:
        """``text``, or the joined ``chunks`` when ``text`` is empty."""
        if self.text or not self.chunks:
            return self.text
        return "".join(self.chunks)

    def pieces(self) -> list[str]:
        """The stream pieces: ``chunks`` if given, else ``text`` split into words."""
        if self.chunks is not None:
            return list(self.chunks)
        return list(self._split()[0])

    def encoded_pieces(self) -> list[str]:
        """:meth:`pieces` as JSON strings (cached: the server sends them per request)."""
        if self.chunks is not None:
            return [json.dumps(p) for p in self.chunks]
        return self._split()[1]

    def _split(self) -> tuple[list[str], list[str], int]:
        cache = self._cache
        if cache is None or cache[0] is not self.text:
            pieces = split_words(self.text)
            cache = (self.text, pieces, [json.dumps(p) for p in pieces], len(pieces))
            self._cache = cache
        return cache[1], cache[2], cache[3]

    def output_tokens(self) -> int:
        if self.completion_tokens is not None:
            return self.completion_tokens
        n = self._split()[2] if self.chunks is None else len(self.full_text.split())
        for call in self.tool_calls:
            n += 1 + len(str(call.arguments).split())
        return max(n, 1)

    def matches(self, model: str, request: RecordedRequest) -> bool:
        if self.match_model is not None and not _model_matches(self.match_model, model):
            return False
        return self.match_text is None or self.match_text in request.last_user_text

    def to_dict(self) -> dict[str, Any]:
        d = _non_default(self, skip=("tool_calls", "fault"))
        if self.tool_calls:
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.fault is not None:
            d["fault"] = self.fault.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reply:
        """Build a reply from its JSON form (as in script files).

        Examples: ``{"text": "hi"}``, ``{"fault": {"kind": "status", "status": 429,
        "headers": {"Retry-After": "1"}}}``, ``{"tool_calls": [{"name": "f", "arguments": {}}]}``.
        Unknown keys are an error.
        """
        _check_keys(cls, data, "reply")
        d = dict(data)
        if d.get("tool_calls"):
            d["tool_calls"] = [
                c if isinstance(c, ToolCall) else ToolCall.from_dict(c) for c in d["tool_calls"]
            ]
        else:
            d["tool_calls"] = []
        fault = d.get("fault")
        if fault is not None and not isinstance(fault, Fault):
            d["fault"] = Fault.from_dict(fault)
        if d.get("chunks") is not None:
            d["chunks"] = [str(c) for c in d["chunks"]]
        if "headers" in d:
            d["headers"] = {str(k): str(v) for k, v in (d["headers"] or {}).items()}
        return cls(**d)


#: What the server accepts as a script entry: a Reply, its dict form, or plain text.
ReplyLike = Reply | Mapping[str, Any] | str


def as_reply(item: ReplyLike) -> Reply:
    if isinstance(item, Reply):
        return item
    if isinstance(item, str):
        return Reply(text=item)
    if isinstance(item, Mapping):
        return Reply.from_dict(item)
    raise TypeError(f"a script entry must be a Reply, a dict or a str, not {type(item).__name__}")


@dataclass(eq=False)
class RecordedRequest:
    """One request the server received, as received.

    ``headers`` keys are lower-case; ``body`` is the parsed JSON body (``None`` when empty or
    not JSON); ``api`` is ``"openai"``, ``"anthropic"`` or ``"other"``; ``at`` is ``time.time()``
    at arrival.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes
    api: str
    at: float
    _last_user_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> str | None:
        body = self.body
        if isinstance(body, dict):
            model = body.get("model")
            return model if isinstance(model, str) else None
        return None

    @property
    def messages(self) -> list[dict[str, Any]]:
        body = self.body
        if isinstance(body, dict):
            messages = body.get("messages")
            if isinstance(messages, list):
                return messages
        return []

    @property
    def system(self) -> str | None:
        """The Anthropic ``system`` (blocks joined as text) or the OpenAI system messages' text."""
        body = self.body
        if not isinstance(body, dict):
            return None
        if "system" in body:
            return content_text(body["system"])
        texts = [
            content_text(m.get("content"))
            for m in self.messages
            if isinstance(m, dict) and m.get("role") in ("system", "developer")
        ]
        return "\n".join(texts) if texts else None

    @property
    def last_user_text(self) -> str:
        """Text of the last ``user`` message (text parts and tool results), ``""`` if none; for
        an embeddings request, its input texts joined by newlines."""
        if self._last_user_text is None:
            text = ""
            for message in reversed(self.messages):
                if isinstance(message, dict) and message.get("role") == "user":
                    text = content_text(message.get("content"))
                    break
            else:
                given = self.body.get("input") if isinstance(self.body, dict) else None
                if isinstance(given, str | list):
                    text = content_text(given)
            self._last_user_text = text
        return self._last_user_text

    @property
    def prompt_words(self) -> int:
        """A rough token count (words) of the system prompt and messages, at least 1."""
        body = self.body
        if not isinstance(body, dict):
            return 1
        n = len(content_text(body.get("system")).split())
        for m in self.messages:
            if isinstance(m, dict):
                n += len(content_text(m.get("content")).split())
        return max(n, 1)

    @property
    def stream(self) -> bool:
        body = self.body
        return isinstance(body, dict) and bool(body.get("stream"))

    @property
    def tools(self) -> list[dict[str, Any]]:
        body = self.body
        if isinstance(body, dict) and isinstance(body.get("tools"), list):
            return list(body["tools"])
        return []


def unified_ratelimit_headers(
    status: str = "allowed",
    *,
    claim: str = "five_hour",
    reset: float | None = None,
    five_hour: tuple[float, float, str] | None = None,
    seven_day: tuple[float, float, str] | None = None,
    overage_status: str | None = "rejected",
    overage_reset: float | None = None,
    overage_disabled_reason: str | None = "org_level_disabled",
    overage_in_use: bool = False,
) -> dict[str, str]:
    """The ``anthropic-ratelimit-unified-*`` headers a Claude subscription's API answers with
    (the Claude Code CLI in subscription mode turns them into ``rate_limit_event`` lines).

    ``five_hour``/``seven_day`` are ``(utilization 0..1, reset epoch seconds, status)``;
    ``status`` is ``allowed``, ``allowed_warning`` or ``rejected``. ``reset`` defaults to the
    reset of the ``claim`` window. Use them as ``Reply(text="hi", headers=...)`` or with a
    ``Fault.http(429)`` to reject a call.
    """
    windows = {"5h": five_hour, "7d": seven_day}
    claimed = {"five_hour": five_hour, "seven_day": seven_day}.get(claim)
    if reset is None and claimed is not None:
        reset = claimed[1]
    p = "anthropic-ratelimit-unified-"
    h = {p + "status": status, p + "representative-claim": claim}
    if reset is not None:
        h[p + "reset"] = str(int(reset))
    for short, window in windows.items():
        if window is not None:
            util, at, st = window
            h[f"{p}{short}-utilization"] = str(util)
            h[f"{p}{short}-reset"] = str(int(at))
            h[f"{p}{short}-status"] = st
    if overage_status is not None:
        h[p + "overage-status"] = overage_status
    if overage_reset is not None:
        h[p + "overage-reset"] = str(int(overage_reset))
    if overage_disabled_reason is not None and overage_status == "rejected":
        h[p + "overage-disabled-reason"] = overage_disabled_reason
    if overage_in_use:
        h[p + "overage-in-use"] = "true"
    return h


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the text of its parts/blocks, joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text") and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "tool_result":
                    texts.append(content_text(part.get("content")))
        return "\n".join(t for t in texts if t)
    return str(content)


def split_words(text: str) -> list[str]:
    """Split ``text`` into word-sized pieces that join back to ``text`` exactly."""
    return _WORD.findall(text)


_WORD = re.compile(r"\s*\S+\s*|\s+")


class Script:
    """Ordered replies with use counts; picks the reply for each request.

    The first reply (in script order) that is not used up and whose ``match_*`` fields match
    is used; used-up replies are dropped so matching stays as short as the live script.
    """

    def __init__(self, replies: Iterable[ReplyLike] = (), default: ReplyLike | None = None):
        self._lock = threading.Lock()
        # [reply, remaining uses or None for unlimited]
        self._entries: list[list[Any]] = []
        self.default: Reply | None = None if default is None else as_reply(default)
        self.add(*replies)

    def add(self, *replies: ReplyLike) -> None:
        entries: list[list[Any]] = [[r, r.times] for r in map(as_reply, replies)]
        with self._lock:
            self._entries.extend(e for e in entries if e[1] is None or e[1] > 0)

    def select(self, model: str, request: RecordedRequest) -> Reply | None:
        """The reply for this request (its use counted), the default, or ``None``."""
        with self._lock:
            entries = self._entries
            for i, entry in enumerate(entries):
                reply: Reply = entry[0]
                if reply.match_model is None and reply.match_text is None:
                    pass
                elif not reply.matches(model, request):
                    continue
                left = entry[1]
                if left is not None:
                    if left <= 1:
                        del entries[i]
                    else:
                        entry[1] = left - 1
                return reply
        return self.default

    def remaining(self) -> list[Reply]:
        """Replies not used up yet, in script order."""
        with self._lock:
            return [e[0] for e in self._entries]

    def model_names(self) -> list[str]:
        names: list[str] = []
        for reply in self.remaining() + ([self.default] if self.default else []):
            for name in (reply.model, reply.match_model):
                if name and not any(c in name for c in "*?[") and name not in names:
                    names.append(name)
        return names


def _model_matches(pattern: str, model: str) -> bool:
    if pattern == model:
        return True
    return any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(model, pattern)


def _check_keys(cls: type, data: Mapping[str, Any], what: str) -> None:
    known = {f.name for f in fields(cls) if not f.name.startswith("_")}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; known: {sorted(known)}")


def _non_default(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip or f.name.startswith("_"):
            continue
        value = getattr(obj, f.name)
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if value != default or f.name == "kind":
            out[f.name] = value
    return out
