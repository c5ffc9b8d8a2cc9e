/**
 * Error against trainable parameters against backprop memory, for runs that differ in
 * --adapt-params (docs/adapters.md#report): one point per configuration, x = the parameters the
 * method trained (log scale: the kinds span 10³–10⁷ on ViT-B/16), y = mean error over the
 * corruptions, marker area ∝ the measured max backprop MB (docs/memory.md#measured), with a second
 * panel of the same error against that MB on a linear axis so the memory can be read off exactly.
 * Colour = method (one series each), every point labelled with its kind.
 *
 * Drawn by its own small renderer (two panels side by side share the y axis, which renderChart's
 * stacked panels do not) under svg.ts's rules: plain shapes and horizontal text only, no clip-path,
 * points outside a panel are not drawn.
 */
import type { Stat, Grouped } from './collect.js';
import { memoryRows } from './memory.js';
import { esc, fmtTick, niceTicks, panelRange, seriesStyle, textWidth, wrap } from './svg.js';

export interface AdaptParamsPoint {
  /** The group's label (the report's row). */
  label: string;
  /** The series: the method (+ how it saves memory, as in error-vs-memory.svg). */
  series: string;
  kind: string;
  /** The text beside the point: the kind, or the group's label where a series has a kind twice. */
  text: string;
  params: number;
  backpropMb: number;
  error: Stat;
}

/**
 * The points of the figure: groups that recorded trainable parameters, a measured backprop figure
 * and a mean error; empty unless the groups differ in --adapt-params.
 */
export function adaptParamsPoints(g: Grouped): AdaptParamsPoint[] {
  if (!g.varied.includes('adaptParams')) return [];
  const rows = memoryRows(g).filter((r) => r.meanError && r.trainableParams && r.trainableParams.mean > 0 && r.maxBackpropMb);
  const pts = rows.map((r) => ({
    label: r.label,
    series: r.family === 'plain' ? r.alg : `${r.alg} + ${r.family}`,
    kind: r.adaptParams ?? 'norm',
    text: r.adaptParams ?? 'norm',
    params: r.trainableParams!.mean,
    backpropMb: r.maxBackpropMb!.mean,
    error: r.meanError!,
  }));
  for (const p of pts) if (pts.filter((q) => q.series === p.series && q.kind === p.kind).length > 1) p.text = p.label;
  return pts;
}

/** 1k, 20k, 2.5M: parameter counts on the log axis. */
export function fmtCount(v: number): string {
  const [d, s] = v >= 1e9 ? [1e9, 'G'] : v >= 1e6 ? [1e6, 'M'] : v >= 1e3 ? [1e3, 'k'] : [1, ''];
  return `${Number((v / d).toPrecision(3))}${s}`;
}

/** Ticks of a log axis over [lo, hi] (values, not logs): the powers of ten, with 2 and 5 between them when fewer than three fit. */
export function logTicks(lo: number, hi: number): number[] {
  const decades: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) decades.push(10 ** e);
  const within = (v: number) => v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9);
  const major = decades.filter(within);
  if (major.length >= 3) return major;
  return decades.flatMap((d) => [d, 2 * d, 5 * d]).filter(within);
}

interface Box {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

const f1 = (v: number) => (Math.round(v * 10) / 10).toString();
const hit = (a: Box, b: Box) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;

/**
 * Places each label beside its marker: right, left, above, below, then further out, the first spot
 * inside the panel that overlaps no other label or marker; the right-hand spot if none does.
 */
function placeLabels(items: { x: number; y: number; r: number; text: string }[], frame: Box, size: number): { x: number; y: number; anchor: 'start' | 'end' | 'middle' }[] {
  const taken: Box[] = items.map((it) => ({ x0: it.x - it.r, y0: it.y - it.r, x1: it.x + it.r, y1: it.y + it.r }));
  const out: { x: number; y: number; anchor: 'start' | 'end' | 'middle' }[] = [];
  for (const [i, it] of items.entries()) {
    const w = textWidth(it.text, size);
    const h = size;
    const cands: { x: number; y: number; anchor: 'start' | 'end' | 'middle'; box: Box }[] = [];
    for (const extra of [0, 10, 22]) {
      const g = it.r + 4 + extra;
      cands.push({ x: it.x + g, y: it.y + h * 0.35, anchor: 'start', box: { x0: it.x + g, y0: it.y - h / 2, x1: it.x + g + w, y1: it.y + h / 2 } });
      cands.push({ x: it.x - g, y: it.y + h * 0.35, anchor: 'end', box: { x0: it.x - g - w, y0: it.y - h / 2, x1: it.x - g, y1: it.y + h / 2 } });
      cands.push({ x: it.x, y: it.y - g - 2, anchor: 'middle', box: { x0: it.x - w / 2, y0: it.y - g - 2 - h, x1: it.x + w / 2, y1: it.y - g } });
      cands.push({ x: it.x, y: it.y + g + h, anchor: 'middle', box: { x0: it.x - w / 2, y0: it.y + g, x1: it.x + w / 2, y1: it.y + g + h + 2 } });
    }
    const fits = (b: Box) => b.x0 >= frame.x0 + 2 && b.x1 <= frame.x1 - 2 && b.y0 >= frame.y0 + 2 && b.y1 <= frame.y1 - 2;
    const own = taken[i];
    const best = cands.find((c) => fits(c.box) && taken.every((t) => t === own || !hit(t, c.box))) ?? cands.find((c) => fits(c.box)) ?? cands[0];
    taken.push(best.box);
    out.push({ x: best.x, y: best.y, anchor: best.anchor });
  }
  return out;
}

/** The figure, or null with fewer than two points or when the runs do not differ in --adapt-params. */
export function errorParamsCacheSvg(g: Grouped): string | null {
  const pts = adaptParamsPoints(g);
  if (pts.length < 2) return null;
  const seriesNames = [...new Set(pts.map((p) => p.series))];
  const colour = (p: AdaptParamsPoint) => seriesStyle(seriesNames.indexOf(p.series)).color;

  const W = 1100;
  const tick = 13;
  const labelFont = 12;
  const left = 78;
  const gap = 74;
  const legendW = Math.min(300, Math.max(170, ...seriesNames.map((s) => textWidth(s, tick) + 44)));
  const plotW = (W - left - gap - legendW - 24) / 2;
  const H = 380;
  const boxA = { x0: left, x1: left + plotW };
  const boxB = { x0: left + plotW + gap, x1: left + 2 * plotW + gap };

  // x of the left panel: log10 of the parameters, a quarter decade of room each side
  const lp = pts.map((p) => Math.log10(p.params));
  const [la, lb] = [Math.min(...lp) - 0.25, Math.max(...lp) + 0.25];
  const sxA = (v: number) => boxA.x0 + ((Math.log10(v) - la) / (lb - la)) * plotW;
  // x of the right panel: MB from 0 to a nice number above the largest
  const mbMax = Math.max(...pts.map((p) => p.backpropMb));
  const mbTicks = niceTicks(0, mbMax * 1.08 || 1, 5);
  const mbTop = mbTicks[mbTicks.length - 1];
  const sxB = (v: number) => boxB.x0 + (v / mbTop) * plotW;
  // y shared: the error, zoomed in on the data as the other error-vs-* figures
  const yPanel = { yLabel: '', includeZero: false, height: H, series: [{ label: '', color: '', points: pts.map((p) => ({ x: 0, y: p.error.mean, err: p.error.std })) }] };
  const { yMin, yMax, ticks: yTicks } = panelRange(yPanel);

  const out: string[] = [];
  let y = 34;
  out.push(`<text x="${left}" y="${y}" font-size="18" font-weight="bold">Error against trainable parameters and backprop memory</text>`);
  const subtitle =
    'one point per configuration, labelled by its --adapt-params kind; colour = method. Left: x = parameters the method trained (log scale), ' +
    'marker area ∝ the measured max backprop MB. Right: the same error against that MB. y = mean error over the corruptions' +
    (pts.some((p) => p.error.std !== null && p.error.std > 0) ? ', bars ± 1 std over seeds' : '');
  const maxChars = Math.floor((W - left - 16) / (13 * 0.6));
  for (const line of wrap(subtitle, maxChars)) {
    y += 19;
    out.push(`<text x="${left}" y="${y}" font-size="13" fill="#444">${esc(line)}</text>`);
  }
  if (yMin > 0) {
    y += 19;
    out.push(`<text x="${left}" y="${y}" font-size="13" font-weight="bold" fill="#B00020">${esc(`Note: the error axis starts at ${fmtTick(yMin)} %, not at 0 (zoomed in on the differences)`)}</text>`);
  }
  y += 42;
  const top = y;
  const sy = (v: number) => top + H - ((v - yMin) / (yMax - yMin)) * H;
  out.push(`<text x="6" y="${top - 10}" font-size="14">mean error over the corruptions (%)</text>`);

  // Marker radius: area ∝ MB (min 2.5 px so the smallest stays visible).
  const rMax = 20;
  const radius = (mb: number) => Math.max(2.5, rMax * Math.sqrt(mb / (mbMax || 1)));
  const panels: { box: { x0: number; x1: number }; sx: (p: AdaptParamsPoint) => number; r: (p: AdaptParamsPoint) => number; ticks: { at: number; label: string }[]; xLabel: string; panel: string }[] = [
    {
      box: boxA,
      sx: (p) => sxA(p.params),
      r: (p) => radius(p.backpropMb),
      ticks: logTicks(10 ** la, 10 ** lb).map((v) => ({ at: sxA(v), label: fmtCount(v) })),
      xLabel: 'trainable parameters (log scale)',
      panel: 'params',
    },
    {
      box: boxB,
      sx: (p) => sxB(p.backpropMb),
      r: () => 4.5,
      ticks: mbTicks.map((v) => ({ at: sxB(v), label: fmtTick(v) })),
      xLabel: 'measured max backprop memory (MB = 1e6 bytes)',
      panel: 'memory',
    },
  ];
  for (const pn of panels) {
    const { x0, x1 } = pn.box;
    const frame: Box = { x0, y0: top, x1, y1: top + H };
    out.push(`<g data-panel="${pn.panel}">`);
    for (const t of yTicks) {
      out.push(`<line x1="${f1(x0)}" x2="${f1(x1)}" y1="${f1(sy(t))}" y2="${f1(sy(t))}" stroke="#d8d8d8" stroke-width="1"/>`);
      out.push(`<text x="${f1(x0 - 8)}" y="${f1(sy(t) + 4.5)}" font-size="${tick}" text-anchor="end">${esc(fmtTick(t))}</text>`);
    }
    for (const t of pn.ticks) {
      out.push(`<line x1="${f1(t.at)}" x2="${f1(t.at)}" y1="${top}" y2="${top + H}" stroke="#ececec" stroke-width="1"/>`);
      out.push(`<line x1="${f1(t.at)}" x2="${f1(t.at)}" y1="${top + H}" y2="${top + H + 5}" stroke="#333"/>`);
      out.push(`<text x="${f1(t.at)}" y="${top + H + 20}" font-size="${tick}" text-anchor="middle">${esc(t.label)}</text>`);
    }
    out.push(`<text x="${f1((x0 + x1) / 2)}" y="${top + H + 44}" font-size="14" text-anchor="middle">${esc(pn.xLabel)}</text>`);
    // the largest markers first, so that smaller ones stay visible on top
    const order = [...pts].sort((a, b) => pn.r(b) - pn.r(a));
    const items = order.map((p) => ({ p, x: pn.sx(p), y: sy(p.error.mean), r: pn.r(p), text: p.text }));
    const shown = items.filter((it) => it.x >= x0 - 1e-6 && it.x <= x1 + 1e-6 && it.y >= top - 1e-6 && it.y <= top + H + 1e-6);
    for (const it of shown) {
      const sd = it.p.error.std;
      if (sd && sd > 0) {
        const y0 = Math.min(top + H, sy(it.p.error.mean - sd));
        const y1 = Math.max(top, sy(it.p.error.mean + sd));
        out.push(`<path d="M${f1(it.x)} ${f1(y0)}V${f1(y1)}M${f1(it.x - 4)} ${f1(y0)}h8M${f1(it.x - 4)} ${f1(y1)}h8" stroke="${colour(it.p)}" stroke-width="1.3" fill="none"/>`);
      }
    }
    for (const it of shown) {
      const c = colour(it.p);
      const data = `data-series="${esc(it.p.series)}" data-kind="${esc(it.p.kind)}" data-params="${it.p.params}" data-mb="${Number(it.p.backpropMb.toFixed(3))}" data-error="${Number(it.p.error.mean.toFixed(4))}"`;
      if (pn.panel === 'params') out.push(`<circle ${data} cx="${f1(it.x)}" cy="${f1(it.y)}" r="${f1(it.r)}" fill="${c}" fill-opacity="0.35" stroke="${c}" stroke-width="1.5"/>`);
      else out.push(`<circle ${data} cx="${f1(it.x)}" cy="${f1(it.y)}" r="${it.r}" fill="${c}" stroke="#fff" stroke-width="1"/>`);
    }
    const places = placeLabels(shown, frame, labelFont);
    shown.forEach((it, i) => {
      const pl = places[i];
      out.push(`<text data-label="${esc(it.p.kind)}" x="${f1(pl.x)}" y="${f1(pl.y)}" font-size="${labelFont}" fill="#222" text-anchor="${pl.anchor}">${esc(it.text)}</text>`);
    });
    out.push(`<rect x="${f1(x0)}" y="${top}" width="${f1(x1 - x0)}" height="${H}" fill="none" stroke="#333" stroke-width="1"/>`);
    if (yMin > 0) {
      const by = top + H - 9;
      out.push(`<rect data-axis-break="" x="${f1(x0 - 6)}" y="${by - 3}" width="12" height="6" fill="#fff" stroke="none"/>`);
      out.push(`<path d="M${f1(x0 - 6)} ${by + 1}l12 -5M${f1(x0 - 6)} ${by + 5}l12 -5" stroke="#333" stroke-width="1.2" fill="none"/>`);
    }
    out.push(`</g>`);
  }

  // Legend: the methods, then the marker sizes of the left panel.
  const lx = boxB.x1 + 26;
  let ly = top + 4;
  // up to three reference sizes: the smallest, a middle and the largest nice value up to the data's max
  const nice = niceTicks(0, mbMax, 4).filter((v) => v > 0 && v <= mbMax * 1.0001);
  const sizes = nice.length > 3 ? [nice[0], nice[Math.floor(nice.length / 2)], nice[nice.length - 1]] : nice;
  if (sizes.length === 0) sizes.push(Number(mbMax.toPrecision(2)));
  const sizeH = sizes.reduce((a, v) => a + Math.max(2 * radius(v), 14) + 8, 0);
  out.push(`<rect x="${f1(lx - 8)}" y="${ly - 10}" width="${f1(legendW)}" height="${f1(seriesNames.length * 22 + 50 + sizeH)}" fill="#fff" stroke="#ccc"/>`);
  seriesNames.forEach((s, i) => {
    const c = seriesStyle(i).color;
    out.push(`<circle cx="${f1(lx + 10)}" cy="${ly + 6}" r="5" fill="${c}"/>`);
    out.push(`<text x="${f1(lx + 24)}" y="${ly + 10.5}" font-size="${tick}">${esc(s)}</text>`);
    ly += 22;
  });
  ly += 8;
  out.push(`<text x="${f1(lx)}" y="${ly + 6}" font-size="12" fill="#444">marker area (left panel):</text>`);
  out.push(`<text x="${f1(lx)}" y="${ly + 22}" font-size="12" fill="#444">measured backprop MB</text>`);
  ly += 32;
  for (const v of sizes) {
    const r = radius(v);
    const h = Math.max(2 * r, 14);
    out.push(`<circle data-size-legend="${v}" cx="${f1(lx + rMax)}" cy="${f1(ly + h / 2)}" r="${f1(r)}" fill="#888" fill-opacity="0.35" stroke="#666" stroke-width="1.2"/>`);
    out.push(`<text x="${f1(lx + 2 * rMax + 10)}" y="${f1(ly + h / 2 + 4.5)}" font-size="${tick}">${esc(`${fmtTick(v)} MB`)}</text>`);
    ly += h + 8;
  }

  const total = Math.ceil(Math.max(top + H + 64, ly + 12));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${total}" viewBox="0 0 ${W} ${total}" font-family="'DejaVu Sans', Arial, Helvetica, sans-serif" stroke="none">`,
    `<rect x="0" y="0" width="${W}" height="${total}" fill="#fff" stroke="none"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}
