/**
 * error-params-cache.svg (src/report/adapt-params.ts): runs that differ in --adapt-params plotted as
 * error against trainable parameters (log x, marker area ∝ measured backprop MB) and against the
 * MB; checked on the SVG's points, labels and values (not pixels, except that every method's colour
 * shows inside a frame), and that cta-report writes it, with its PNG, for `--by adapt-params`.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { collectRuns, groupRuns } from './collect.js';
import { adaptParamsPoints, errorParamsCacheSvg, fmtCount, logTicks } from './adapt-params.js';
import { PALETTE } from './svg.js';
import { main as ctaReport } from '../cli/cta-report.js';

const temps: string[] = [];
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

/** ViT-B/16 counts of the kinds' defaults (src/adapters/vit-b16-shapes.test.ts) and made-up MB / errors. */
const KINDS: Record<string, { params: number; mb: number; err: number }> = {
  norm: { params: 38_400, mb: 356, err: 71 },
  lora: { params: 294_912, mb: 384, err: 69 },
  kadaptation: { params: 40_960, mb: 420, err: 70 },
  adapter: { params: 2_379_264, mb: 300, err: 68 },
  vida: { params: 7_133_184, mb: 700, err: 66 },
};
const DOMAINS = ['gaussian_noise', 'fog', 'original'];

interface Run {
  alg: string;
  kind: string;
  seed: number;
  /** Added to the error and the MB (seeds differ). */
  shift?: number;
  extra?: Record<string, unknown>;
}

function writeRuns(runs: Run[]): string {
  const root = mkdtempSync(join(tmpdir(), 'report-adapt-'));
  temps.push(root);
  runs.forEach((r, i) => {
    const dir = join(root, `run${i}`);
    mkdirSync(dir, { recursive: true });
    const k = KINDS[r.kind];
    const s = r.shift ?? 0;
    const off = r.alg === 'eata' ? -3 : 0;
    const domains = DOMAINS.map((domain, di) => {
      const error = domain === 'original' ? 20 : k.err + off + s + (di === 0 ? 1 : -1);
      // the max over the domains is the second one's
      return { domain, severity: domain === 'original' ? null : 5, n: 100, correct: 100 - error, error, batches: 4, seconds: 1, img_per_s: 100, max_cache_mb: 50, avg_cache_mb: 40, measured_max_backprop_mb: k.mb + s - (di === 1 ? 0 : 10), measured_avg_backprop_mb: k.mb - 20, measured_max_peak_mb: 1500 };
    });
    const corr = domains.filter((d) => d.domain !== 'original');
    const summary = {
      config: { alg: r.alg, adaptParams: r.kind, seed: r.seed, out: dir, backend: 'wasm', batchSize: 4, ...r.extra },
      domains,
      mean_error: corr.reduce((a, d) => a + d.error, 0) / corr.length,
      mean_error_all: domains.reduce((a, d) => a + d.error, 0) / domains.length,
      complete: true,
      adapt_params: r.kind,
      trainable_params: k.params,
    };
    writeFileSync(join(dir, 'summary.json'), JSON.stringify(summary));
    writeFileSync(join(dir, 'batches.jsonl'), '');
  });
  return root;
}

const grouped = (runs: Run[]) => groupRuns(collectRuns([writeRuns(runs)]).runs);
const tentAll = (): Run[] => Object.keys(KINDS).flatMap((kind) => [1, 2].map((seed) => ({ alg: 'tent', kind, seed, shift: seed - 1 })));
const withEata = (): Run[] => [...tentAll(), { alg: 'eata', kind: 'lora', seed: 1 }, { alg: 'eata', kind: 'norm', seed: 1 }];

const attr = (tag: string, a: string) => new RegExp(`\\b${a}="([^"]*)"`).exec(tag)?.[1];
const circles = (svg: string, panel: string) => {
  const part = new RegExp(`<g data-panel="${panel}">([\\s\\S]*?)</g>`).exec(svg)![1];
  return [...part.matchAll(/<circle [^>]*\/>/g)].map((m) => m[0]);
};
const labels = (svg: string, panel: string) => {
  const part = new RegExp(`<g data-panel="${panel}">([\\s\\S]*?)</g>`).exec(svg)![1];
  return [...part.matchAll(/<text data-label="[^"]*" x="([-0-9.]+)" y="([-0-9.]+)" font-size="(\d+)" fill="#222" text-anchor="(\w+)">([^<]*)<\/text>/g)].map((m) => ({ x: +m[1], y: +m[2], size: +m[3], anchor: m[4], text: m[5] }));
};

describe('error-params-cache.svg', () => {
  it('one point per configuration: trainable parameters, max measured backprop MB over the domains, mean error over seeds', () => {
    const pts = adaptParamsPoints(grouped(withEata()));
    expect(pts).toHaveLength(7);
    const lora = pts.find((p) => p.series === 'tent' && p.kind === 'lora')!;
    expect(lora.params).toBe(294_912);
    expect(lora.backpropMb).toBeCloseTo((384 + 385) / 2, 9); // max over domains, mean over the 2 seeds
    expect(lora.error.mean).toBeCloseTo(69.5, 9); // (68 + 70) / 2 per seed, seeds 0 and +1
    expect(lora.error.std).toBeCloseTo(Math.SQRT1_2, 9);
    expect(lora.text).toBe('lora');
    expect(pts.filter((p) => p.series === 'eata').map((p) => p.kind).sort()).toEqual(['lora', 'norm']);
  });

  it('is not drawn when the runs do not differ in --adapt-params, or with one point', () => {
    expect(errorParamsCacheSvg(grouped([{ alg: 'tent', kind: 'lora', seed: 1 }, { alg: 'eata', kind: 'lora', seed: 1 }]))).toBeNull();
    expect(adaptParamsPoints(grouped([{ alg: 'tent', kind: 'lora', seed: 1 }, { alg: 'eata', kind: 'lora', seed: 1 }]))).toEqual([]);
    expect(errorParamsCacheSvg(grouped([{ alg: 'tent', kind: 'lora', seed: 1 }]))).toBeNull();
  });

  it('left panel: x is log10(parameters), marker area ∝ MB; right panel: x linear in MB; same error, one colour per method', () => {
    const g = grouped(withEata());
    const svg = errorParamsCacheSvg(g)!;
    expect(svg).not.toMatch(/clip-path|<clipPath|<mask|mask=|<filter|filter=|<style|style=|<foreignObject|<use\b|rotate\(|matrix\(|transform=/);
    const pts = adaptParamsPoints(g);
    const left = circles(svg, 'params');
    const right = circles(svg, 'memory');
    expect(left).toHaveLength(pts.length);
    expect(right).toHaveLength(pts.length);
    const find = (cs: string[], series: string, kind: string) => cs.find((c) => attr(c, 'data-series') === series && attr(c, 'data-kind') === kind)!;
    const colourOf = { tent: PALETTE[0], eata: PALETTE[1] } as Record<string, string>;
    const L = pts.map((p) => ({ p, a: find(left, p.series, p.kind), b: find(right, p.series, p.kind) }));
    for (const { p, a, b } of L) {
      expect(Number(attr(a, 'data-params'))).toBe(p.params);
      expect(Number(attr(a, 'data-mb'))).toBeCloseTo(p.backpropMb, 3);
      expect(Number(attr(a, 'data-error'))).toBeCloseTo(p.error.mean, 3);
      expect(attr(a, 'fill')).toBe(colourOf[p.series]);
      expect(attr(b, 'fill')).toBe(colourOf[p.series]);
      expect(Number(attr(a, 'cy'))).toBeCloseTo(Number(attr(b, 'cy')), 6); // shared y
    }
    const ref = L.find((x) => x.p.kind === 'norm' && x.p.series === 'tent')!;
    const vida = L.find((x) => x.p.kind === 'vida')!;
    const pxPerDecade = (Number(attr(vida.a, 'cx')) - Number(attr(ref.a, 'cx'))) / Math.log10(vida.p.params / ref.p.params);
    const pxPerMb = (Number(attr(vida.b, 'cx')) - Number(attr(ref.b, 'cx'))) / (vida.p.backpropMb - ref.p.backpropMb);
    expect(pxPerDecade).toBeGreaterThan(50);
    for (const { p, a, b } of L) {
      expect(Number(attr(a, 'cx')) - Number(attr(ref.a, 'cx'))).toBeCloseTo(pxPerDecade * Math.log10(p.params / ref.p.params), 0);
      expect(Number(attr(b, 'cx')) - Number(attr(ref.b, 'cx'))).toBeCloseTo(pxPerMb * (p.backpropMb - ref.p.backpropMb), 0);
      // area ∝ MB: r² / MB the same for every marker (to the 0.1 px the SVG keeps)
      expect(Number(attr(a, 'r')) / Math.sqrt(p.backpropMb)).toBeCloseTo(Number(attr(vida.a, 'r')) / Math.sqrt(vida.p.backpropMb), 2);
    }
    // the error axis points up: vida's lower error is drawn lower
    expect(Number(attr(vida.a, 'cy'))).toBeGreaterThan(Number(attr(ref.a, 'cy')));
    // the legend: both methods and the marker sizes
    expect(svg).toMatch(/>tent<\/text>/);
    expect(svg).toMatch(/>eata<\/text>/);
    expect(svg).toContain('marker area (left panel):');
    expect(svg).toContain('measured backprop MB</text>');
    const sizes = [...svg.matchAll(/<circle data-size-legend="([\d.]+)"[^>]*r="([\d.]+)"/g)].map((m) => [Number(m[1]), Number(m[2])]);
    expect(sizes.map(([mb]) => mb)).toEqual([200, 400, 600]); // nice values up to the largest point's 700 MB
    for (const [mb, r] of sizes) expect(r / Math.sqrt(mb)).toBeCloseTo(Number(attr(vida.a, 'r')) / Math.sqrt(vida.p.backpropMb), 2);
    // ticks of the log axis name counts
    expect(svg).toContain('>100k</text>');
    expect(svg).toContain('>1M</text>');
    expect(svg).toContain('trainable parameters (log scale)');
    expect(svg).toMatch(/error axis starts at [\d.]+ %, not at 0/);
  });

  it('every point is labelled by its kind, the labels inside the frame and clear of each other', () => {
    const svg = errorParamsCacheSvg(grouped(withEata()))!;
    for (const panel of ['params', 'memory']) {
      const ls = labels(svg, panel);
      expect(ls.map((l) => l.text).sort()).toEqual(['adapter', 'kadaptation', 'lora', 'lora', 'norm', 'norm', 'vida']);
      const boxes = ls.map((l) => {
        const w = l.text.length * l.size * 0.6;
        const x0 = l.anchor === 'start' ? l.x : l.anchor === 'end' ? l.x - w : l.x - w / 2;
        return { x0, x1: x0 + w, y0: l.y - l.size, y1: l.y };
      });
      const frame = /<g data-panel="[^"]*">[\s\S]*?<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="none" stroke="#333"/.exec(new RegExp(`<g data-panel="${panel}">[\\s\\S]*?</g>`).exec(svg)![0])!;
      const [fx, fy, fw, fh] = frame.slice(1).map(Number);
      for (const b of boxes) {
        expect(b.x0).toBeGreaterThanOrEqual(fx);
        expect(b.x1).toBeLessThanOrEqual(fx + fw);
        expect(b.y0).toBeGreaterThanOrEqual(fy);
        expect(b.y1).toBeLessThanOrEqual(fy + fh);
      }
      for (let i = 0; i < boxes.length; i++) {
        for (let j = i + 1; j < boxes.length; j++) {
          const [a, b] = [boxes[i], boxes[j]];
          expect(a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1, `${panel}: ${ls[i].text} / ${ls[j].text}`).toBe(false);
        }
      }
    }
  });

  it('a kind twice in one method (another key varies too) is labelled with the configuration', () => {
    const g = grouped([
      { alg: 'tent', kind: 'lora', seed: 1, extra: { lr: 0.001 } },
      { alg: 'tent', kind: 'lora', seed: 1, extra: { lr: 0.01 } },
      { alg: 'tent', kind: 'norm', seed: 1, extra: { lr: 0.001 } },
    ]);
    const texts = labels(errorParamsCacheSvg(g)!, 'params').map((l) => l.text).sort();
    expect(texts).toEqual(['lr=0.001 adapt-params=lora', 'lr=0.01 adapt-params=lora', 'norm']);
  });

  it('every method draws pixels of its colour inside a panel', async () => {
    const svg = errorParamsCacheSvg(grouped(withEata()))!;
    const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    const frames = [...svg.matchAll(/<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="none" stroke="#333"/g)].map((m) => m.slice(1).map(Number));
    expect(frames).toHaveLength(2);
    for (const hex of [PALETTE[0], PALETTE[1]]) {
      const [cr, cg, cb] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
      for (const [x0, y0, w, h] of frames) {
        let n = 0;
        for (let y = Math.ceil(y0 + 2); y < y0 + h - 2; y++) {
          for (let x = Math.ceil(x0 + 2); x < x0 + w - 2; x++) {
            const o = (y * info.width + x) * 3;
            if (Math.abs(data[o] - cr) <= 24 && Math.abs(data[o + 1] - cg) <= 24 && Math.abs(data[o + 2] - cb) <= 24) n++;
          }
        }
        expect(n, `${hex} in the frame at x=${x0}`).toBeGreaterThan(20);
      }
    }
  });

  it('log ticks and counts', () => {
    expect(logTicks(2e4, 2e7)).toEqual([1e5, 1e6, 1e7]);
    expect(logTicks(3e4, 4e5)).toEqual([5e4, 1e5, 2e5]);
    expect([38_400, 294_912, 2_379_264, 1000, 12].map(fmtCount)).toEqual(['38.4k', '295k', '2.38M', '1k', '12']);
  });

  it('cta-report --by adapt-params writes it with a PNG beside it; runs of one kind get none', async () => {
    const root = writeRuns(withEata());
    const out = join(root, 'report');
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    try {
      await ctaReport([root, '--by', 'adapt-params', '--out', out]);
      expect(process.exitCode ?? 0).toBe(0);
      const svg = readFileSync(join(out, 'error-params-cache.svg'), 'utf8');
      expect(svg).toContain('Error against trainable parameters and backprop memory');
      const meta = await sharp(readFileSync(join(out, 'error-params-cache.png'))).metadata();
      expect(meta.format).toBe('png');
      expect(meta.width).toBe(2 * Number(attr(svg, 'width')));
      const one = writeRuns([{ alg: 'tent', kind: 'lora', seed: 1 }, { alg: 'eata', kind: 'lora', seed: 1 }]);
      await ctaReport([one, '--out', join(one, 'report')]);
      expect(existsSync(join(one, 'report', 'error-params-cache.svg'))).toBe(false);
    } finally {
      process.stdout.write = write;
    }
  });
});
