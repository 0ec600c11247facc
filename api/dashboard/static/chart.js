// A small interactive SVG line chart: several series, per-series toggles, hover read-out,
// drag-to-zoom on the x axis (double-click or "Reset zoom" to undo), horizontal reference lines,
// optional markers and error bars. No dependencies; every label is set with textContent.

const SVG_NS = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2457c5", "#d1495b", "#2a9d8f", "#e9a23b", "#7b5ea7", "#5c946e", "#c2571a", "#3d8bd4",
  "#8d6a9f", "#a4243b", "#0b7a75", "#6c757d"];
const MAX_POINTS_PER_SERIES = 1500;  // beyond this the path is decimated (min/max per bucket keeps spikes)

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// "Nice" tick values covering [lo, hi] (about `count` of them).
export function niceTicks(lo, hi, count = 6) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi === lo) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

export function formatNumber(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(3);
  return Number(v.toPrecision(5)).toString();
}

// Indices of points to draw in [i0, i1): all of them when few, else the min and max of each bucket.
function decimate(ys, i0, i1) {
  const n = i1 - i0;
  if (n <= MAX_POINTS_PER_SERIES) return Array.from({ length: n }, (_, k) => i0 + k);
  const buckets = Math.floor(MAX_POINTS_PER_SERIES / 2);
  const size = n / buckets;
  const out = [];
  for (let b = 0; b < buckets; b++) {
    const s = i0 + Math.floor(b * size), e = Math.min(i1, i0 + Math.floor((b + 1) * size));
    let lo = -1, hi = -1;
    for (let i = s; i < e; i++) {
      const y = ys[i];
      if (y === null || !Number.isFinite(y)) continue;
      if (lo < 0 || y < ys[lo]) lo = i;
      if (hi < 0 || y > ys[hi]) hi = i;
    }
    if (lo < 0) { out.push(s); continue; }  // keeps the gap of a stopped chain visible
    if (lo === hi) out.push(lo); else out.push(Math.min(lo, hi), Math.max(lo, hi));
  }
  return out;
}

// First index with xs[i] >= x (xs sorted ascending).
function lowerBound(xs, x) {
  let lo = 0, hi = xs.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
  return lo;
}

/**
 * new LineChart(container, {title, xLabel, yLabel, series: [{name, xs, ys, errs?, color?}],
 *                           hlines: [{y, label, color?}], markers: bool, height})
 */
export class LineChart {
  constructor(container, options) {
    this.container = container;
    this.options = { height: 300, markers: false, hlines: [], ...options };
    this.series = this.options.series.map((s, i) => ({ color: PALETTE[i % PALETTE.length], visible: true, ...s }));
    this.fullX = this._xExtent();
    this.xDomain = this.fullX.slice();
    this.root = document.createElement("div");
    this.root.className = "chart";
    if (this.options.testId) this.root.dataset.testid = this.options.testId;
    container.replaceChildren(this.root);
    this._buildLegend();
    this.svg = svg("svg", { role: "img" });
    this.root.appendChild(this.svg);
    this.tooltip = document.createElement("div");
    this.tooltip.className = "tooltip";
    this.root.appendChild(this.tooltip);
    const hint = document.createElement("div");
    hint.className = "hint";
    hint.textContent = "Drag across the plot to zoom in; double-click to zoom out. Hover for values.";
    this.root.appendChild(hint);
    this._onResize = () => this.render();
    window.addEventListener("resize", this._onResize);
    this.render();
  }

  destroy() { window.removeEventListener("resize", this._onResize); }

  _xExtent() {
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series) for (const x of s.xs) { if (x < lo) lo = x; if (x > hi) hi = x; }
    if (!Number.isFinite(lo)) return [0, 1];
    if (lo === hi) return [lo - 1, hi + 1];
    // Markers and error bars at the ends stay inside the plot.
    const pad = this.options.markers ? (hi - lo) * 0.04 : 0;
    return [lo - pad, hi + pad];
  }

  _buildLegend() {
    const legend = document.createElement("div");
    legend.className = "legend";
    this.series.forEach((s, i) => {
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = true;
      box.dataset.series = String(i);
      box.addEventListener("change", () => { s.visible = box.checked; this.render(); });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      const name = document.createElement("span");
      name.textContent = s.name;
      label.append(box, swatch, name);
      legend.appendChild(label);
    });
    for (const h of this.options.hlines) {
      const span = document.createElement("span");
      span.className = "muted";
      span.textContent = `- - ${h.label}`;
      legend.appendChild(span);
    }
    const reset = document.createElement("button");
    reset.type = "button";
    reset.className = "secondary";
    reset.textContent = "Reset zoom";
    reset.addEventListener("click", () => { this.xDomain = this.fullX.slice(); this.render(); });
    legend.appendChild(reset);
    this.root.appendChild(legend);
  }

  _yExtent(x0, x1) {
    let lo = Infinity, hi = -Infinity;
    for (const s of this.series) {
      if (!s.visible) continue;
      const i0 = lowerBound(s.xs, x0), i1 = lowerBound(s.xs, x1 + 1e-12 * Math.abs(x1) + 1e-300);
      for (let i = Math.max(0, i0 - 1); i < Math.min(s.xs.length, i1 + 1); i++) {
        const y = s.ys[i];
        if (y === null || !Number.isFinite(y)) continue;
        const e = s.errs && Number.isFinite(s.errs[i]) ? s.errs[i] : 0;
        if (y - e < lo) lo = y - e;
        if (y + e > hi) hi = y + e;
      }
    }
    for (const h of this.options.hlines) if (Number.isFinite(h.y)) { lo = Math.min(lo, h.y); hi = Math.max(hi, h.y); }
    if (!Number.isFinite(lo)) return [0, 1];
    const pad = (hi - lo) * 0.06 || Math.abs(hi) * 0.1 || 1;
    return [lo - pad, hi + pad];
  }

  render() {
    const W = Math.max(320, this.root.clientWidth || 800), H = this.options.height;
    const m = { left: 70, right: 16, top: 14, bottom: 40 };
    const [x0, x1] = this.xDomain;
    const [y0, y1] = this._yExtent(x0, x1);
    const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * (W - m.left - m.right);
    const sy = (y) => m.top + (1 - (y - y0) / (y1 - y0)) * (H - m.top - m.bottom);
    this.scale = { sx, sy, m, W, H };
    const root = this.svg;
    root.replaceChildren();
    root.setAttribute("viewBox", `0 0 ${W} ${H}`);
    root.setAttribute("height", String(H));

    const axes = svg("g", { class: "axes", "font-size": 11, fill: "#6b7280" });
    for (const t of niceTicks(y0, y1, 5)) {
      const y = sy(t);
      axes.appendChild(svg("line", { x1: m.left, x2: W - m.right, y1: y, y2: y, stroke: "#eceef1" }));
      const label = svg("text", { x: m.left - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = formatNumber(t);
      axes.appendChild(label);
    }
    for (const t of niceTicks(x0, x1, 7)) {
      const x = sx(t);
      axes.appendChild(svg("line", { x1: x, x2: x, y1: H - m.bottom, y2: H - m.bottom + 4, stroke: "#9aa3b0" }));
      const label = svg("text", { x, y: H - m.bottom + 16, "text-anchor": "middle" });
      label.textContent = formatNumber(t);
      axes.appendChild(label);
    }
    axes.appendChild(svg("line", { x1: m.left, x2: W - m.right, y1: H - m.bottom, y2: H - m.bottom, stroke: "#9aa3b0" }));
    const xl = svg("text", { x: (m.left + W - m.right) / 2, y: H - 6, "text-anchor": "middle" });
    xl.textContent = this.options.xLabel || "";
    const yl = svg("text", { x: 14, y: (m.top + H - m.bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 14 ${(m.top + H - m.bottom) / 2})` });
    yl.textContent = this.options.yLabel || "";
    axes.append(xl, yl);
    root.appendChild(axes);

    const clipId = `clip-${Math.random().toString(36).slice(2)}`;
    const defs = svg("defs");
    const clip = svg("clipPath", { id: clipId });
    clip.appendChild(svg("rect", { x: m.left, y: m.top, width: W - m.left - m.right, height: H - m.top - m.bottom }));
    defs.appendChild(clip);
    root.appendChild(defs);
    const plot = svg("g", { "clip-path": `url(#${clipId})` });
    root.appendChild(plot);

    for (const h of this.options.hlines) {
      if (!Number.isFinite(h.y)) continue;
      const line = svg("line", { x1: m.left, x2: W - m.right, y1: sy(h.y), y2: sy(h.y), stroke: h.color || "#1d1f23",
        "stroke-dasharray": "6 4", "stroke-width": 1.5, class: "hline" });
      const title = svg("title");
      title.textContent = `${h.label} = ${formatNumber(h.y)}`;
      line.appendChild(title);
      plot.appendChild(line);
    }

    this.series.forEach((s, si) => {
      if (!s.visible) return;
      const i0 = Math.max(0, lowerBound(s.xs, x0) - 1), i1 = Math.min(s.xs.length, lowerBound(s.xs, x1) + 1);
      const idx = decimate(s.ys, i0, i1);
      let d = "", pen = false;
      for (const i of idx) {
        const y = s.ys[i];
        if (y === null || !Number.isFinite(y)) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${sx(s.xs[i]).toFixed(1)},${sy(y).toFixed(1)}`;
        pen = true;
      }
      const group = svg("g", { class: "series", "data-series": si });
      if (d) group.appendChild(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.4, class: "trace" }));
      if (this.options.markers || s.errs) {
        for (const i of idx) {
          const y = s.ys[i];
          if (y === null || !Number.isFinite(y)) continue;
          const cx = sx(s.xs[i]);
          if (s.errs && Number.isFinite(s.errs[i])) {
            const a = sy(y - s.errs[i]), b = sy(y + s.errs[i]);
            group.appendChild(svg("line", { x1: cx, x2: cx, y1: a, y2: b, stroke: s.color, class: "errorbar" }));
            group.appendChild(svg("line", { x1: cx - 4, x2: cx + 4, y1: a, y2: a, stroke: s.color }));
            group.appendChild(svg("line", { x1: cx - 4, x2: cx + 4, y1: b, y2: b, stroke: s.color }));
          }
          group.appendChild(svg("circle", { cx, cy: sy(y), r: 3.5, fill: s.color, class: "marker" }));
        }
      }
      plot.appendChild(group);
    });

    this.cursor = svg("line", { y1: m.top, y2: H - m.bottom, stroke: "#9aa3b0", visibility: "hidden" });
    this.selection = svg("rect", { y: m.top, height: H - m.top - m.bottom, fill: "rgba(36,87,197,.12)", visibility: "hidden" });
    const overlay = svg("rect", { x: m.left, y: m.top, width: W - m.left - m.right, height: H - m.top - m.bottom,
      fill: "transparent", class: "overlay", style: "cursor: crosshair" });
    root.append(this.cursor, this.selection, overlay);
    this._attachPointer(overlay);
  }

  _dataX(evt) {
    const rect = this.svg.getBoundingClientRect();
    const px = ((evt.clientX - rect.left) / rect.width) * this.scale.W;
    const { m, W } = this.scale;
    const [x0, x1] = this.xDomain;
    const frac = Math.min(1, Math.max(0, (px - m.left) / (W - m.left - m.right)));
    return { px: Math.min(W - m.right, Math.max(m.left, px)), x: x0 + frac * (x1 - x0) };
  }

  _attachPointer(overlay) {
    let dragStart = null;
    overlay.addEventListener("mousedown", (evt) => { dragStart = this._dataX(evt); evt.preventDefault(); });
    overlay.addEventListener("mousemove", (evt) => {
      const here = this._dataX(evt);
      if (dragStart) {
        this.selection.setAttribute("x", Math.min(dragStart.px, here.px));
        this.selection.setAttribute("width", Math.abs(here.px - dragStart.px));
        this.selection.setAttribute("visibility", "visible");
      }
      this._showTooltip(evt, here);
    });
    overlay.addEventListener("mouseup", (evt) => {
      const here = this._dataX(evt);
      this.selection.setAttribute("visibility", "hidden");
      if (dragStart && Math.abs(here.px - dragStart.px) > 6) {
        this.xDomain = [Math.min(dragStart.x, here.x), Math.max(dragStart.x, here.x)];
        dragStart = null;
        this.render();
        return;
      }
      dragStart = null;
    });
    overlay.addEventListener("mouseleave", () => {
      dragStart = null;
      this.selection.setAttribute("visibility", "hidden");
      this.cursor.setAttribute("visibility", "hidden");
      this.tooltip.style.display = "none";
    });
    overlay.addEventListener("dblclick", () => { this.xDomain = this.fullX.slice(); this.render(); });
  }

  _showTooltip(evt, here) {
    const lines = [];
    let nearestX = null;
    for (const s of this.series) {
      if (!s.visible || s.xs.length === 0) continue;
      let i = lowerBound(s.xs, here.x);
      if (i > 0 && (i === s.xs.length || Math.abs(s.xs[i - 1] - here.x) < Math.abs(s.xs[i] - here.x))) i -= 1;
      if (nearestX === null) nearestX = s.xs[i];
      const err = s.errs && Number.isFinite(s.errs[i]) ? ` ± ${formatNumber(s.errs[i])}` : "";
      lines.push(`${s.name}: ${formatNumber(s.ys[i])}${err}`);
    }
    if (nearestX === null) return;
    const cx = this.scale.sx(nearestX);
    this.cursor.setAttribute("x1", cx);
    this.cursor.setAttribute("x2", cx);
    this.cursor.setAttribute("visibility", "visible");
    this.tooltip.textContent = `${this.options.xLabel || "x"} ${formatNumber(nearestX)}\n${lines.join("\n")}`;
    const rootRect = this.root.getBoundingClientRect();
    this.tooltip.style.display = "block";
    const left = evt.clientX - rootRect.left + 14;
    this.tooltip.style.left = `${Math.min(left, rootRect.width - this.tooltip.offsetWidth - 4)}px`;
    this.tooltip.style.top = `${evt.clientY - rootRect.top + 14}px`;
  }
}
