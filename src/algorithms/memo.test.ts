/**
 * MEMO (src/algorithms/memo.ts) against its float64 PyTorch re-statement with AlphaBatchNorm
 * (scripts/fixtures_lib/memo_ref.py; fixtures from scripts/make-roid-memo-fixtures.py over
 * test/fixtures/models/resnext_small): three steps of two samples each, every sample's AugMix
 * views rebuilt from the fixture's parameters by src/algorithms/augmix.ts (checked against PIL in
 * augmix.test.ts). Checked: the post-update predictions, the norm affines and the classifier after
 * the last sample, and the update norm ‖θ − θ0‖ of every parameter. Also: the marginal entropy, the
 * configs, refusals, per-sample episodic behaviour, no tensor leak over 20 steps.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from './registry.js';
import { weightRecords } from '../runner/accounting.js';
import { createMemo, marginalEntropy, type MemoValues } from './memo.js';
import { copiesAndAugmentation } from './context.js';
import { resolveConfig } from '../config/load.js';
import type { AdaptOptions } from './types.js';
import { applyAugmix, toU8 } from './augmix.js';
import { toParams, type PyAugmixParams } from './augmix-fixture.js';
import { ErrorLog, fixtureBatch as nhwc, fixtureData as raw, relErr } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const TOL = 1e-4;

interface MemoCase {
  alpha: number;
  optimizer: { lr: number; momentum: number; nesterov: boolean };
  views_per_sample: number;
  parameters: string[];
  final_stored: string[];
  views: PyAugmixParams[][];
}

const errors = new ErrorLog();
const available = existsSync(join(ADAPT, 'memo.json'));
let weights: StateDict;
let inputs: StateDict;

const opts = (c: Pick<MemoCase, 'alpha' | 'optimizer' | 'views_per_sample'>): AdaptOptions & MemoValues => ({
  lr: c.optimizer.lr,
  momentum: c.optimizer.momentum,
  nesterov: c.optimizer.nesterov,
  dampening: 0,
  optimizer: 'sgd',
  episodic: false,
  matchedUpdate: 'momentum',
  bnAlpha: c.alpha,
  memoAugmentations: c.views_per_sample,
});

function torchValue(model: Classifier, name: string): Float32Array {
  const p = model.parameters().find((q) => q.name === name)!;
  return tf.tidy(() => p.toTorch(p.variable!).dataSync() as Float32Array);
}

beforeAll(async () => {
  await initBackend('wasm');
  weights = await readSafetensors(WEIGHTS);
  if (available) inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
});

afterAll(() => errors.report('memo parity, max relative errors'));

describe('MEMO pieces', () => {
  it('marginal entropy is the entropy of the mean softmax', () => {
    const z = tf.tensor2d([[2, 0, -1], [0.1, 0.2, 0.3], [-1, 3, 0]]);
    const rows = [[2, 0, -1], [0.1, 0.2, 0.3], [-1, 3, 0]].map((r) => {
      const e = r.map(Math.exp);
      const s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    });
    const mean = [0, 1, 2].map((k) => rows.reduce((a, r) => a + r[k] / 3, 0));
    expect(marginalEntropy(z).dataSync()[0]).toBeCloseTo(-mean.reduce((a, p) => a + p * Math.log(p), 0), 5);
    z.dispose();
  });

  it('configs load with the published settings', () => {
    for (const d of ['cifar10', 'cifar100']) {
      expect(resolveConfig(`configs/${d}/memo.yaml`, {})).toMatchObject({ alg: 'memo', optimizer: 'sgd', lr: 0.005, momentum: 0.9, dampening: 0, nesterov: true, weightDecay: 0, memoAugmentations: 32, bnAlpha: 0.1, batchSize: 1 });
    }
    expect(resolveConfig('configs/imagenet/memo.yaml', {})).toMatchObject({ alg: 'memo', model: 'resnet50', lr: 0.00025, nesterov: true, memoAugmentations: 64, bnAlpha: 0.1, batchSize: 1 });
  });
});

describe.skipIf(!available)('MEMO parity with PyTorch (resnext_small, AlphaBN)', () => {
  it('3 steps of 2 samples, AugMix views from the fixture parameters', async () => {
    const c = JSON.parse(readFileSync(join(ADAPT, 'memo.json'), 'utf8')) as MemoCase;
    const fx = await readSafetensors(join(ADAPT, 'memo.safetensors'));
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    let sample = 0;
    const views = (xi: tf.Tensor4D, _i: number, n: number) => {
      expect(n).toBe(c.views_per_sample);
      const img = toU8(xi);
      const ps = c.views[sample++];
      const size = img.height * img.width * 3;
      const out = new Float32Array(n * size);
      ps.forEach((p, v) => out.set(applyAugmix(img, toParams(p)), v * size));
      return tf.tensor4d(out, [n, img.height, img.width, 3]);
    };
    const alg = await createMemo(model, opts(c), { rng: new Rng(1) }, views);
    expect(model.normMode).toBe('alpha');
    expect(model.parameters().filter((p) => p.requiresGrad).map((p) => p.name)).toEqual(c.parameters);
    for (let s = 0; s < 3; s++) {
      const x = tf.tidy(() => tf.slice(nhwc(inputs, `x${s}`), [0, 0, 0, 0], [2, -1, -1, -1]));
      const r = alg.step(x);
      x.dispose();
      errors.check(`memo logits${s}`, 'memo.logits', r.logits, raw(fx, `logits${s}`), TOL);
      r.logits.dispose();
      expect(r.updated).toBe(true);
      expect(r.metrics).toEqual({ views: 2 * c.views_per_sample });
      // the analytic cache is that of the back-propagated views' forward, not of the prediction
      const first = model.normLayers[0]; // after the stem conv: 32 × 32
      expect(first.last!.forwardBytes).toBe(c.views_per_sample * first.numFeatures * 32 * 32 * 4);
      const weightInputs = weightRecords(model);
      expect(weightInputs.length).toBeGreaterThan(0);
      for (const wr of weightInputs) expect(wr.shape[0], wr.name).toBe(c.views_per_sample); // NHWC / [rows, in]
    }
    for (const k of c.final_stored) errors.check(`memo final ${k}`, 'memo.final', torchValue(model, k), raw(fx, `final.${k}`), TOL);
    const norms = raw(fx, 'update_norms');
    const got = c.parameters.map((k) => {
      const v = torchValue(model, k);
      const v0 = raw(weights, k);
      return Math.sqrt(v.reduce((a, x, i) => a + (x - v0[i]) ** 2, 0));
    });
    // ‖θ − θ0‖ from float32 θ: the update is about 1e-3 of θ, so θ's float32 rounding (6e-8
    // relative) is about 6e-5 of it — measured 8.3e-5 on WASM
    errors.check('memo update norms', 'memo.update_norms', got, norms, 2e-4);
    const bytes = alg.stateBytes!();
    expect(bytes.snapshot).toBeGreaterThan(0);
    expect(bytes.optimizer).toBeGreaterThan(0);
    alg.reset();
    for (const k of c.parameters.slice(0, 5)) expect(relErr(torchValue(model, k), raw(weights, k))).toBe(0);
    alg.dispose();
    model.dispose();
  });
});

describe('MEMO runs', () => {
  it('refuses --accum-bn and --n-layer', async () => {
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    const o = opts({ alpha: 0.1, optimizer: { lr: 0.005, momentum: 0.9, nesterov: true }, views_per_sample: 2 });
    await expect(createMemo(model, { ...o, nLayer: 2 }, { rng: new Rng(1) })).rejects.toThrow(/n-layer/);
    model.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 });
    await expect(createMemo(model, o, { rng: new Rng(1) })).rejects.toThrow(/accum-bn/);
    model.dispose();
  });

  it.skipIf(!available)('is episodic per sample and leaks no tensor over 20 steps', async () => {
    const model = buildModel('resnext29', weights, { rng: new Rng(3) });
    const x = tf.tidy(() => tf.slice(nhwc(inputs, 'x0'), [0, 0, 0, 0], [1, -1, -1, -1]));
    const ctx = { rng: new Rng(1), ...copiesAndAugmentation(model, new Rng(2)) };
    const alg = await ALGORITHMS.memo.create(model, opts({ alpha: 0.1, optimizer: { lr: 0.005, momentum: 0.9, nesterov: true }, views_per_sample: 2 }), ctx);
    // the same draws give the same predictions: nothing carries over from earlier samples
    const first = alg.step(x);
    let steady = -1;
    for (let i = 0; i < 20; i++) {
      const r = alg.step(x);
      expect(r.logits.shape).toEqual([1, 10]);
      r.logits.dispose();
      if (i === 2) steady = tf.memory().numTensors;
      if (i > 2) expect(tf.memory().numTensors).toBe(steady);
    }
    alg.reset();
    const again = await ALGORITHMS.memo.create(model, opts({ alpha: 0.1, optimizer: { lr: 0.005, momentum: 0.9, nesterov: true }, views_per_sample: 2 }), { rng: new Rng(1), ...copiesAndAugmentation(model, new Rng(2)) });
    const r2 = again.step(x);
    expect(relErr(r2.logits.dataSync(), first.logits.dataSync())).toBeLessThan(1e-6);
    tf.dispose([first.logits, r2.logits, x]);
    alg.dispose();
    again.dispose();
    model.dispose();
  }, 120_000);
});
