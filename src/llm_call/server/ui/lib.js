// llm_call dashboard: DOM helpers (text only), times, and the API client (JSON and SSE).
// Every piece of server data goes into the page through textContent (el()), never innerHTML.

export const KEY_NAME = "llm_call.api_key";
export const $ = (id) => document.getElementById(id);

// -- DOM helpers (text only) -------------------------------------------------------------------

export function el(tag, props, ...children) {
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

export function pill(status) {
  const s = status === null || status === undefined ? "none" : String(status);
  return el("span", { cls: "pill s-" + s.replace(/[^a-z_-]/gi, ""), text: s.replace("_", " ") });
}

export function setPill(node, status) {
  const fresh = pill(status);
  node.className = fresh.className;
  node.textContent = fresh.textContent;
}

// -- time --------------------------------------------------------------------------------------

export function ago(epochSeconds) {
  if (!epochSeconds) return "";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 5) return "just now";
  if (s < 60) return Math.floor(s) + " s ago";
  if (s < 3600) return Math.floor(s / 60) + " min ago";
  if (s < 86400) return Math.floor(s / 3600) + " h ago";
  return Math.floor(s / 86400) + " d ago";
}

export function span(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Number(seconds));
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

export function stamp(epochSeconds) {
  return epochSeconds ? new Date(epochSeconds * 1000).toLocaleString() : "";
}

// -- the API -----------------------------------------------------------------------------------

export class AuthError extends Error {}
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(key) {
  const k = key === undefined ? sessionStorage.getItem(KEY_NAME) : key;
  return k ? { Authorization: "Bearer " + k } : {};
}

export async function api(path, options = {}) {
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
export async function followEvents(taskId, after, onEvent, signal) {
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
