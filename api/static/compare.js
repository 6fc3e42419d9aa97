// Several finished jobs on quality-vs-FLOPs plots (pruned filled, dense hollow): accuracy for
// classification jobs, perplexity (with its window length) for language-model jobs.
import { api, itemsOf } from "./api.js";
import { COLORS, fmtNum, scatter } from "./plots.js";
import { asFraction, budgetText, el, field, fmtPct } from "./jobs.js";

const $ = (id) => document.getElementById(id);

// The kind of job is read from its metrics: a language model's carry a perplexity, a classifier's
// an accuracy (classification metrics have no `task` key).
export const isLm = (m) => !!(m && m.pruned && Number.isFinite(m.pruned.perplexity));
export const isClassifier = (m) => !!(m && m.pruned && typeof m.pruned === "object" && "accuracy" in m.pruned);
const windowOf = (m) => m.evaluation?.window ?? m.data?.window ?? "?";
const fmtPpl = (v) => (Number.isFinite(v) ? v.toFixed(2) : "-");

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
    const chosen = [...this.selected].map((id) => this.jobs.get(id))
      .filter((j) => j && (isLm(j.metrics) || isClassifier(j.metrics)));
    // One colour per job across both plots and the table's order.
    const colour = new Map(chosen.map((j, i) => [j.id, COLORS[i % COLORS.length]]));
    const cls = chosen.filter((j) => isClassifier(j.metrics)), lm = chosen.filter((j) => isLm(j.metrics));
    // Accuracy and perplexity share no axis: each kind gets its own plot, shown when ticked.
    $("c-compare").classList.toggle("hidden", lm.length > 0 && !cls.length);
    $("c-compare-ppl").classList.toggle("hidden", !lm.length);
    if (cls.length || !lm.length) {
      this.plot($("c-compare"), cls, colour, (s) => asFraction(s.accuracy) * 100, (s) => s.accuracy, "accuracy (%)");
    }
    if (lm.length) {
      const windows = [...new Set(lm.map((j) => windowOf(j.metrics)))];
      // Perplexity is comparable only at one window length: the axis says which, or that they differ.
      const label = windows.length === 1 ? `perplexity, ${windows[0]}-token windows (lower is better)`
        : `perplexity (windows differ: ${windows.join(", ")} tokens — not comparable)`;
      this.plot($("c-compare-ppl"), lm, colour, (s) => s.perplexity, (s) => `${s.perplexity}|${windows}`, label);
    }
    const head = el("tr", {}, ...["job", "method", "budget", "metric", "dense", "pruned", "FLOPs kept", "params kept",
      "speedup"].map((h) => el("th", {}, h)));
    $("cmp-table").replaceChildren(head, ...chosen.map((j) => {
      const m = j.metrics, lmJob = isLm(m);
      const quality = (s) => (lmJob ? fmtPpl(s?.perplexity) : fmtPct(s?.accuracy));
      return el("tr", { "data-job-id": j.id, "data-kind": lmJob ? "lm" : "classification" },
        el("td", {}, el("a", { href: `#/jobs/${j.id}` }, String(j.id).slice(0, 12))),
        el("td", {}, m.method || field(j, "method") || "-"), el("td", {}, budgetText(j)),
        el("td", { class: "metric" }, lmJob ? `perplexity (${windowOf(m)}-token windows)` : "accuracy"),
        el("td", { class: "dense" }, quality(m.dense)), el("td", { class: "pruned" }, quality(m.pruned)),
        el("td", {}, fmtNum(m.flops_fraction)), el("td", {}, fmtNum(m.params_fraction)),
        el("td", {}, isFinite(m.speedup) ? `${m.speedup.toFixed(2)}x` : "-"));
    }));
  }

  // Quality (y) vs FLOPs (x) of `jobs` on `canvas`: pruned filled, dense hollow.
  plot(canvas, jobs, colour, y, denseKey, yLabel) {
    const points = [], legend = [], denseSeen = new Set();
    for (const j of jobs) {
      const m = j.metrics, color = colour.get(j.id);
      legend.push({ name: `${String(j.id).slice(0, 8)} ${m.method || field(j, "method") || ""}`, color });
      points.push({ x: m.pruned.flops, y: y(m.pruned), color, label: `${m.method || ""} ${fmtNum(m.flops_fraction)}` });
      if (m.dense) {
        // Jobs of one base model share their dense point: label it once.
        const key = `${m.dense.flops}|${denseKey(m.dense)}`;
        points.push({ x: m.dense.flops, y: y(m.dense), color, dense: true, label: denseSeen.has(key) ? "" : "dense" });
        denseSeen.add(key);
      }
    }
    scatter(canvas, points, { xLabel: "FLOPs per sequence (hollow: dense model, filled: pruned)", yLabel, legend,
      empty: "tick two or more succeeded jobs" });
  }
}
