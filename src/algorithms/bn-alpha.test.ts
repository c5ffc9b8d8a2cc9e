/**
 * BN-α (src/algorithms/bn-alpha.ts) against the float64 re-statement of the official AlphaBatchNorm
 * (scripts/fixtures_lib/memo_ref.py AlphaBN; fixture from scripts/make-roid-memo-fixtures.py over
 * test/fixtures/models/resnext_small): logits of three batches and of one image alone. Also: the
 * gradient through the mixed statistics is cut (the official buffers are constants), the α
 * convention (weight of the TEST statistics), the configs, MECTA refused, no tensor leak.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from './registry.js';
import { resolveConfig } from '../config/load.js';
import type { AdaptOptions } from './types.js';
import type { BnAlphaValues } from './bn-alpha.js';
import { configureNorm } from './norm-mode.js';
import { ErrorLog, fixtureBatch as nhwc, fixtureData as raw } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const TOL = 1e-4;
const available = existsSync(join(ADAPT, 'bn_alpha.json'));
const errors = new ErrorLog();
let weights: StateDict;
let inputs: StateDict;

const opts = (bnAlpha: number) => ({ lr: 1e-3, momentum: 0, optimizer: 'sgd', episodic: false, matchedUpdate: 'momentum', bnAlpha }) as AdaptOptions & BnAlphaValues;

beforeAll(async () => {
  await initBackend('wasm');
  weights = await readSafetensors(WEIGHTS);
  if (available) inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
});

afterAll(() => errors.report('bn_alpha parity, max relative errors'));

describe.skipIf(!available)('BN-α', () => {
  it('matches the official AlphaBatchNorm (α 0.1, unbiased batch variance), batches and a single image', async () => {
    const fx = await readSafetensors(join(ADAPT, 'bn_alpha.safetensors'));
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    const alg = await ALGORITHMS.bn_alpha.create(model, opts(0.1), { rng: new Rng(1) });
    expect(model.normMode).toBe('alpha');
    for (let k = 0; k < 3; k++) {
      const x = nhwc(inputs, `x${k}`);
      const r = alg.step(x);
      errors.check(`logits${k}`, 'bn_alpha.logits', r.logits, raw(fx, `logits${k}`), TOL);
      expect(r.updated).toBe(false);
      tf.dispose([x, r.logits]);
    }
    const one = tf.tidy(() => tf.slice(nhwc(inputs, 'x0'), [0, 0, 0, 0], [1, -1, -1, -1]));
    const r = alg.step(one);
    errors.check('single image', 'bn_alpha.logits', r.logits, raw(fx, 'logits_single'), TOL);
    tf.dispose([one, r.logits]);
    alg.dispose();
    model.dispose();
  });

  it('α weights the test statistics: 0 = source (eval) BN, and no gradient reaches x through the statistics', async () => {
    const x = nhwc(inputs, 'x1');
    const a = buildModel('resnext29', weights, { rng: new Rng(0) });
    const b = buildModel('resnext29', weights, { rng: new Rng(0) });
    await ALGORITHMS.bn_alpha.create(a, opts(0), { rng: new Rng(1) });
    configureNorm(b, 'source');
    const [za, zb] = [a.forward(x), b.forward(x)];
    errors.check('alpha 0 vs source', 'bn_alpha.alpha0', za, zb.dataSync(), 1e-5);
    await ALGORITHMS.bn_alpha.create(a, opts(0.1), { rng: new Rng(1) });
    const g = tf.grad((t: tf.Tensor4D) => tf.sum(tf.slice(a.forward(t), [0, 0], [1, -1])));
    const gx = g(x);
    const rowsOther = tf.tidy(() => tf.slice(gx, [1, 0, 0, 0], [-1, -1, -1, -1]));
    // detached statistics: sample 0's logits have no gradient path to the other samples
    expect(tf.max(tf.abs(rowsOther)).dataSync()[0]).toBe(0);
    tf.dispose([x, za, zb, gx, rowsOther]);
    a.dispose();
    b.dispose();
  });

  it('configs load with the published α; MECTA is refused; 20 steps leak no tensor', async () => {
    for (const d of ['cifar10', 'cifar100', 'imagenet']) expect(resolveConfig(`configs/${d}/bn-alpha.yaml`, {})).toMatchObject({ alg: 'bn_alpha', bnAlpha: 0.1, batchSize: 1 });
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    model.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 });
    await expect(ALGORITHMS.bn_alpha.create(model, opts(0.1), { rng: new Rng(1) })).rejects.toThrow(/accum-bn/);
    model.setNormMode('batch');
    const alg = await ALGORITHMS.bn_alpha.create(model, opts(0.1), { rng: new Rng(1) });
    const x = nhwc(inputs, 'x2');
    const first = alg.step(x);
    let steady = -1;
    for (let i = 0; i < 20; i++) {
      const r = alg.step(x);
      r.logits.dispose();
      if (i === 2) steady = tf.memory().numTensors;
      if (i > 2) expect(tf.memory().numTensors).toBe(steady);
    }
    // stateless: the same batch gives the same logits
    const last = alg.step(x);
    expect(Array.from(last.logits.dataSync())).toEqual(Array.from(first.logits.dataSync()));
    tf.dispose([x, first.logits, last.logits]);
    alg.dispose();
    model.dispose();
  });
});
