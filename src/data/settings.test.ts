import { describe, it, expect } from 'vitest';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { streamFingerprint } from './stream.js';
import { checkSettingOptions, dirichlet, GRADUAL_SEVERITIES, loadMixed, SETTING_NAMES, sortByDirichlet, streamSteps, type SettingOptions } from './settings.js';
import type { DomainSource } from './stream.js';

const NAMES = ['gaussian_noise', 'fog', 'original'];
const opts = (setting: SettingOptions['setting'], o: Partial<SettingOptions> = {}): SettingOptions => ({ setting, rounds: null, dirichletDelta: null, ...o });

describe('streamSteps', () => {
  it('continual and correlated: one step per domain, no reset, no round, no severity', () => {
    for (const s of ['continual', 'correlated'] as const) {
      expect(streamSteps(NAMES, opts(s))).toEqual(NAMES.map((domain) => ({ domain, severity: null, round: null, reset: false })));
    }
  });

  it('reset-each-shift: a reset before every domain but the first', () => {
    const steps = streamSteps(NAMES, opts('reset-each-shift'));
    expect(steps.map((s) => [s.domain, s.reset])).toEqual([['gaussian_noise', false], ['fog', true], ['original', true]]);
  });

  it('gradual: 1..5..1 per corruption, the clean set once, never reset', () => {
    const steps = streamSteps(NAMES, opts('gradual-correlated'));
    expect(steps).toHaveLength(2 * 9 + 1);
    expect(steps.slice(0, 9).map((s) => s.severity)).toEqual([1, 2, 3, 4, 5, 4, 3, 2, 1]);
    expect(steps.slice(9, 18).every((s) => s.domain === 'fog')).toBe(true);
    expect(steps[18]).toEqual({ domain: 'original', severity: null, round: null, reset: false });
    expect(steps.some((s) => s.reset)).toBe(false);
    expect(GRADUAL_SEVERITIES).toEqual([1, 2, 3, 4, 5, 4, 3, 2, 1]);
  });

  it('recurring: the sequence --rounds times (default 10), rounds numbered from 1', () => {
    const steps = streamSteps(NAMES, opts('recurring', { rounds: 3 }));
    expect(steps.map((s) => `${s.round}:${s.domain}`)).toEqual([1, 2, 3].flatMap((r) => NAMES.map((n) => `${r}:${n}`)));
    expect(streamSteps(NAMES, opts('recurring-correlated'))).toHaveLength(10 * NAMES.length);
  });

  it('mixed: one step pooling every domain', () => {
    expect(streamSteps(NAMES, opts('mixed'))).toEqual([{ domain: 'mixed', severity: null, round: null, reset: false, parts: NAMES }]);
    expect(() => checkSettingOptions(opts('mixed', { dirichletDelta: 0 }))).toThrow(/--dirichlet-delta/);
  });

  it('refuses options a setting does not use', () => {
    expect(() => checkSettingOptions(opts('continual', { rounds: 2 }))).toThrow(/--rounds: only for --setting recurring/);
    expect(() => checkSettingOptions(opts('recurring', { dirichletDelta: 0.1 }))).toThrow(CtaError);
    expect(() => checkSettingOptions(opts('recurring-correlated', { rounds: 2, dirichletDelta: 0.1 }))).not.toThrow();
    expect(() => checkSettingOptions(opts('mixed-gradual' as never))).toThrow(/unknown 'mixed-gradual'/);
    expect(() => checkSettingOptions(opts('mixed-correlated', { dirichletDelta: 0.5 }))).not.toThrow();
    expect(streamSteps(['fog', 'original'], opts('mixed-correlated'))).toEqual([{ domain: 'mixed', severity: null, round: null, reset: false, parts: ['fog', 'original'] }]);
    expect(SETTING_NAMES).toContain('reset-each-shift-correlated');
  });
});

/** n samples, 10 classes, balanced, in a shuffled order. */
function domain(n: number, seed: number) {
  const labels = Int32Array.from({ length: n }, (_, i) => i % 10);
  const order = new Rng(seed).permutation(n);
  return { labels, order };
}

/** Number of label changes along the order + 1 (= number of single-class runs). */
function runs(order: Int32Array, labels: Int32Array): number {
  let r = 1;
  for (let i = 1; i < order.length; i++) if (labels[order[i]] !== labels[order[i - 1]]) r++;
  return r;
}

describe('sortByDirichlet', () => {
  it('returns a permutation of the given order', () => {
    const { labels, order } = domain(500, 1);
    for (const delta of [0, 0.01, 0.1, 1, 100]) {
      const out = sortByDirichlet(order, labels, delta, new Rng(2));
      expect(Array.from(out).sort((a, b) => a - b)).toEqual(Array.from({ length: 500 }, (_, i) => i));
    }
  });

  it('delta 0 sorts by label (stable: ties keep the shuffled order)', () => {
    const { labels, order } = domain(100, 1);
    const out = sortByDirichlet(order, labels, 0, new Rng(2));
    expect(runs(out, labels)).toBe(10);
    expect(Array.from(out).map((i) => labels[i])).toEqual(Array.from(labels).sort((a, b) => a - b));
    expect(Array.from(out).filter((i) => labels[i] === 3)).toEqual(Array.from(order).filter((i) => labels[i] === 3));
  });

  it('small delta gives long single-class runs; large delta approaches the i.i.d. order', () => {
    const n = 2000;
    const { labels, order } = domain(n, 3);
    const iid = runs(order, labels); // ≈ n · 0.9 for 10 balanced classes
    const small = runs(sortByDirichlet(order, labels, 0.001, new Rng(4)), labels);
    const mid = runs(sortByDirichlet(order, labels, 1, new Rng(4)), labels);
    const large = runs(sortByDirichlet(order, labels, 1000, new Rng(4)), labels);
    expect(iid).toBeGreaterThan(0.85 * n);
    // Each of the 10 chunks holds roughly one class when delta → 0: few, long runs.
    expect(small).toBeLessThan(40);
    expect(n / small).toBeGreaterThan(50);
    expect(mid).toBeGreaterThan(small);
    expect(large).toBeGreaterThan(mid);
    // Large delta: every chunk holds every class; runs are still class blocks per chunk
    // (mariodoebler's construction), so ≤ K·C of them, but the classes are spread evenly.
    expect(large).toBeGreaterThan(90);
    // Class proportions within each tenth of the stream approach the uniform 10 %.
    const out = sortByDirichlet(order, labels, 1000, new Rng(4));
    for (let t = 0; t < 10; t++) {
      const counts = new Array(10).fill(0);
      for (let i = (t * n) / 10; i < ((t + 1) * n) / 10; i++) counts[labels[out[i]]]++;
      expect(Math.max(...counts)).toBeLessThan(0.2 * (n / 10));
    }
  });

  it('is deterministic per seed and differs across seeds', () => {
    const { labels, order } = domain(300, 5);
    const a = sortByDirichlet(order, labels, 0.1, new Rng(7));
    const b = sortByDirichlet(order, labels, 0.1, new Rng(7));
    const c = sortByDirichlet(order, labels, 0.1, new Rng(8));
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
  });

  it('refuses a negative delta', () => {
    const { labels, order } = domain(20, 1);
    expect(() => sortByDirichlet(order, labels, -1, new Rng(1))).toThrow(/--dirichlet-delta/);
  });

  it('dirichlet draws sum to 1 and do not underflow for tiny delta', () => {
    const rng = new Rng(9);
    for (const delta of [1e-4, 0.1, 1, 50]) {
      const p = dirichlet(delta, 10, rng);
      expect(p.reduce((a, v) => a + v, 0)).toBeCloseTo(1, 12);
      expect(p.every((v) => Number.isFinite(v) && v >= 0)).toBe(true);
    }
    // Mean of Dirichlet(1,…,1) components is 1/K.
    let s = 0;
    for (let i = 0; i < 2000; i++) s += dirichlet(1, 4, rng)[0];
    expect(s / 2000).toBeCloseTo(0.25, 1);
  });
});

describe('stream fingerprint and settings', () => {
  it('a tag changes the fingerprint; no tag keeps the continual encoding', () => {
    const order = Int32Array.from([2, 0, 1]);
    const plain = streamFingerprint([{ name: 'fog', severity: 5, order }]);
    expect(streamFingerprint([{ name: 'fog', severity: 5, order, tag: undefined }])).toBe(plain);
    expect(streamFingerprint([{ name: 'fog', severity: 5, order, tag: 'setting=recurring;round=1' }])).not.toBe(plain);
  });
});

describe('loadMixed', () => {
  it('concatenates the domains, remembering where each sample came from; batches follow the order', async () => {
    const sizes: Record<string, number> = { a: 3, b: 2 };
    const source: DomainSource = {
      names: ['a', 'b'],
      files: () => [],
      async load(name) {
        const n = sizes[name];
        const base = name === 'a' ? 10 : 20;
        return { name, severity: name === 'a' ? 5 : null, n, height: 1, width: 1, channels: 1, images: Uint8Array.from({ length: n }, (_, i) => base + i), labels: Int32Array.from({ length: n }, (_, i) => base + i) };
      },
    };
    const m = await loadMixed(source, ['a', 'b']);
    expect(m.n).toBe(5);
    expect(Array.from(m.partOf)).toEqual([0, 0, 0, 1, 1]);
    expect(m.parts).toEqual([{ name: 'a', severity: 5 }, { name: 'b', severity: null }]);
    expect(Array.from(m.labels as Int32Array)).toEqual([10, 11, 12, 20, 21]);
    const got: number[][] = [];
    for await (const b of m.batches(Int32Array.from([4, 0, 3, 1, 2]), 2)) got.push(Array.from(b.y));
    expect(got).toEqual([[21, 10], [20, 11], [12]]);
  });

  it('a streaming source (open): pooled batches decoded part by part, rows in the order asked, pooled labels', async () => {
    const sizes: Record<string, number> = { a: 3, b: 2 };
    const asked: string[] = [];
    const source: DomainSource = {
      names: ['a', 'b'],
      files: () => [],
      load: () => Promise.reject(new Error('a streaming source is never loaded whole')),
      async open(name) {
        const n = sizes[name];
        const base = name === 'a' ? 10 : 20;
        return {
          name,
          severity: name === 'a' ? 5 : null,
          n,
          height: 1,
          width: 1,
          channels: 1,
          labels: Int32Array.from({ length: n }, (_, i) => base + i),
          async *batches(order, batchSize) {
            asked.push(`${name}:${Array.from(order).join('')}/${batchSize}`);
            // drops sample 1 of 'a' (an unreadable image under --skip-bad-images)
            const keep = Array.from(order).filter((i) => !(name === 'a' && i === 1));
            yield { x: Float32Array.from(keep, (i) => base + i), y: Int32Array.from(keep, (i) => base + i), indices: Int32Array.from(keep), shape: [keep.length, 1, 1, 1] };
          },
        };
      },
    };
    const m = await loadMixed(source, ['a', 'b']);
    expect(m.n).toBe(5);
    expect(Array.from(m.partOf)).toEqual([0, 0, 0, 1, 1]);
    expect(Array.from(m.labels as Int32Array)).toEqual([10, 11, 12, 20, 21]);
    const got: number[][] = [];
    const idx: number[][] = [];
    for await (const b of m.batches(Int32Array.from([4, 0, 3, 1, 2]), 2)) {
      got.push(Array.from(b.y));
      idx.push(Array.from(b.indices));
      expect(Array.from(b.x)).toEqual(Array.from(b.y));
    }
    expect(got).toEqual([[21, 10], [20], [12]]);
    expect(idx).toEqual([[4, 0], [3], [2]]);
    expect(asked.sort()).toEqual(['a:0/1', 'a:1/1', 'a:2/1', 'b:0/1', 'b:1/1']);
  });
});
