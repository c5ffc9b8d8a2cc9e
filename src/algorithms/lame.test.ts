/**
 * LAME (src/algorithms/lame.ts) against its float64 PyTorch re-statement
 * (scripts/fixtures_lib/lame_ref.py; fixtures from scripts/make-rotta-lame-fixtures.py): three
 * batches of the shipped Fashion-MNIST model (knn, rbf and linear affinities) and of
 * test/fixtures/models/wrn_small (knn, k = 3, symmetrised) on test/fixtures/adapt/fmnist_inputs.npy.
 * Checked: the penultimate features and logits of Classifier.forwardFeatures, the returned
 * assignment Y, the steps run and the changed predictions. Also: forwardFeatures on all four
 * architectures (its logits = forward, and the head applied to its features), the configs,
 * --accum-bn refused, the model untouched, and no tensor leak over 20 batches.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import { readNpy } from '../io/npy.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { ResNet50, inferResNet } from '../models/resnet50.js';
import { Rng } from '../util/rng.js';
import { resolveConfig } from '../config/load.js';
import { ALGORITHMS } from './registry.js';
import { laplacianOptimization, lameAffinity, type LameValues } from './lame.js';
import type { AdaptOptions } from './types.js';
import { ErrorLog, fixtureData as raw, relErr } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const FMNIST = join(process.cwd(), 'assets', 'models', 'fmnist-resnext.safetensors');
const TOL = 1e-4;

interface LameCase {
  case: string;
  model: 'fmnist_resnext' | 'wrn_small';
  affinity: 'knn' | 'rbf' | 'linear';
  knn: number;
  force_symmetry: boolean;
  batches: { steps: number; changed: number }[];
  float32_torch_rel_err: Record<string, number>;
}

const errors = new ErrorLog();
const available = existsSync(join(ADAPT, 'lame.json')) && existsSync(FMNIST);
let fx: StateDict;
let batches: tf.Tensor4D[] = [];
const weights = new Map<string, StateDict>();

/** fmnist_inputs.npy (uint8 [24, 32, 32]) as three NHWC RGB batches of 8 in [0, 1]. */
async function fmnistBatches(): Promise<tf.Tensor4D[]> {
  const u8 = await readNpy(join(ADAPT, 'fmnist_inputs.npy'));
  return tf.tidy(() => {
    const g = tf.div(tf.tensor4d(Float32Array.from(u8.data as Uint8Array), [24, 32, 32, 1]), 255);
    const rgb = tf.tile(g, [1, 1, 1, 3]) as tf.Tensor4D;
    return [0, 1, 2].map((k) => tf.slice(rgb, [8 * k, 0, 0, 0], [8, -1, -1, -1]));
  });
}

function model(name: LameCase['model']): Classifier {
  const arch = name === 'wrn_small' ? 'wrn28_10' : 'resnext29';
  return buildModel(arch, weights.get(name)!, { rng: new Rng(0) });
}

const options = (c: Pick<LameCase, 'affinity' | 'knn' | 'force_symmetry'>): AdaptOptions & LameValues => ({
  lr: 0,
  momentum: 0,
  optimizer: 'sgd',
  episodic: false,
  matchedUpdate: 'momentum',
  lameAffinity: c.affinity,
  lameKnn: c.knn,
  lameForceSymmetry: c.force_symmetry,
  lameMaxSteps: 100,
});

beforeAll(async () => {
  await initBackend('wasm');
  if (!available) return;
  fx = await readSafetensors(join(ADAPT, 'lame.safetensors'));
  weights.set('fmnist_resnext', await readSafetensors(FMNIST));
  weights.set('wrn_small', await readSafetensors(join(ROOT, 'models', 'wrn_small.safetensors')));
  batches = await fmnistBatches();
});

afterAll(() => {
  tf.dispose(batches);
  errors.report('lame parity, max relative errors');
});

describe('LAME configs', () => {
  it('load with the official defaults', () => {
    for (const d of ['cifar10', 'cifar100']) {
      expect(resolveConfig(`configs/${d}/lame.yaml`, {})).toMatchObject({ alg: 'lame', lameAffinity: 'rbf', lameKnn: 5, lameForceSymmetry: false, lameMaxSteps: 100, batchSize: 200 });
    }
    expect(resolveConfig('configs/imagenet/lame.yaml', {})).toMatchObject({ alg: 'lame', model: 'resnet50', lameAffinity: 'rbf', lameKnn: 5, batchSize: 64 });
  });

  it('refuses --accum-bn with one line naming the flag', () => {
    expect(() => resolveConfig(null, { alg: 'lame', accumBn: true })).toThrow(/^--accum-bn \(MECTA\) does not apply to --alg lame/);
  });
});

describe('LAME bound optimisation', () => {
  it('knn affinity leaves the point itself out; rbf has a unit diagonal; linear is f·fᵀ', () => {
    // four points on a line: 0, 1, 3, 7 (one feature each, already "normalised" for the test)
    const f = Float64Array.from([0, 1, 3, 7]);
    expect(Array.from(lameAffinity('knn', f, 4, 1, 1))).toEqual([0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0]);
    const w = lameAffinity('rbf', f, 4, 1, 2); // σ = mean distance to the 2nd nearest counting itself = (1 + 1 + 2 + 4)/4
    expect(w[0]).toBe(1);
    expect(w[1]).toBeCloseTo(Math.exp(-1 / (2 * 2 * 2)), 14);
    expect(Array.from(lameAffinity('linear', f, 4, 1, 1)).slice(0, 4)).toEqual([0, 0, 0, 0]);
  });

  it('without affinity the assignment is the softmax of −unary after three steps', () => {
    const a = Float64Array.from([0.1, 2.3, 1.2, 0.4]);
    const { y, steps } = laplacianOptimization(a, new Float64Array(4), 2, 2, 100);
    expect(steps).toBe(3); // E is constant from the first step; the test only looks from step 2
    expect(y[0]).toBeCloseTo(1 / (1 + Math.exp(0.1 - 2.3)), 14);
  });
});

describe.skipIf(!available)('LAME parity with PyTorch', () => {
  it('forwardFeatures: the float64 reference features and logits', () => {
    for (const name of ['fmnist_resnext', 'wrn_small'] as const) {
      const m = model(name);
      m.setNormMode('source');
      batches.forEach((x, k) => {
        const { features, logits } = m.forwardFeatures(x);
        errors.check(`${name} feat${k}`, `${name}.features`, features, raw(fx, `${name}.feat${k}`), TOL);
        errors.check(`${name} logits${k}`, `${name}.logits`, logits, raw(fx, `${name}.logits${k}`), TOL);
        tf.dispose([features, logits]);
      });
      m.dispose();
    }
  });

  const cases = available ? (JSON.parse(readFileSync(join(ADAPT, 'lame.json'), 'utf8')) as { cases: LameCase[] }).cases : [];
  for (const c of cases) {
    it(`${c.case}: 3 batches`, async () => {
      const m = model(c.model);
      const before = m.stateDict();
      const alg = await ALGORITHMS.lame.create(m, options(c), { rng: new Rng(1) });
      expect(m.normMode).toBe('source');
      for (let k = 0; k < batches.length; k++) {
        const r = alg.step(batches[k]);
        const y = tf.tidy(() => tf.softmax(r.logits));
        errors.check(`${c.case} y${k}`, `${c.case}.y`, y, raw(fx, `${c.case}.y${k}`), TOL);
        tf.dispose([y, r.logits]);
        expect(r.updated).toBe(false);
        expect(r.metrics).toEqual({ lameSteps: c.batches[k].steps, changed: c.batches[k].changed });
      }
      // output-only: every parameter and buffer as loaded
      const after = m.stateDict();
      for (const [key, t] of before) expect(relErr(after.get(key)!.dataSync(), t.dataSync()), key).toBe(0);
      tf.dispose([...before.values(), ...after.values()]);
      alg.dispose();
      m.dispose();
    });
  }

  it('20 batches leak no tensor', async () => {
    const m = model('fmnist_resnext');
    const warm = m.forward(batches[0]);
    warm.dispose();
    const base = tf.memory().numTensors;
    const alg = await ALGORITHMS.lame.create(m, options({ affinity: 'knn', knn: 5, force_symmetry: true }), { rng: new Rng(1) });
    for (let i = 0; i < 20; i++) {
      const r = alg.step(batches[i % 3]);
      expect(r.logits.shape).toEqual([8, 10]);
      r.logits.dispose();
    }
    alg.reset();
    alg.dispose();
    expect(tf.memory().numTensors).toBe(base);
    m.dispose();
  });
});

describe('Classifier.forwardFeatures on every architecture', () => {
  const IMAGENET = join(ROOT, 'imagenet');
  const have = existsSync(join(ROOT, 'models', 'wrn_small.safetensors')) && existsSync(join(IMAGENET, 'vit_small.safetensors'));
  it.skipIf(!have)('logits equal forward(), and the final linear layer of the features gives them', async () => {
    const builds: [string, () => Promise<{ m: Classifier; sd: StateDict; head: string; x: tf.Tensor4D }>][] = [
      ['resnext29', async () => {
        const sd = await readSafetensors(join(ROOT, 'models', 'resnext_small.safetensors'));
        return { m: buildModel('resnext29', sd, { rng: new Rng(0) }), sd, head: 'classifier', x: tf.randomUniform([3, 32, 32, 3], 0, 1, 'float32', 1) as tf.Tensor4D };
      }],
      ['wrn28_10', async () => {
        const sd = await readSafetensors(join(ROOT, 'models', 'wrn_small.safetensors'));
        return { m: buildModel('wrn28_10', sd, { rng: new Rng(0) }), sd, head: 'fc', x: tf.randomUniform([3, 32, 32, 3], 0, 1, 'float32', 2) as tf.Tensor4D };
      }],
      ['resnet50', async () => {
        const sd = await readSafetensors(join(IMAGENET, 'resnet50_small.safetensors'));
        const arch = JSON.parse(readFileSync(join(IMAGENET, 'arch.json'), 'utf8')) as { resnet50_small: { input_size: number } };
        const s = arch.resnet50_small.input_size;
        const m = new ResNet50(sd, inferResNet(sd), { rng: new Rng(1), inputSize: s });
        return { m, sd, head: 'fc', x: tf.randomUniform([2, s, s, 3], 0, 1, 'float32', 3) as tf.Tensor4D };
      }],
      ['vit_b16', async () => {
        const sd = await readSafetensors(join(IMAGENET, 'vit_small.safetensors'));
        const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
        const [h, w] = m.inputShape;
        return { m, sd, head: 'head', x: tf.randomUniform([2, h, w, 3], 0, 1, 'float32', 4) as tf.Tensor4D };
      }],
    ];
    for (const [arch, build] of builds) {
      const { m, sd, head, x } = await build();
      m.setNormMode(arch === 'vit_b16' ? 'source' : 'batch');
      const base = tf.memory().numTensors;
      const { features, logits } = m.forwardFeatures(x);
      const plain = m.forward(x);
      const w = sd.get(`${head}.weight`)!;
      const b = sd.get(`${head}.bias`)!;
      const viaHead = tf.tidy(() => tf.add(tf.matMul(features, tf.tensor2d(Float32Array.from(w.data), w.shape as [number, number]), false, true), tf.tensor1d(Float32Array.from(b.data))));
      expect(features.shape, arch).toEqual([x.shape[0], w.shape[1]]);
      expect(relErr(logits.dataSync(), plain.dataSync()), arch).toBeLessThan(1e-6);
      expect(relErr(viaHead.dataSync(), logits.dataSync()), arch).toBeLessThan(1e-5);
      tf.dispose([features, logits, plain, viaHead]);
      expect(tf.memory().numTensors, arch).toBe(base);
      x.dispose();
      m.dispose();
    }
  }, 60_000);
});
