/**
 * A small line-chart renderer producing standalone SVG (no plotting dependency): one or more
 * panels stacked over a shared x axis, nice tick values, axis titles, a legend to the right,
 * optional error bars and shaded x bands (the domains of a stream). Sizes are in px; text is sized
 * for reading on screen and in a PDF at page width.
 *
 * It draws the same in librsvg (sharp), Chromium and ImageMagick's internal renderer, so it uses
 * only plain shapes, paths and horizontal text with presentation attributes: no clip-path (that
 * renderer drops whatever is clipped, which lost every data line), mask, filter, CSS or <use>, and
 * no rotated text (it turns text the opposite way). Data reaching outside a panel is clipped here,
 * geometrically; y-axis titles sit above their panels and crowded tick or band labels are
 * staggered over rows instead of rotated.
 */

export interface Point {
  x: number;
  y: number;
  /** Half-height of an error bar (± std), drawn when > 0. */
  err?: number | null;
}

export interface Series {
  label: string;
  points: Point[];
  color: string;
  dash?: string;
  markers?: boolean;
  /** Drawn thin and grey behind the other series, for comparison; not in the legend. */
  context?: boolean;
}

export interface Panel {
  /** Shown above the panel; left out when the panel above has the same one (small multiples). */
  yLabel: string;
  series: Series[];
  yMin?: number;
  yMax?: number;
  /** Extend the y axis down to 0 when yMin is not given (default true). */
  includeZero?: boolean;
  height?: number;
  /**
   * Name shown in the right-hand column beside the panel, after a swatch of `titleColor` (small
   * multiples); such a panel's series are named by it and left out of the legend.
   */
  title?: string;
  titleColor?: string;
}

export interface XAxis {
  label: string;
  min: number;
  max: number;
  /**
   * Categorical or hand-placed ticks; default: nice numbers over [min, max]. `short` labels are
   * used instead where the labels would need more than two staggered rows.
   */
  ticks?: { at: number; label: string; short?: string }[];
  /** Logarithmic (min > 0): for data spanning more than a decade; default ticks at 1, 2, 5 × 10^k. */
  log?: boolean;
}

/** 1, 2, 5 × 10^k ticks within [min, max] (min > 0). */
export function logTicks(min: number, max: number): number[] {
  const out: number[] = [];
  for (let k = Math.floor(Math.log10(min)); k <= Math.ceil(Math.log10(max)); k++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** k;
      if (v >= min * (1 - 1e-9) && v <= max * (1 + 1e-9)) out.push(Number(v.toPrecision(6)));
    }
  }
  return out;
}

export interface Band {
  x0: number;
  x1: number;
  label: string;
}

export interface Chart {
  title: string;
  subtitle?: string;
  x: XAxis;
  panels: Panel[];
  bands?: Band[];
  width?: number;
  /** A line under the subtitle, in red: what a reader must not miss (e.g. a y axis not from 0). */
  warning?: string;
}

/** Colour-blind-friendly categorical palette (Okabe–Ito, then Tol's muted), dark enough on white. */
export const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#332288', '#882255', '#117733', '#999933'];
const DASHES = ['', '7 4', '2 3', '10 3 2 3'];

/** Style for the i-th series: colours first, then dash patterns, so any count stays distinct. */
export function seriesStyle(i: number): { color: string; dash: string } {
  return { color: PALETTE[i % PALETTE.length], dash: DASHES[Math.floor(i / PALETTE.length) % DASHES.length] };
}

// A family list suits browsers and librsvg; ImageMagick takes only a single name and falls back to
// its default sans for a list, which is fine. stroke="none" at the root: ImageMagick otherwise
// outlines text in black.
const ROOT_STYLE = "font-family=\"'DejaVu Sans', Arial, Helvetica, sans-serif\" stroke=\"none\"";

export function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Approximate rendered width of a text in px (sans-serif averages ~0.6 em per character). */
export function textWidth(s: string, size: number): number {
  return s.length * size * 0.6;
}

/**
 * "Nice" tick values (1, 2, 2.5, 5 × 10^k steps) covering [lo, hi]: the first is ≤ lo and the last
 * ≥ hi, so an axis ending on them has a labelled top and bottom.
 */
export function niceTicks(lo: number, hi: number, target = 6): number[] {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const start = Math.floor(lo / step + 1e-9) * step;
  const end = Math.ceil(hi / step - 1e-9) * step;
  const out: number[] = [];
  for (let i = 0; start + i * step <= end + step * 1e-9; i++) out.push(Number((start + i * step).toPrecision(12)));
  return out;
}

export function fmtTick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1).replace('e+', 'e');
  return String(Number(v.toPrecision(4)));
}

/** Greedy word wrap into lines of at most `max` characters. */
export function wrap(text: string, max: number): string[] {
  const lines: string[] = [];
  let cur = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (cur && cur.length + 1 + word.length > max) {
      lines.push(cur);
      cur = word;
    } else cur = cur ? `${cur} ${word}` : word;
  }
  if (cur) lines.push(cur);
  return lines;
}

const f1 = (v: number) => (Math.round(v * 10) / 10).toString();

/**
 * Rows needed so that labels (sorted centres, widths in px) that share a row do not overlap:
 * label i goes in row i % rows.
 */
export function staggerRows(centres: readonly number[], widths: readonly number[], maxRows = 4): number {
  for (let rows = 1; rows < maxRows; rows++) {
    let fits = true;
    for (let i = 0; i + rows < centres.length && fits; i++) fits = centres[i + rows] - centres[i] >= (widths[i] + widths[i + rows]) / 2 + 6;
    if (fits) return rows;
  }
  return maxRows;
}

/** Panel height when not given. */
const PANEL_H = 300;

/**
 * A panel's y axis: [yMin, yMax] and its ticks. Without fixed limits it spans whole tick steps over
 * the data (and 0 unless includeZero is false); short panels get fewer ticks so labels do not crowd.
 */
export function panelRange(p: Panel): { yMin: number; yMax: number; ticks: number[] } {
  const H = p.height ?? PANEL_H;
  const ys = p.series.flatMap((s) => s.points.flatMap((pt) => [pt.y + (pt.err ?? 0), pt.y - (pt.err ?? 0)])).filter(Number.isFinite);
  const dataMax = ys.length ? Math.max(...ys) : 1;
  const dataMin = ys.length ? Math.min(...ys) : 0;
  let yMin = p.yMin ?? (p.includeZero === false ? dataMin : Math.min(0, dataMin));
  let yMax = p.yMax ?? dataMax;
  if (!(yMax > yMin)) yMax = yMin + 1;
  const covering = niceTicks(yMin, yMax, H >= 200 ? 6 : Math.max(2, Math.floor(H / 45)));
  yMin = p.yMin ?? covering[0];
  yMax = p.yMax ?? covering[covering.length - 1];
  return { yMin, yMax, ticks: covering.filter((t) => t >= yMin - 1e-9 && t <= yMax + 1e-9) };
}

interface Rect {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

/** Liang–Barsky: the part of segment (ax, ay)–(bx, by) inside r, or null. */
export function clipSegment(ax: number, ay: number, bx: number, by: number, r: Rect): [number, number, number, number] | null {
  const dx = bx - ax;
  const dy = by - ay;
  let t0 = 0;
  let t1 = 1;
  for (const [p, q] of [
    [-dx, ax - r.x0],
    [dx, r.x1 - ax],
    [-dy, ay - r.y0],
    [dy, r.y1 - ay],
  ]) {
    if (p === 0) {
      if (q < 0) return null;
    } else {
      const t = q / p;
      if (p < 0) t0 = Math.max(t0, t);
      else t1 = Math.min(t1, t);
      if (t0 > t1) return null;
    }
  }
  return [ax + t0 * dx, ay + t0 * dy, ax + t1 * dx, ay + t1 * dy];
}

const inside = (x: number, y: number, r: Rect) => x >= r.x0 - 1e-6 && x <= r.x1 + 1e-6 && y >= r.y0 - 1e-6 && y <= r.y1 + 1e-6;

/** Path data for a polyline clipped to r: pieces outside are cut, each re-entry starts a new M. */
export function clippedPolyline(pts: readonly [number, number][], r: Rect): string {
  if (pts.length === 1) return inside(pts[0][0], pts[0][1], r) ? `M${f1(pts[0][0])} ${f1(pts[0][1])}` : '';
  let d = '';
  let pen: [number, number] | null = null;
  for (let i = 1; i < pts.length; i++) {
    const c = clipSegment(pts[i - 1][0], pts[i - 1][1], pts[i][0], pts[i][1], r);
    if (!c) {
      pen = null;
      continue;
    }
    if (!pen || Math.abs(pen[0] - c[0]) > 1e-6 || Math.abs(pen[1] - c[1]) > 1e-6) d += `M${f1(c[0])} ${f1(c[1])}`;
    d += `L${f1(c[2])} ${f1(c[3])}`;
    pen = [c[2], c[3]];
  }
  return d;
}

export function renderChart(c: Chart): string {
  const W = c.width ?? 1000;
  const tick = 13;
  const yLabelFont = 14;
  // Series of titled panels (small multiples) are named by the titles, beside their panels.
  const legendEntries = c.panels
    .filter((p) => p.title === undefined)
    .flatMap((p) => p.series)
    .filter((s) => !s.context)
    .filter((s, i, all) => all.findIndex((t) => t.label === s.label) === i);
  const titles = c.panels.flatMap((p) => (p.title === undefined ? [] : [p.title]));
  const legendW = Math.min(360, Math.max(120, ...[...legendEntries.map((s) => s.label), ...titles].map((l) => textWidth(l, tick) + 44)));
  const left = 78;
  const right = legendW + 24;
  const plotW = W - left - right;
  const lmin = Math.log10(c.x.min);
  const lspan = Math.log10(c.x.max) - lmin || 1;
  const sx = c.x.log
    ? (x: number) => left + ((Math.log10(x) - lmin) / lspan) * plotW
    : (x: number) => left + ((x - c.x.min) / (c.x.max - c.x.min || 1)) * plotW;

  // Band labels above the first panel, staggered over rows where they do not fit side by side.
  const bands = c.bands ?? [];
  const bandFont = 11;
  const bandRowH = 13;
  const bandRows = bands.length ? staggerRows(bands.map((b) => (sx(b.x0) + sx(b.x1)) / 2), bands.map((b) => textWidth(b.label, bandFont))) : 0;
  const bandMargin = bands.length === 0 ? 0 : 20 + (bandRows - 1) * bandRowH;
  const showYLabel = c.panels.map((p, i) => i === 0 || c.panels[i - 1].yLabel !== p.yLabel);

  let y = 34;
  const out: string[] = [];
  out.push(`<text x="${left}" y="${y}" font-size="18" font-weight="bold">${esc(c.title)}</text>`);
  // Subtitle wrapped at word boundaries to the figure width.
  const maxChars = Math.floor((W - left - 16) / (13 * 0.6));
  for (const line of wrap(c.subtitle ?? '', maxChars)) {
    y += 19;
    out.push(`<text x="${left}" y="${y}" font-size="13" fill="#444">${esc(line)}</text>`);
  }
  for (const line of wrap(c.warning ?? '', maxChars)) {
    y += 19;
    out.push(`<text x="${left}" y="${y}" font-size="13" font-weight="bold" fill="#B00020">${esc(line)}</text>`);
  }
  y += 14 + (showYLabel[0] ? 20 : 0) + bandMargin;

  const xTicks: { at: number; label: string; short?: string }[] =
    c.x.ticks ??
    (c.x.log ? logTicks(c.x.min, c.x.max) : niceTicks(c.x.min, c.x.max, 8))
      .filter((v) => v >= c.x.min && v <= c.x.max)
      .map((v) => ({ at: v, label: fmtTick(v) }));
  const lx = left + plotW + 18;
  let legendTop: number | null = null;
  let rightBottom = 0; // lowest text in the right-hand column
  c.panels.forEach((p, pi) => {
    const H = p.height ?? PANEL_H;
    const top = y;
    if (legendTop === null && p.title === undefined && p.series.some((s) => !s.context)) legendTop = top;
    const { yMin, yMax, ticks: yTicks } = panelRange(p);
    const sy = (v: number) => top + H - ((v - yMin) / (yMax - yMin)) * H;
    // Data may reach past a fixed limit or an error bar past the axis: cut at the frame (± 1 px).
    const box: Rect = { x0: left, y0: top - 1, x1: left + plotW, y1: top + H + 1 };

    out.push(`<g>`);
    bands.forEach((b, bi) => {
      if (bi % 2 === 1) out.push(`<rect x="${f1(sx(b.x0))}" y="${top}" width="${f1(sx(b.x1) - sx(b.x0))}" height="${H}" fill="#f0f0f0"/>`);
    });
    for (const t of yTicks) {
      out.push(`<line x1="${left}" x2="${left + plotW}" y1="${f1(sy(t))}" y2="${f1(sy(t))}" stroke="#d8d8d8" stroke-width="1"/>`);
      out.push(`<text x="${left - 8}" y="${f1(sy(t) + 4.5)}" font-size="${tick}" text-anchor="end">${esc(fmtTick(t))}</text>`);
    }
    // y-axis title above the panel (above the band labels on the first), starting over the tick labels.
    if (showYLabel[pi]) {
      const tickW = Math.max(0, ...yTicks.map((t) => textWidth(fmtTick(t), tick)));
      const ty = top - (pi === 0 ? bandMargin : 0) - 8;
      out.push(`<text x="${f1(Math.max(6, left - 8 - tickW))}" y="${f1(ty)}" font-size="${yLabelFont}">${esc(p.yLabel)}</text>`);
    }
    for (const b of bands.slice(1)) {
      out.push(`<line x1="${f1(sx(b.x0))}" x2="${f1(sx(b.x0))}" y1="${top}" y2="${top + H}" stroke="#b0b0b0" stroke-width="1" stroke-dasharray="3 3"/>`);
    }
    if (pi === 0) {
      bands.forEach((b, bi) => {
        const cx = (sx(b.x0) + sx(b.x1)) / 2;
        const by = top - 6 - (bi % bandRows) * bandRowH;
        out.push(`<text x="${f1(cx)}" y="${by}" font-size="${bandFont}" fill="#333" text-anchor="middle">${esc(b.label)}</text>`);
      });
    }
  // Context series first, underneath.
    for (const s of [...p.series.filter((t) => t.context), ...p.series.filter((t) => !t.context)]) {
      const pts = s.points.filter((pt) => Number.isFinite(pt.y) && Number.isFinite(pt.x));
      if (pts.length === 0) continue;
      if (s.context) {
        const d = clippedPolyline(pts.map((pt) => [sx(pt.x), sy(pt.y)]), box);
        if (d) out.push(`<path d="${d}" fill="none" stroke="#c4c4c4" stroke-width="1.2" stroke-linejoin="round"/>`);
        continue;
      }
      for (const pt of pts) {
        if (!(pt.err && pt.err > 0)) continue;
        const x = sx(pt.x);
        if (x < box.x0 || x > box.x1) continue;
        const lo = sy(pt.y - pt.err);
        const hi = sy(pt.y + pt.err);
        const y0 = Math.min(box.y1, lo);
        const y1 = Math.max(box.y0, hi);
        if (y0 < y1) continue; // entirely outside
        // a cap only where the bar ends inside the panel
        const caps = (lo === y0 ? `M${f1(x - 4)} ${f1(y0)}h8` : '') + (hi === y1 ? `M${f1(x - 4)} ${f1(y1)}h8` : '');
        out.push(`<path d="M${f1(x)} ${f1(y0)}V${f1(y1)}${caps}" stroke="${s.color}" stroke-width="1.3" fill="none"/>`);
      }
      const d = clippedPolyline(pts.map((pt) => [sx(pt.x), sy(pt.y)]), box);
      if (d) out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2" stroke-linejoin="round"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
      if (s.markers) {
        for (const pt of pts) {
          if (inside(sx(pt.x), sy(pt.y), box)) out.push(`<circle cx="${f1(sx(pt.x))}" cy="${f1(sy(pt.y))}" r="3.5" fill="${s.color}" stroke="#fff" stroke-width="1"/>`);
        }
      }
    }
    out.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${H}" fill="none" stroke="#333" stroke-width="1"/>`);
    // A zoomed-in axis (not from 0) gets a break mark at its foot, so it is not read as one.
    if (yMin > 0 && p.yMin === undefined) {
      const by = top + H - 9;
      out.push(`<rect data-axis-break="" x="${left - 6}" y="${by - 3}" width="12" height="6" fill="#fff" stroke="none"/>`);
      out.push(`<path d="M${left - 6} ${by + 1}l12 -5M${left - 6} ${by + 5}l12 -5" stroke="#333" stroke-width="1.2" fill="none"/>`);
    }
    if (p.title !== undefined) {
      const ty = top + 12;
      if (p.titleColor) out.push(`<line x1="${lx}" x2="${lx + 26}" y1="${ty - 4.5}" y2="${ty - 4.5}" stroke="${p.titleColor}" stroke-width="2.5"/>`);
      out.push(`<text x="${lx + 34}" y="${ty}" font-size="${tick}">${esc(p.title)}</text>`);
      rightBottom = Math.max(rightBottom, ty + 8);
    }
    for (const t of xTicks) {
      const x = f1(sx(t.at));
      out.push(`<line x1="${x}" x2="${x}" y1="${top + H}" y2="${top + H + 5}" stroke="#333"/>`);
    }
    out.push(`</g>`);
    // Panels keep room for the next one's y-axis title; small multiples sharing it sit closer.
    y = top + H + (pi === c.panels.length - 1 ? 0 : showYLabel[pi + 1] ? 30 : 14);
  });

  // x tick labels (staggered over rows where they do not fit side by side) and title under the last panel
  const bottom = y;
  const xRowH = 16;
  const xs = xTicks.map((t) => sx(t.at));
  let xRows = staggerRows(xs, xTicks.map((t) => textWidth(t.label, tick)));
  const useShort = xRows > 2 && xTicks.some((t) => t.short !== undefined);
  if (useShort) xRows = staggerRows(xs, xTicks.map((t) => textWidth(t.short ?? t.label, tick)));
  xTicks.forEach((t, i) => {
    const x = f1(sx(t.at));
    const row = i % xRows;
    // a thin leader down to a label in a lower row, so it is clear which tick it names
    if (row > 0) out.push(`<line x1="${x}" x2="${x}" y1="${bottom + 5}" y2="${bottom + 8 + row * xRowH}" stroke="#bbb" stroke-width="1"/>`);
    out.push(`<text x="${x}" y="${bottom + 20 + row * xRowH}" font-size="${tick}" text-anchor="middle">${esc(useShort ? (t.short ?? t.label) : t.label)}</text>`);
  });
  const xlabH = 22 + (xRows - 1) * xRowH;
  out.push(`<text x="${f1(left + plotW / 2)}" y="${f1(bottom + xlabH + 22)}" font-size="14" text-anchor="middle">${esc(c.x.label)}</text>`);

  // Legend right of the first panel without a title, one entry per series label
  let ly = (legendTop ?? y) + 4;
  if (legendEntries.length) out.push(`<rect x="${lx - 8}" y="${ly - 10}" width="${legendW}" height="${legendEntries.length * 22 + 10}" fill="#fff" stroke="#ccc"/>`);
  for (const s of legendEntries) {
    out.push(`<line x1="${lx}" x2="${lx + 26}" y1="${ly + 6}" y2="${ly + 6}" stroke="${s.color}" stroke-width="2.5"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    if (s.markers) out.push(`<circle cx="${lx + 13}" cy="${ly + 6}" r="3.5" fill="${s.color}"/>`);
    out.push(`<text x="${lx + 34}" y="${ly + 10.5}" font-size="${tick}">${esc(s.label)}</text>`);
    ly += 22;
  }

  const H = Math.ceil(Math.max(bottom + xlabH + 40, ly + 12, rightBottom));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${ROOT_STYLE}>`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#fff" stroke="none"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}
