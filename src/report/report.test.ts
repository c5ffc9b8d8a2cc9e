import { describe, it, expect } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { collectRuns, groupRuns, labelFor, labelKeys, stat } from './collect.js';
import { csvTable, markdownByTable, markdownTable, pivot } from './tables.js';
import { byKeySvg, errorByDomainSvg, smoothError, streamSvg, bucket } from './plots.js';
import { niceTicks, wrap } from './svg.js';

/** Writes a hand-made run folder: errors per domain (the last domain is 'original'), cache optional. */
function writeRun(root: string, name: string, config: Record<string, unknown>, errors: Record<string, number>, opts: { cache?: number; complete?: boolean } = {}) {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const domains = Object.entries(errors).map(([domain, error]) => ({
    domain,
    severity: domain === 'original' ? null : 5,
    n: 4,
    error,
    correct: 4 - Math.round((error / 100) * 4),
    batches: 2,
    seconds: 1,
    img_per_s: 4,
    ...(opts.cache !== undefined ? { max_cache_mb: opts.cache, avg_cache_mb: opts.cache / 2 } : {}),
    // passes (src/runner/pass-count.ts) only on the runs with a cache, so the table shows both kinds
    ...(opts.cache !== undefined ? { forwards: 8, backwards: 4 } : {}),
  }));
  const corr = domains.filter((d) => d.domain !== 'original');
  const summary = {
    config: { alg: 'tent', accumBn: false, seed: 2020, out: dir, backend: 'wasm', batchSize: 2, ...config },
    domains,
    mean_error: corr.reduce((a, d) => a + d.error, 0) / corr.length,
    mean_error_all: domains.reduce((a, d) => a + d.error, 0) / domains.length,
    complete: opts.complete ?? true,
  };
  writeFileSync(join(dir, 'summary.json'), JSON.stringify(summary, null, 2));
  const lines: string[] = [];
  let b = 0;
  for (const d of domains) {
    for (let k = 0; k < 2; k++) {
      lines.push(JSON.stringify({ batch: b++, domain: d.domain, n: 2, correct: k === 0 ? 1 : 2, error: k === 0 ? 50 : 0, ...(opts.cache !== undefined ? { cache_mb: opts.cache } : {}) }));
    }
  }
  writeFileSync(join(dir, 'batches.jsonl'), lines.join('\n') + '\n');
}

function fixture() {
  const root = mkdtempSync(join(tmpdir(), 'report-'));
  // tent: seeds 1, 2, 3 → gaussian 10/20/30 (mean 20, std 10), fog 40/40/40
  writeRun(root, 'a/tent-1', { seed: 1 }, { gaussian_noise: 10, fog: 40, original: 5 });
  writeRun(root, 'a/tent-2', { seed: 2 }, { gaussian_noise: 20, fog: 40, original: 5 });
  writeRun(root, 'b/tent-3', { seed: 3 }, { gaussian_noise: 30, fog: 40, original: 5 });
  // tent + MECTA (its MECTA keys vary together with accum-bn): one seed, cache recorded
  writeRun(root, 'b/mecta-1', { seed: 1, accumBn: true, forgetGate: true, pruneQ: 0.7 }, { gaussian_noise: 12, fog: 30, original: 6 }, { cache: 8 });
  // unfinished: left out
  writeRun(root, 'b/partial', { seed: 4 }, { gaussian_noise: 99 }, { complete: false });
  return root;
}

describe('report', () => {
  it('collects complete runs recursively and groups by everything but the seed', () => {
    const root = fixture();
    const col = collectRuns([root]);
    expect(col.runs).toHaveLength(4);
    expect(col.incomplete).toEqual([join(root, 'b/partial')]);
    const g = groupRuns(col.runs);
    expect(g.varied).toEqual(['accumBn', 'forgetGate', 'pruneQ']);
    expect(g.domains).toEqual(['gaussian_noise', 'fog', 'original']);
    expect(g.groups.map((x) => x.label)).toEqual(['tent', 'tent + MECTA']);
    const [tent, mecta] = g.groups;
    expect(tent.seeds).toEqual([1, 2, 3]);
    expect(tent.domains[0]).toEqual({ domain: 'gaussian_noise', mean: 20, std: 10, n: 3 });
    expect(tent.domains[1]).toEqual({ domain: 'fog', mean: 40, std: 0, n: 3 });
    expect(tent.meanError!.mean).toBeCloseTo(30, 12); // (25 + 30 + 35) / 3
    expect(tent.meanError!.std).toBeCloseTo(5, 12);
    expect(tent.maxCacheMb).toBeNull();
    expect(mecta.meanError).toEqual({ mean: 21, std: null, n: 1 });
    expect(mecta.maxCacheMb).toEqual({ mean: 8, std: null, n: 1 });
    expect(mecta.avgCacheMb!.mean).toBe(4);
    expect(collectRuns([root], { includePartial: true }).runs).toHaveLength(5);
  });

  it('markdown and CSV tables carry the numbers in the paper layout', () => {
    const g = groupRuns(collectRuns([fixture()]).runs);
    const md = markdownTable(g).split('\n');
    expect(md[0]).toBe('| method | seeds | gauss | fog | mean | max MB | avg MB | img/s | fwd/img | bwd/img |');
    expect(md[2]).toBe('| tent | 3 | 20.0 ± 10.0 | 40.0 ± 0.0 | **30.0 ± 5.0** | – | – | 4.0 ± 0.0 | – | – |');
    expect(md[3]).toBe('| tent + MECTA | 1 | 12.0 | 30.0 | **21.0** | 8.0 | 4.0 | 4.0 | 2.00 | 1.00 |');
    const csv = csvTable(g).trim().split('\n').map((l) => l.split(','));
    expect(csv[0].slice(0, 6)).toEqual(['label', 'accum-bn', 'forget-gate', 'prune-q', 'seeds', 'n_seeds']);
    const row = Object.fromEntries(csv[0].map((h, i) => [h, csv[1][i]]));
    expect(row).toMatchObject({ label: 'tent', 'accum-bn': 'false', seeds: '1 2 3', n_seeds: '3', gaussian_noise: '20', gaussian_noise_std: '10', original: '5', mean_error: '30', mean_error_std: '5', max_cache_mb: '' });
    const row2 = Object.fromEntries(csv[0].map((h, i) => [h, csv[2][i]]));
    expect(row2).toMatchObject({ label: 'tent + MECTA', 'prune-q': '0.7', mean_error: '21', mean_error_std: '', max_cache_mb: '8', avg_cache_mb: '4', img_per_s: '4', forwards_per_image: '2', backwards_per_image: '1' });
  });

  it('--by KEY puts the values of one key in the columns', () => {
    const root = mkdtempSync(join(tmpdir(), 'report-by-'));
    for (const [i, q] of [0.1, 0.5, 0.9].entries()) {
      for (const alg of ['tent', 'eata']) writeRun(root, `${alg}-${q}`, { alg, accumBn: true, pruneQ: q }, { fog: 10 + i + (alg === 'eata' ? 5 : 0), original: 1 }, { cache: 10 * (1 - q) });
    }
    const g = groupRuns(collectRuns([root]).runs);
    const p = pivot(g, 'pruneQ');
    expect(p.values).toEqual([0.1, 0.5, 0.9]);
    expect(p.rows.map((r) => r.label)).toEqual(['tent', 'eata']);
    const md = markdownByTable(g, 'pruneQ');
    expect(md).toContain('| method | prune-q=0.1 | prune-q=0.5 | prune-q=0.9 |');
    expect(md).toContain('| tent | 10.0 | 11.0 | 12.0 |');
    expect(md).toContain('| eata | 15.0 | 16.0 | 17.0 |');
    expect(md).toContain('| tent | 9.0 | 5.0 | 1.0 |'); // max cache table
  });

  it('labels: method names, + MECTA, other keys as key=value', () => {
    expect(labelFor({ alg: 'eata', accumBn: true }, ['alg', 'accumBn'])).toBe('eata + MECTA');
    expect(labelFor({ alg: 'eata', accumBn: true }, ['accumBn'])).toBe('eata + MECTA');
    expect(labelFor({ alg: 'eata', accumBn: false, betaThre: 0.01 }, ['betaThre'])).toBe('beta-thre=0.01');
    expect(labelFor({ accumBn: false }, ['accumBn'])).toBe('no MECTA');
    expect(labelFor({ alg: 'tent', forgetGate: false }, ['alg', 'forgetGate'])).toBe('tent no-forget-gate');
    // numeric memory knobs at their defaults are left out (plain runs in a memory sweep)
    expect(labelFor({ alg: 'tent', accumBn: false, betaThre: 0, pruneQ: 0, cacheBudgetMb: null }, ['alg', 'accumBn', 'betaThre', 'pruneQ', 'cacheBudgetMb'])).toBe('tent');
    expect(labelFor({ alg: 'tent', accumBn: true, betaThre: 0, pruneQ: 0.7, cacheBudgetMb: null }, ['alg', 'accumBn', 'betaThre', 'pruneQ', 'cacheBudgetMb'])).toBe('tent + MECTA prune-q=0.7');
    expect(labelFor({ alg: 'norm', accumBn: true }, [])).toBe('norm + MECTA');
  });

  it('labels of a sweep over methods leave out the options each method fixes, not the protocol', () => {
    const cfgs = [
      { alg: 'tent', lr: 0.0025, optimizer: 'sgd', accumBn: false, severity: 5 },
      { alg: 'tent', lr: 0.0025, optimizer: 'sgd', accumBn: true, severity: 5 },
      { alg: 'cotta', lr: 0.001, optimizer: 'adam', accumBn: false, severity: 3 },
    ];
    const keys = labelKeys(cfgs, ['alg', 'lr', 'optimizer', 'accumBn', 'severity']);
    expect(keys).toEqual(['alg', 'accumBn', 'severity']);
    // a method run at two learning rates keeps lr in its label
    expect(labelKeys([...cfgs, { alg: 'tent', lr: 0.01, optimizer: 'sgd', accumBn: false, severity: 5 }], ['alg', 'lr', 'optimizer', 'accumBn'])).toEqual(['alg', 'lr', 'accumBn']);
  });

  it('a memory sweep keeps the knobs that vary among the plain runs (checkpointing) and drops the one MECTA implies', () => {
    const cfgs = [
      { alg: 'tent', accumBn: false, forgetGate: false, gradCheckpointSegments: 1, cacheBudgetMb: null },
      { alg: 'tent', accumBn: false, forgetGate: false, gradCheckpointSegments: 3, cacheBudgetMb: null },
      { alg: 'tent', accumBn: true, forgetGate: true, gradCheckpointSegments: 1, cacheBudgetMb: 3.5 },
      { alg: 'tent', accumBn: true, forgetGate: true, gradCheckpointSegments: 1, cacheBudgetMb: 7 },
    ];
    const keys = labelKeys(cfgs, ['accumBn', 'forgetGate', 'cacheBudgetMb', 'gradCheckpointSegments']);
    expect(keys).toEqual(['accumBn', 'cacheBudgetMb', 'gradCheckpointSegments']);
    expect(cfgs.map((c) => labelFor(c, keys))).toEqual(['tent', 'tent grad-checkpoint-segments=3', 'tent + MECTA cache-budget-mb=3.5', 'tent + MECTA cache-budget-mb=7']);
  });

  it('SVG figures are well-formed, finite and render', async () => {
    const root = fixture();
    const g = groupRuns(collectRuns([root]).runs);
    const figs = [errorByDomainSvg(g), streamSvg(g)!, byKeySvg(g, 'accumBn')];
    for (const svg of figs) {
      expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
      expect(svg.trim().endsWith('</svg>')).toBe(true);
      expect(svg).not.toMatch(/NaN|undefined|Infinity/);
      const png = await sharp(Buffer.from(svg)).png().toBuffer();
      const meta = await sharp(png).metadata();
      expect(meta.width).toBe(1000);
    }
    expect(figs[0]).toContain('>tent + MECTA</text>');
    expect(figs[0]).toContain('>error (%)</text>');
    expect(figs[1]).toContain('>cache (MB)</text>');
    expect(figs[1]).toContain('>gauss</text>');
  });

  it('plot helpers: pooled smoothing within domains, bucketing, ticks, wrapping', () => {
    const s = { n: [2, 2, 2, 2], correct: [0, 2, 2, 2], domains: ['a', 'a', 'b', 'b'] };
    expect(smoothError(s, 1)).toEqual([100, 0, 0, 0]);
    expect(smoothError(s, 3)).toEqual([50, 50, 0, 0]); // never mixes a with b
    expect(bucket([1, 3, 5, 7, null], 2)).toEqual([{ x: 1, y: 3 }, { x: 3.5, y: 7 }]);
    expect(niceTicks(0, 97)).toEqual([0, 20, 40, 60, 80, 100]);
    expect(niceTicks(0, 2.7)).toEqual([0, 0.5, 1, 1.5, 2, 2.5, 3]);
    expect(wrap('aa bb cc dd', 5)).toEqual(['aa bb', 'cc dd']);
    expect(stat([1, 2, 3])).toEqual({ mean: 2, std: 1, n: 3 });
  });
});
