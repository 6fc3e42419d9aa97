// Hand-drawn <canvas> charts: a line chart, grouped bars, per-group "small multiples"
// and a labelled scatter. No chart library, so the page works offline from the package.

export const COLORS = ["#2f6fdf", "#e07b39", "#1f9d55", "#9b59b6", "#d64545", "#16a2b8", "#7f8c8d", "#c98a00"];
const FONT = "12px system-ui, -apple-system, Segoe UI, Roboto, sans-serif";
const INK = "#1d2430", MUTED = "#6b7280", GRID = "#eceff3";

// Size the backing store to the element's CSS size times devicePixelRatio, so lines are sharp.
function setup(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400, h = canvas.clientHeight || 240;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  return { ctx, w, h };
}

// "Nice" tick values (1, 2, 5 x 10^k) covering [lo, hi].
export function niceTicks(lo, hi, count = 5) {
  if (!isFinite(lo) || !isFinite(hi)) return [0, 1];
  if (hi === lo) { const d = Math.abs(lo) * 0.5 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(12));
  if (ticks[ticks.length - 1] < hi) ticks.push(ticks[ticks.length - 1] + step);
  return ticks;
}

export function fmtNum(v, digits = 3) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  return (+v.toPrecision(digits)).toString();
}

function emptyMessage(ctx, w, h, text) {
  ctx.fillStyle = MUTED;
  ctx.textAlign = "center";
  ctx.fillText(text, w / 2, h / 2);
}

function legend(ctx, items, x, y) {
  ctx.textAlign = "left";
  for (const it of items) {
    ctx.fillStyle = it.color;
    ctx.fillRect(x, y - 5, 12, 10);
    ctx.fillStyle = INK;
    ctx.fillText(it.name, x + 16, y);
    x += 26 + ctx.measureText(it.name).width;
  }
}

// Axes with grid lines; returns the mapping functions for the plot area.
function axes(ctx, w, h, xr, yr, { xLabel = "", yLabel = "", yFmt = fmtNum, xFmt = fmtNum } = {}) {
  const pad = { l: 52, r: 34, t: 26, b: 34 };  // r: room for the last x tick label
  const xt = niceTicks(xr[0], xr[1]), yt = niceTicks(yr[0], yr[1]);
  const x0 = xt[0], x1 = xt[xt.length - 1], y0 = yt[0], y1 = yt[yt.length - 1];
  const X = (v) => pad.l + ((v - x0) / (x1 - x0 || 1)) * (w - pad.l - pad.r);
  const Y = (v) => h - pad.b - ((v - y0) / (y1 - y0 || 1)) * (h - pad.t - pad.b);
  ctx.strokeStyle = GRID;
  ctx.lineWidth = 1;
  ctx.fillStyle = MUTED;
  ctx.textAlign = "right";
  for (const t of yt) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(t)); ctx.lineTo(w - pad.r, Y(t)); ctx.stroke();
    ctx.fillText(yFmt(t), pad.l - 6, Y(t));
  }
  ctx.textAlign = "center";
  for (const t of xt) ctx.fillText(xFmt(t), X(t), h - pad.b + 12);
  ctx.strokeStyle = "#b8bec8";
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t - 4); ctx.lineTo(pad.l, h - pad.b); ctx.lineTo(w - pad.r, h - pad.b); ctx.stroke();
  if (xLabel) ctx.fillText(xLabel, pad.l + (w - pad.l - pad.r) / 2, h - 8);
  if (yLabel) {
    ctx.save(); ctx.translate(12, pad.t + (h - pad.t - pad.b) / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText(yLabel, 0, 0); ctx.restore();
  }
  return { X, Y, pad };
}

// series: [{name, color, points: [[x, y], ...]}]; opts.yRange fixes the y axis (e.g. [0, 1]).
export function lineChart(canvas, series, opts = {}) {
  const { ctx, w, h } = setup(canvas);
  const pts = series.flatMap((s) => s.points).filter((p) => isFinite(p[0]) && isFinite(p[1]));
  if (!pts.length) return emptyMessage(ctx, w, h, opts.empty || "waiting for data...");
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const xr = [Math.min(...xs), Math.max(...xs)];
  const yr = opts.yRange || [Math.min(0, ...ys), Math.max(...ys)];
  const { X, Y } = axes(ctx, w, h, xr, yr, opts);
  for (const s of series) {
    const p = s.points.filter((q) => isFinite(q[0]) && isFinite(q[1])).sort((a, b) => a[0] - b[0]);
    if (!p.length) continue;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    p.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    if (p.length < 40 || s.dots) {
      ctx.fillStyle = s.color;
      for (const [x, y] of p) { ctx.beginPath(); ctx.arc(X(x), Y(y), 2.5, 0, 7); ctx.fill(); }
    }
  }
  legend(ctx, series.filter((s) => s.points.length), 56, 10);
}

// labels: ["L0", ...]; series: [{name, color, values: [...]}] drawn as grouped bars.
export function barChart(canvas, labels, series, opts = {}) {
  const { ctx, w, h } = setup(canvas);
  const vals = series.flatMap((s) => s.values).filter((v) => isFinite(v));
  if (!labels.length || !vals.length) return emptyMessage(ctx, w, h, opts.empty || "no data");
  const { X, Y, pad } = axes(ctx, w, h, [0, 1], [0, Math.max(...vals, opts.yMax || 0)],
    { ...opts, xFmt: () => "" });
  const slot = (X(1) - X(0)) / labels.length;
  const bw = Math.max(2, (slot * 0.75) / series.length);
  labels.forEach((lab, i) => {
    const left = X(0) + i * slot + slot * 0.125;
    series.forEach((s, j) => {
      const v = s.values[i];
      if (!isFinite(v)) return;
      ctx.fillStyle = s.color;
      ctx.fillRect(left + j * bw, Y(v), bw - 1, Y(0) - Y(v));
      if (opts.valueLabels !== false && bw > 14) {
        ctx.fillStyle = INK; ctx.textAlign = "center";
        ctx.fillText(fmtNum(v), left + j * bw + bw / 2, Y(v) - 8);
      }
    });
    ctx.fillStyle = MUTED; ctx.textAlign = "center";
    ctx.fillText(lab, X(0) + i * slot + slot / 2, h - pad.b + 12);
  });
  if (series.length > 1 || opts.legend) legend(ctx, series, 56, 10);
}

// One small panel per quantity (units differ: accuracy, params, FLOPs, ms), two bars each.
// groups: [{label, values: [dense, pruned], fmt}]
export function smallMultiples(canvas, groups, names = ["dense", "pruned"], colors = [COLORS[6], COLORS[0]]) {
  const { ctx, w, h } = setup(canvas);
  const shown = groups.filter((g) => g.values.some((v) => isFinite(v)));
  if (!shown.length) return emptyMessage(ctx, w, h, "no final metrics");
  const pw = w / shown.length, top = 34, bottom = h - 30;
  shown.forEach((g, i) => {
    const left = i * pw, max = Math.max(...g.values.filter((v) => isFinite(v)), 1e-12);
    const bw = Math.min(46, pw / 4);
    ctx.fillStyle = INK; ctx.textAlign = "center";
    ctx.fillText(g.label, left + pw / 2, h - 12);
    g.values.forEach((v, j) => {
      if (!isFinite(v)) return;
      const bh = ((bottom - top) * v) / max;
      const x = left + pw / 2 - bw - 4 + j * (bw + 8);
      ctx.fillStyle = colors[j];
      ctx.fillRect(x, bottom - bh, bw, bh);
      ctx.fillStyle = INK;
      ctx.fillText((g.fmt || fmtNum)(v), x + bw / 2, bottom - bh - 9);
    });
  });
  legend(ctx, names.map((n, i) => ({ name: n, color: colors[i] })), 8, 10);
}

// points: [{x, y, label, color, dense?: bool}]; dense points drawn hollow.
export function scatter(canvas, points, opts = {}) {
  const { ctx, w, h } = setup(canvas);
  const ok = points.filter((p) => isFinite(p.x) && isFinite(p.y));
  if (!ok.length) return emptyMessage(ctx, w, h, opts.empty || "select finished jobs to compare");
  const xs = ok.map((p) => p.x), ys = ok.map((p) => p.y);
  const xr = opts.xRange || [Math.min(0, ...xs), Math.max(...xs)];
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const pad = Math.max((hi - lo) * 0.15, Math.abs(hi) * 0.02, 1e-3);
  const yr = [lo - pad, hi + pad];
  const { X, Y } = axes(ctx, w, h, xr, yr, opts);
  for (const p of ok) {
    ctx.strokeStyle = p.color; ctx.fillStyle = p.color; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(X(p.x), Y(p.y), 5, 0, 7);
    if (p.dense) ctx.stroke(); else ctx.fill();
    if (p.label) {
      ctx.fillStyle = INK; ctx.textAlign = "left";
      ctx.fillText(p.label, X(p.x) + 8, Y(p.y) - 8);
    }
  }
  if (opts.legend) legend(ctx, opts.legend, 56, 10);
}
