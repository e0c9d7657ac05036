// llm_call dashboard: a plain client of the server's JSON and SSE APIs.
// Rules: every piece of server data goes into the page through textContent (the el() helper),
// never innerHTML; nothing is fetched from another origin; the API key lives in sessionStorage.
import { $, ApiError, AuthError, KEY_NAME, ago, api, el, followEvents, pill, setPill, span, stamp } from "/ui/lib.js";
import {
  attemptCount, eventItem, modelOf, notAvailable, progressText, promptOf, renderAttempts, renderMeta, renderOutcome,
  renderPool, renderPrompt, renderQuota, renderReview, renderRoutes,
} from "/ui/render.js";

(() => {
  const PAGE_SIZE = 50;
  const LIST_EVERY_MS = 1000;
  const ROUTES_EVERY_MS = 2000;
  const ACTIVE = new Set(["queued", "running", "needs_review"]);

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
      await optional("/v1/claude/pool", $("pool"), "The Claude CLI pool state is", renderPool);
    });
  }

  route();
})();
