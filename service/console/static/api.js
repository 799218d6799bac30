// The gateway's public HTTP API, called with the signed-in key as a Bearer token; the key lives
// in this tab's sessionStorage only (never a cookie, never a URL).
const STORAGE = "maas.apiKey";

// The gateway's root: the console is served at <root>/console/, the API at <root>/v1/...
export const ROOT = location.pathname.slice(0, location.pathname.lastIndexOf("/console/"));

export const session = {
  get key() { return sessionStorage.getItem(STORAGE); },
  keep(key) { sessionStorage.setItem(STORAGE, key); },
  forget() { sessionStorage.removeItem(STORAGE); },
};

export class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

// One call: JSON in (`json`) or a raw body (`body` + its Content-Type), JSON out unless `raw`.
export async function call(path, { method = "GET", json, body, contentType, raw = false } = {}) {
  const headers = { Authorization: `Bearer ${session.key}` };
  const init = { method, headers, cache: "no-store", credentials: "omit" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
    // a FormData body gets its multipart Content-Type (with the boundary) from the browser
    if (!(body instanceof FormData)) headers["Content-Type"] = contentType || "application/octet-stream";
  }
  const response = await fetch(ROOT + path, init);
  if (!response.ok) {
    let type = "http_error";
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = (await response.json()).error;
      type = error.type;
      message = error.message;
    } catch { /* not the gateway's JSON error shape: keep the status line */ }
    throw new ApiError(response.status, type, message);
  }
  return raw ? response : response.json();
}

// The Prometheus text of /metrics (no key needed) as {name: [{labels, value}]}.
export async function metrics() {
  const response = await fetch(ROOT + "/metrics", { cache: "no-store", credentials: "omit" });
  const found = {};
  if (!response.ok) return found;
  for (const line of (await response.text()).split("\n")) {
    const match = /^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})? (\S+)$/i.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    (found[match[1]] ||= []).push({ labels, value: Number(match[3]) });
  }
  return found;
}
