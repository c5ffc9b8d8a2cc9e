/**
 * The report's figures, as SVG strings:
 * - error per domain per method (mean over seeds, ± std bars),
 * - error and cache MB over the stream, batch by batch (from batches.jsonl),
 * - with --by KEY, mean error (and max cache) against the values of KEY.
 * and a PNG of each (svgToPng) for viewers and documents that take no SVG.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { toKebab } from '../config/schema.js';
import { formatParam, type Grouped } from './collect.js';
import { pivot, shortName } from './tables.js';
import { fmtTick, panelRange, renderChart, seriesStyle, type Panel, type Series } from './svg.js';

export interface BatchLine {
  batch: number;
  domain: string;
  n: number;
  correct: number;
  error: number;
  cache_mb?: number | null;
}

/** Reads a run's batches.jsonl (a truncated last line, from a killed run, is ignored). */
export function readBatches(dir: string): BatchLine[] {
  let text: string;
  try {
    text = readFileSync(join(dir, 'batches.jsonl'), 'utf8');
  } catch {
    return [];
  }
  const out: BatchLine[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as BatchLine);
    } catch {
      break;
    }
  }
  return out;
}

export function errorByDomainSvg(g: Grouped): string {
  const domains = g.domains;
  const series: Series[] = g.groups.map((grp, i) => ({
    label: grp.label,
    ...seriesStyle(i),
    markers: true,
    points: domains.flatMap((d, xi) => {
      const s = grp.domains.find((x) => x.domain === d);
      return s ? [{ x: xi, y: s.mean, err: s.std }] : [];
    }),
  }));
  const seeds = Math.max(...g.groups.map((x) => x.seeds.length));
  return renderChart({
    title: 'Top-1 error per domain',
    subtitle: `${g.groups.length} configuration${g.groups.length === 1 ? '' : 's'}, domains in stream order${seeds > 1 ? '; mean over seeds, bars ± 1 std' : ''}`,
    x: {
      label: 'domain (stream order)',
      min: -0.5,
      max: domains.length - 0.5,
      ticks: domains.map((d, i) => ({ at: i, label: d === 'original' ? 'clean (original)' : d, short: shortName(d) })),
    },
    panels: [{ yLabel: 'error (%)', series, yMin: 0, height: 340 }],
  });
}

interface StreamSeries {
  label: string;
  /** Per batch: summed correct / n over the group's runs, and mean cache MB (null if absent). */
  n: number[];
  correct: number[];
  cache: (number | null)[];
  domains: string[];
}

/** Batch-by-batch sums over a group's runs (seeds), up to the shortest run. */
function streamOf(label: string, dirs: readonly string[]): StreamSeries | null {
  const runs = dirs.map(readBatches).filter((b) => b.length > 0);
  if (runs.length === 0) return null;
  const len = Math.min(...runs.map((r) => r.length));
  const s: StreamSeries = { label, n: [], correct: [], cache: [], domains: [] };
  for (let i = 0; i < len; i++) {
    let n = 0;
    let c = 0;
    const caches: number[] = [];
    for (const r of runs) {
      n += r[i].n;
      c += r[i].correct;
      if (typeof r[i].cache_mb === 'number') caches.push(r[i].cache_mb as number);
    }
    s.n.push(n);
    s.correct.push(c);
    s.cache.push(caches.length ? caches.reduce((a, b) => a + b, 0) / caches.length : null);
    s.domains.push(runs[0][i].domain);
  }
  return s;
}

/** Contiguous runs of equal domain names: [start, end) batch indices. */
export function segments(domains: readonly string[]): { name: string; start: number; end: number }[] {
  const out: { name: string; start: number; end: number }[] = [];
  domains.forEach((d, i) => {
    const last = out[out.length - 1];
    if (last && last.name === d) last.end = i + 1;
    else out.push({ name: d, start: i, end: i + 1 });
  });
  return out;
}

/**
 * Error over a centred window of `w` batches that never crosses a domain boundary (pooled: total
 * wrong / total images in the window), so each domain's level is visible without smearing jumps.
 */
export function smoothError(s: { n: number[]; correct: number[]; domains: string[] }, w: number): number[] {
  const out: number[] = new Array(s.n.length).fill(NaN);
  const half = Math.floor(w / 2);
  for (const seg of segments(s.domains)) {
    for (let i = seg.start; i < seg.end; i++) {
      let n = 0;
      let c = 0;
      for (let j = Math.max(seg.start, i - half); j < Math.min(seg.end, i - half + w); j++) {
        n += s.n[j];
        c += s.correct[j];
      }
      out[i] = n > 0 ? (100 * (n - c)) / n : NaN;
    }
  }
  return out;
}

/** Averages consecutive points into at most `max` buckets (keeps SVGs small for 10k-batch streams). */
export function bucket(xs: readonly (number | null)[], max: number): { x: number; y: number }[] {
  const k = Math.max(1, Math.ceil(xs.length / max));
  const out: { x: number; y: number }[] = [];
  for (let i = 0; i < xs.length; i += k) {
    const vals = xs.slice(i, i + k).filter((v): v is number => v !== null && Number.isFinite(v));
    if (vals.length) out.push({ x: i + (Math.min(k, xs.length - i) - 1) / 2, y: vals.reduce((a, b) => a + b, 0) / vals.length });
  }
  return out;
}

export function defaultSmoothing(domains: readonly string[]): number {
  const lens = segments(domains).map((s) => s.end - s.start).sort((a, b) => a - b);
  const median = lens[Math.floor(lens.length / 2)] ?? 1;
  return Math.max(1, Math.round(median / 20));
}

/**
 * More configurations than this and the stream's error is drawn as small multiples (one panel per
 * configuration, the others grey behind it): overlaid, that many noisy lines cannot be told apart.
 */
export const MAX_OVERLAID = 4;

export function streamSvg(g: Grouped, opts: { smooth?: number } = {}): string | null {
  const streams = g.groups.map((grp) => streamOf(grp.label, grp.runs.map((r) => r.dir)));
  const ok = streams.map((s, i) => ({ s, i })).filter((x): x is { s: StreamSeries; i: number } => x.s !== null);
  if (ok.length === 0) return null;
  const ref = ok.reduce((a, b) => (b.s.n.length > a.s.n.length ? b : a)).s;
  const w = opts.smooth ?? defaultSmoothing(ref.domains);
  const MAXPTS = 1500;
  const errSeries: Series[] = ok.map(({ s, i }) => ({ label: s.label, ...seriesStyle(i), points: bucket(smoothError(s, w), MAXPTS) }));
  const multiples = errSeries.length > MAX_OVERLAID;
  let panels: Panel[];
  if (multiples) {
    // Context lines are coarser: each panel repeats all the others, and the SVG should stay small.
    const context: Series[] = ok.map(({ s }) => ({ label: s.label, color: '', context: true, points: bucket(smoothError(s, w), 300) }));
    panels = errSeries.map((es, k) => ({
      yLabel: 'error (%)',
      title: es.label,
      titleColor: es.color,
      series: [...context.filter((_, j) => j !== k), es],
      yMin: 0,
      yMax: 100,
      height: 110,
    }));
  } else {
    panels = [{ yLabel: 'error (%)', series: errSeries, yMin: 0, yMax: 100, height: 300 }];
  }
  const withCache = ok.filter(({ s }) => s.cache.some((c) => c !== null));
  if (withCache.length) {
    panels.push({
      yLabel: 'cache (MB)',
      series: withCache.map(({ s, i }) => ({ label: s.label, ...seriesStyle(i), points: bucket(s.cache, MAXPTS) })),
      yMin: 0,
      height: 220,
    });
  }
  const seeds = Math.max(...g.groups.map((x) => x.seeds.length));
  return renderChart({
    title: withCache.length ? 'Error and backprop cache over the stream' : 'Error over the stream',
    subtitle:
      `error pooled over ${w === 1 ? 'each batch' : `a ${w}-batch window within each domain`}` +
      `${seeds > 1 ? ' and over seeds' : ''}; shaded bands = domains` +
      (multiples ? '; one error panel per configuration, the others in grey behind it' : '') +
      (withCache.length ? `; cache = analytic backprop cache per batch${seeds > 1 ? ' (mean over seeds)' : ''}` : ''),
    x: { label: 'batch (stream order)', min: -0.5, max: ref.n.length - 0.5 },
    bands: segments(ref.domains).map((s) => ({ x0: s.start - 0.5, x1: s.end - 0.5, label: shortName(s.name) })),
    panels,
  });
}

export function byKeySvg(g: Grouped, key: string): string {
  const p = pivot(g, key);
  const k = toKebab(key);
  const mk = (pick: 'meanError' | 'maxCacheMb'): Series[] =>
    p.rows.map((r, i) => ({
      label: r.label,
      ...seriesStyle(i),
      markers: true,
      points: r.cells.flatMap((c, xi) => (c && c[pick] ? [{ x: xi, y: c[pick]!.mean, err: c[pick]!.std }] : [])),
    }));
  // Ablation differences are often a fraction of the error itself: zoom in on the data range.
  const panels: Panel[] = [{ yLabel: 'mean error (%)', series: mk('meanError'), includeZero: false, height: 300 }];
  if (g.groups.some((x) => x.maxCacheMb)) panels.push({ yLabel: 'max cache (MB)', series: mk('maxCacheMb'), yMin: 0, height: 220 });
  // A zoomed axis makes small differences look large: say so in words as well as with the break mark.
  const errMin = panelRange(panels[0]).yMin;
  return renderChart({
    title: `Mean error${panels.length > 1 ? ' and cache' : ''} by ${k}`,
    subtitle: 'error averaged over the corruption domains; values evenly spaced in listed order',
    warning: errMin > 0 ? `Note: the error axis starts at ${fmtTick(errMin)} %, not at 0 (zoomed in on the differences)` : undefined,
    x: { label: k, min: -0.5, max: p.values.length - 0.5, ticks: p.values.map((v, i) => ({ at: i, label: formatParam(v) })) },
    panels,
  });
}

/**
 * A PNG of an SVG figure, rendered by sharp (librsvg) at `scale` × its size (2: sharp on a HiDPI
 * screen or a printed page).
 */
export async function svgToPng(svg: string, scale = 2): Promise<Buffer> {
  return sharp(Buffer.from(svg), { density: 72 * scale }).png({ compressionLevel: 9 }).toBuffer();
}
