/**
 * The report's figures must show their data in every common SVG renderer, not only in librsvg:
 * ImageMagick's own renderer drops anything under a clip-path, so the figures use none, and each
 * one is rasterised here to check that every series leaves pixels of its colour inside a plot
 * frame. Also: stream.svg with many configurations, by-KEY's non-zero baseline, cta-report's PNGs.
 */
import { afterAll, describe, it, expect } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { collectRuns, groupRuns, type Grouped } from './collect.js';
import { byKeySvg, errorByDomainSvg, streamSvg } from './plots.js';
import { clippedPolyline, clipSegment, PALETTE, renderChart, staggerRows } from './svg.js';
import { main as ctaReport } from '../cli/cta-report.js';

const temps: string[] = [];
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

const DOMAINS = ['gaussian_noise', 'shot_noise', 'fog', 'contrast', 'original'];
const BATCHES = 24; // per domain

/**
 * `configs` configurations (alg × beta-thre) × 2 seeds, with batches.jsonl and cache. Errors sit in
 * a narrow band well above 0 (as in ablations) and go above 100 % ± std nowhere.
 */
function fixture(configs: number): { root: string; g: Grouped } {
  const root = mkdtempSync(join(tmpdir(), 'report-fig-'));
  temps.push(root);
  const algs = ['tent', 'eata'];
  for (let c = 0; c < configs; c++) {
    const alg = algs[c % 2];
    const betaThre = Math.floor(c / 2) / 100;
    for (const seed of [1, 2]) {
      const dir = join(root, `c${c}-s${seed}`);
      mkdirSync(dir, { recursive: true });
      const lines: string[] = [];
      const domains = DOMAINS.map((domain, di) => {
        const base = domain === 'original' ? 10 : 40 + 8 * di + c + seed;
        let correct = 0;
        for (let k = 0; k < BATCHES; k++) {
          const e = base + ((k * 7 + c * 3) % 11) - 5;
          const ok = Math.round(100 - e);
          correct += ok;
          lines.push(JSON.stringify({ batch: lines.length, domain, n: 100, correct: ok, error: 100 - ok, cache_mb: 10 + c + (k % 3) }));
        }
        const n = 100 * BATCHES;
        return { domain, severity: domain === 'original' ? null : 5, n, correct, error: (100 * (n - correct)) / n, batches: BATCHES, seconds: 1, img_per_s: 1, max_cache_mb: 12 + c, avg_cache_mb: 11 + c };
      });
      const corr = domains.filter((d) => d.domain !== 'original');
      const summary = {
        config: { alg, accumBn: false, betaThre, seed, out: dir, backend: 'wasm', batchSize: 100 },
        domains,
        mean_error: corr.reduce((a, d) => a + d.error, 0) / corr.length,
        mean_error_all: domains.reduce((a, d) => a + d.error, 0) / domains.length,
        complete: true,
      };
      writeFileSync(join(dir, 'summary.json'), JSON.stringify(summary));
      writeFileSync(join(dir, 'batches.jsonl'), lines.join('\n') + '\n');
    }
  }
  return { root, g: groupRuns(collectRuns([root]).runs) };
}

interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

const num = (s: string, attr: string) => Number(new RegExp(`\\b${attr}="([-0-9.]+)"`).exec(s)![1]);
const boxOf = (tag: string): Box => ({ x: num(tag, 'x'), y: num(tag, 'y'), w: num(tag, 'width'), h: num(tag, 'height') });

/** The plot frames (drawn last over each panel's data): the areas where data belongs. */
function frames(svg: string): Box[] {
  return [...svg.matchAll(/<rect [^>]*fill="none" stroke="#333"[^>]*\/>/g)].map((m) => boxOf(m[0]));
}

/** The legend box, if any. */
function legendBox(svg: string): Box | null {
  const m = /<rect [^>]*fill="#fff" stroke="#ccc"[^>]*\/>/.exec(svg);
  return m ? boxOf(m[0]) : null;
}

const overlaps = (a: Box, b: Box) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

/**
 * What ImageMagick's internal renderer does with the figure: every element carrying a clip-path
 * (a group and all it holds) is left out.
 */
function withoutClipped(svg: string): string {
  let out = svg.replace(/<clipPath[\s\S]*?<\/clipPath>/g, '');
  for (;;) {
    const start = out.search(/<g [^>]*clip-path=/);
    if (start < 0) return out;
    // the matching </g>, counting nested groups
    let depth = 0;
    const re = /<g[\s>]|<\/g>/g;
    re.lastIndex = start;
    let end = -1;
    for (let m = re.exec(out); m; m = re.exec(out)) {
      depth += m[0] === '</g>' ? -1 : 1;
      if (depth === 0) {
        end = m.index + m[0].length;
        break;
      }
    }
    out = out.slice(0, start) + out.slice(end);
  }
}

/** Rasterised at 1 px per unit: RGB pixels and width. */
async function raster(svg: string): Promise<{ px: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  return { px: data, width: info.width, height: info.height };
}

/** Pixels within `box` (inset by 2 px, off the frame line) close to `hex`. */
function countColour(r: { px: Buffer; width: number }, box: Box, hex: string): number {
  const [cr, cg, cb] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  let n = 0;
  for (let y = Math.ceil(box.y + 2); y < box.y + box.h - 2; y++) {
    for (let x = Math.ceil(box.x + 2); x < box.x + box.w - 2; x++) {
      const o = (y * r.width + x) * 3;
      if (Math.abs(r.px[o] - cr) <= 24 && Math.abs(r.px[o + 1] - cg) <= 24 && Math.abs(r.px[o + 2] - cb) <= 24) n++;
    }
  }
  return n;
}

function figures(g: Grouped): Record<string, string> {
  return { 'error-by-domain': errorByDomainSvg(g), stream: streamSvg(g)!, 'by-alg': byKeySvg(g, 'alg'), 'by-beta-thre': byKeySvg(g, 'betaThre') };
}

describe('report figures', () => {
  it('use no clip-path, mask, filter, CSS, foreign objects or rotated text (renderers disagree on them)', () => {
    for (const configs of [3, 10]) {
      for (const [name, svg] of Object.entries(figures(fixture(configs).g))) {
        expect(svg, name).not.toMatch(/clip-path|<clipPath|<mask|mask=|<filter|filter=|<style|style=|<foreignObject|<use\b|<symbol|rotate\(|matrix\(/);
      }
    }
  });

  it('data outside a panel is clipped geometrically, to the frame', () => {
    const box = { x0: 0, y0: 0, x1: 10, y1: 10 };
    expect(clipSegment(-5, 5, 15, 5, box)).toEqual([0, 5, 10, 5]);
    expect(clipSegment(0, 20, 10, 20, box)).toBeNull();
    // leaves through the top and comes back: two pieces
    expect(clippedPolyline([[0, 5], [5, -5], [10, 5]], box)).toBe('M0 5L2.5 0M7.5 0L10 5');
    const svg = renderChart({
      title: 't',
      x: { label: 'x', min: 0, max: 2 },
      panels: [{ yLabel: 'y', yMin: 0, yMax: 10, series: [{ label: 's', color: PALETTE[0], markers: true, points: [{ x: 0, y: 5, err: 20 }, { x: 1, y: 30 }, { x: 2, y: 5 }] }] }],
    });
    const [f] = frames(svg);
    const coords = [...svg.matchAll(/<path d="([^"]*)" (?:fill="none" )?stroke="#0072B2"/g)].flatMap((m) => [...m[1].matchAll(/[ML]([-0-9.]+) ([-0-9.]+)/g)].map((c) => [Number(c[1]), Number(c[2])]));
    expect(coords.length).toBeGreaterThan(3);
    for (const [x, y] of coords) {
      expect(x).toBeGreaterThanOrEqual(f.x);
      expect(x).toBeLessThanOrEqual(f.x + f.w);
      expect(y).toBeGreaterThanOrEqual(f.y - 1);
      expect(y).toBeLessThanOrEqual(f.y + f.h + 1);
    }
    // data markers (white-edged, unlike the legend's): none for the point at y = 30
    expect(svg.match(/<circle [^>]*stroke="#fff"/g)).toHaveLength(2);
  });

  it('crowded labels are staggered over rows', () => {
    expect(staggerRows([0, 50, 100], [40, 40, 40])).toBe(1);
    expect(staggerRows([0, 30, 60, 90], [40, 40, 40, 40])).toBe(2);
    expect(staggerRows([0, 10, 20, 30, 40], [100, 100, 100, 100, 100])).toBe(4);
  });

  for (const configs of [3, 10]) {
    it(`every series draws pixels of its colour inside a plot frame, even where clip-path is dropped (${configs} configurations)`, async () => {
      const { g } = fixture(configs);
      expect(g.groups).toHaveLength(configs);
      for (const [name, svg] of Object.entries(figures(g))) {
        const fr = frames(svg);
        expect(fr.length, name).toBeGreaterThan(0);
        const r = await raster(withoutClipped(svg));
        // by-KEY draws one series per value of the other keys, the others one per configuration
        const colours = [...new Set([...svg.matchAll(/<path d="[^"]*" fill="none" stroke="(#[0-9A-Fa-f]{6})"/g)].map((m) => m[1]))].filter((c) => PALETTE.includes(c));
        expect(colours.length, name).toBeGreaterThan(0);
        for (const c of colours) {
          const n = fr.reduce((a, b) => a + countColour(r, b, c), 0);
          expect(n, `${name}: pixels of ${c} inside the plot frames`).toBeGreaterThan(20);
        }
      }
    });
  }

  it('stream.svg with 8+ configurations: one panel per configuration, in its colour, legend clear of data', async () => {
    const { g } = fixture(10);
    const svg = streamSvg(g)!;
    const fr = frames(svg);
    // 10 error panels, then the cache panel
    expect(fr).toHaveLength(11);
    const r = await raster(svg);
    g.groups.forEach((grp, i) => {
      expect(svg).toContain(`>${grp.label}</text>`);
      expect(countColour(r, fr[i], PALETTE[i]), `${grp.label} in its own panel`).toBeGreaterThan(20);
      // only configuration i is drawn in colour in panel i
      const other = PALETTE[(i + 1) % PALETTE.length];
      expect(countColour(r, fr[i], other), `panel ${i} has no ${other}`).toBe(0);
    });
    const legend = legendBox(svg);
    for (const f of fr) if (legend) expect(overlaps(legend, f)).toBe(false);
  });

  it('with few configurations, stream.svg overlays them in one error panel', () => {
    const fr = frames(streamSvg(fixture(3).g)!);
    expect(fr).toHaveLength(2);
  });

  it('by-KEY.svg says when its error axis does not start at zero', () => {
    const { g } = fixture(4);
    const svg = byKeySvg(g, 'alg');
    // mean errors are in the 50s: the axis is zoomed in
    expect(svg).toMatch(/error axis starts at [\d.]+ %, not at 0/);
    expect(svg).toContain('data-axis-break');
    // the cache panel starts at 0: one break mark only
    expect(svg.match(/data-axis-break/g)).toHaveLength(1);
    expect(errorByDomainSvg(g)).not.toContain('not at 0');
  });

  it('cta-report writes a PNG next to each SVG', async () => {
    const { root } = fixture(3);
    const out = join(root, 'report');
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    try {
      await ctaReport([root, '--by', 'alg', '--out', out]);
    } finally {
      process.stdout.write = write;
    }
    expect(process.exitCode ?? 0).toBe(0);
    for (const name of ['error-by-domain', 'stream', 'by-alg']) {
      expect(existsSync(join(out, `${name}.svg`)), name).toBe(true);
      const png = readFileSync(join(out, `${name}.png`));
      const meta = await sharp(png).metadata();
      expect(meta.format).toBe('png');
      const svgWidth = num(readFileSync(join(out, `${name}.svg`), 'utf8'), 'width');
      expect(meta.width, name).toBe(2 * svgWidth);
    }
  });
});
