"""The quota of a Claude subscription (the ``max/*`` route): read it, keep it, act on it.

In subscription mode the Claude Code CLI turns the API's ``anthropic-ratelimit-unified-*``
response headers into a stream-json line (``RateLimitEvent`` in claude-agent-sdk)::

    {"type": "rate_limit_event", "rate_limit_info": {
        "status": "allowed" | "allowed_warning" | "rejected", "resetsAt": 1796465528,
        "rateLimitType": "five_hour",               # the representative claim
        "overageStatus": "rejected", "overageResetsAt": ..., "overageDisabledReason": "...",
        "isUsingOverage": false,
        "unifiedWindows": {"five_hour": {"utilization": 0.93, "resetsAt": ..., "status": ...},
                           "seven_day": {...}}}}

With an API key the CLI sends none. This module is the one place that understands that line:

- :func:`parse_rate_limit_info` turns it into a :class:`QuotaState` (windows, utilization,
  reset times, overage), merged over what was known (a window the line leaves out keeps its
  last reading).
- :data:`QUOTA` (a :class:`QuotaBook`) keeps the state per account in this process and writes it
  to the task stores attached to it (``put_meta``/``read_meta``), so every worker and the server
  share it; :meth:`QuotaBook.refresh` reads theirs back.
- :func:`record_rate_limit_event` is the entry point for every way a CLI is driven (one process
  per call, or a long-lived pooled process reading stream-json lines): give it the parsed line
  (or the SDK's ``RateLimitInfo.raw``) and the account.
- :func:`block_of` decides, without I/O, whether the next call may go: not while the account's
  status is ``rejected``, until the reset of its rejected windows (a window ``rejected`` while
  the status still allows calls blocks nothing), unless overage (extra usage) is open and allowed
  (``claude.allow_overage``); :func:`slow` says whether utilization is above
  ``claude.slowdown_at``. :func:`admit` applies both before a CLI call: it raises
  :class:`~llm_call.errors.QuotaExhausted` (no upstream request is made) or waits for one of the
  ``claude.slowdown_concurrency`` slots, and reports each decision as a progress event (a task
  records it in its events).

No claude_agent_sdk import here: the server, the CLI and the task manager read quota state
without loading the SDK.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .._progress import emit
from ..errors import ProviderTimeout, QuotaExhausted

if TYPE_CHECKING:
    from ..config import ClaudeConfig

__all__ = [
    "MODEL_WINDOWS",
    "QUOTA",
    "Admission",
    "Block",
    "MetaStore",
    "QuotaBook",
    "QuotaState",
    "Window",
    "admit",
    "block_of",
    "exhausted_error",
    "parse_rate_limit_info",
    "quota_report",
    "record_rate_limit_event",
    "slow",
]

_log = logging.getLogger("llm_call.providers.claude_cli")

META_PREFIX = "claude_quota:"
_OPEN = ("allowed", "allowed_warning")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(slots=True)
class Window:
    """One usage window (``five_hour``, ``seven_day``, ``seven_day_opus``, ...)."""

    utilization: float | None = None  # 0.0 .. 1.0
    resets_at: float | None = None  # epoch seconds
    status: str | None = None  # allowed | allowed_warning | rejected

    def to_dict(self) -> dict[str, Any]:
        return {"utilization": self.utilization, "resets_at": self.resets_at, "status": self.status}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Window:
        return cls(_num(data.get("utilization")), _num(data.get("resets_at")), _str(data.get("status")))


@dataclass(slots=True)
class QuotaState:
    """What the subscription said last, for one account."""

    account: str
    status: str | None = None
    resets_at: float | None = None
    representative: str | None = None  # the window that decides (rateLimitType)
    windows: dict[str, Window] = field(default_factory=dict)
    overage_status: str | None = None
    overage_resets_at: float | None = None
    overage_disabled_reason: str | None = None
    using_overage: bool = False
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "status": self.status,
            "resets_at": self.resets_at,
            "representative": self.representative,
            "windows": {name: w.to_dict() for name, w in self.windows.items()},
            "overage": {
                "status": self.overage_status,
                "resets_at": self.overage_resets_at,
                "disabled_reason": self.overage_disabled_reason,
                "in_use": self.using_overage,
            },
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuotaState:
        overage = data.get("overage") or {}
        windows = data.get("windows") or {}
        return cls(
            account=str(data.get("account") or "default"),
            status=_str(data.get("status")),
            resets_at=_num(data.get("resets_at")),
            representative=_str(data.get("representative")),
            windows={str(k): Window.from_dict(v) for k, v in windows.items() if isinstance(v, Mapping)},
            overage_status=_str(overage.get("status")),
            overage_resets_at=_num(overage.get("resets_at")),
            overage_disabled_reason=_str(overage.get("disabled_reason")),
            using_overage=bool(overage.get("in_use")),
            updated_at=_num(data.get("updated_at")) or 0.0,
        )

    def max_utilization(self, now: float) -> float | None:
        """The highest utilization among windows that have not reset yet."""
        values = [
            w.utilization
            for w in self.windows.values()
            if w.utilization is not None and (w.resets_at is None or w.resets_at > now)
        ]
        return max(values) if values else None


def parse_rate_limit_info(
    info: Mapping[str, Any], account: str, previous: QuotaState | None = None, *, now: float | None = None
) -> QuotaState:
    """A :class:`QuotaState` from a ``rate_limit_info`` dict, over ``previous`` (same account)."""
    state = QuotaState(account=account, updated_at=time.time() if now is None else now)
    if previous is not None:
        state.windows = {k: Window(w.utilization, w.resets_at, w.status) for k, w in previous.windows.items()}
    state.status = _str(info.get("status"))
    state.resets_at = _num(info.get("resetsAt"))
    state.representative = _str(info.get("rateLimitType"))
    state.overage_status = _str(info.get("overageStatus"))
    state.overage_resets_at = _num(info.get("overageResetsAt"))
    state.overage_disabled_reason = _str(info.get("overageDisabledReason"))
    state.using_overage = bool(info.get("isUsingOverage") or info.get("overageInUse"))
    windows = info.get("unifiedWindows")
    if isinstance(windows, Mapping):
        for name, data in windows.items():
            if isinstance(data, Mapping):
                state.windows[str(name)] = Window(
                    _num(data.get("utilization")), _num(data.get("resetsAt")), _str(data.get("status"))
                )
    rep = state.representative
    if rep and rep != "overage":
        # the representative window always carries the line's own figures
        w = state.windows.setdefault(rep, Window())
        if w.resets_at is None:
            w.resets_at = state.resets_at
        if w.status is None or state.status == "rejected":
            w.status = state.status
        util = _num(info.get("utilization"))
        if util is not None:
            w.utilization = util
    return state


# -- decisions (no I/O) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """Why the next call must not go, and until when (epoch seconds)."""

    window: str
    until: float
    reason: str  # "rejected": the window is used up; "overage": only extra usage is left

    def message(self, account: str) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.until))
        if self.reason == "overage":
            what = f"the {self.window} window is used up and only extra usage (overage) is left, which claude.allow_overage = false refuses"
        else:
            what = f"the {self.window} usage window is used up"
        return f"Claude subscription quota ({account}): {what}; it resets at {when}"


#: usage windows that meter one model family only (``rateLimitType`` values the CLI knows)
MODEL_WINDOWS = {"seven_day_opus": "opus", "seven_day_sonnet": "sonnet"}


def _meters(window: str, model: str | None) -> bool:
    """Whether ``window`` limits calls of ``model`` (None: any model)."""
    family = MODEL_WINDOWS.get(window)
    return family is None or model is None or family in model.lower()


def block_of(
    state: QuotaState | None, *, allow_overage: bool, now: float | None = None, model: str | None = None
) -> Block | None:
    """Whether the next call of ``state``'s account must wait, from the last state seen.

    ``model`` (the CLI's model name): a window of one model family (``seven_day_opus``) blocks
    only that family's calls; None counts every window."""
    if state is None:
        return None
    now = time.time() if now is None else now
    rep = state.representative or "unified"
    # only the top-level status refuses calls: a window alone may run past its cap while the
    # subscription still serves (the CLI's own description of unifiedWindows); a window of one
    # model family is known only from a refusal of that family, which later answers for other
    # models (status allowed) do not lift
    rejected = {
        name: w.resets_at
        for name, w in state.windows.items()
        if w.status == "rejected"
        and w.resets_at is not None
        and w.resets_at > now
        and _meters(name, model)
        and (state.status == "rejected" or name in MODEL_WINDOWS)
    }
    if state.status == "rejected":
        if state.resets_at is not None and state.resets_at > now and _meters(rep, model):
            rejected.setdefault(rep if rep != "overage" else "unified", state.resets_at)
    overage_open = state.overage_status in _OPEN
    if not rejected:
        if state.using_overage and not allow_overage and state.resets_at is not None and state.resets_at > now:
            return Block(rep, state.resets_at, "overage")
        return None
    if overage_open and allow_overage:
        return None
    name = rep if rep in rejected else max(rejected, key=lambda k: rejected[k] or 0.0)
    until = max(t for t in rejected.values() if t is not None)
    return Block(name, until, "overage" if overage_open else "rejected")


def slow(state: QuotaState | None, slowdown_at: float, *, now: float | None = None) -> float | None:
    """The utilization when it is at or above ``slowdown_at`` (1.0 or more turns this off)."""
    if state is None or slowdown_at >= 1.0:
        return None
    util = state.max_utilization(time.time() if now is None else now)
    return util if util is not None and util >= slowdown_at else None


def exhausted_error(block: Block, account: str, model: str, *, now: float | None = None) -> QuotaExhausted:
    """The typed error for a call the quota stops (``retry_after`` = seconds to the reset)."""
    now = time.time() if now is None else now
    return QuotaExhausted(
        block.message(account),
        hint="background tasks can wait for the reset or fall back: see claude.on_quota_exhausted (docs/claude.md)",
        provider="max",
        model=model,
        retry_after=max(block.until - now, 0.0),
        window=block.window,
        resets_at=block.until,
    )


def quota_report(states: Mapping[str, QuotaState], allow_overage: bool, slowdown_at: float) -> list[dict[str, Any]]:
    """Each account's state with what it means now (``GET /v1/usage/quota``, ``llm-call quota``):
    ``resets_in_s`` per window, ``blocked`` (window, until, reason, and ``models``: the one
    model family it blocks, or None for all) and ``slowed``. ``reset``
    (per window, and for the account's ``status``): its reset has passed since the reading, so
    the figures are from the window before (the next call reports the new one)."""
    now = time.time()
    rows = []
    for account in sorted(states):
        state = states[account]
        row = state.to_dict()
        row["reset"] = state.resets_at is not None and state.resets_at <= now
        for w in row["windows"].values():
            w["resets_in_s"] = None if w["resets_at"] is None else max(w["resets_at"] - now, 0.0)
            w["reset"] = w["resets_at"] is not None and w["resets_at"] <= now
        block = block_of(state, allow_overage=allow_overage, now=now)
        row["blocked"] = None
        if block is not None:
            # only one model family's calls when no window of all models blocks ("opus")
            only = None if block_of(state, allow_overage=allow_overage, now=now, model="") else MODEL_WINDOWS.get(block.window)
            row["blocked"] = {"window": block.window, "until": block.until, "reason": block.reason, "models": only}
        row["slowed"] = slow(state, slowdown_at, now=now) is not None
        rows.append(row)
    return rows


# -- shared state -----------------------------------------------------------------------------


class MetaStore(Protocol):
    """The part of a task store the quota state lives in (SQLite and Redis stores have it)."""

    async def put_meta(self, key: str, value: dict[str, Any]) -> None: ...

    async def read_meta(self, prefix: str) -> dict[str, dict[str, Any]]: ...


class QuotaBook:
    """Quota state per account: an in-process cache in front of the attached task stores."""

    def __init__(self) -> None:
        self._states: dict[str, QuotaState] = {}
        self._stores: list[tuple[MetaStore, asyncio.AbstractEventLoop]] = []
        self._writes: set[asyncio.Task[None]] = set()

    def get(self, account: str) -> QuotaState | None:
        return self._states.get(account)

    def all(self) -> dict[str, QuotaState]:
        return dict(self._states)

    def clear(self) -> None:
        """Forget everything known in this process (tests; stores keep theirs)."""
        self._states.clear()

    def attach(self, store: MetaStore) -> None:
        """Write every new state to ``store`` too (from tasks on the current event loop)."""
        loop = asyncio.get_running_loop()
        if not any(s is store for s, _ in self._stores):
            self._stores.append((store, loop))

    def detach(self, store: MetaStore) -> None:
        self._stores = [(s, lp) for s, lp in self._stores if s is not store]

    def observe(self, info: Mapping[str, Any], account: str) -> QuotaState:
        """Take a ``rate_limit_info`` dict: update the state and write it to the stores."""
        state = parse_rate_limit_info(info, account, self._states.get(account))
        self._states[account] = state
        self._persist(state)
        return state

    def _persist(self, state: QuotaState) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for store, store_loop in self._stores:
            if store_loop is loop and not loop.is_closed():
                task = loop.create_task(self._write(store, state))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    @staticmethod
    async def _write(store: MetaStore, state: QuotaState) -> None:
        try:
            await store.put_meta(META_PREFIX + state.account, state.to_dict())
        except Exception:  # the in-process state is kept; other processes see it later
            _log.warning("storing the Claude quota state failed", exc_info=True)

    async def flush(self) -> None:
        """Wait until the states observed so far are written to the stores of this loop."""
        loop = asyncio.get_running_loop()
        pending = [t for t in self._writes if t.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def merge(self, data: Mapping[str, Any]) -> QuotaState:
        """Take a stored state unless this process knows a newer one."""
        state = QuotaState.from_dict(data)
        mine = self._states.get(state.account)
        if mine is None or mine.updated_at < state.updated_at:
            self._states[state.account] = state
            return state
        return mine

    async def refresh(self, store: MetaStore | None = None) -> dict[str, QuotaState]:
        """Read the states other processes stored (``store``, else the attached ones)."""
        loop = asyncio.get_running_loop()
        stores = [store] if store is not None else [s for s, lp in self._stores if lp is loop]
        for s in stores:
            for value in (await s.read_meta(META_PREFIX)).values():
                self.merge(value)
        return self.all()


#: the process-wide quota book
QUOTA = QuotaBook()


def record_rate_limit_event(line: Mapping[str, Any], account: str = "default") -> QuotaState | None:
    """Update the quota state from one CLI line ``{"type": "rate_limit_event", ...}`` (or its
    ``rate_limit_info`` dict alone). Returns the new state; None if the line carries none.

    Every driver of the CLI calls this for each such line (the one-shot path through the SDK's
    ``RateLimitEvent.rate_limit_info.raw``, a pooled process from the raw line)."""
    info = line.get("rate_limit_info", line) if line.get("type") in (None, "rate_limit_event") else None
    if not isinstance(info, Mapping) or "status" not in info:
        return None
    state = QUOTA.observe(info, account)
    emit(
        "quota",
        account=account,
        status=state.status,
        window=state.representative,
        utilization=state.max_utilization(time.time()),
        resets_at=state.resets_at,
    )
    return state


# -- admission before a call ----------------------------------------------------------------------

_slow_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


class Admission:
    """A call admitted by :func:`admit`; ``release()`` when it ends (idempotent)."""

    __slots__ = ("_gate",)

    def __init__(self, gate: asyncio.Semaphore | None) -> None:
        self._gate = gate

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()


async def admit(cfg: ClaudeConfig, model: str, deadline: float | None = None) -> Admission:
    """Check the account's quota before a ``max/*`` call (see the module docstring).

    Raises :class:`QuotaExhausted` when the call must not go; above ``slowdown_at`` waits for
    one of ``slowdown_concurrency`` slots (per event loop), until ``deadline`` (``loop.time()``,
    the call's timeout) at most: then :class:`ProviderTimeout`. ``release()`` the result afterwards.
    """
    account = cfg.account
    block = block_of(QUOTA.get(account), allow_overage=cfg.allow_overage, model=model)
    if block is not None:
        emit("quota_blocked", window=block.window, until=block.until, reason=block.reason)
        raise exhausted_error(block, account, model)
    util = slow(QUOTA.get(account), cfg.slowdown_at)
    if util is None:
        return Admission(None)
    gates = _slow_gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(account)
    if gate is None:
        gate = gates[account] = asyncio.Semaphore(cfg.slowdown_concurrency)
    emit("quota_slowdown", utilization=util, slowdown_at=cfg.slowdown_at, concurrency=cfg.slowdown_concurrency)
    try:
        async with asyncio.timeout_at(deadline):
            await gate.acquire()
    except TimeoutError:
        raise ProviderTimeout(
            f"no max/* slot within the call's timeout: the subscription's utilization ({util:.0%}) is above "
            f"claude.slowdown_at ({cfg.slowdown_at}), where at most {cfg.slowdown_concurrency} call(s) run at once",
            hint="raise timeout=, claude.slowdown_at or claude.slowdown_concurrency",
            provider="max",
            model=model,
        ) from None
    admission = Admission(gate)
    block = block_of(QUOTA.get(account), allow_overage=cfg.allow_overage, model=model)  # it may have changed meanwhile
    if block is not None:
        admission.release()
        emit("quota_blocked", window=block.window, until=block.until, reason=block.reason)
        raise exhausted_error(block, account, model)
    return admission
