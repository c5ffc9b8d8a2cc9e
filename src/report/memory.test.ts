/**
 * The error-against-memory table and scatter (src/report/memory.ts): numbers taken from the runs'
 * summaries, the scatter's SVG plain enough for every renderer (no clip-path, no rotated text),
 * each method's colour inside the plot frame once rasterised, and cta-report writing the table and
 * the SVG with its PNG.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { collectRuns, groupRuns } from './collect.js';
import { errorVsMemorySvg, errorVsParamsSvg, memoryMarkdown, memoryRows } from './memory.js';
import { PALETTE, logTicks } from './svg.js';
import { main as ctaReport } from '../cli/cta-report.js';

const temps: string[] = [];
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

/** tent and eata, each plain / +MECTA / +budget, one seed, two domains; error falls with memory. */
function fixture(withMemory = true, withParams = false): string {
  const root = mkdtempSync(join(tmpdir(), 'report-mem-'));
  temps.push(root);
  const variants = [
    { accumBn: false, cacheBudgetMb: null, mb: 14, err: 30 },
    { accumBn: true, cacheBudgetMb: null, mb: 4.7, err: 32 },
    { accumBn: true, cacheBudgetMb: 3.5, mb: 3.4, err: 35 },
  ];
  for (const alg of ['tent', 'eata']) {
    variants.forEach((v, vi) => {
      const dir = join(root, `${alg}-${vi}`);
      mkdirSync(dir);
      const off = alg === 'eata' ? -2 : 0;
      const domains = ['gaussian_noise', 'fog'].map((domain, di) => ({
        domain,
        severity: 5,
        n: 300,
        correct: 300 - 3 * (v.err + off + di),
        error: v.err + off + di,
        batches: 19,
        seconds: 2 + di,
        img_per_s: 300 / (2 + di),
        max_cache_mb: v.mb - 0.2,
        avg_cache_mb: v.mb - 0.3,
        ...(withMemory ? { measured_max_backprop_mb: v.mb + di * 0.1, measured_avg_backprop_mb: v.mb - 0.1 * (1 - di), measured_max_peak_mb: 20 + v.mb + di } : {}),
      }));
      const summary = {
        config: { alg, accumBn: v.accumBn, cacheBudgetMb: v.cacheBudgetMb, seed: 1, out: dir, backend: 'wasm', batchSize: 16, ...(withParams ? { adaptParams: ['norm', 'lora', 'adapter'][vi] } : {}) },
        ...(withParams ? { adapt_params: ['norm', 'lora', 'adapter'][vi], trainable_params: [480, 1536, 12000][vi] } : {}),
        domains,
        mean_error: (domains[0].error + domains[1].error) / 2,
        mean_error_all: (domains[0].error + domains[1].error) / 2,
        complete: true,
      };
      writeFileSync(join(dir, 'summary.json'), JSON.stringify(summary));
      writeFileSync(join(dir, 'batches.jsonl'), '');
    });
  }
  return root;
}

describe('error against memory (report)', () => {
  it('takes max / batch-weighted mean backprop, peak and img/s from the summaries', () => {
    const g = groupRuns(collectRuns([fixture()]).runs);
    const rows = memoryRows(g);
    expect(rows).toHaveLength(6);
    const tentPlain = rows.find((r) => r.alg === 'tent' && r.maxBackpropMb!.mean > 10)!;
    expect(tentPlain.maxBackpropMb!.mean).toBeCloseTo(14.1, 9); // max over domains
    expect(tentPlain.avgBackpropMb!.mean).toBeCloseTo((13.9 + 14) / 2, 9); // equal batch counts
    expect(tentPlain.stepPeakMb!.mean).toBeCloseTo(35, 9);
    expect(tentPlain.imgPerS!.mean).toBeCloseTo(600 / 5, 9); // images over seconds, summed
    expect(tentPlain.meanError!.mean).toBeCloseTo(30.5, 9);
    const md = memoryMarkdown(g)!;
    expect(md.split('\n')).toHaveLength(2 + 6);
    expect(md).toContain('| measured backprop max MB |');
    expect(md).toMatch(/\| 30\.50 \| 14\.10 \| 13\.95 \| 35\.0 \| 13\.80 \| 120 \|/);
  });

  it('trainable parameters: a table column and error-vs-params.svg, one legend entry per configuration', () => {
    const g = groupRuns(collectRuns([fixture(true, true)]).runs);
    const md = memoryMarkdown(g)!;
    expect(md.split('\n')[0]).toContain('| mean error (%) | trainable params | measured backprop max MB |');
    expect(md).toMatch(/\| 30\.50 \| 480 \| 14\.10 \|/);
    const svg = errorVsParamsSvg(g)!;
    expect(svg).not.toMatch(/clip-path|clipPath|<mask|<filter|<style|foreignObject|rotate\(|transform=/);
    expect(svg.match(/<circle /g)).toHaveLength(6 + 6); // a marker and a legend swatch per configuration
    expect(svg).toContain('trainable parameters');
    // without counts (or one count for all) there is nothing to plot
    expect(errorVsParamsSvg(groupRuns(collectRuns([fixture()]).runs))).toBeNull();
  });

  it('the scatter takes a log x axis when the memory spans more than 8×; 1-2-5 ticks per decade', () => {
    expect(logTicks(2.9, 65)).toEqual([5, 10, 20, 50]);
    expect(logTicks(0.3, 3)).toEqual([0.5, 1, 2]);
    const g = groupRuns(collectRuns([fixture()]).runs);
    const xs = memoryRows(g).map((r) => r.maxBackpropMb!.mean);
    const wide = Math.max(...xs) / Math.min(...xs) > 8;
    expect(errorVsMemorySvg(g)!.includes('log scale')).toBe(wide);
  });

  it('has no table or figure when no run measured its memory', () => {
    const g = groupRuns(collectRuns([fixture(false)]).runs);
    expect(memoryMarkdown(g)).toBeNull();
    expect(errorVsMemorySvg(g)).toBeNull();
  });

  it('the scatter: plain SVG, one series per method, each visible inside the frame', async () => {
    const g = groupRuns(collectRuns([fixture()]).runs);
    const svg = errorVsMemorySvg(g)!;
    expect(svg).not.toMatch(/clip-path|clipPath|<mask|<filter|<style|foreignObject|rotate\(|transform=/);
    // markers: 3 variants × 2 methods, plus one legend swatch per series (method × family)
    expect(svg.match(/<circle /g)).toHaveLength(6 + 6);
    for (const label of ['tent', 'tent + MECTA', 'tent + budget', 'eata', 'eata + MECTA', 'eata + budget']) expect(svg).toContain(`>${label}<`);
    const frame = /<rect x="([0-9.]+)" y="([0-9.]+)" width="([0-9.]+)" height="([0-9.]+)" fill="none" stroke="#333"/.exec(svg)!;
    const [fx, fy, fw, fh] = frame.slice(1).map(Number);
    const { data, info } = await sharp(Buffer.from(svg)).removeAlpha().raw().toBuffer({ resolveWithObject: true });
    for (const hex of PALETTE.slice(0, 2)) {
      const [cr, cg, cb] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
      let n = 0;
      for (let y = Math.ceil(fy + 2); y < fy + fh - 2; y++) {
        for (let x = Math.ceil(fx + 2); x < fx + fw - 2; x++) {
          const o = (y * info.width + x) * 3;
          if (Math.abs(data[o] - cr) <= 24 && Math.abs(data[o + 1] - cg) <= 24 && Math.abs(data[o + 2] - cb) <= 24) n++;
        }
      }
      expect(n, hex).toBeGreaterThan(50);
    }
  });

  it('cta-report writes the memory table and error-vs-memory.svg with its PNG', async () => {
    const root = fixture();
    const out = join(root, 'report');
    const write = process.stdout.write.bind(process.stdout);
    let printed = '';
    process.stdout.write = ((s: string) => ((printed += s), true)) as typeof process.stdout.write;
    try {
      await ctaReport([root, '--out', out]);
    } finally {
      process.stdout.write = write;
    }
    expect(printed).toContain('error against memory');
    expect(readFileSync(join(out, 'report.md'), 'utf8')).toContain('## Memory');
    expect(existsSync(join(out, 'error-vs-memory.svg'))).toBe(true);
    const png = await sharp(join(out, 'error-vs-memory.png')).metadata();
    expect(png.format).toBe('png');
    expect(png.width).toBeGreaterThan(1000);
  });
});
