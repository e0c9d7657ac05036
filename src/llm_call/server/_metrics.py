"""Prometheus metrics (``GET /metrics``), on a registry of their own per app.

Per request (recorded by the gateway middleware): count and latency histogram by route template,
method and status. Per answer: tokens, cost, retries and validation failures by answering model;
upstream errors by llm_call error type. At scrape time: circuit breaker states (from
``llm_call.health()`` when the retry layer provides it), tasks by status and the queue depth
(from the task manager), the Claude subscription's quota per account and window, and the warm
``max/*`` CLI pool (processes idle/busy, started, replaced by reason, calls, memory)
(utilization, status, reset time). Label children are cached, so recording a request is a dict lookup
plus an ``inc`` and an ``observe``.

Label values are bounded, whatever clients send (each new value is a new time series held
forever): ``model`` is a name from the configuration (an alias, an alias's model, the default
model) or else the route pattern the model resolved to (``openai/*``, ``max/*``, ``local/*``,
``ENDPOINT/*``), and ``other`` for anything else (LiteLLM provider names, unknown strings);
``method`` is a standard HTTP method or ``other``; ``route`` is a route template or ``unmatched``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..types import Response, TaskStatus, Usage

if TYPE_CHECKING:
    from ..config import Settings
    from ._middleware import RequestInfo

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_BREAKER_VALUES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
_QUOTA_STATUS = {"allowed": 0, "allowed_warning": 1, "rejected": 2}
_log = logging.getLogger("llm_call.server")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LABEL_CACHE_MAX = 1024
OTHER = "other"


class ModelLabels:
    """The ``model`` label of a model string: bounded (see the module docstring)."""

    def __init__(self, settings: Settings | None) -> None:
        self.settings = settings
        named: set[str] = set()
        if settings is not None:
            named.update(settings.aliases)
            named.update(a.model for a in settings.aliases.values())
            if settings.default_model:
                named.add(settings.default_model)
        self.named = frozenset(named)
        self._cache: dict[str, str] = {}

    def __call__(self, model: str | None) -> str:
        if not model:
            return OTHER
        label = self._cache.get(model)
        if label is None:
            label = self._label(model)
            if len(self._cache) >= _LABEL_CACHE_MAX:
                self._cache.clear()  # the cache is bounded too
            self._cache[model] = label
        return label

    def _label(self, model: str) -> str:
        if model in self.named or self.settings is None:
            return model if model in self.named else OTHER
        from ..errors import LLMCallError
        from ..providers.router import resolve

        try:
            route = resolve(model, self.settings)
        except LLMCallError:
            return OTHER
        if route.kind == "litellm":
            return OTHER
        prefix = route.endpoint if route.kind == "endpoint" and route.endpoint else route.kind
        return f"{prefix}/*"


class ServerMetrics:
    """The server's metrics; ``render()`` gives the Prometheus text format."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.model_label = ModelLabels(settings)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "llm_call_http_requests", "HTTP requests served", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "llm_call_http_request_duration_seconds",
            "Time from request to the last byte of the response",
            ["route", "method", "status"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("llm_call_http_requests_in_flight", "HTTP requests being served", registry=r)
        # by key (key1, admin1, anonymous: bounded by the config) so that an operator sees who used
        # what, the Claude subscription's windows above all
        self.tokens = Counter("llm_call_tokens", "Tokens used by answers", ["model", "type", "key"], registry=r)
        self.cost = Counter("llm_call_cost_usd", "Cost of answers in US dollars", ["model", "key"], registry=r)
        self.retries = Counter(
            "llm_call_retries", "Model calls beyond the first one for an answer", ["model"], registry=r
        )
        self.validation_failures = Counter(
            "llm_call_validation_failures", "Answers rejected by validation", ["model"], registry=r
        )
        self.upstream_errors = Counter(
            "llm_call_upstream_errors", "Calls that failed, by llm_call error type", ["type"], registry=r
        )
        self.breakers = Gauge(
            "llm_call_circuit_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)", ["route"], registry=r
        )
        self.tasks = Gauge("llm_call_tasks", "Background tasks by status", ["status"], registry=r)
        self.queue_depth = Gauge("llm_call_task_queue_depth", "Background tasks waiting to run", registry=r)
        self.quota_utilization = Gauge(
            "llm_call_claude_quota_utilization", "Claude subscription usage window utilization (0..1)",
            ["account", "window"], registry=r,
        )
        self.quota_status = Gauge(
            "llm_call_claude_quota_status", "Claude subscription status (0 allowed, 1 warning, 2 rejected)",
            ["account", "window"], registry=r,
        )
        self.quota_resets = Gauge(
            "llm_call_claude_quota_resets_at_seconds", "When the usage window resets (Unix time)",
            ["account", "window"], registry=r,
        )
        self.pool_processes = Gauge(
            "llm_call_claude_pool_processes", "Warm Claude CLI processes in the max/* pool, by state", ["state"], registry=r
        )
        self.pool_started = Gauge(
            "llm_call_claude_pool_started", "Claude CLI processes started for the pool so far", registry=r
        )
        self.pool_replaced = Gauge(
            "llm_call_claude_pool_replaced", "Pooled Claude CLI processes replaced so far, by reason", ["reason"], registry=r
        )
        self.pool_calls = Gauge("llm_call_claude_pool_calls", "Calls served by pooled Claude CLI processes so far", registry=r)
        self.pool_rss = Gauge("llm_call_claude_pool_rss_bytes", "Memory (RSS) of the pooled Claude CLI processes", registry=r)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._token_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in _METHODS:
            method = OTHER
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            s = str(status)
            pair = (self.requests.labels(route, method, s), self.latency.labels(route, method, s))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def observe_response(self, response: Response, info: RequestInfo) -> None:
        """An answer given to ``info``'s caller: its tokens and cost (by key, also on the request's
        log line) and its retries."""
        model = self.model_label(response.model)
        self.observe_usage(model, response.usage, info)
        if response.cost_usd:
            info.cost_usd = response.cost_usd
            self.cost.labels(model, info.key_id).inc(response.cost_usd)
        self.observe_attempts(model, response.attempts)

    def observe_usage(self, model: str, usage: Usage | None, info: RequestInfo) -> None:
        if usage is None:
            return
        info.usage = usage
        model = self.model_label(model)
        pair = self._token_children.get((model, info.key_id))
        if pair is None:
            pair = self._token_children[model, info.key_id] = (
                self.tokens.labels(model, "prompt", info.key_id),
                self.tokens.labels(model, "completion", info.key_id),
            )
        if usage.prompt_tokens:
            pair[0].inc(usage.prompt_tokens)
        if usage.completion_tokens:
            pair[1].inc(usage.completion_tokens)

    def observe_attempts(self, model: str, attempts: list[Any] | None) -> None:
        if not attempts:
            return
        model = self.model_label(model)
        calls = 0  # answer attempts and failed provider calls (judge calls are not retries)
        rejected = 0
        for a in attempts:
            if isinstance(a, dict):
                kind, ok, error = a.get("kind", "answer"), a.get("ok"), a.get("error")
            else:
                kind, ok, error = a.kind, a.ok, a.error
            if kind == "judge":
                continue
            calls += 1
            if kind == "answer" and not ok and not error:
                rejected += 1
        if calls > 1:
            self.retries.labels(model).inc(calls - 1)
        if rejected:
            self.validation_failures.labels(model).inc(rejected)

    def observe_error(self, exc: BaseException) -> None:
        self.upstream_errors.labels(type(exc).__name__).inc()
        attempts = getattr(exc, "attempts", None)
        if isinstance(attempts, list):
            self.observe_attempts(getattr(exc, "model", None) or "unknown", attempts)

    def refresh_breakers(self) -> None:
        try:
            import llm_call
        except ImportError:  # pragma: no cover - we are inside it
            return
        health = getattr(llm_call, "health", None)
        if not callable(health):
            return
        try:
            data = health()
        except Exception:
            _log.exception("llm_call.health() failed; circuit breaker states not updated")
            return
        for route, state in _breaker_items(data):
            value = _BREAKER_VALUES.get(str(state).lower())
            if value is not None:
                self.breakers.labels(route).set(value)

    def set_quota(self, rows: list[dict[str, Any]]) -> None:
        """Gauges from ``GET /v1/usage/quota`` rows (window ``overall``: the account's status).
        A window whose reset has passed since its reading starts over: 0 and allowed."""
        for row in rows:
            account = str(row.get("account"))
            overall = 0 if row.get("reset") else _QUOTA_STATUS.get(str(row.get("status")), 0)
            self.quota_status.labels(account, "overall").set(overall)
            for name, w in (row.get("windows") or {}).items():
                if w.get("reset"):
                    self.quota_utilization.labels(account, name).set(0.0)
                elif w.get("utilization") is not None:
                    self.quota_utilization.labels(account, name).set(w["utilization"])
                if w.get("resets_at") is not None:
                    self.quota_resets.labels(account, name).set(w["resets_at"])
                status = 0 if w.get("reset") else _QUOTA_STATUS.get(str(w.get("status")), 0)
                self.quota_status.labels(account, name).set(status)

    def set_claude_pool(self, pool: dict[str, Any]) -> None:
        """Gauges from ``llm_call.providers.claude_cli.pool_state()``."""
        self.pool_processes.labels("idle").set(pool.get("idle", 0))
        self.pool_processes.labels("busy").set(pool.get("busy", 0))
        self.pool_started.set(pool.get("started", 0))
        self.pool_calls.set(pool.get("calls", 0))
        self.pool_rss.set(float(pool.get("rss_mb", 0.0)) * 1024 * 1024)
        for reason, n in (pool.get("replaced_by_reason") or {}).items():
            self.pool_replaced.labels(str(reason)).set(n)

    def set_tasks(self, counts: dict[str, int], queue_depth: int) -> None:
        for status in TaskStatus:
            self.tasks.labels(status.value).set(counts.get(status.value, 0))
        self.queue_depth.set(queue_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _breaker_items(data: Any) -> list[tuple[str, Any]]:
    """(route, state) pairs from whatever ``llm_call.health()`` returns (dict or object)."""
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    if not isinstance(data, dict):
        return []
    breakers = data.get("breakers", data.get("circuit_breakers", data.get("routes", data)))
    items: list[tuple[str, Any]] = []
    if isinstance(breakers, dict):
        for route, info in breakers.items():
            state = info.get("state") if isinstance(info, dict) else getattr(info, "state", info)
            items.append((str(route), state))
    elif isinstance(breakers, list):
        for info in breakers:
            if isinstance(info, dict) and "route" in info:
                items.append((str(info["route"]), info.get("state")))
    return items
