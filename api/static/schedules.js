// Schedules (issue #14): the list with pause/resume/delete, a form that creates one (prefilled
// from a finished job: "recompress this on every new version"), and one schedule's runs (with
// links to the jobs they created) beside its model's versions and the jobs built from each.
// Routes: #/schedules, #/schedules?from=<job id>, #/schedules/<schedule id>.
import { api, itemsOf } from "./api.js";
import { budgetText, el } from "./jobs.js";

const $ = (id) => document.getElementById(id);
const NAMED = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/; // a bare model name (not an id, hub ID or name@version)

function fmtTime(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

function triggersText(s) {
  const parts = [];
  if (s.cron) parts.push(`cron ${s.cron} (${s.timezone})`);
  if (s.on_new_version) parts.push("on new version");
  return parts.join(" + ") || "-";
}

function jobLink(id) {
  return el("a", { href: `#/jobs/${id}`, class: "job-link" }, el("code", {}, String(id).slice(0, 12)));
}

export class SchedulesView {
  constructor(showError, loadChoices) {
    this.showError = showError;
    this.loadChoices = loadChoices; // fills the shared dataset/model pickers (jobs view)
    this.timer = null;
    this.current = null; // the schedule shown in the detail pane
    $("schedule-form").addEventListener("submit", (e) => this.create(e));
    $("sd-toggle").addEventListener("click", () => this.current && this.toggle(this.current));
    $("sd-delete").addEventListener("click", () => this.current && this.remove(this.current));
  }

  // arg: {id} for one schedule, {from} to prefill the form from a job, or null.
  show(arg) {
    arg = arg || {};
    this.detailId = arg.id || null;
    $("sch-detail").classList.toggle("hidden", !this.detailId);
    if (arg.from) this.prefill(arg.from);
    else $("s-from").classList.add("hidden");
    this.refresh();
    this.loadChoices();
    this.loadModelNames();
    clearInterval(this.timer);
    this.timer = setInterval(() => this.refresh(), 3000);
  }

  hide() { clearInterval(this.timer); this.timer = null; }

  async refresh() {
    try {
      const list = itemsOf(await api.listSchedules());
      this.render(list);
      $("sch-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      if (this.detailId) {
        const sch = list.find((s) => s.id === this.detailId) || await api.getSchedule(this.detailId);
        await this.renderDetail(sch);
      }
    } catch (err) { this.showError(`Could not load schedules: ${err.message}`); }
  }

  render(list) {
    const tbody = $("sch-body");
    tbody.replaceChildren();
    if (!list.length) {
      tbody.append(el("tr", {}, el("td", { colspan: "7", class: "muted" },
        "No schedules yet: create one with the form, or from a finished job's page.")));
    }
    for (const s of list) {
      const last = s.last_run;
      const state = s.paused ? "paused" : "active";
      tbody.append(el("tr", { dataset: { scheduleId: s.id, state }, class: s.id === this.detailId ? "selected" : "" },
        el("td", {}, el("a", { href: `#/schedules/${s.id}` }, s.name || el("code", {}, s.id))),
        el("td", { class: "model", title: String(s.template.model) }, String(s.template.model)),
        el("td", {}, triggersText(s)),
        el("td", {}, s.cron ? fmtTime(s.next_due_at) : "-"),
        el("td", {}, last ? (last.job_id ? jobLink(last.job_id) : el("span", { class: "muted", title: last.reason || "" },
          last.outcome)) : el("span", { class: "muted" }, "never")),
        el("td", {}, el("span", { class: `badge ${state}` }, state)),
        el("td", {}, el("div", { class: "row" },
          el("button", { class: "small toggle", onclick: () => this.toggle(s) }, s.paused ? "Resume" : "Pause"),
          el("button", { class: "small danger delete", onclick: () => this.remove(s) }, "Delete")))));
    }
  }

  async renderDetail(s) {
    this.current = s;
    $("sd-id").textContent = s.id;
    const state = s.paused ? "paused" : "active";
    $("sd-state").textContent = state;
    $("sd-state").className = `badge ${state}`;
    $("sd-toggle").textContent = s.paused ? "Resume" : "Pause";
    const t = s.template;
    const info = { name: s.name, model: t.model, dataset: t.dataset, "evaluated on": t.eval_dataset,
      method: t.method || "vtrans", budget: budgetText({ budget: t.budget }), export: (t.export || []).join(", ") || null,
      triggers: triggersText(s), "next due": s.cron ? fmtTime(s.next_due_at) : null, created: fmtTime(s.created_at) };
    $("sd-info").replaceChildren(...Object.entries(info).filter(([, v]) => v !== undefined && v !== null && v !== "")
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));

    const runs = itemsOf(await api.listScheduleRuns(s.id));
    const body = $("sd-runs-body");
    body.replaceChildren(...(runs.length ? runs.map((r) => el("tr", { dataset: { runId: r.id, outcome: r.outcome } },
      el("td", {}, fmtTime(r.due_at)),
      el("td", {}, r.trigger === "new_version" ? "new version" : "cron"),
      el("td", {}, el("span", { class: `badge ${r.outcome}` }, r.outcome.replace("_", " "))),
      el("td", {}, r.job_id ? jobLink(r.job_id) : el("span", { class: "muted" }, r.reason || "-"),
        r.missed ? el("span", { class: "muted" }, ` (+${r.missed} missed)`) : ""),
      el("td", { class: "model", title: r.source || "" }, r.source || "-")))
      : [el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no firing yet"))]));
    await this.renderVersions(t.model);
  }

  // The template's model versions, each with the jobs built from it (any job, scheduled or not).
  async renderVersions(model) {
    const body = $("sd-versions-body");
    const name = NAMED.test(model || "") && !/^mdl_/.test(model) ? model : null;
    $("sd-model-name").textContent = name || "-";
    if (!name) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: "4", class: "muted" },
        "the template names no versioned model (an id or a hub ID)")));
      return;
    }
    let versions = [];
    try { versions = itemsOf(await api.listModelVersions(name)); } catch { /* no version yet: empty table */ }
    const rows = await Promise.all(versions.map(async (v) => {
      let jobs = [];
      try { jobs = itemsOf(await api.listJobsOfModel(v.id)); } catch { /* keep the version row */ }
      return el("tr", { dataset: { version: String(v.version), modelId: v.id } },
        el("td", {}, `v${v.version}`), el("td", {}, el("code", {}, v.id)), el("td", {}, fmtTime(v.created_at)),
        el("td", {}, ...(jobs.length ? jobs.flatMap((j) => [jobLink(j.id), el("span", { class: `badge ${j.status}` },
          j.status), " "]) : [el("span", { class: "muted" }, "none")])));
    }));
    body.replaceChildren(...(rows.length ? rows
      : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, `no uploads named ${name} yet`))]));
  }

  async toggle(s) {
    try {
      await (s.paused ? api.resumeSchedule(s.id) : api.pauseSchedule(s.id));
      await this.refresh();
    } catch (err) { this.showError(`Could not ${s.paused ? "resume" : "pause"} the schedule: ${err.message}`); }
  }

  async remove(s) {
    if (!window.confirm(`Delete schedule ${s.name || s.id} and its run history? Its jobs stay.`)) return;
    try {
      await api.deleteSchedule(s.id);
      if (this.detailId === s.id) { location.hash = "#/schedules"; return; }
      await this.refresh();
    } catch (err) { this.showError(`Could not delete the schedule: ${err.message}`); }
  }

  async loadModelNames() {
    try {
      const models = itemsOf(await api.listModels());
      const names = [...new Set(models.filter((m) => m.name).map((m) => m.name))];
      $("model-name-options").replaceChildren(...names.map((n) => el("option", { value: n }, "latest version")),
        ...models.map((m) => el("option", { value: m.id }, m.name ? `${m.name} v${m.version} only` : m.filename)));
    } catch { /* the field still takes a typed name */ }
  }

  // "Recompress this on every new version": the job's request as the template, its model by name.
  async prefill(jobId) {
    try {
      const job = await api.getJob(jobId);
      const req = job.request || {};
      const name = req.model_source && req.model_source.name;
      $("s-model").value = name || req.model;
      $("s-dataset").value = req.dataset || "";
      $("s-eval-dataset").value = req.eval_dataset || "";
      $("s-budget-kind").value = req.budget.kind;
      $("s-budget-target").value = req.budget.target;
      $("s-budget-seq").value = req.budget.seq_len || 128;
      $("s-method").value = req.method;
      $("s-options").value = req.options ? JSON.stringify(req.options) : "";
      $("s-on-new-version").checked = !!name;
      $("s-export-onnx").checked = (req.export || []).includes("onnx");
      $("s-name").value = name ? `${name} on every new version` : "";
      $("s-from").textContent = name ? `From job ${jobId}: recompress model ${name} on every new version`
        : `From job ${jobId}: its model was not uploaded under a name, so only a timetable can re-run it`;
      $("s-from").classList.remove("hidden");
    } catch (err) { this.showError(`Could not read job ${jobId}: ${err.message}`); }
  }

  async create(ev) {
    ev.preventDefault();
    const status = $("s-status");
    const button = $("s-submit");
    button.disabled = true;
    try {
      const optText = $("s-options").value.trim();
      let options = null;
      if (optText) {
        try { options = JSON.parse(optText); } catch { throw new Error("options must be a JSON object"); }
      }
      const evalDataset = $("s-eval-dataset").value.trim();
      const template = {
        model: $("s-model").value.trim(), dataset: $("s-dataset").value.trim(), method: $("s-method").value,
        budget: { kind: $("s-budget-kind").value, target: parseFloat($("s-budget-target").value),
                  seq_len: parseInt($("s-budget-seq").value, 10) || 128 },
        ...(options ? { options } : {}), ...(evalDataset ? { eval_dataset: evalDataset } : {}),
        ...($("s-export-onnx").checked ? { export: ["onnx"] } : {}),
      };
      const cron = $("s-cron").value.trim();
      const name = $("s-name").value.trim();
      const payload = { template, timezone: $("s-timezone").value.trim() || "UTC",
        on_new_version: $("s-on-new-version").checked, ...(cron ? { cron } : {}), ...(name ? { name } : {}) };
      status.textContent = "creating...";
      const sch = await api.createSchedule(payload);
      status.textContent = `created ${sch.id}`;
      location.hash = `#/schedules/${sch.id}`;
    } catch (err) {
      status.textContent = "";
      this.showError(`Could not create the schedule: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }
}
