/**
 * A small line-chart renderer producing standalone SVG (no plotting dependency): one or more
 * panels stacked over a shared x axis, nice tick values, axis titles, a legend to the right,
 * optional error bars and shaded x bands (the domains of a stream). Sizes are in px; text is sized
 * for reading on screen and in a PDF at page width.
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
}

export interface Panel {
  yLabel: string;
  series: Series[];
  yMin?: number;
  yMax?: number;
  /** Extend the y axis down to 0 when yMin is not given (default true). */
  includeZero?: boolean;
  height?: number;
}

export interface XAxis {
  label: string;
  min: number;
  max: number;
  /** Categorical or hand-placed ticks; default: nice numbers over [min, max]. */
  ticks?: { at: number; label: string }[];
  /** Rotate tick labels (long category names). */
  rotate?: boolean;
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
}

/** Colour-blind-friendly categorical palette (Okabe–Ito, then Tol's muted), dark enough on white. */
export const PALETTE = ['#0072B2', '#D55E00', '#009E73', '#CC79A7', '#E69F00', '#56B4E9', '#332288', '#882255', '#117733', '#999933'];
const DASHES = ['', '7 4', '2 3', '10 3 2 3'];

/** Style for the i-th series: colours first, then dash patterns, so any count stays distinct. */
export function seriesStyle(i: number): { color: string; dash: string } {
  return { color: PALETTE[i % PALETTE.length], dash: DASHES[Math.floor(i / PALETTE.length) % DASHES.length] };
}

const FONT = "font-family=\"'DejaVu Sans', Arial, Helvetica, sans-serif\"";

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

export function renderChart(c: Chart): string {
  const W = c.width ?? 1000;
  const tick = 13;
  const legendEntries = c.panels.flatMap((p) => p.series).filter((s, i, all) => all.findIndex((t) => t.label === s.label) === i);
  const legendW = Math.min(360, Math.max(120, ...legendEntries.map((s) => textWidth(s.label, tick) + 44)));
  const left = 78;
  const right = legendW + 24;
  const plotW = W - left - right;
  const sx = (x: number) => left + ((x - c.x.min) / (c.x.max - c.x.min || 1)) * plotW;

  // Band labels above the first panel: horizontal when they fit, else rotated.
  const bands = c.bands ?? [];
  const bandFont = 11;
  const minBandPx = bands.length ? Math.min(...bands.map((b) => sx(b.x1) - sx(b.x0))) : Infinity;
  const longestBand = bands.length ? Math.max(...bands.map((b) => textWidth(b.label, bandFont))) : 0;
  const rotateBands = bands.length > 0 && longestBand + 4 > minBandPx;
  const bandMargin = bands.length === 0 ? 0 : rotateBands ? longestBand * 0.72 + 14 : 20;

  let y = 34;
  const out: string[] = [];
  out.push(`<text x="${left}" y="${y}" font-size="18" font-weight="bold">${esc(c.title)}</text>`);
  // Subtitle wrapped at word boundaries to the figure width.
  const maxChars = Math.floor((W - left - 16) / (13 * 0.6));
  for (const line of wrap(c.subtitle ?? '', maxChars)) {
    y += 19;
    out.push(`<text x="${left}" y="${y}" font-size="13" fill="#444">${esc(line)}</text>`);
  }
  y += 18 + bandMargin;

  const xTicks =
    c.x.ticks ??
    niceTicks(c.x.min, c.x.max, 8)
      .filter((v) => v >= c.x.min && v <= c.x.max)
      .map((v) => ({ at: v, label: fmtTick(v) }));
  const tops: number[] = [];
  c.panels.forEach((p, pi) => {
    const H = p.height ?? 300;
    const top = y;
    tops.push(top);
    const ys = p.series.flatMap((s) => s.points.flatMap((pt) => [pt.y + (pt.err ?? 0), pt.y - (pt.err ?? 0)])).filter(Number.isFinite);
    const dataMax = ys.length ? Math.max(...ys) : 1;
    const dataMin = ys.length ? Math.min(...ys) : 0;
    let yMin = p.yMin ?? (p.includeZero === false ? dataMin : Math.min(0, dataMin));
    let yMax = p.yMax ?? dataMax;
    if (!(yMax > yMin)) yMax = yMin + 1;
    const covering = niceTicks(yMin, yMax, 6);
    // The axis spans whole tick steps unless the panel fixes a limit.
    yMin = p.yMin ?? covering[0];
    yMax = p.yMax ?? covering[covering.length - 1];
    const yTicks = covering.filter((t) => t >= yMin - 1e-9 && t <= yMax + 1e-9);
    const sy = (v: number) => top + H - ((v - yMin) / (yMax - yMin)) * H;

    out.push(`<g>`);
    bands.forEach((b, bi) => {
      if (bi % 2 === 1) out.push(`<rect x="${f1(sx(b.x0))}" y="${top}" width="${f1(sx(b.x1) - sx(b.x0))}" height="${H}" fill="#f0f0f0"/>`);
    });
    for (const t of yTicks) {
      out.push(`<line x1="${left}" x2="${left + plotW}" y1="${f1(sy(t))}" y2="${f1(sy(t))}" stroke="#d8d8d8" stroke-width="1"/>`);
      out.push(`<text x="${left - 8}" y="${f1(sy(t) + 4.5)}" font-size="${tick}" text-anchor="end">${esc(fmtTick(t))}</text>`);
    }
    for (const b of bands.slice(1)) {
      out.push(`<line x1="${f1(sx(b.x0))}" x2="${f1(sx(b.x0))}" y1="${top}" y2="${top + H}" stroke="#b0b0b0" stroke-width="1" stroke-dasharray="3 3"/>`);
    }
    if (pi === 0) {
      for (const b of bands) {
        const cx = (sx(b.x0) + sx(b.x1)) / 2;
        if (rotateBands) {
          out.push(`<text transform="translate(${f1(cx + 3)},${top - 6}) rotate(-45)" font-size="${bandFont}" fill="#333">${esc(b.label)}</text>`);
        } else {
          out.push(`<text x="${f1(cx)}" y="${top - 6}" font-size="${bandFont}" fill="#333" text-anchor="middle">${esc(b.label)}</text>`);
        }
      }
    }
    // Series, clipped to the panel (error bars or a fixed yMax may reach outside).
    out.push(`<clipPath id="clip${pi}"><rect x="${left}" y="${top - 1}" width="${plotW}" height="${H + 2}"/></clipPath>`);
    out.push(`<g clip-path="url(#clip${pi})">`);
    for (const s of p.series) {
      const pts = s.points.filter((pt) => Number.isFinite(pt.y));
      if (pts.length === 0) continue;
      for (const pt of pts) {
        if (pt.err && pt.err > 0) {
          const x = f1(sx(pt.x));
          const y0 = f1(sy(pt.y - pt.err));
          const y1 = f1(sy(pt.y + pt.err));
          out.push(`<path d="M${x} ${y0}V${y1}M${f1(sx(pt.x) - 4)} ${y0}h8M${f1(sx(pt.x) - 4)} ${y1}h8" stroke="${s.color}" stroke-width="1.3" fill="none"/>`);
        }
      }
      const d = pts.map((pt, i) => `${i ? 'L' : 'M'}${f1(sx(pt.x))} ${f1(sy(pt.y))}`).join('');
      out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2" stroke-linejoin="round"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
      if (s.markers) {
        for (const pt of pts) out.push(`<circle cx="${f1(sx(pt.x))}" cy="${f1(sy(pt.y))}" r="3.5" fill="${s.color}" stroke="#fff" stroke-width="1"/>`);
      }
    }
    out.push(`</g>`);
    out.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${H}" fill="none" stroke="#333" stroke-width="1"/>`);
    // y-axis title, rotated, centred on the panel
    out.push(`<text transform="translate(${left - 56},${f1(top + H / 2)}) rotate(-90)" font-size="14" text-anchor="middle">${esc(p.yLabel)}</text>`);
    for (const t of xTicks) {
      const x = f1(sx(t.at));
      out.push(`<line x1="${x}" x2="${x}" y1="${top + H}" y2="${top + H + 5}" stroke="#333"/>`);
    }
    out.push(`</g>`);
    y = top + H + (pi < c.panels.length - 1 ? 28 : 0);
  });

  // x tick labels and title under the last panel
  const bottom = y;
  let xlabH = 22;
  for (const t of xTicks) {
    const x = sx(t.at);
    if (c.x.rotate) {
      out.push(`<text transform="translate(${f1(x + 4)},${bottom + 14}) rotate(-40)" font-size="${tick}" text-anchor="end">${esc(t.label)}</text>`);
    } else {
      out.push(`<text x="${f1(x)}" y="${bottom + 20}" font-size="${tick}" text-anchor="middle">${esc(t.label)}</text>`);
    }
  }
  if (c.x.rotate) xlabH = Math.max(...xTicks.map((t) => textWidth(t.label, tick))) * 0.66 + 24;
  out.push(`<text x="${f1(left + plotW / 2)}" y="${f1(bottom + xlabH + 22)}" font-size="14" text-anchor="middle">${esc(c.x.label)}</text>`);

  // Legend, top right, one entry per series label
  const lx = left + plotW + 18;
  let ly = (tops[0] ?? y) + 4;
  out.push(`<rect x="${lx - 8}" y="${ly - 10}" width="${legendW}" height="${legendEntries.length * 22 + 10}" fill="#fff" stroke="#ccc"/>`);
  for (const s of legendEntries) {
    out.push(`<line x1="${lx}" x2="${lx + 26}" y1="${ly + 6}" y2="${ly + 6}" stroke="${s.color}" stroke-width="2.5"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>`);
    if (s.markers) out.push(`<circle cx="${lx + 13}" cy="${ly + 6}" r="3.5" fill="${s.color}"/>`);
    out.push(`<text x="${lx + 34}" y="${ly + 10.5}" font-size="${tick}">${esc(s.label)}</text>`);
    ly += 22;
  }

  const H = Math.ceil(Math.max(bottom + xlabH + 40, ly + 12));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ${FONT}>`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}
