// The jobs list (refreshing every 2 s while visible) and the submit form.
import { api, itemsOf, nextCursorOf } from "./api.js";
import { fmtNum } from "./plots.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

// A job's request fields may sit at the top level or under `request`; read either.
export function field(job, name) {
  if (job[name] !== undefined) return job[name];
  return job.request ? job.request[name] : undefined;
}

export function budgetText(job) {
  const b = field(job, "budget");
  return b ? `${b.kind} ${fmtNum(b.target)}` : "-";
}

// The core reports accuracy/F1 in percent; accept fractions too (older or other producers).
export function asFraction(v) {
  if (v === null || v === undefined || !isFinite(v)) return NaN;
  return v > 1 ? v / 100 : +v;
}

export function fmtPct(v) {
  const f = asFraction(v);
  return isFinite(f) ? `${(f * 100).toFixed(2)}%` : "-";
}

export function progressOf(job) {
  if (job.status === "succeeded") return 1;
  const p = job.progress ?? job.fraction ?? 0;
  return Math.max(0, Math.min(1, +p || 0));
}

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

export function progressBar(fraction, status) {
  const cls = status === "succeeded" ? "progress done" : status === "failed" ? "progress failed" : "progress";
  const bar = el("div", { class: "bar" });
  bar.style.width = `${(fraction * 100).toFixed(1)}%`;
  return el("div", { class: cls, title: `${(fraction * 100).toFixed(1)}%`, role: "progressbar",
    "aria-valuenow": (fraction * 100).toFixed(1), "aria-valuemin": "0", "aria-valuemax": "100" }, bar);
}

export class JobsView {
  constructor(showError, selected) {
    this.showError = showError;
    this.selected = selected; // Set of job ids ticked for comparison (shared with the router)
    this.timer = null;
    this.extra = []; // older pages loaded with "Older jobs"
    this.cursor = null;
    document.getElementById("jobs-more").addEventListener("click", () => this.loadMore());
    document.getElementById("submit-form").addEventListener("submit", (e) => this.submit(e));
  }

  show() {
    this.refresh();
    this.loadChoices();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), 2000);
  }

  hide() { clearInterval(this.timer); this.timer = null; }

  async refresh() {
    try {
      const body = await api.listJobs(null, 20);
      const first = itemsOf(body);
      if (!this.extra.length) this.cursor = nextCursorOf(body);
      const ids = new Set(first.map((j) => j.id));
      this.render(first.concat(this.extra.filter((j) => !ids.has(j.id))));
      document.getElementById("jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) { this.showError(`Could not list jobs: ${err.message}`); }
  }

  async loadMore() {
    if (!this.cursor) return;
    try {
      const body = await api.listJobs(this.cursor, 20);
      this.extra = this.extra.concat(itemsOf(body));
      this.cursor = nextCursorOf(body);
      this.refresh();
    } catch (err) { this.showError(err.message); }
  }

  render(jobs) {
    const tbody = document.getElementById("jobs-body");
    tbody.replaceChildren();
    if (!jobs.length) {
      tbody.append(el("tr", {}, el("td", { colspan: "7", class: "muted" }, "No jobs yet: submit one with the form.")));
    }
    for (const job of jobs) {
      const box = el("input", { type: "checkbox", title: "select for comparison" });
      box.checked = this.selected.has(job.id);
      box.disabled = job.status !== "succeeded";
      box.addEventListener("change", () => (box.checked ? this.selected.add(job.id) : this.selected.delete(job.id)));
      const pct = progressOf(job);
      tbody.append(el("tr", { dataset: { jobId: job.id, status: job.status } },
        el("td", {}, box),
        el("td", {}, el("a", { href: `#/jobs/${job.id}` }, el("code", {}, String(job.id).slice(0, 12)))),
        el("td", { class: "model", title: String(field(job, "model") ?? "") }, String(field(job, "model") ?? "-")),
        el("td", {}, String(field(job, "method") ?? "-")),
        el("td", {}, budgetText(job)),
        el("td", {}, el("span", { class: `badge ${job.status}`, title: job.waiting_reason || "" },
          !job.waiting_reason ? job.status : job.retry_at && !job.waiting_reason.startsWith("waiting for a worker")
            ? `${job.status} (hub wait)` : `${job.status} (no worker)`)),
        el("td", {}, el("div", { class: "pcell" }, progressBar(pct, job.status),
          el("span", { class: "muted" }, `${Math.round(pct * 100)}%`)))));
    }
    document.getElementById("jobs-more").classList.toggle("hidden", !this.cursor);
  }

  // Fill the model/dataset pickers with what the service knows (uploaded + built-in).
  async loadChoices() {
    const fill = (id, items) => {
      const dl = document.getElementById(id);
      dl.replaceChildren(...items.map((it) => {
        const value = typeof it === "string" ? it : it.id ?? it.name;
        const label = typeof it === "string" ? "" : [it.kind === "builtin" ? "built-in" : null, it.description,
          it.filename, it.rows && `${it.rows} rows`].filter(Boolean).join(", ");
        return el("option", { value: String(value) }, label);
      }));
    };
    try {
      const body = await api.listDatasets();
      // Built-in tasks (e.g. tweet-sentiment) first, then this tenant's uploads.
      fill("dataset-options", [...(body.builtin || []), ...itemsOf(body)]);
    } catch { /* the form still takes a typed id */ }
    try { fill("model-options", itemsOf(await api.listModels())); } catch { /* endpoint may not exist */ }
  }

  async submit(ev) {
    ev.preventDefault();
    const status = document.getElementById("f-status");
    const button = document.getElementById("f-submit");
    button.disabled = true;
    try {
      let model = document.getElementById("f-model").value.trim();
      let dataset = document.getElementById("f-dataset").value.trim();
      const modelFile = document.getElementById("f-model-file").files[0];
      const dataFile = document.getElementById("f-dataset-file").files[0];
      if (modelFile) {
        status.textContent = "uploading model...";
        model = (await api.uploadModel(modelFile)).id;
        document.getElementById("f-model").value = model;
      }
      if (dataFile) {
        status.textContent = "uploading dataset...";
        dataset = (await api.uploadDataset(dataFile)).id;
        document.getElementById("f-dataset").value = dataset;
      }
      let evalDataset = document.getElementById("f-eval-dataset").value.trim();
      const evalFile = document.getElementById("f-eval-dataset-file").files[0];
      if (evalFile) {
        status.textContent = "uploading evaluation dataset...";
        evalDataset = (await api.uploadDataset(evalFile)).id;
        document.getElementById("f-eval-dataset").value = evalDataset;
      }
      if (!model || !dataset) throw new Error("choose a model and a dataset (or upload them)");
      const optText = document.getElementById("f-options").value.trim();
      let options = {};
      if (optText) {
        try { options = JSON.parse(optText); } catch { throw new Error("options must be a JSON object"); }
      }
      const payload = {
        model, dataset, options,
        ...(evalDataset ? { eval_dataset: evalDataset } : {}),
        ...(document.getElementById("f-export-onnx").checked ? { export: ["onnx"] } : {}),
        method: document.getElementById("f-method").value,
        budget: { kind: document.getElementById("f-budget-kind").value,
                  target: parseFloat(document.getElementById("f-budget-target").value),
                  seq_len: parseInt(document.getElementById("f-budget-seq").value, 10) || 128 },
      };
      status.textContent = "submitting...";
      const job = await api.createJob(payload);
      status.textContent = `queued ${job.id}`;
      document.getElementById("f-model-file").value = "";
      document.getElementById("f-dataset-file").value = "";
      document.getElementById("f-eval-dataset-file").value = "";
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      status.textContent = "";
      this.showError(`Submit failed: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }
}
