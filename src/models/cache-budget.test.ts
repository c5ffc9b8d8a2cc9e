/**
 * The backprop-cache budget (docs/memory.md#cache-budget): the allocation from β and shapes, its
 * guarantees (analytic ≤ B, monotone in B, β order) and the per-model planning state; then a
 * budgeted EATA step on the fixture ResNeXt whose measured backprop bytes stay ≤ 1.1·B.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { allocateCache, budgetOrder, CacheBudget, minimumBudgetBytes, minKept, type BudgetLayer } from './cache-budget.js';
import { accountCache } from '../runner/accounting.js';
import { defaultConfig } from '../config/schema.js';
import { runProfile } from '../memory/profile.js';
import { randomResNeXt } from '../memory/random-weights.js';
import { buildModel } from './registry.js';
import { withoutSideEffects } from './norm-policy.js';
import type { MectaOptions } from './types.js';
import { SMALL_RESNEXT } from './test-weights.js';

const n = 2;

/** Three layers, forward order: 8×(4×4), 4×(2×2), 2×(1×1); bytes per channel at N = 2: 128, 32, 8. */
const LAYERS: BudgetLayer[] = [
  { name: 'a', channels: 8, pixels: 16, beta: 0.1 },
  { name: 'b', channels: 4, pixels: 4, beta: 0.5 },
  { name: 'c', channels: 2, pixels: 1, beta: 0.3 },
];

function randomLayers(rng: Rng): BudgetLayer[] {
  const m = 2 + rng.int(10);
  return Array.from({ length: m }, (_, i) => ({
    name: `l${i}`,
    channels: 1 + rng.int(64),
    pixels: [1, 4, 16, 64][rng.int(4)],
    beta: rng.next() < 0.1 ? null : rng.next(),
  }));
}

describe('allocateCache (docs/memory.md#cache-budget)', () => {
  it('β descending, each full until one partial layer: the hand-computed case', () => {
    // Order b (β 0.5), c (0.3), a (0.1). Masks o = N·HW·C/8 bytes: a 32, b 4, c 1; stats 24·C;
    // the fixed part P = 16·ΣC = 224.
    expect(budgetOrder(LAYERS)).toEqual([1, 2, 0]);
    // B = 1100: b: path o_b + o_c = 5, stats 96, 4 channels × 32 = 128 → used 224 + 229 = 453;
    // c: path 0 (below b already), stats 48, 2 × 8 = 16 → used 517; a: path o_a = 32, stats 192,
    // left 1100 − 517 − 32 − 192 = 359 → floor(359 / 128) = 2 channels ≥ k_min = 1 → partial, stop.
    const alloc = allocateCache(LAYERS, n, 1100);
    expect(alloc.layers.map((l) => l.kept)).toEqual([2, 4, 2]);
    expect(alloc.backwardBytes).toBe(2 * 128 + 4 * 32 + 2 * 8);
    expect(alloc.estimatedBytes).toBe(517 + 32 + 192 + 256);
    expect(alloc.layers.map((l) => l.forwardChannels)).toEqual([8, 4, 2]);
    // B = 800: b and c full as above (used 517); a: 800 − 517 − 32 − 192 = 59 < 128 → nothing, stop.
    const small = allocateCache(LAYERS, n, 800);
    expect(small.layers.map((l) => l.kept)).toEqual([0, 4, 2]);
    // Every forward figure is capped at B: a counts min(8, floor(800 / 128)) = 6 channels.
    expect(small.layers.map((l) => l.forwardChannels)).toEqual([6, 4, 2]);
    expect(small.maxForwardBytes).toBe(6 * 128);
  });

  it('without β (first batch) the deepest layers come first', () => {
    const flat = LAYERS.map((l) => ({ ...l, beta: null }));
    expect(budgetOrder(flat)).toEqual([2, 1, 0]);
    const equal = LAYERS.map((l) => ({ ...l, beta: 0.2 }));
    expect(budgetOrder(equal)).toEqual([2, 1, 0]);
  });

  it('refuses a budget below the minimum with one CtaError naming the flag and the minimum', () => {
    const min = minimumBudgetBytes(LAYERS, n);
    // the dearest layer at its floor, offered first: a, 1 channel: P 224 + 128 + stats 192 + masks 37
    expect(min).toBe(581);
    expect(() => allocateCache(LAYERS, n, min - 1)).toThrow(CtaError);
    expect(() => allocateCache(LAYERS, n, min - 1)).toThrow(/--cache-budget-mb: .* below the smallest achievable cache, 0\.001 MB at batch size 2 /);
    // at the minimum, whichever layer is offered first caches
    for (const first of [0, 1, 2]) {
      const layers = LAYERS.map((l, i) => ({ ...l, beta: i === first ? 1 : 0 }));
      expect(allocateCache(layers, n, min).layers[first].kept).toBeGreaterThan(0);
    }
  });

  it('random shapes and β: analytic ≤ B, estimated ≤ B, floors and the β order hold', () => {
    const rng = new Rng(11);
    for (let t = 0; t < 300; t++) {
      const layers = randomLayers(rng);
      const nn = 1 + rng.int(16);
      const min = minimumBudgetBytes(layers, nn);
      const budget = Math.round(min * (1 + 20 * rng.next()));
      const alloc = allocateCache(layers, nn, budget);
      const records = alloc.layers.map((a, i) => {
        const fwd = 4 * nn * layers[i].pixels * (a.kept > 0 ? a.kept : a.forwardChannels);
        return { name: a.name, beta: null, cached: a.kept > 0, forwardBytes: fwd, backwardBytes: a.kept > 0 ? fwd : 0 };
      });
      const acc = accountCache(records);
      expect(acc.cacheMb * 1e6).toBeLessThanOrEqual(budget);
      expect(alloc.estimatedBytes).toBeLessThanOrEqual(budget);
      expect(alloc.estimatedBytes).toBeGreaterThanOrEqual(alloc.backwardBytes);
      const order = budgetOrder(layers);
      let seenShort = false;
      for (const i of order) {
        const a = alloc.layers[i];
        if (a.kept > 0) expect(a.kept).toBeGreaterThanOrEqual(minKept(layers[i].channels));
        expect(a.kept).toBeLessThanOrEqual(a.forwardChannels);
        // once a layer in the β order got less than all its channels, no later layer caches
        if (seenShort) expect(a.kept).toBe(0);
        if (a.kept < layers[i].channels) seenShort = true;
      }
    }
  });

  it("'spread': every layer its floor first (β order), then top-ups in β order", () => {
    // B = 800: floors b, c, a (1 channel each): used 224 + (32 + 5 + 96) + (8 + 48) + (128 + 32 + 192)
    // = 765; top-up b by floor(35 / 32) = 1 → 2 of 4, partial → stop.
    expect(allocateCache(LAYERS, n, 800, 'spread').layers.map((l) => l.kept)).toEqual([1, 2, 1]);
    // B = 1100: b and c topped up in full (861, 869), then a by floor(231 / 128) = 1 → 2.
    const big = allocateCache(LAYERS, n, 1100, 'spread');
    expect(big.layers.map((l) => l.kept)).toEqual([2, 4, 2]);
    expect(big.estimatedBytes).toBe(997);
    const rng = new Rng(17);
    for (let t = 0; t < 300; t++) {
      const layers = randomLayers(rng);
      const nn = 1 + rng.int(16);
      const budget = Math.round(minimumBudgetBytes(layers, nn) * (1 + 20 * rng.next()));
      const alloc = allocateCache(layers, nn, budget, 'spread');
      expect(alloc.estimatedBytes).toBeLessThanOrEqual(budget);
      expect(alloc.backwardBytes).toBeLessThanOrEqual(budget);
      const order = budgetOrder(layers);
      const kept = order.map((i) => alloc.layers[i].kept);
      expect(kept[0]).toBeGreaterThan(0); // the first layer offered always caches
      // the caching layers are a prefix of the β order, each with at least its floor ...
      const last = kept.findLastIndex((k) => k > 0);
      kept.forEach((k, j) => (j <= last ? expect(k).toBeGreaterThanOrEqual(minKept(layers[order[j]].channels)) : expect(k).toBe(0)));
      // ... and a layer above its floor means every layer before it keeps all it may
      order.forEach((i, j) => {
        if (kept[j] > minKept(layers[i].channels)) {
          for (const h of order.slice(0, j)) expect(alloc.layers[h].kept).toBe(Math.min(layers[h].channels, alloc.layers[h].forwardChannels));
        }
      });
    }
  });

  it('is monotone in B: no layer keeps fewer channels when the budget grows', () => {
    const rng = new Rng(5);
    for (let t = 0; t < 100; t++) {
      const layers = randomLayers(rng);
      const nn = 1 + rng.int(8);
      const min = minimumBudgetBytes(layers, nn);
      let prev = allocateCache(layers, nn, min).layers.map((l) => l.kept);
      for (let f = 1.05; f < 30; f *= 1.07) {
        const cur = allocateCache(layers, nn, Math.round(min * f)).layers.map((l) => l.kept);
        cur.forEach((k, i) => expect(k).toBeGreaterThanOrEqual(prev[i]));
        prev = cur;
      }
      // a budget above everything caches every layer in full
      const all = layers.reduce((s, l) => s + 4 * nn * l.pixels * l.channels * 2 + 40 * l.channels, 0);
      expect(allocateCache(layers, nn, all).layers.map((l) => l.kept)).toEqual(layers.map((l) => l.channels));
    }
  });
});

describe('CacheBudget planning state', () => {
  it('plans at the first layer of each forward from the previous forward’s β', () => {
    const b = new CacheBudget(1100);
    for (const l of LAYERS) b.see(l.name, l.channels, l.pixels);
    // no β yet: deepest first → c, b in full, then a partial (the hand-computed case's numbers)
    const first = LAYERS.map((l) => b.allocation(l.name, n).kept);
    expect(first).toEqual([2, 4, 2]);
    // this forward's β: a moved most
    b.noteBeta('a', 0.9);
    b.noteBeta('b', 0.2);
    b.noteBeta('c', 0.1);
    // the next forward (layer a asks again) plans with the β just noted: a first, with every mask
    // of the path (37), its statistics (192) and P (224): floor(647 / 128) = 5 of 8 → partial, stop
    const second = LAYERS.map((l) => b.allocation(l.name, n).kept);
    expect(second).toEqual([5, 0, 0]);
    expect(b.keptRatios().map((r) => r.ratio)).toEqual([0.625, 0, 0]);
    expect(b.current('a')?.kept).toBe(5);
    // a checkpoint keeps the β memory: a fresh budget restored from it plans the same next batch
    const resumed = new CacheBudget(1100);
    for (const l of LAYERS) resumed.see(l.name, l.channels, l.pixels);
    resumed.restoreBetas(b.betas());
    expect(LAYERS.map((l) => resumed.allocation(l.name, n).kept)).toEqual(second);
    // a run reset forgets β: back to the first-batch plan
    b.reset();
    expect(LAYERS.map((l) => b.allocation(l.name, n).kept)).toEqual(first);
    expect(() => new CacheBudget(0)).toThrow(CtaError);
  });
});

describe('a budgeted EATA step on the fixture ResNeXt (measured ≤ 1.1·B)', () => {
  beforeAll(async () => {
    await initBackend('wasm');
  });

  it('a side-effect-free taped forward (SAM, teacher) follows the last plan: same layers take a gradient', () => {
    const model = buildModel('resnext29', randomResNeXt(SMALL_RESNEXT, 3), { rng: new Rng(4) });
    const opts: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 };
    model.setNormMode('mecta', opts);
    const budget = model.setCacheBudget!(0.3e6)!;
    expect(budget.known.map((l) => l.name)).toEqual(model.normLayers.map((l) => l.name)); // the shape pass
    const x = tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 9) as tf.Tensor4D;
    const params = model.trainableParams();
    // which norm layers' γ get a non-zero gradient from a forward
    const gradded = (fn: () => tf.Scalar) => {
      const { value, grads } = tf.variableGrads(fn, params);
      const nonZero = params.map((p) => {
        const g = grads[p.name];
        return g ? tf.tidy(() => tf.any(tf.notEqual(g, 0)).dataSync()[0] === 1) : false;
      });
      value.dispose();
      tf.dispose(Object.values(grads));
      return nonZero.filter((_, i) => i % 2 === 0); // weight, bias per layer: the weights
    };
    gradded(() => tf.sum(model.forward(x))); // a first plan, without β
    const withEffects = gradded(() => tf.sum(model.forward(x))); // planned with the β just seen
    // (counted from here: a backward reaching a frozen conv for the first time caches its flipped filter)
    const before = tf.memory().numTensors;
    const ratios = model.normLayers.map((l) => l.last!.keptRatio!);
    expect(ratios.some((r) => r === 0)).toBe(true);
    expect(ratios.some((r) => r > 0)).toBe(true);
    // γ moves only where the layer caches (removed channels get dγ = 0, kept ones do not)
    expect(withEffects).toEqual(ratios.map((r) => r > 0));
    const free = withoutSideEffects(model, () => gradded(() => tf.sum(model.forward(x))));
    expect(free).toEqual(withEffects);
    // the side-effect-free forward left the records (and so the plan) alone
    expect(model.normLayers.map((l) => l.last!.keptRatio!)).toEqual(ratios);
    expect(tf.memory().numTensors).toBe(before);
    x.dispose();
    model.dispose();
  });

  it('keeps the analytic cache ≤ B and the measured backprop bytes ≤ 1.1·B, and logs the ratios', async () => {
    const budgetMb = 0.5;
    const cfg = {
      ...defaultConfig(),
      model: 'resnext29' as const,
      alg: 'eata' as const,
      weights: 'test/fixtures/models/resnext_small.safetensors',
      backend: 'wasm' as const,
      accumBn: true,
      forgetGate: true,
      cacheBudgetMb: budgetMb,
      eMargin: 10, // every sample passes EATA's entropy filter on random input, so the step updates
    };
    const before = tf.memory().numTensors;
    const report = await runProfile({ cfg, batchSizes: [8], domain: 'gaussian_noise', synthetic: true, perLayer: false, steps: 1, log: () => undefined });
    expect(tf.memory().numTensors).toBe(before);
    const row = report.rows[0];
    expect(row.error).toBeUndefined();
    expect(row.updated).toBe(true);
    expect(row.analytic_cache_mb!).toBeLessThanOrEqual(budgetMb);
    expect(row.measured_backprop_mb!).toBeGreaterThan(0);
    expect(row.measured_backprop_mb!).toBeLessThanOrEqual(1.1 * budgetMb);
    // some layers cache, not all of them (the plain cache of this model at batch 8 is larger)
    const kept = row.kept_ratios!;
    expect(kept.length).toBe(report.model.norm_layers);
    expect(kept.some((r) => r > 0)).toBe(true);
    expect(kept.some((r) => r === 0)).toBe(true);
  });
});
