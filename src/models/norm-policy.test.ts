/**
 * Norm statistics policies (docs/mecta-norm.md#norm-policies): the two mixed-statistics policies
 * ('ema', RoTTA's robust BN; 'alpha', BN-α) against a hand computation and against tf autodiff of
 * their defining formulas, and against PyTorch (scripts/make-norm-policy-fixtures.py); and side-effect-free forwards (docs/mecta-norm.md#side-effect-free-forwards)
 * on a real model in every BN mode.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { configureNorm } from '../algorithms/norm-mode.js';
import { BatchNormLayer } from './batch-norm.js';
import { EMA_MOMENTUM_DEFAULT, withoutSideEffects } from './norm-policy.js';
import { buildModel } from './registry.js';
import { testImages } from './test-weights.js';
import { expectClose } from './test-helpers.js';
import type { Classifier, MectaOptions, NormMode, NormModeOptions } from './types.js';

const MODELS = join(process.cwd(), 'test', 'fixtures', 'models');
let resnext: StateDict;

beforeAll(async () => {
  await initBackend('wasm');
  resnext = await readSafetensors(join(MODELS, 'resnext_small.safetensors'));
});

const noPrune = () => new Int32Array(0);

function layerOf(mean: number[], variance: number[], gamma: number[], beta: number[], eps: number): BatchNormLayer {
  const params = {
    weight: tf.tensor1d(gamma),
    bias: tf.tensor1d(beta),
    runningMean: tf.tensor1d(mean),
    runningVar: tf.tensor1d(variance),
  };
  const layer = new BatchNormLayer('bn', params, noPrune, eps);
  tf.dispose(Object.values(params));
  return layer;
}

const vals = (t: tf.Tensor) => Array.from(t.dataSync());

describe('ema / alpha: hand computation (1 channel, ε = 0)', () => {
  // x = [1, 2, 3, 6]: batch mean 3, biased variance (4 + 1 + 0 + 9)/4 = 3.5; source stats 0 / 1.
  const x = () => tf.tensor4d([1, 2, 3, 6], [1, 2, 2, 1]);

  it("'ema' (momentum 0.5) normalises with the updated EMA and stores it", () => {
    const layer = layerOf([0], [1], [1], [0], 0);
    layer.setMode('ema', { momentum: 0.5 });
    tf.tidy(() => {
      // μ = 0.5·0 + 0.5·3 = 1.5, v = 0.5·1 + 0.5·3.5 = 2.25, σ = 1.5
      const y1 = vals(layer.apply(x()));
      [-1 / 3, 1 / 3, 1, 3].forEach((v, i) => expect(y1[i]).toBeCloseTo(v, 6));
      expect(vals(layer.runningMean)[0]).toBeCloseTo(1.5, 6);
      expect(vals(layer.runningVar)[0]).toBeCloseTo(2.25, 6);
      // second batch, same x: μ = 0.5·1.5 + 0.5·3 = 2.25, v = 0.5·2.25 + 0.5·3.5 = 2.875
      const y2 = vals(layer.apply(x()));
      expect(vals(layer.runningMean)[0]).toBeCloseTo(2.25, 6);
      expect(vals(layer.runningVar)[0]).toBeCloseTo(2.875, 6);
      expect(y2[3]).toBeCloseTo((6 - 2.25) / Math.sqrt(2.875), 5);
    });
    expect(layer.last).toMatchObject({ beta: null, cached: true, forwardBytes: 4 * 4 });
    layer.dispose();
  });

  it("'alpha' (α = 0.5) mixes source and batch statistics and never updates them", () => {
    const layer = layerOf([0], [1], [2], [0.5], 0);
    layer.setMode('alpha', { alpha: 0.5 });
    tf.tidy(() => {
      for (let k = 0; k < 2; k++) {
        // μ = 0.5·0 + 0.5·3 = 1.5, v = 0.5·1 + 0.5·3.5 = 2.25, on every batch
        const y = vals(layer.apply(x()));
        [-1 / 3, 1 / 3, 1, 3].forEach((v, i) => expect(y[i]).toBeCloseTo(2 * v + 0.5, 5));
        expect(vals(layer.runningMean)).toEqual([0]);
        expect(vals(layer.runningVar)).toEqual([1]);
      }
    });
    layer.dispose();
  });

  it('defaults and option checks', () => {
    const layer = layerOf([0], [1], [1], [0], 0);
    layer.setMode('ema');
    expect(EMA_MOMENTUM_DEFAULT).toBe(0.05);
    tf.tidy(() => layer.apply(x()));
    expect(vals(layer.runningMean)[0]).toBeCloseTo(0.05 * 3, 6);
    expect(() => layer.setMode('alpha')).toThrow(/alpha/);
    expect(() => layer.setMode('alpha', { alpha: 1.5 })).toThrow(/alpha/);
    expect(() => layer.setMode('ema', { momentum: -0.1 })).toThrow(/momentum/);
    // re-selecting by name keeps the last options (EATA's Fisher pass restores the mode this way)
    layer.setMode('alpha', { alpha: 0.25 });
    layer.setMode('batch');
    layer.setMode('alpha');
    expect(layer.mode).toBe('alpha');
    layer.dispose();
  });
});

describe('ema / alpha: forward and backward against tf autodiff of the formulas', () => {
  const shape: [number, number, number, number] = [3, 4, 5, 6];
  const C = 6;
  const r = new Rng(11);
  const rm0 = Array.from({ length: C }, () => 0.3 * r.normal());
  const rv0 = Array.from({ length: C }, () => 0.5 + Math.abs(r.normal()));
  const gamma = Array.from({ length: C }, () => 1 + 0.2 * r.normal());
  const beta = Array.from({ length: C }, () => 0.2 * r.normal());

  /** y = γ(x − μ)/sqrt(v + ε) + β with μ, v = (1 − w)·ref + w·batch, autodiff through tf.moments. */
  function reference(x: tf.Tensor4D, g: tf.Tensor4D, w: number, refMean: tf.Tensor1D, refVar: tf.Tensor1D, gm: tf.Tensor1D, bt: tf.Tensor1D) {
    const f = (xi: tf.Tensor, gi: tf.Tensor, bi: tf.Tensor) => {
      const { mean, variance } = tf.moments(xi, [0, 1, 2]);
      const mu = tf.add(tf.mul(refMean, 1 - w), tf.mul(mean, w));
      const v = tf.add(tf.mul(refVar, 1 - w), tf.mul(variance, w));
      return tf.add(tf.mul(tf.div(tf.sub(xi, mu), tf.sqrt(tf.add(v, 1e-5))), gi), bi);
    };
    const { value, grads } = tf.engine().gradients(() => f(x, gm, bt), [x, gm, bt], g);
    const { mean, variance } = tf.moments(x, [0, 1, 2]);
    return {
      out: [value, ...grads],
      mu: tf.add(tf.mul(refMean, 1 - w), tf.mul(mean, w)),
      v: tf.add(tf.mul(refVar, 1 - w), tf.mul(variance, w)),
    };
  }

  const cases: { mode: 'ema' | 'alpha'; options: NormModeOptions; w: number }[] = [
    { mode: 'ema', options: { momentum: 0.3 }, w: 0.3 },
    { mode: 'alpha', options: { alpha: 0.2 }, w: 0.8 },
  ];
  for (const c of cases) {
    it(`'${c.mode}': y, dx, dγ, dβ and the statistics over two batches`, () => {
      const before = tf.memory().numTensors;
      const layer = layerOf(rm0, rv0, gamma, beta, 1e-5);
      layer.setMode(c.mode, c.options);
      let refMean = tf.tensor1d(rm0);
      let refVar = tf.tensor1d(rv0);
      for (let k = 0; k < 2; k++) {
        tf.tidy(() => {
          const x = tf.add(tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 20 + k), 1.5), 0.4) as tf.Tensor4D;
          const g = tf.randomNormal(shape, 0, 1, 'float32', 30 + k) as tf.Tensor4D;
          const want = reference(x, g, c.w, refMean, refVar, layer.weight as tf.Tensor1D, layer.bias as tf.Tensor1D);
          const { value, grads } = tf.engine().gradients(() => layer.apply(x), [x, layer.weight, layer.bias], g);
          const got = [value, ...grads];
          for (const [i, label] of ['y', 'dx', 'dweight', 'dbias'].entries()) {
            expectClose(`${c.mode}.${label}`, got[i], want.out[i], 3e-5);
          }
          if (c.mode === 'ema') {
            expectClose('ema.running_mean', layer.runningMean, want.mu, 1e-6);
            expectClose('ema.running_var', layer.runningVar, want.v, 1e-6);
            tf.dispose([refMean, refVar]);
            refMean = tf.keep(want.mu.clone());
            refVar = tf.keep(want.v.clone());
          } else {
            expect(vals(layer.runningMean)).toEqual(Array.from(Float32Array.from(rm0)));
            expect(vals(layer.runningVar)).toEqual(Array.from(Float32Array.from(rv0)));
          }
        });
      }
      tf.dispose([refMean, refVar]);
      layer.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});

interface FixtureStep {
  x: number[];
  g: number[];
  y: number[];
  dx: number[];
  dweight: number[];
  dbias: number[];
  running_mean: number[];
  running_var: number[];
}
interface FixtureCase {
  mode: 'ema' | 'alpha';
  options: NormModeOptions;
  eps: number;
  shape: [number, number, number, number];
  running_mean0: number[];
  running_var0: number[];
  weight: number[];
  bias: number[];
  steps: FixtureStep[];
}

describe('ema / alpha against PyTorch (test/fixtures/norm-policy)', () => {
  const fixtures = JSON.parse(readFileSync(join(process.cwd(), 'test', 'fixtures', 'norm-policy', 'norm_policy.json'), 'utf8')) as Record<string, FixtureCase>;
  for (const [name, fx] of Object.entries(fixtures)) {
    it(`${name}: two batches, y / dx / dγ / dβ and the statistics`, () => {
      const before = tf.memory().numTensors;
      const layer = layerOf(fx.running_mean0, fx.running_var0, fx.weight, fx.bias, fx.eps);
      layer.setMode(fx.mode, fx.options);
      // NCHW fixture values ↔ the layer's NHWC
      const nhwc = (v: number[]) => tf.transpose(tf.tensor4d(v, fx.shape), [0, 2, 3, 1]) as tf.Tensor4D;
      for (const [k, st] of fx.steps.entries()) {
        tf.tidy(() => {
          const x = nhwc(st.x);
          const { value, grads } = tf.engine().gradients(() => layer.apply(x), [x, layer.weight, layer.bias], nhwc(st.g));
          expectClose(`torch.${name}.y`, value, nhwc(st.y), 2e-5);
          expectClose(`torch.${name}.dx`, grads[0], nhwc(st.dx), 5e-5);
          expectClose(`torch.${name}.dweight`, grads[1], st.dweight, 5e-5);
          expectClose(`torch.${name}.dbias`, grads[2], st.dbias, 2e-5);
          expectClose(`torch.${name}.running_mean.${k}`, layer.runningMean, st.running_mean, 1e-6);
          expectClose(`torch.${name}.running_var.${k}`, layer.runningVar, st.running_var, 1e-6);
        });
      }
      layer.dispose();
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});

describe('side-effect-free forwards (withoutSideEffects)', () => {
  const MECTA: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.5 };
  const MODES: [NormMode, NormModeOptions | undefined][] = [
    ['source', undefined],
    ['batch', undefined],
    ['train-update', undefined],
    ['ema', { momentum: 0.1 }],
    ['alpha', { alpha: 0.3 }],
    ['mecta', MECTA],
  ];

  interface State {
    stats: number[][];
    pastSizes: number[];
    matched: boolean[];
    records: unknown[];
    rng: number[];
  }
  function state(model: Classifier, rng: Rng): State {
    const bns = model.normLayers as readonly BatchNormLayer[];
    return {
      stats: bns.flatMap((l) => [vals(l.runningMean), vals(l.runningVar)]),
      pastSizes: bns.map((l) => l.pastSize),
      matched: bns.map((l) => l.matched),
      records: bns.map((l) => (l.last ? { ...l.last } : null)),
      rng: rng.state(),
    };
  }

  for (const [mode, options] of MODES) {
    it(`'${mode}': leaves every state unchanged and gives the normal forward's logits`, () => {
      const rng = new Rng(5);
      const model = buildModel('resnext29', resnext, { rng });
      const [h, , ch] = model.inputShape;
      const x1 = tf.tensor4d(testImages(4, h, 3), [4, h, h, ch]);
      const x2 = tf.tensor4d(testImages(4, h, 9), [4, h, h, ch]);
      model.setNormMode(mode, options);
      // A first normal forward with a backward: records, past_size and statistics move, and the
      // model builds what a taped forward needs once, so it is not counted below.
      const first = tf.variableGrads(() => tf.sum(model.forward(x1)) as tf.Scalar, model.trainableParams());
      tf.dispose([first.value, ...Object.values(first.grads)]);
      model.forward(x1).dispose(); // and a plain one ('source' folds BN into the convs once)
      const before = tf.memory().numTensors;
      const s0 = state(model, rng);

      // side-effect free, with and without a tape (a SAM / augmented forward with a backward)
      const free = withoutSideEffects(model, () => {
        const y = model.forward(x2);
        const out = vals(y);
        y.dispose();
        const { value, grads } = tf.variableGrads(() => tf.sum(model.forward(x2)) as tf.Scalar, model.trainableParams());
        tf.dispose([value, ...Object.values(grads)]);
        return out;
      });
      expect(model.normLayers.every((l) => l.sideEffects)).toBe(true); // restored
      expect(state(model, rng)).toEqual(s0);
      expect(tf.memory().numTensors).toBe(before);

      // the normal forward from the same state gives the same logits, then moves the state
      const y = model.forward(x2);
      expect(vals(y)).toEqual(free);
      y.dispose();
      if (mode !== 'source' && mode !== 'batch' && mode !== 'alpha') expect(state(model, rng).stats).not.toEqual(s0.stats);
      if (mode === 'mecta') {
        expect(state(model, rng).pastSizes).not.toEqual(s0.pastSizes);
        expect(state(model, rng).rng).not.toEqual(s0.rng); // pruning drew from the stream
      }
      tf.dispose([x1, x2]);
      model.dispose();
    });
  }

  it('restores the flags after a throw', () => {
    const model = buildModel('resnext29', resnext, { rng: new Rng(1) });
    expect(() =>
      withoutSideEffects(model, () => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(model.normLayers.every((l) => l.sideEffects)).toBe(true);
    model.dispose();
  });
});

describe('configureNorm with NormStats', () => {
  it('selects ema / alpha for adaptive methods, keeps them, and refuses them with MECTA', () => {
    const model = buildModel('resnext29', resnext, { rng: new Rng(1) });
    configureNorm(model, 'adaptive', null, { kind: 'ema', momentum: 0.2 });
    expect(model.normMode).toBe('ema');
    configureNorm(model, 'adaptive'); // the registry's call before create(): keeps the caller's choice
    expect(model.normMode).toBe('ema');
    configureNorm(model, 'adaptive', undefined, { kind: 'alpha', alpha: 0.4 });
    expect(model.normMode).toBe('alpha');
    configureNorm(model, 'source');
    expect(model.normMode).toBe('source');
    configureNorm(model, 'adaptive', null);
    expect(model.normMode).toBe('batch');
    const mecta: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 };
    expect(() => configureNorm(model, 'adaptive', mecta, { kind: 'ema' })).toThrow(/accum-bn/);
    configureNorm(model, 'adaptive', mecta);
    expect(() => configureNorm(model, 'adaptive', undefined, { kind: 'alpha', alpha: 0.1 })).toThrow(/accum-bn/);
    model.dispose();
  });
});
