// llm_call dashboard: a plain client of the server's JSON and SSE APIs.
// Rules: every piece of server data goes into the page through textContent (the el() helper),
// never innerHTML; nothing is fetched from another origin; the API key lives in sessionStorage.
"use strict";

(() => {
  const KEY_NAME = "llm_call.api_key";
  const PAGE_SIZE = 50;
  const LIST_EVERY_MS = 1000;
  const ROUTES_EVERY_MS = 2000;
  const ACTIVE = new Set(["queued", "running", "needs_review"]);

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers (text only) -------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [name, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (name === "text") node.textContent = String(value);
        else if (name === "cls") node.className = value;
        else if (name === "href") node.setAttribute("href", value);
        else if (name === "title") node.title = String(value);
        else node.setAttribute(name, String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child)); // strings become text nodes
    }
    return node;
  }

  function pill(status) {
    const s = status === null || status === undefined ? "none" : String(status);
    return el("span", { cls: "pill s-" + s.replace(/[^a-z_-]/gi, ""), text: s.replace("_", " ") });
  }

  function setPill(node, status) {
    const fresh = pill(status);
    node.className = fresh.className;
    node.textContent = fresh.textContent;
  }

  // -- time --------------------------------------------------------------------------------------

  function ago(epochSeconds) {
    if (!epochSeconds) return "";
    const s = Math.max(0, Date.now() / 1000 - epochSeconds);
    if (s < 5) return "just now";
    if (s < 60) return Math.floor(s) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function span(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Number(seconds));
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 60) return s.toFixed(1) + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function stamp(epochSeconds) {
    return epochSeconds ? new Date(epochSeconds * 1000).toLocaleString() : "";
  }

  // -- the API -----------------------------------------------------------------------------------

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(key) {
    const k = key === undefined ? sessionStorage.getItem(KEY_NAME) : key;
    return k ? { Authorization: "Bearer " + k } : {};
  }

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...authHeaders(options.key) };
    const init = { method: options.method || "GET", headers, cache: "no-store", signal: options.signal };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    const response = await fetch(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (response.status === 401) throw new AuthError((data && data.error && data.error.message) || "API key refused");
    if (!response.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(response.status, err.message || response.statusText, err.code);
    }
    return data;
  }

  // Server-Sent Events over fetch (EventSource cannot send an Authorization header).
  async function followEvents(taskId, after, onEvent, signal) {
    const headers = { Accept: "text/event-stream", ...authHeaders() };
    const url = "/v1/tasks/" + encodeURIComponent(taskId) + "/events" + (after ? "?after=" + after : "");
    const response = await fetch(url, { headers, signal, cache: "no-store" });
    if (response.status === 401) throw new AuthError("API key refused");
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let kind = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) kind = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) {
          let parsed;
          try {
            parsed = JSON.parse(data.join("\n"));
          } catch (_) {
            continue;
          }
          onEvent(kind, parsed);
        }
      }
    }
  }

  // -- shell: login, navigation, connection state ------------------------------------------------

  const pages = ["login", "tasks", "task", "routes"];
  let stopCurrent = () => {};

  function show(name) {
    for (const p of pages) $("page-" + p).hidden = p !== name;
    $("nav-tasks").classList.toggle("on", name === "tasks" || name === "task");
    $("nav-routes").classList.toggle("on", name === "routes");
    $("forget-key").hidden = !sessionStorage.getItem(KEY_NAME);
  }

  function setConn(ok, text) {
    const c = $("conn");
    c.className = "conn " + (ok ? "live" : "down");
    c.textContent = text;
  }

  function needKey(message) {
    stopCurrent();
    stopCurrent = () => {};
    show("login");
    setConn(false, "no key");
    $("login-error").textContent = message || "";
    $("key-input").focus();
  }

  function handleError(err) {
    if (err instanceof AuthError) {
      const had = sessionStorage.getItem(KEY_NAME);
      sessionStorage.removeItem(KEY_NAME);
      needKey(had ? "The saved key was refused; enter a valid key." : "");
      return true;
    }
    if (err && err.name === "AbortError") return true;
    setConn(false, "server unreachable, retrying");
    return false;
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    try {
      await api("/v1/tasks?limit=1", { key });
    } catch (err) {
      $("login-error").textContent =
        err instanceof AuthError ? "That key was refused by the server (401)." : "Could not check the key: " + err.message;
      return;
    }
    sessionStorage.setItem(KEY_NAME, key);
    $("key-input").value = "";
    $("login-error").textContent = "";
    route();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_NAME);
    needKey("");
  });

  function every(ms, fn) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      if (stopped) return;
      try {
        await fn();
      } catch (err) {
        if (handleError(err)) {
          if (err instanceof AuthError) return;
        }
      }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  function route() {
    stopCurrent();
    const hash = location.hash || "#/tasks";
    const task = hash.match(/^#\/task\/(.+)$/);
    if (task) {
      show("task");
      stopCurrent = taskPage(decodeURIComponent(task[1]));
    } else if (hash === "#/routes") {
      show("routes");
      stopCurrent = routesPage();
    } else {
      show("tasks");
      stopCurrent = tasksPage();
    }
  }

  window.addEventListener("hashchange", route);

  // -- task data -------------------------------------------------------------------------------

  function partText(content) {
    if (typeof content === "string") return content;
    if (Array.isArray(content)) {
      return content
        .map((p) => (p && typeof p.text === "string" ? p.text : p && p.type ? "[" + p.type + "]" : ""))
        .join(" ");
    }
    return content === null || content === undefined ? "" : JSON.stringify(content);
  }

  function promptOf(task) {
    const req = task.request || {};
    if (typeof req.prompt === "string") return req.prompt;
    const msgs = Array.isArray(req.messages) ? req.messages : [];
    for (let i = msgs.length - 1; i >= 0; i--) {
      if (msgs[i] && msgs[i].role === "user") return partText(msgs[i].content);
    }
    return msgs.length ? partText(msgs[msgs.length - 1].content) : "";
  }

  function modelOf(task) {
    const req = task.request || {};
    return String(req.model || task.route || "");
  }

  function attemptsOf(task) {
    const fromResult = task.result && Array.isArray(task.result.attempts) ? task.result.attempts : null;
    const fields = task.error && task.error.fields;
    const fromError = fields && Array.isArray(fields.attempts) ? fields.attempts : null;
    return fromResult || fromError || [];
  }

  function progressText(task) {
    const p = task.progress || {};
    const bits = [];
    if (task.status === "running" || task.status === "queued") {
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

  function attemptCount(task) {
    const n = attemptsOf(task).filter((a) => a && a.kind !== "judge").length || (task.progress && task.progress.attempt) || 0;
    return task.attempts > 1 ? n + " (run " + task.attempts + ")" : String(n);
  }

  // -- Tasks page --------------------------------------------------------------------------------

  const listState = { status: "", model: "", before: null, newer: [], nextBefore: null };
  const rowCache = new Map();
  let modelsLoaded = false;

  function taskRow(task) {
    let tr = rowCache.get(task.id);
    if (!tr) {
      tr = el("tr", { "data-id": task.id });
      const link = el("a", { href: "#/task/" + encodeURIComponent(task.id), cls: "mono", text: task.id });
      tr.append(el("td", null, link));
      for (const cls of ["", "", "small", "num", "small", "prompt"]) tr.append(el("td", { cls }));
      tr.children[1].append(pill(task.status));
      rowCache.set(task.id, tr);
    }
    const cells = tr.children;
    setPill(cells[1].firstChild, task.status);
    tr.dataset.status = task.status;
    const model = modelOf(task);
    const route = task.route && task.route !== model ? model + " → " + task.route : model;
    if (cells[2].textContent !== route) cells[2].textContent = route;
    cells[3].textContent = ago(task.created_at);
    cells[3].title = stamp(task.created_at);
    cells[4].textContent = attemptCount(task);
    cells[5].textContent = progressText(task);
    const prompt = promptOf(task);
    const preview = prompt.length > 160 ? prompt.slice(0, 160) + "…" : prompt;
    if (cells[6].textContent !== preview) {
      cells[6].textContent = preview;
      cells[6].title = prompt.slice(0, 2000);
    }
    return tr;
  }

  function listQuery() {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (listState.status) q.set("status", listState.status);
    if (listState.model) q.set("model", listState.model);
    if (listState.before) q.set("before", listState.before);
    return "/v1/tasks?" + q.toString();
  }

  async function loadModels() {
    if (modelsLoaded) return;
    modelsLoaded = true;
    try {
      const data = await api("/v1/models");
      const list = $("model-list");
      list.replaceChildren(...(data.data || []).map((m) => el("option", { value: m.id })));
    } catch (err) {
      if (err instanceof AuthError) throw err;
      modelsLoaded = false; // try again on the next visit
    }
  }

  function tasksPage() {
    const refresh = async () => {
      const data = await api(listQuery());
      const tasks = data.data || [];
      const rows = tasks.map(taskRow);
      $("task-rows").replaceChildren(...rows);
      if (rowCache.size > 2000) rowCache.clear();
      $("tasks-empty").hidden = tasks.length > 0;
      listState.nextBefore = data.has_more ? data.next_before : null;
      $("page-older").disabled = !listState.nextBefore;
      $("page-newer").disabled = listState.newer.length === 0;
      const page = listState.newer.length + 1;
      $("page-info").textContent = "page " + page + (tasks.length ? " · " + tasks.length + " shown" : "");
      setConn(true, "live · updated " + new Date().toLocaleTimeString());
      await loadModels();
    };
    const stop = every(LIST_EVERY_MS, refresh);
    pokeList = () => refresh().catch(handleError);
    return () => {
      stop();
      pokeList = () => {};
    };
  }

  let pokeList = () => {};

  function resetPaging() {
    listState.before = null;
    listState.newer = [];
  }

  $("status-filters").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-status]");
    if (!button) return;
    for (const b of $("status-filters").querySelectorAll("button")) b.classList.toggle("on", b === button);
    listState.status = button.dataset.status;
    resetPaging();
    pokeList();
  });

  let filterTimer = null;
  $("model-filter").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      listState.model = $("model-filter").value.trim();
      resetPaging();
      pokeList();
    }, 250);
  });

  $("page-older").addEventListener("click", () => {
    if (!listState.nextBefore) return;
    listState.newer.push(listState.before);
    listState.before = listState.nextBefore;
    pokeList();
  });

  $("page-newer").addEventListener("click", () => {
    if (!listState.newer.length) return;
    listState.before = listState.newer.pop();
    pokeList();
  });

  // -- one task's page -------------------------------------------------------------------------

  function metaItem(label, value) {
    return el("div", null, el("dt", { text: label }), el("dd", { text: value === "" || value == null ? "—" : value }));
  }

  function renderMeta(task) {
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
    if (task.idempotency_key) items.push(metaItem("idempotency key", task.idempotency_key));
    $("t-meta").replaceChildren(...items);
  }

  function renderPrompt(task) {
    const req = task.request || {};
    const msgs = Array.isArray(req.messages) ? req.messages : [{ role: "user", content: req.prompt || "" }];
    $("t-prompt").replaceChildren(
      ...msgs.map((m) =>
        el("div", { cls: "msg" }, el("div", { cls: "role", text: (m && m.role) || "" }), el("pre", { cls: "text", text: partText(m && m.content) })),
      ),
    );
  }

  function renderOutcome(task) {
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

  function renderAttempts(task) {
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

  function renderReview(task) {
    const inReview = task.status === "needs_review";
    $("t-review").hidden = !inReview;
    if (!inReview) return;
    const fields = (task.error && task.error.fields) || {};
    const errors = Array.isArray(fields.errors) ? fields.errors : [];
    $("t-review-errors").replaceChildren(...errors.map((e) => el("li", { cls: "error", text: String(e) })));
  }

  function eventSummary(kind, data) {
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

  function eventItem(event) {
    return el(
      "li",
      { "data-kind": event.kind },
      el("span", { cls: "seq", text: event.seq }),
      el("span", { cls: "kind", text: String(event.kind).replace("_", " ") }),
      el("span", { cls: "data", text: eventSummary(event.kind, event.data) }),
      el("span", { cls: "when", text: event.at ? new Date(event.at * 1000).toLocaleTimeString() : "", title: stamp(event.at) }),
    );
  }

  function taskPage(taskId) {
    let stopped = false;
    let current = null;
    let lastSeq = 0;
    const controller = new AbortController();
    $("t-id").textContent = taskId;
    $("t-events").replaceChildren();
    $("t-outcome").replaceChildren();
    $("t-attempts").replaceChildren();
    $("t-meta").replaceChildren();
    $("t-prompt").replaceChildren();
    $("t-review").hidden = true;
    $("t-review-msg").textContent = "";
    $("t-error-banner").hidden = true;
    $("t-status").textContent = "";

    const load = async () => {
      let task;
      try {
        task = await api("/v1/tasks/" + encodeURIComponent(taskId), { signal: controller.signal });
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          $("t-error-banner").textContent = "No task " + taskId + " (or not visible with this key).";
          $("t-error-banner").hidden = false;
          return;
        }
        throw err;
      }
      const first = current === null;
      current = task;
      setPill($("t-status"), task.status);
      $("t-cancel").disabled = !ACTIVE.has(task.status);
      renderMeta(task);
      if (first) renderPrompt(task);
      renderOutcome(task);
      renderAttempts(task);
      renderReview(task);
      setConn(true, "live · updated " + new Date().toLocaleTimeString());
    };

    let reloadTimer = null;
    const reloadSoon = () => {
      clearTimeout(reloadTimer);
      reloadTimer = setTimeout(() => load().catch(handleError), 150);
    };

    const stream = async () => {
      // follow the events; reconnect (from the last seq seen) while the task is not final
      while (!stopped) {
        $("t-live").textContent = "(streaming)";
        try {
          await followEvents(
            taskId,
            lastSeq,
            (kind, event) => {
              if (kind === "error") return;
              if (typeof event.seq === "number" && event.seq <= lastSeq) return;
              lastSeq = event.seq;
              $("t-events").append(eventItem(event));
              if (kind !== "chunk") reloadSoon();
            },
            controller.signal,
          );
        } catch (err) {
          if (handleError(err) && (err instanceof AuthError || err.name === "AbortError")) return;
        }
        if (stopped) return;
        $("t-live").textContent = "";
        await load().catch(handleError);
        if (current && !ACTIVE.has(current.status)) return;
        if (current && current.status === "needs_review") {
          reviewWake = () => {}; // a review restarts the stream
          await new Promise((resolve) => {
            reviewWake = resolve;
          });
        } else {
          await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      }
    };

    load()
      .then(stream)
      .catch(handleError);
    const stopPoll = every(5000, async () => {
      if (current && ACTIVE.has(current.status)) await load();
    });
    pokeTask = () => load().catch(handleError);
    currentTaskId = taskId;
    return () => {
      stopped = true;
      controller.abort();
      stopPoll();
      clearTimeout(reloadTimer);
      reviewWake();
      pokeTask = () => {};
      currentTaskId = null;
    };
  }

  let pokeTask = () => {};
  let reviewWake = () => {};
  let currentTaskId = null;

  $("t-cancel").addEventListener("click", async () => {
    if (!currentTaskId) return;
    $("t-cancel").disabled = true;
    try {
      await api("/v1/tasks/" + encodeURIComponent(currentTaskId) + "/cancel", { method: "POST", body: {} });
    } catch (err) {
      if (!handleError(err)) $("t-review-msg").textContent = "cancel failed: " + err.message;
    }
    pokeTask();
  });

  async function sendReview(body) {
    if (!currentTaskId) return;
    $("t-review-msg").textContent = "";
    try {
      await api("/v1/tasks/" + encodeURIComponent(currentTaskId) + "/review", { method: "POST", body });
    } catch (err) {
      if (!handleError(err)) $("t-review-msg").textContent = "review failed: " + err.message;
      return;
    }
    $("t-reply").value = "";
    pokeTask();
    reviewWake();
  }

  $("t-approve").addEventListener("click", () => sendReview({ approve: true }));
  $("t-reply-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const reply = $("t-reply").value.trim();
    if (reply) sendReview({ reply });
  });

  // -- Routes page -------------------------------------------------------------------------------

  function limitText(limit) {
    return limit ? limit.max + (limit.pattern ? " (" + limit.pattern + ")" : "") : "—";
  }

  function renderRoutes(data) {
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

  function notAvailable(box, what) {
    box.replaceChildren(el("p", { cls: "muted", text: what + " not available on this server." }));
  }

  function windowRow(name, w) {
    const util = Number(w.utilization);
    const meter = el("meter", { min: 0, max: 1, low: 0.7, high: 0.9, optimum: 0 });
    meter.value = Number.isFinite(util) ? util : 0;
    const bits = [Number.isFinite(util) ? Math.round(util * 100) + "% used" : "utilization unknown"];
    if (w.status) bits.push(String(w.status).replace(/_/g, " "));
    if (w.resets_in_s !== null && w.resets_in_s !== undefined) bits.push("resets in " + span(w.resets_in_s));
    else if (w.resets_at) bits.push("resets " + stamp(w.resets_at));
    return [el("strong", { text: name.replace(/_/g, " ") }), el("span", { "data-window": name }, meter, " " + bits.join(" · "))];
  }

  function renderQuota(data) {
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

  async function optional(path, box, what, render) {
    try {
      render(await api(path));
    } catch (err) {
      if (err instanceof AuthError) throw err;
      notAvailable(box, what);
    }
  }

  function routesPage() {
    return every(ROUTES_EVERY_MS, async () => {
      renderRoutes(await api("/v1/routes"));
      setConn(true, "live · updated " + new Date().toLocaleTimeString());
      await optional("/v1/usage/quota", $("quota"), "Subscription quota", renderQuota);
      // no endpoint reports the CLI pool yet: say so rather than guess a URL
      notAvailable($("pool"), "The Claude CLI pool state is");
    });
  }

  route();
})();
