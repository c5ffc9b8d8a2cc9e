/**
 * Backprop-memory accounting: the analytic figures (docs/memory.md#analytic) for the RobustBench
 * ResNeXt-29 shape, the measured bytes held for backprop against them on a small model (Tent,
 * MECTA with pruning, MECTA with every layer matched), and the memory-economic custom gradients
 * (bit-packed ReLU masks, early release in the backward) leaving gradients bit-identical.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { buildModel } from '../models/registry.js';
import type { Classifier, MectaOptions } from '../models/types.js';
import { addRelu, relu } from '../models/ops/relu-mask.js';
import { tent } from '../algorithms/tent.js';
import type { AdaptOptions } from '../algorithms/types.js';
import { accountCache, analyticCache } from '../runner/accounting.js';
import { MB, MeasuredDomain, MemoryProbe, accountTape } from './probe.js';
import { randomResNeXt, randomStateDict } from './random-weights.js';
import { layerTable, parseBatchSizes, runProfile, summaryTable, weightLayerTable, type ProfileReport } from './profile.js';
import { defaultConfig } from '../config/schema.js';
import { SMALL_RESNEXT } from '../models/test-weights.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const ADAPT: AdaptOptions = {
  lr: 0.00025,
  momentum: 0.9,
  optimizer: 'sgd',
  episodic: false,
  eMargin: 0.4 * Math.log(10),
  dMargin: 0.4,
  fisherAlpha: 1,
  fisherSize: 4,
  matchedUpdate: 'momentum',
};

const MECTA_BASE: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 };


/** Per-layer input shapes [N, H, W, C] of a model, read off one forward's records. */
function normShapes(model: Classifier, x: tf.Tensor4D): { n: number; h: number; w: number; c: number }[] {
  model.setNormMode('batch');
  tf.tidy(() => model.forward(x));
  // forwardBytes = N·C·H·W·4 in 'batch' mode; H·W from the bytes, C from the layer.
  return model.normLayers.map((l) => {
    const hw = l.last!.forwardBytes / (4 * x.shape[0] * l.numFeatures);
    const side = Math.round(Math.sqrt(hw));
    return { n: x.shape[0], h: side, w: hw / side, c: l.numFeatures };
  });
}

describe('analytic cache (docs/memory.md) for the RobustBench ResNeXt-29 shape', () => {
  it('batch 16: 228.589568 MB without pruning, 68.01408 MB with prune-q 0.7 (all layers caching)', () => {
    const model = buildModel('resnext29', randomStateDict('resnext29'), { rng: new Rng(1) });
    try {
      expect(model.normLayers.length).toBe(31);
      const x = tf.randomUniform([1, 32, 32, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
      const shapes = normShapes(model, x).map((s) => ({ ...s, n: 16, caches: true }));
      x.dispose();
      const full = analyticCache(shapes, 0);
      expect(full.totalBackwardBytes).toBe(228_589_568);
      expect(full.cacheMb).toBeCloseTo(228.589568, 9);
      expect(full.maxForwardBytes).toBe(16 * 256 * 32 * 32 * 4);
      const pruned = analyticCache(shapes, 0.7);
      expect(pruned.cacheMb).toBeCloseTo(68.01408, 9);

      // The model's own records agree (MECTA, gate off: every layer caches its kept channels).
      model.setNormMode('mecta', { ...MECTA_BASE, pruneQ: 0.7 });
      const x16 = tf.randomUniform([16, 32, 32, 3], 0, 1, 'float32', 2) as tf.Tensor4D;
      tf.tidy(() => model.forward(x16));
      x16.dispose();
      const acc = accountCache(model.normLayers.map((l) => l.last));
      expect(acc.totalBackwardBytes).toBe(68_014_080);
    } finally {
      model.dispose();
    }
  });
});

describe('measured backprop bytes (small ResNeXt, batch 4)', () => {
  let model: Classifier;
  const x = () => tf.randomUniform([4, 32, 32, 3], 0, 1, 'float32', 7) as tf.Tensor4D;

  beforeAll(() => {
    model = buildModel('resnext29', randomResNeXt(SMALL_RESNEXT, 3), { rng: new Rng(5) });
  });

  async function step(mode: 'batch' | MectaOptions, perLayer = false) {
    const snap = model.stateDict();
    for (const l of model.normLayers) l.reset();
    if (mode === 'batch') model.setNormMode('batch');
    else model.setNormMode('mecta', mode);
    const alg = await tent.create(model, ADAPT, { rng: new Rng(1) });
    const probe = new MemoryProbe(perLayer);
    const undo = perLayer ? probe.markLayers(model.normLayers) : () => undefined;
    const input = x();
    probe.begin();
    const res = alg.step(input);
    const mem = probe.end();
    undo();
    res.logits.dispose();
    input.dispose();
    alg.dispose();
    const analytic = accountCache(model.normLayers.map((l) => l.last));
    model.loadStateDict(snap);
    for (const t of snap.values()) t.dispose();
    return { mem, analytic, updated: res.updated };
  }

  it('Tent: measured ≤ 1.10 × analytic (and ≥ the analytic BN inputs)', async () => {
    const { mem, analytic, updated } = await step('batch', true);
    expect(updated).toBe(true);
    expect(probeSupported()).toBe(true);
    const ratio = mem.backpropBytes! / analytic.totalBackwardBytes;
    console.log(`tent small b4: analytic ${(analytic.totalBackwardBytes / MB).toFixed(3)} MB, measured ${(mem.backpropBytes! / MB).toFixed(3)} MB (×${ratio.toFixed(3)}), peak ${(mem.peakBytes! / MB).toFixed(2)} MB`);
    expect(ratio).toBeGreaterThanOrEqual(1);
    // The acceptance bound of a Tent step (docs/memory.md#measured-against-analytic).
    expect(ratio).toBeLessThanOrEqual(1.1);
    expect(mem.backwards).toBe(1);
    // Per layer: each norm op saves exactly its input (+ [C] vectors); masks come after it.
    const layers = mem.layers!;
    expect(layers.map((l) => l.name)).toEqual(model.normLayers.map((l) => l.name));
    layers.forEach((l, i) => {
      const want = model.normLayers[i].last!.backwardBytes;
      expect(l.normBytes).toBeGreaterThanOrEqual(want);
      expect(l.normBytes).toBeLessThanOrEqual(want + 4 * 4 * model.normLayers[i].numFeatures);
      expect(l.afterBytes).toBeLessThan(want / 4);
    });
  });

  it('MECTA prune-q 0.7: measured ≤ 1.5 × analytic', async () => {
    const { mem, analytic, updated } = await step({ ...MECTA_BASE, forgetGate: true, betaThre: 0.00125, pruneQ: 0.7 });
    expect(updated).toBe(true);
    expect(analytic.totalBackwardBytes).toBeGreaterThan(0);
    const ratio = mem.backpropBytes! / analytic.totalBackwardBytes;
    console.log(`mecta q0.7 small b4: analytic ${(analytic.totalBackwardBytes / MB).toFixed(3)} MB, measured ${(mem.backpropBytes! / MB).toFixed(3)} MB (×${ratio.toFixed(3)})`);
    expect(ratio).toBeLessThanOrEqual(1.5);
  });

  it('MECTA with every layer matched: no backward, 0 analytic and 0 measured backward bytes', async () => {
    // β = 1 − exp(−d) < 1 = beta-thre for every layer: all fully matched
    // (docs/mecta-norm.md#cache-stopping).
    const { mem, analytic, updated } = await step({ ...MECTA_BASE, forgetGate: true, betaThre: 1 });
    expect(model.normLayers.every((l) => l.last?.cached === false)).toBe(true);
    expect(updated).toBe(false);
    expect(analytic.totalBackwardBytes).toBe(0);
    expect(mem.backpropBytes).toBe(0);
    expect(mem.backwards).toBe(0);
  });
});

describe('trainable-everything accounting (fixture ResNeXt, docs/memory.md#trainable-weights)', () => {
  const WEIGHTS = 'test/fixtures/models/resnext_small.safetensors';
  async function profile(train: 'norm' | 'all') {
    const cfg = { ...defaultConfig(), model: 'resnext29' as const, alg: 'tent' as const, weights: WEIGHTS, backend: 'wasm' as const };
    const before = tf.memory().numTensors;
    const report = await runProfile({ cfg, batchSizes: [4], domain: 'gaussian_noise', synthetic: true, perLayer: true, train, steps: 1, log: () => undefined });
    expect(tf.memory().numTensors).toBe(before); // model, algorithm and batch all disposed
    return report.rows[0];
  }

  it('norm-only Tent: no weight rows, the analytic figure is the norm layers alone', async () => {
    const row = await profile('norm');
    expect(row.error).toBeUndefined();
    expect(row.weight_layers).toBeUndefined();
    const norm = row.layers!.reduce((a, l) => a + l.analytic_backward_mb, 0);
    expect(row.analytic_backward_mb).toBeCloseTo(norm, 9);
  });

  it('every parameter trains: per conv/linear layer, measured = analytic input (+ the linear weight operand); total ≤ 1.10×', async () => {
    const row = await profile('all');
    expect(row.error).toBeUndefined();
    expect(row.updated).toBe(true);
    const w = row.weight_layers!;
    // 1 stem conv, 3 per block × 6 blocks, 1 projection shortcut per stage, the classifier.
    expect(w.filter((l) => l.kind === 'conv').length).toBe(1 + 3 * 6 + 3);
    expect(w.filter((l) => l.kind === 'linear').map((l) => l.name)).toEqual(['classifier']);
    for (const l of w) {
      if (l.kind === 'conv') {
        // A conv's op saves exactly its input (0 when another layer saved that input first).
        expect(Math.abs(l.measured_mb - l.analytic_backward_mb)).toBeLessThanOrEqual(1e-12);
      } else {
        // The autodiff of y = x·W + b also saves W [in, out] (a model buffer), y [N, out] and b
        // [out] (Add keeps both operands), frozen or not: not counted analytically.
        const [n, inF] = l.shape;
        const extraMb = (inF * 10 + n * 10 + 10) * 4 / MB;
        expect(l.measured_mb - l.analytic_backward_mb).toBeCloseTo(extraMb, 9);
      }
    }
    // The projection shortcuts share their block's input with its first conv: counted once.
    expect(w.filter((l) => l.analytic_backward_mb === 0).map((l) => l.name)).toEqual(['stage_1.0.downsample.0', 'stage_2.0.downsample.0', 'stage_3.0.downsample.0'].filter((n) => w.some((l) => l.name === n)));
    const norm = row.layers!.reduce((a, l) => a + l.analytic_backward_mb, 0);
    const weights = w.reduce((a, l) => a + l.analytic_backward_mb, 0);
    expect(row.analytic_backward_mb).toBeCloseTo(norm + weights, 9);
    console.log(`tent all-trainable fixture b4: analytic ${row.analytic_backward_mb!.toFixed(3)} MB (norm ${norm.toFixed(3)} + weights ${weights.toFixed(3)}), measured ${row.measured_backprop_mb!.toFixed(3)} MB (×${row.ratio!.toFixed(3)})`);
    expect(row.ratio!).toBeGreaterThanOrEqual(1);
    expect(row.ratio!).toBeLessThanOrEqual(1.1);
    expect(weightLayerTable(row)).toMatch(/classifier\s+linear\s+4×128/);
  });
});

function probeSupported(): boolean {
  return new MemoryProbe().supported;
}

describe('memory-economic custom gradients', () => {
  /** Reference relu gradient: dy · step(relu(x)). */
  function reference(x: tf.Tensor, dy: tf.Tensor): Float32Array {
    return tf.tidy(() => tf.mul(dy, tf.step(tf.relu(x))).dataSync() as Float32Array);
  }

  for (const shape of [
    [2, 4, 4, 8], // 256 = 24·10 + 16 → 16 bits per word
    [3, 4, 4, 8], // 384 → 24 bits per word
    [1, 3, 5, 7], // 105: no word size divides it → padded
  ]) {
    it(`relu / addRelu gradients are bit-identical to dy·step(y) with packed masks [${shape.join(',')}]`, () => {
      const rng = new Rng(11);
      const n = shape.reduce((a, d) => a * d, 1);
      // Values with exact zeros and ties so the mask boundary is exercised.
      const xv = Float32Array.from({ length: n }, (_, i) => (i % 5 === 0 ? 0 : rng.normal()));
      const bv = Float32Array.from({ length: n }, (_, i) => (i % 7 === 0 ? -xv[i] : rng.normal()));
      const x = tf.tensor4d(xv, shape as [number, number, number, number]);
      const b = tf.tensor4d(bv, shape as [number, number, number, number]);
      const dy = tf.randomNormal(shape, 0, 1, 'float32', 3) as tf.Tensor4D;
      const [gx] = tf.grads((a: tf.Tensor) => relu(a as tf.Tensor4D))([x], dy);
      expect(Array.from(gx.dataSync())).toEqual(Array.from(reference(x, dy)));
      const [ga, gb] = tf.grads((a: tf.Tensor, c: tf.Tensor) => addRelu(a as tf.Tensor4D, c as tf.Tensor4D))([x, b], dy);
      const sum = tf.add(x, b);
      const want = Array.from(reference(sum, dy));
      expect(Array.from(ga.dataSync())).toEqual(want);
      expect(Array.from(gb.dataSync())).toEqual(want);
      // A caller's dy is never released by the economic backward.
      expect(dy.isDisposed).toBe(false);
      for (const t of [x, b, dy, gx, ga, gb, sum]) t.dispose();
    });
  }

  it('a relu mask costs ≤ 2 bits per element on the tape; a plain forward keeps nothing', () => {
    const x = tf.randomNormal([4, 8, 8, 32], 0, 1, 'float32', 5) as tf.Tensor4D;
    const before = tf.memory().numTensors;
    relu(x).dispose();
    expect(tf.memory().numTensors).toBe(before);
    let bytes = 0;
    const v = tf.variable(tf.ones([32]));
    const { value, grads } = tf.engine().gradients(
      () => {
        const y = relu(tf.mul(x, v) as tf.Tensor4D);
        const tape = (tf.engine() as unknown as { state: { activeTape: never[] } }).state.activeTape;
        bytes = accountTape(tape, [v], y).tapeBytes - 0;
        return tf.sum(y);
      },
      [v],
    );
    // The multiply saves x and v (plain tfjs op); the relu only its packed mask.
    const mask = bytes - x.size * 4 - 32 * 4;
    expect(mask).toBeLessThanOrEqual((x.size * 2) / 8);
    value.dispose();
    grads.forEach((g) => g.dispose());
    v.dispose();
    x.dispose();
  });

  it('the backward frees dy, saved tensors and summands early without leaking', () => {
    const model = buildModel('resnext29', randomResNeXt(SMALL_RESNEXT, 4), { rng: new Rng(2) });
    model.setNormMode('batch');
    const params = model.trainableParams();
    const x = tf.randomUniform([2, 32, 32, 3], 0, 1, 'float32', 9) as tf.Tensor4D;
    const loss = () => tf.mean(tf.square(model.forward(x))) as tf.Scalar;
    // Warm the lazily built constants (flipped filters, mask words) first.
    tf.engine().gradients(loss, params).grads.forEach((g) => g.dispose());
    const before = tf.memory();
    const { value, grads } = tf.engine().gradients(loss, params);
    value.dispose();
    grads.forEach((g) => g.dispose());
    const after = tf.memory();
    expect(after.numTensors).toBe(before.numTensors);
    expect(after.numBytes).toBe(before.numBytes);
    x.dispose();
    model.dispose();
  });
});

describe('profile-mem helpers', () => {
  it('parses batch sizes', () => {
    expect(parseBatchSizes('8,16, 32,64,16')).toEqual([8, 16, 32, 64]);
    expect(() => parseBatchSizes('8,x')).toThrow(/not a positive integer/);
    expect(() => parseBatchSizes('')).toThrow(/at least one/);
  });

  it('formats the tables', () => {
    const report = {
      rows: [
        {
          batch_size: 16,
          analytic_forward_mb: 16.777216,
          analytic_backward_mb: 228.589568,
          analytic_cache_mb: 228.589568,
          measured_backprop_mb: 241.3,
          measured_tape_mb: 241.7,
          ratio: 1.0556,
          step_peak_mb: 380,
          step_start_mb: 30,
          inference_peak_mb: 216.3,
          step_ms: 5000,
          step_cpu_ms: 4900,
          inference_ms: 2000,
          updated: true,
          preamble_mb: 0,
          layers: [{ name: 'bn_1', shape: [16, 32, 32, 64], beta: null, cached: true, analytic_forward_mb: 4.19, analytic_backward_mb: 4.19, measured_norm_mb: 4.2, measured_after_mb: 0.26 }],
        },
        { batch_size: 64, error: 'RuntimeError: memory access out of bounds', measured_backprop_mb: null },
      ],
    } as unknown as ProfileReport;
    const t = summaryTable(report);
    expect(t).toContain('measured backprop MB');
    expect(t).toMatch(/16\s+16\.8\s+228\.6\s+241\.3\s+1\.06\s+380\.0\s+216\.3\s+5000\s+4900/);
    expect(t).toContain('failed: RuntimeError');
    expect(layerTable(report.rows[0])).toMatch(/bn_1\s+16×32×32×64\s+–\s+yes/);
    expect(t).not.toContain('GPU');
  });

  it('adds the GPU columns and fields when the rows come from the webgpu backend', () => {
    const row = { batch_size: 16, analytic_forward_mb: 1, analytic_backward_mb: 2, measured_backprop_mb: 2, ratio: 1, step_peak_mb: 5, inference_peak_mb: 3, step_ms: 9, step_cpu_ms: 8 };
    const report = { rows: [{ ...row, gpu_step_peak_mb: 413, gpu_inference_peak_mb: 249.6, gpu_allocated_mb: 794.7 }] } as unknown as ProfileReport;
    const t = summaryTable(report);
    expect(t).toContain('GPU step peak MB');
    // the GPU columns right after the timings (the operation and process columns follow)
    expect(t).toMatch(/9\s+8\s+413\.0\s+249\.6\s+794\.7(\s|$)/m);
    const dom = new MeasuredDomain();
    const mem = { backpropBytes: 2e6, tapeBytes: 2e6, peakBytes: 5e6, startBytes: 1e6, backwards: 1 };
    expect(dom.add({ ...mem, gpuPeakBytes: 7e6, gpuStartBytes: 1e6, gpuAllocatedBytes: 9e6 })).toEqual({ measured_backprop_mb: 2, measured_peak_mb: 5, measured_gpu_peak_mb: 7 });
    expect(dom.summary().measured_max_gpu_peak_mb).toBe(7);
    const cpu = new MeasuredDomain();
    expect(cpu.add(mem)).not.toHaveProperty('measured_gpu_peak_mb');
    expect(cpu.summary()).not.toHaveProperty('measured_max_gpu_peak_mb');
  });
});
