// llm_call dashboard: how task records, events, routes and quota become DOM (text only).
import { $, ago, el, pill, span, stamp } from "/ui/lib.js";

// -- task data -------------------------------------------------------------------------------

export function partText(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) {
    return content
      .map((p) => (p && typeof p.text === "string" ? p.text : p && p.type ? "[" + p.type + "]" : ""))
      .join(" ");
  }
  return content === null || content === undefined ? "" : JSON.stringify(content);
}

export function promptOf(task) {
  const req = task.request || {};
  if (typeof req.prompt === "string") return req.prompt;
  const msgs = Array.isArray(req.messages) ? req.messages : [];
  for (let i = msgs.length - 1; i >= 0; i--) {
    if (msgs[i] && msgs[i].role === "user") return partText(msgs[i].content);
  }
  return msgs.length ? partText(msgs[msgs.length - 1].content) : "";
}

export function modelOf(task) {
  const req = task.request || {};
  return String(req.model || task.route || "");
}

export function attemptsOf(task) {
  const fromResult = task.result && Array.isArray(task.result.attempts) ? task.result.attempts : null;
  const fields = task.error && task.error.fields;
  const fromError = fields && Array.isArray(fields.attempts) ? fields.attempts : null;
  return fromResult || fromError || [];
}

export function progressText(task) {
  const p = task.progress || {};
  const bits = [];
  if (task.status === "running" || task.status === "queued") {
    const w = waitingText(task);
    if (w) return w;
    if (p.last) bits.push(String(p.last).replace("_", " "));
    if (p.chars) bits.push(p.chars + " chars");
    if (p.model && p.model !== modelOf(task)) bits.push("on " + p.model);
  } else if (task.status === "succeeded" && task.result) {
    bits.push((task.result.text || "").length + " chars");
    if (task.result.latency_s) bits.push(span(task.result.latency_s));
  } else if (task.error) {
    bits.push(String(task.error.type || "error"));
  }
  return bits.join(" · ");
}

// a max/* task waiting for the Claude quota to reset (progress.waiting): why, and when it may start
export function waitingText(task) {
  const w = task.progress && task.progress.waiting;
  if (!w || typeof w !== "object" || (task.status !== "queued" && task.status !== "running")) return "";
  return "waiting for the Claude quota" + (w.window ? " (" + String(w.window) + ")" : "") + (w.until ? " until " + stamp(Number(w.until)) : "");
}

export function attemptCount(task) {
  const n = attemptsOf(task).filter((a) => a && a.kind !== "judge").length || (task.progress && task.progress.attempt) || 0;
  return task.attempts > 1 ? n + " (run " + task.attempts + ")" : String(n);
}

// -- one task's page -------------------------------------------------------------------------

export function metaItem(label, value) {
  return el("div", null, el("dt", { text: label }), el("dd", { text: value === "" || value == null ? "—" : value }));
}

export function renderMeta(task) {
  const p = task.progress || {};
  const items = [
    metaItem("model", modelOf(task)),
    metaItem("route", task.route || ""),
    metaItem("created", ago(task.created_at) + (task.created_at ? " (" + stamp(task.created_at) + ")" : "")),
    metaItem("started", task.started_at ? ago(task.started_at) : ""),
    metaItem(
      "finished",
      task.finished_at ? ago(task.finished_at) + (task.started_at ? " after " + span(task.finished_at - task.started_at) : "") : "",
    ),
    metaItem("executions", String(task.attempts || 0)),
    metaItem("priority", String(task.priority || 0)),
    metaItem("progress", [p.last, p.attempt ? "attempt " + p.attempt : "", p.chars ? p.chars + " chars" : ""].filter(Boolean).join(" · ")),
  ];
  const waiting = waitingText(task);
  if (waiting) items.push(metaItem("waiting", waiting));
  if (task.idempotency_key) items.push(metaItem("idempotency key", task.idempotency_key));
  $("t-meta").replaceChildren(...items);
}

export function renderPrompt(task) {
  const req = task.request || {};
  const msgs = Array.isArray(req.messages) ? req.messages : [{ role: "user", content: req.prompt || "" }];
  $("t-prompt").replaceChildren(
    ...msgs.map((m) =>
      el("div", { cls: "msg" }, el("div", { cls: "role", text: (m && m.role) || "" }), el("pre", { cls: "text", text: partText(m && m.content) })),
    ),
  );
}

export function renderOutcome(task) {
  const box = $("t-outcome");
  if (task.status === "succeeded" && task.result) {
    const r = task.result;
    const parts = [el("h3", null, pill("succeeded"), el("span", { cls: "muted", text: [r.model, span(r.latency_s)].filter(Boolean).join(" · ") }))];
    parts.push(el("pre", { cls: "text", id: "t-result-text", text: r.text || "" }));
    if (r.parsed !== undefined && r.parsed !== null) parts.push(el("pre", { cls: "text", text: JSON.stringify(r.parsed, null, 2) }));
    box.replaceChildren(el("div", { cls: "card good" }, ...parts));
  } else if (task.error) {
    const e = task.error;
    const parts = [el("h3", null, pill(task.status), el("span", { cls: "mono", id: "t-error-type", text: e.type || "error" }))];
    parts.push(el("p", { text: e.message || "" }));
    if (e.hint) parts.push(el("p", { cls: "muted", text: "hint: " + e.hint }));
    box.replaceChildren(el("div", { cls: "card bad" }, ...parts));
  } else if (task.status === "cancelled") {
    box.replaceChildren(el("div", { cls: "card bad" }, el("h3", null, pill("cancelled"), el("span", { text: "cancelled before an answer" }))));
  } else {
    box.replaceChildren(el("p", { cls: "muted", text: "not finished yet (" + task.status.replace("_", " ") + ")" }));
  }
}

export function renderAttempts(task) {
  const attempts = attemptsOf(task);
  if (!attempts.length) {
    $("t-attempts").replaceChildren(el("p", { cls: "muted", text: "no attempt record yet" }));
    return;
  }
  $("t-attempts").replaceChildren(
    ...attempts.map((a) => {
      const ok = !!a.ok;
      const head = el(
        "h3",
        null,
        el("span", { text: "#" + a.number }),
        el("span", { cls: "mono", text: a.model || "" }),
        el("span", { cls: "muted", text: a.kind || "answer" }),
        pill(ok ? "succeeded" : a.error ? "failed" : "needs_review"),
        el("span", { cls: "muted", text: span(a.latency_s) }),
      );
      head.lastElementChild.previousElementSibling.textContent = ok ? "accepted" : a.error ? "error" : "rejected";
      const parts = [head];
      if (a.text) parts.push(el("pre", { cls: "text", text: a.text }));
      if (a.error) parts.push(el("p", { cls: "error", text: (a.error.type || "error") + ": " + (a.error.message || "") }));
      if (Array.isArray(a.verdicts) && a.verdicts.length) {
        parts.push(
          el(
            "ul",
            { cls: "verdicts" },
            ...a.verdicts.map((v) =>
              el("li", { cls: v.ok ? "ok" : "fail", text: (v.validator || "validator") + ": " + (v.ok ? "passed" : "failed") + (v.feedback ? " — " + v.feedback : "") }),
            ),
          ),
        );
      }
      if (a.feedback) parts.push(el("div", { cls: "feedback" }, el("strong", { text: "feedback sent back: " }), a.feedback));
      return el("div", { cls: "card " + (ok ? "good" : "bad") }, ...parts);
    }),
  );
}

export function renderReview(task) {
  const inReview = task.status === "needs_review";
  $("t-review").hidden = !inReview;
  if (!inReview) return;
  const fields = (task.error && task.error.fields) || {};
  const errors = Array.isArray(fields.errors) ? fields.errors : [];
  $("t-review-errors").replaceChildren(...errors.map((e) => el("li", { cls: "error", text: String(e) })));
}

export function eventSummary(kind, data) {
  const d = data || {};
  if (kind === "chunk") return [d.chars ? d.chars + " chars" : "", d.tokens ? d.tokens + " tokens" : ""].filter(Boolean).join(" · ");
  if (kind === "validation_failed") return "attempt " + (d.attempt || "?") + (d.model ? " on " + d.model : "") + ": " + (d.feedback || "");
  if (kind === "attempt") return "#" + (d.number || "?") + " " + (d.model || "");
  if (kind === "retry_wait") return "wait " + span(d.delay) + " after " + (d.reason || "") + (d.model ? " on " + d.model : "");
  if (kind === "escalated" || kind === "fallback") return (d.from_model || "?") + " → " + (d.to_model || "?");
  if (d.error && typeof d.error === "object") return (d.error.type || "error") + ": " + (d.error.message || "");
  const text = JSON.stringify(d);
  return text === "{}" ? "" : text.length > 300 ? text.slice(0, 300) + "…" : text;
}

export function eventItem(event) {
  return el(
    "li",
    { "data-kind": event.kind },
    el("span", { cls: "seq", text: event.seq }),
    el("span", { cls: "kind", text: String(event.kind).replace("_", " ") }),
    el("span", { cls: "data", text: eventSummary(event.kind, event.data) }),
    el("span", { cls: "when", text: event.at ? new Date(event.at * 1000).toLocaleTimeString() : "", title: stamp(event.at) }),
  );
}

// -- Routes page -------------------------------------------------------------------------------

export function limitText(limit) {
  return limit ? limit.max + (limit.pattern ? " (" + limit.pattern + ")" : "") : "—";
}

export function renderRoutes(data) {
  const rows = (data.routes || []).map((r) => {
    const b = r.breaker_detail || {};
    return el(
      "tr",
      { "data-route": r.route || r.breaker || "" },
      el("td", { cls: "mono", text: r.route || "—" }),
      el("td", { cls: "mono small", text: r.breaker || "—" }),
      el("td", null, pill(r.state)),
      el("td", { cls: "num", text: r.running }),
      el("td", { cls: "num", text: r.queued }),
      el("td", { cls: "small", text: limitText(r.limit) }),
      el("td", { cls: "small", text: limitText(r.queue_limit) }),
      el("td", { cls: "num", text: b.consecutive_failures !== undefined ? b.consecutive_failures + " / " + b.threshold : "—" }),
      el("td", { cls: "small", text: b.retry_in !== undefined && b.retry_in !== null ? span(b.retry_in) : "—" }),
    );
  });
  $("route-rows").replaceChildren(...rows);
  $("routes-note").textContent =
    (rows.length ? "" : "No route has tasks, limits or a circuit breaker yet. ") +
    (data.truncated ? "Counts are a floor: more than 1000 tasks in one status." : "");
}

export function notAvailable(box, what) {
  box.replaceChildren(el("p", { cls: "muted", text: what + " not available on this server." }));
}

export function windowRow(name, w) {
  const util = Number(w.utilization);
  const meter = el("meter", { min: 0, max: 1, low: 0.7, high: 0.9, optimum: 0 });
  meter.value = Number.isFinite(util) ? util : 0;
  const bits = [Number.isFinite(util) ? Math.round(util * 100) + "% used" : "utilization unknown"];
  if (w.status) bits.push(String(w.status).replace(/_/g, " "));
  if (w.resets_in_s !== null && w.resets_in_s !== undefined) bits.push("resets in " + span(w.resets_in_s));
  else if (w.resets_at) bits.push("resets " + stamp(w.resets_at));
  return [el("strong", { text: name.replace(/_/g, " ") }), el("span", { "data-window": name }, meter, " " + bits.join(" · "))];
}

export function renderQuota(data) {
  const box = $("quota");
  const accounts = Array.isArray(data.accounts) ? data.accounts : [];
  if (!accounts.length) {
    box.replaceChildren(el("p", { cls: "muted", text: "No quota reported yet: no max/* call in subscription mode since the store was created." }));
    return;
  }
  box.replaceChildren(
    ...accounts.map((a) => {
      const head = el("h3", null, el("span", { text: "account " + (a.account || "default") }), pill(a.status || "none"));
      if (a.blocked) head.append(el("span", { cls: "error", text: "blocked (" + (a.blocked.reason || a.blocked.window || "") + ")" }));
      else if (a.slowed) head.append(el("span", { cls: "muted", text: "slowed down" }));
      if (a.updated_at) head.append(el("span", { cls: "muted", text: "seen " + ago(a.updated_at) }));
      const windows = Object.entries(a.windows || {}).flatMap(([name, w]) => windowRow(name, w || {}));
      return el("div", { cls: "account", "data-account": a.account || "default" }, head, el("div", { cls: "kv" }, ...windows));
    }),
  );
}

export function renderPool(data) {
  const box = $("pool");
  const limit = Number(data.size_limit) || 0;
  const head = el("h3", null, el("span", { text: "max/* warm processes" }), pill(data.enabled ? "on" : "off"));
  if (!data.enabled) {
    box.replaceChildren(head, el("p", { cls: "muted", text: "The pool is off (claude.pool_size = 0): every max/* call starts a CLI of its own." }));
    return;
  }
  const reasons = Object.entries(data.replaced_by_reason || {}).map(([k, n]) => k.replace(/_/g, " ") + " " + n);
  const rows = [
    ["size", (Number(data.processes) || 0) + " of " + limit + " processes"],
    ["idle / busy", (Number(data.idle) || 0) + " idle · " + (Number(data.busy) || 0) + " busy"],
    ["started", String(Number(data.started) || 0)],
    ["replaced", (Number(data.replaced) || 0) + (reasons.length ? " (" + reasons.join(", ") + ")" : "")],
    ["calls served", String(Number(data.calls) || 0)],
    ["memory", (Number(data.rss_mb) || 0).toFixed(1) + " MB"],
  ];
  const kv = rows.flatMap(([name, text]) => [el("strong", { text: name }), el("span", { "data-pool": name, text })]);
  box.replaceChildren(head, el("div", { cls: "kv" }, ...kv));
}
