// Small client for the vtrans REST API and its Server-Sent Events stream.
//
// The browser's EventSource cannot send an Authorization header, and the API keys of
// issue #5 travel as `Authorization: Bearer <key>`; so the stream is read with fetch()
// and parsed here, reconnecting with Last-Event-ID exactly like EventSource would.

const KEY_STORAGE = "vtrans.apiKey";

export function getApiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function authHeaders(extra = {}) {
  const key = getApiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

// Errors from the API are RFC 9457 problem+json; turn them into one readable sentence.
export class ApiError extends Error {
  constructor(status, problem) {
    const fields = (problem && problem.errors) || [];
    const detail = (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
    const extra = fields.map((e) => `${e.field}: ${e.message}`).join("; ");
    let message = extra && !detail.includes(extra) ? `${detail} (${extra})` : detail;
    if (status === 401) message += " - paste your API key in the box at the top right";
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

async function request(method, path, { json, form } = {}) {
  const init = { method, headers: authHeaders({ Accept: "application/json" }) };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser sets the multipart boundary itself
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text }; }
  if (!resp.ok) throw new ApiError(resp.status, body);
  return body;
}

// List endpoints may answer a bare list or an envelope; accept the usual envelope names.
export function itemsOf(body) {
  if (Array.isArray(body)) return body;
  if (!body) return [];
  for (const k of ["items", "data", "jobs", "results", "models", "datasets"]) {
    if (Array.isArray(body[k])) return body[k];
  }
  return [];
}

export function nextCursorOf(body) {
  if (!body || Array.isArray(body)) return null;
  return body.next_cursor || body.cursor || (body.next && body.next.cursor) || null;
}

export const api = {
  listJobs: (cursor, limit = 20) =>
    request("GET", `/v1/jobs?limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`),
  getJob: (id) => request("GET", `/v1/jobs/${encodeURIComponent(id)}`),
  createJob: (payload) => request("POST", "/v1/jobs", { json: payload }),
  cancelJob: (id) => request("POST", `/v1/jobs/${encodeURIComponent(id)}/cancel`),
  listArtifacts: (id) => request("GET", `/v1/jobs/${encodeURIComponent(id)}/artifacts`),
  listModels: () => request("GET", "/v1/models"),
  listDatasets: () => request("GET", "/v1/datasets"),
  listJobsOfModel: (modelId, limit = 20) =>
    request("GET", `/v1/jobs?limit=${limit}&model=${encodeURIComponent(modelId)}`),
  listModelVersions: (name) => request("GET", `/v1/models/${encodeURIComponent(name)}/versions`),
  listSchedules: () => request("GET", "/v1/schedules"),
  getSchedule: (id) => request("GET", `/v1/schedules/${encodeURIComponent(id)}`),
  createSchedule: (payload) => request("POST", "/v1/schedules", { json: payload }),
  pauseSchedule: (id) => request("POST", `/v1/schedules/${encodeURIComponent(id)}/pause`),
  resumeSchedule: (id) => request("POST", `/v1/schedules/${encodeURIComponent(id)}/resume`),
  deleteSchedule: (id) => request("DELETE", `/v1/schedules/${encodeURIComponent(id)}`),
  listScheduleRuns: (id, limit = 50) => request("GET", `/v1/schedules/${encodeURIComponent(id)}/runs?limit=${limit}`),
  uploadModel: (file) => upload("/v1/models", file),
  uploadDataset: (file) => upload("/v1/datasets", file),
  artifactUrl: (id, name) =>
    `/v1/jobs/${encodeURIComponent(id)}/artifacts/${name.split("/").map(encodeURIComponent).join("/")}`,
};

function upload(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  return request("POST", path, { form });
}

// Download through fetch so the Bearer key is sent; a plain link cannot carry it.
export async function downloadWithKey(url, filename) {
  const resp = await fetch(url, { headers: authHeaders() });
  if (!resp.ok) throw new ApiError(resp.status, await resp.json().catch(() => null));
  const blob = await resp.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// Parse one SSE block ("event: x\nid: 3\ndata: {...}") into {event, id, data} or null.
function parseBlock(block) {
  let event = "message", id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // comments are keep-alives
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length && id === null) return null;
  let parsed = data.join("\n");
  try { parsed = JSON.parse(parsed); } catch { /* keep raw text */ }
  return { event, id, data: parsed };
}

// Follow /v1/jobs/{id}/events until `end`. Calls onEvent({event, id, data}) and
// onState("live"|"reconnecting"|"ended"|"error: ..."). Returns {close()}.
export function followEvents(jobId, onEvent, onState = () => {}) {
  const ctl = { closed: false, lastId: null, abort: null };
  const url = `/v1/jobs/${encodeURIComponent(jobId)}/events`;

  async function once() {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (ctl.lastId !== null) headers["Last-Event-ID"] = ctl.lastId;
    ctl.abort = new AbortController();
    const resp = await fetch(url, { headers, signal: ctl.abort.signal, cache: "no-store" });
    if (!resp.ok) {
      const problem = await resp.json().catch(() => null);
      throw new ApiError(resp.status, problem);
    }
    onState("live");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false; // closed without `end`: reconnect
      buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const msg = parseBlock(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
        if (!msg) continue;
        if (msg.id !== null) ctl.lastId = msg.id;
        onEvent(msg);
        if (msg.event === "end") return true;
      }
    }
  }

  (async () => {
    let delay = 500;
    while (!ctl.closed) {
      try {
        if (await once()) { onState("ended"); return; }
        delay = 500;
      } catch (err) {
        if (ctl.closed) return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
          onState(`error: ${err.message}`);
          return; // 404/401 will not heal by retrying
        }
      }
      if (ctl.closed) return;
      onState("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 8000);
    }
  })();

  return {
    close() {
      ctl.closed = true;
      if (ctl.abort) ctl.abort.abort();
    },
  };
}
