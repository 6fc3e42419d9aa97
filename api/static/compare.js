// Several finished jobs on one accuracy-vs-FLOPs plot (pruned filled, dense hollow).
import { api, itemsOf } from "./api.js";
import { COLORS, fmtNum, scatter } from "./plots.js";
import { asFraction, budgetText, el, field, fmtPct } from "./jobs.js";

const $ = (id) => document.getElementById(id);

export class CompareView {
  constructor(showError, selected) {
    this.showError = showError;
    this.selected = selected;
    this.jobs = new Map(); // id -> full job (with final metrics)
    window.addEventListener("resize", () => this.visible && this.draw());
  }

  async show(preselect) {
    this.visible = true;
    for (const id of preselect || []) this.selected.add(id);
    let finished = [];
    try {
      finished = itemsOf(await api.listJobs(null, 100)).filter((j) => j.status === "succeeded");
    } catch (err) { this.showError(`Could not list jobs: ${err.message}`); }
    const known = new Set(finished.map((j) => j.id));
    for (const id of this.selected) if (!known.has(id)) finished.push({ id, status: "succeeded" });
    $("cmp-list").replaceChildren(...(finished.length ? finished.map((j) => {
      const box = el("input", { type: "checkbox", value: j.id });
      box.checked = this.selected.has(j.id);
      box.addEventListener("change", () => {
        if (box.checked) this.selected.add(j.id); else this.selected.delete(j.id);
        this.load();
      });
      return el("label", {}, box, el("code", {}, String(j.id).slice(0, 12)),
        el("span", { class: "muted" }, `${field(j, "method") ?? ""} ${budgetText(j)}`));
    }) : [el("span", { class: "muted" }, "No succeeded jobs yet.")]));
    await this.load();
  }

  hide() { this.visible = false; }

  async load() {
    await Promise.all([...this.selected].filter((id) => !this.jobs.has(id)).map(async (id) => {
      try { this.jobs.set(id, await api.getJob(id)); } catch (err) { this.showError(err.message); }
    }));
    this.draw();
  }

  draw() {
    const chosen = [...this.selected].map((id) => this.jobs.get(id)).filter((j) => j && j.metrics && j.metrics.pruned);
    const points = [], legend = [], denseSeen = new Set();
    chosen.forEach((j, i) => {
      const m = j.metrics, color = COLORS[i % COLORS.length];
      const name = `${String(j.id).slice(0, 8)} ${m.method || field(j, "method") || ""}`;
      legend.push({ name, color });
      points.push({ x: m.pruned.flops, y: asFraction(m.pruned.accuracy) * 100, color,
        label: `${m.method || ""} ${fmtNum(m.flops_fraction)}` });
      if (m.dense) {
        // Jobs of one base model share their dense point: label it once.
        const key = `${m.dense.flops}|${m.dense.accuracy}`;
        points.push({ x: m.dense.flops, y: asFraction(m.dense.accuracy) * 100, color, dense: true,
          label: denseSeen.has(key) ? "" : "dense" });
        denseSeen.add(key);
      }
    });
    scatter($("c-compare"), points, { xLabel: "FLOPs per sequence (hollow: dense model, filled: pruned)",
      yLabel: "accuracy (%)", legend, empty: "tick two or more succeeded jobs" });
    const head = el("tr", {}, ...["job", "method", "budget", "dense acc", "pruned acc", "FLOPs kept", "params kept", "speedup"]
      .map((h) => el("th", {}, h)));
    $("cmp-table").replaceChildren(head, ...chosen.map((j) => {
      const m = j.metrics;
      return el("tr", {}, el("td", {}, el("a", { href: `#/jobs/${j.id}` }, String(j.id).slice(0, 12))),
        el("td", {}, m.method || field(j, "method") || "-"), el("td", {}, budgetText(j)),
        el("td", {}, fmtPct(m.dense?.accuracy)), el("td", {}, fmtPct(m.pruned?.accuracy)),
        el("td", {}, fmtNum(m.flops_fraction)), el("td", {}, fmtNum(m.params_fraction)),
        el("td", {}, isFinite(m.speedup) ? `${m.speedup.toFixed(2)}x` : "-"));
    }));
  }
}
