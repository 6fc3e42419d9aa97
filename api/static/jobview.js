// One job followed live from its SSE stream: progress bar, ETA, loss and kept-fraction
// plots drawn as events arrive, final dense-vs-pruned numbers, per-layer chart, artifacts.
import { api, downloadWithKey, followEvents, getApiKey } from "./api.js";
import { COLORS, barChart, fmtNum, lineChart, smallMultiples } from "./plots.js";
import { TERMINAL, asFraction, budgetText, el, field, fmtPct } from "./jobs.js";

const $ = (id) => document.getElementById(id);

function fmtEta(s) {
  if (!isFinite(s) || s < 0) return "-";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export class JobView {
  constructor(showError) {
    this.showError = showError;
    this.stream = null;
    $("j-cancel").addEventListener("click", () => this.cancel());
    window.addEventListener("resize", () => this.id && this.draw());
  }

  reset(id) {
    this.id = id;
    this.status = null;
    this.fraction = 0;
    this.final = null;
    // Mask training reports a global step, fine-tuning restarts at 1: x is made cumulative.
    this.xOffset = 0; this.lastStage = null; this.lastX = 0; this.lastSeq = 0;
    this.series = { loss: {}, flops: [], params: [], acc: [] }; // loss: stage -> points
  }

  async show(id) {
    this.hide();
    // Two quick navigations must not leave two streams feeding one page: only the latest
    // show() call may attach its stream (checked again after every await).
    const gen = (this.gen = (this.gen || 0) + 1);
    this.reset(id);
    $("j-id").textContent = id;
    $("j-schedule").href = `#/schedules?from=${encodeURIComponent(id)}`;
    $("j-final").classList.add("hidden");
    $("j-error").classList.add("hidden");
    $("j-artifacts").replaceChildren(el("li", { class: "muted" }, "available when the job has succeeded"));
    this.setStatus("queued");
    this.setProgress(0, "-", undefined);
    $("j-eta").textContent = "-";
    this.draw();
    let job;
    try {
      job = await api.getJob(id);
    } catch (err) {
      if (gen === this.gen) this.showError(`Could not load job ${id}: ${err.message}`);
      return;
    }
    if (gen !== this.gen) return;
    this.renderJob(job);
    this.stream = followEvents(id, (msg) => gen === this.gen && this.onEvent(msg),
      (state) => { if (gen === this.gen) $("j-stream").textContent = state; });
  }

  hide() {
    this.gen = (this.gen || 0) + 1;
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  renderJob(job) {
    const req = { model: field(job, "model"), dataset: field(job, "dataset"),
      "evaluated on": (job.request || {}).eval_dataset || (job.metrics?.evaluation?.source === "training data split"
        ? "a split of the dataset" : undefined), method: field(job, "method"),
      budget: budgetText(job), layout: (field(job, "options") || {}).layout, queue: job.queue,
      created: job.created_at };
    $("j-request").replaceChildren(...Object.entries(req).filter(([, v]) => v !== undefined && v !== null)
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
    this.setStatus(job.status);
    this.setProgress(job.progress ?? 0, job.stage ?? "-", undefined);
    // A queued job whose queue no live worker consumes says so instead of waiting silently (issue #16).
    $("j-waiting").textContent = job.waiting_reason || "";
    $("j-waiting").classList.toggle("hidden", !job.waiting_reason);
    if (TERMINAL.has(job.status)) this.finish(job);
  }

  setStatus(status) {
    if (!status) return;
    this.status = status;
    const badge = $("j-status");
    badge.textContent = status;
    badge.className = `badge ${status}`;
    $("j-cancel").disabled = TERMINAL.has(status);
  }

  // The bar never moves backwards: the stream may replay history after a reconnect.
  setProgress(fraction, stage, eta) {
    if (this.status === "succeeded") fraction = 1;
    this.fraction = Math.max(this.fraction, Math.min(1, +fraction || 0));
    const pct = `${(this.fraction * 100).toFixed(1)}%`;
    $("j-bar").style.width = pct;
    $("j-bar").parentElement.className = `progress big ${this.status === "succeeded" ? "done" : this.status === "failed" ? "failed" : ""}`;
    $("j-bar").parentElement.setAttribute("aria-valuenow", (this.fraction * 100).toFixed(1));
    $("j-pct").textContent = pct;
    if (stage) $("j-stage").textContent = stage;
    // undefined: keep what is shown; null: this report had no estimate (too early to tell).
    if (eta !== undefined) {
      $("j-eta").textContent = TERMINAL.has(this.status) ? "-" : eta === null ? "estimating..." : fmtEta(eta);
    }
  }

  onEvent({ event, data }) {
    if (!data || typeof data !== "object") return;
    // The server never repeats a seq; this guards the plots if a stream is ever replayed.
    if (event !== "end" && Number.isInteger(data.seq)) {
      if (data.seq <= this.lastSeq) return;
      this.lastSeq = data.seq;
    }
    if (event === "progress") {
      const m = data.metrics || {};
      this.setProgress(data.fraction, data.stage, m.eta_seconds ?? null);
      this.addPoint(data.stage, m);
      this.draw();
    } else if (event === "status") {
      this.setStatus(data.status);
      if (data.error) this.showJobError(data.error);
    } else if (event === "end") {
      if (data.reason) { // JobGone: the job was deleted while followed; no final state to show
        this.setStatus(data.reason);
        $("j-cancel").disabled = true;
        return;
      }
      const job = data.job || data;
      this.setStatus(job.status);
      this.finish(job);
    }
  }

  addPoint(stage, m) {
    if (!(isFinite(m.loss) || isFinite(m.kept_flops) || isFinite(m.kept_params) || isFinite(m.accuracy))) return;
    let x = isFinite(m.step) ? m.step + this.xOffset : this.lastX + 1;
    if (stage !== this.lastStage) {
      this.lastStage = stage;
      if (isFinite(m.step) && x < this.lastX) { this.xOffset = this.lastX; x = m.step + this.xOffset; }
    }
    this.lastX = Math.max(this.lastX, x);
    const push = (arr, v) => isFinite(v) && arr.push([x, +v]);
    if (isFinite(m.loss)) push(this.series.loss[stage] || (this.series.loss[stage] = []), m.loss);
    push(this.series.flops, m.kept_flops);
    push(this.series.params, m.kept_params);
    push(this.series.acc, asFraction(m.accuracy));
  }

  // metrics.history (CONTRACTS §3) is the complete curve, with global steps; used at the end
  // when the live reports (at most every 0.5 s) were sparser, or for a late viewer.
  fromHistory(history) {
    const loss = {}, flops = [], params = [];
    for (const h of history) {
      if (!isFinite(h.step)) continue;
      if (isFinite(h.loss)) (loss.masks || (loss.masks = [])).push([h.step, h.loss]);
      if (isFinite(h.finetune_loss)) (loss.finetune || (loss.finetune = [])).push([h.step, h.finetune_loss]);
      if (isFinite(h.kept_flops)) flops.push([h.step, h.kept_flops]);
      if (isFinite(h.kept_params)) params.push([h.step, h.kept_params]);
    }
    const count = (l) => Object.values(l).reduce((n, pts) => n + pts.length, 0);
    if (count(loss) > count(this.series.loss)) this.series.loss = loss;
    if (flops.length > this.series.flops.length) this.series.flops = flops;
    if (params.length > this.series.params.length) this.series.params = params;
  }

  draw() {
    const s = this.series;
    const lossSeries = Object.entries(s.loss).map(([stage, points], i) =>
      ({ name: `${stage} loss`, color: [COLORS[0], COLORS[4], COLORS[5], COLORS[3]][i % 4], points }));
    lineChart($("c-loss"), lossSeries,
      { xLabel: "step (cumulative over stages)", empty: "waiting for training steps..." });
    lineChart($("c-kept"), [
      { name: "kept FLOPs", color: COLORS[1], points: s.flops },
      { name: "kept params", color: COLORS[2], points: s.params },
      { name: "accuracy", color: COLORS[3], points: s.acc, dots: true },
    ], { xLabel: "step (cumulative over stages)", yRange: [0, 1], empty: "waiting for training steps..." });
    if (this.final) this.drawFinal(this.final);
  }

  showJobError(error) {
    const text = typeof error === "string" ? error : [error.type, error.message].filter(Boolean).join(": ");
    $("j-error").textContent = text;
    $("j-error").classList.remove("hidden");
  }

  finish(job) {
    this.setProgress(job.status === "succeeded" ? 1 : job.progress ?? this.fraction, job.stage, null);
    if (job.error) this.showJobError(job.error);
    const metrics = job.metrics || job.result || null;
    if (job.status === "succeeded" && metrics && metrics.dense) {
      this.final = metrics;
      if (Array.isArray(metrics.history)) this.fromHistory(metrics.history);
      $("j-final").classList.remove("hidden");
      this.draw();
    }
    if (job.status === "succeeded") this.loadArtifacts();
  }

  drawFinal(m) {
    const d = m.dense || {}, p = m.pruned || {};
    // Where the quality figures come from, and anything that makes them doubtful (issue #11).
    const ev = m.evaluation || {};
    const lm = m.task === "language-modeling";
    // A language model's perplexity is comparable only at one window length: always state it.
    $("j-eval-note").textContent = lm
      ? `Perplexity on ${ev.tokens_scored} held-out tokens, ${ev.window}-token windows, stride ${ev.stride}: ${ev.note}`
      : ev.source ? `Evaluated on ${ev.rows ?? m.eval_examples} rows: ${ev.note}` : "";
    $("j-warnings").replaceChildren(...(m.warnings || []).map((w) => el("li", {}, `warning: ${w}`)));
    const fix = (n) => (v) => v?.toFixed(n);
    const rows = (lm ? [
      [`perplexity (${ev.window}-token windows)`, d.perplexity, p.perplexity, fix(2)],
      ["params", d.params, p.params, fmtNum],
      ["FLOPs / sequence", d.flops, p.flops, fmtNum],
      ["prefill (ms)", d.prefill_ms, p.prefill_ms, fix(1)],
      ["decode (tokens/s)", d.decode_tokens_per_s, p.decode_tokens_per_s, fix(1)],
    ] : [
      ["accuracy", d.accuracy, p.accuracy, fmtPct],
      ["F1", d.f1, p.f1, fmtPct],
      ["params", d.params, p.params, fmtNum],
      ["FLOPs / sequence", d.flops, p.flops, fmtNum],
      ["latency (ms)", d.latency_ms, p.latency_ms, fix(1)],
    ]).filter((r) => r[1] !== undefined || r[2] !== undefined);
    const ratio = (a, b) => (isFinite(a) && isFinite(b) && a ? (b / a).toFixed(3) : "-");
    $("j-final-table").replaceChildren(
      el("tr", {}, el("th", {}, ""), el("th", {}, "dense"), el("th", {}, "pruned"), el("th", {}, "pruned / dense")),
      ...rows.map(([name, a, b, f]) => el("tr", { dataset: { metric: name } }, el("td", {}, name),
        el("td", {}, f(a) ?? "-"), el("td", {}, f(b) ?? "-"), el("td", {}, ratio(a, b)))),
      el("tr", {}, el("td", {}, "speedup"), el("td", {}, ""), el("td", { class: "speedup" },
        isFinite(m.speedup) ? `${m.speedup.toFixed(2)}x` : "-"), el("td", {}, "")));
    smallMultiples($("c-final"), [
      lm ? { label: "perplexity", values: [d.perplexity, p.perplexity], fmt: (v) => v.toFixed(1) }
        : { label: "accuracy %", values: [asFraction(d.accuracy) * 100, asFraction(p.accuracy) * 100], fmt: (v) => v.toFixed(1) },
      { label: "params", values: [d.params, p.params] },
      { label: "FLOPs", values: [d.flops, p.flops] },
      lm ? { label: "prefill ms", values: [d.prefill_ms, p.prefill_ms], fmt: (v) => v.toFixed(1) }
        : { label: "latency ms", values: [d.latency_ms, p.latency_ms], fmt: (v) => v.toFixed(1) },
    ]);
    const kept = m.kept || {};
    const heads = kept.heads_per_layer || [], ffn = kept.ffn_per_layer || [];
    const labels = (n) => Array.from({ length: n }, (_, i) => `L${i}`);
    barChart($("c-heads"), labels(heads.length), [{ name: "heads kept", color: COLORS[0], values: heads }],
      { yLabel: "heads", empty: "no per-layer heads" });
    barChart($("c-ffn"), labels(ffn.length), [{ name: "FFN neurons kept", color: COLORS[1], values: ffn }],
      { yLabel: "neurons", empty: "no per-layer FFN" });
  }

  async loadArtifacts() {
    const list = $("j-artifacts");
    try {
      const body = await api.listArtifacts(this.id);
      const items = Array.isArray(body) ? body : body.items || body.artifacts || body.data || [];
      if (!items.length) { list.replaceChildren(el("li", { class: "muted" }, "no artifacts")); return; }
      list.replaceChildren(...items.map((a) => {
        const name = typeof a === "string" ? a : a.name;
        const href = (typeof a === "object" && a.url) || api.artifactUrl(this.id, name);
        const link = el("a", { href, download: name.split("/").pop(), class: "artifact" }, name);
        // Without a key a plain link works; with one, fetch so the header is sent.
        link.addEventListener("click", (e) => {
          if (!getApiKey()) return;
          e.preventDefault();
          downloadWithKey(href, name.split("/").pop()).catch((err) => this.showError(err.message));
        });
        const size = typeof a === "object" && isFinite(a.size) ? ` (${fmtNum(a.size)}B)` : "";
        return el("li", {}, link, el("span", { class: "muted" }, size));
      }));
    } catch (err) {
      list.replaceChildren(el("li", { class: "muted" }, `artifacts unavailable: ${err.message}`));
    }
  }

  async cancel() {
    if (!this.id) return;
    $("j-cancel").disabled = true;
    try {
      const job = await api.cancelJob(this.id);
      if (job && job.status) this.setStatus(job.status);
    } catch (err) {
      this.showError(`Cancel failed: ${err.message}`);
      $("j-cancel").disabled = TERMINAL.has(this.status);
    }
  }
}
