/**
 * DeYO (src/algorithms/deyo.ts) against its float64 PyTorch re-statement
 * (scripts/fixtures_lib/deyo_ref.py, fixtures from scripts/make-sar-deyo-fixtures.py over
 * test/fixtures/models/resnext_small): three steps replaying the reference's patch permutations,
 * pre-update logits, the S1/S2 counters and the final norm-layer affine parameters; the patch
 * shuffle itself; the MECTA refusal; no tensor leak over 20 steps.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { rawInts } from '../models/test-helpers.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from './registry.js';
import { patchShuffle } from './deyo.js';
import type { AdaptOptions } from './types.js';
import { resolveConfig } from '../config/load.js';
import { ErrorLog, fixtureBatch as nhwc, fixtureData as raw } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const TOL = 1e-4;

interface DeyoCase {
  optimizer: { lr: number; momentum: number };
  deyo_margin: number;
  deyo_margin_e0: number;
  plpd_threshold: number;
  patch_len: number;
  adapted: string[];
  steps: { updated: boolean; reliable: number; used: number }[];
}

const errors = new ErrorLog();
const check = (label: string, kind: string, a: tf.Tensor | ArrayLike<number>, b: ArrayLike<number>, tol = TOL) =>
  errors.check(label, kind, a, b, tol);

/** The lazily built per-model constants (flipped conv filters, folded filters) before counting tensors. */
function warmUp(model: Classifier, x: tf.Tensor4D): void {
  const mode = model.normMode;
  if (mode !== 'source') model.setNormMode('source');
  const { value, grads } = tf.engine().gradients(() => tf.sum(model.forward(x)) as tf.Scalar, model.trainableParams());
  tf.dispose([value, ...grads, model.forward(x)]);
  for (const l of model.normLayers) l.reset();
  if (mode === 'batch') model.setNormMode('batch');
}

function options(c: Pick<DeyoCase, 'optimizer' | 'deyo_margin' | 'deyo_margin_e0' | 'plpd_threshold' | 'patch_len'>) {
  const o: AdaptOptions & Record<string, unknown> = {
    lr: c.optimizer.lr,
    momentum: c.optimizer.momentum,
    optimizer: 'sgd',
    episodic: false,
    eMargin: 0,
    dMargin: 0,
    fisherAlpha: 0,
    fisherSize: 0,
    matchedUpdate: 'momentum',
    deyoMargin: c.deyo_margin,
    deyoMarginE0: c.deyo_margin_e0,
    plpdThreshold: c.plpd_threshold,
    patchLen: c.patch_len,
  };
  return o;
}

/** An Rng whose permutations are the given rows, in order (the reference's torch draws). */
function replayRng(rows: Int32Array[]): Rng {
  return {
    permutation(n: number) {
      const r = rows.shift();
      if (!r || r.length !== n) throw new Error(`replayRng: no permutation of ${n} left`);
      return r;
    },
  } as unknown as Rng;
}

const available = existsSync(WEIGHTS) && existsSync(join(ADAPT, 'deyo.json'));
let weights: StateDict;
let inputs: StateDict;

beforeAll(async () => {
  await initBackend('wasm');
  if (!available) return;
  weights = await readSafetensors(WEIGHTS);
  inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
});

afterAll(() => {
  errors.report('deyo parity, max relative errors');
});

describe('DeYO patch shuffle', () => {
  it('moves whole patches: new patch j is old patch perm[j], row-major over the grid', () => {
    // 2 images, 4×4, 1 channel, 2×2 grid of 2×2 patches; value = image·100 + row·10 + col
    const vals = new Float32Array(2 * 16);
    for (let i = 0; i < 2; i++) for (let r = 0; r < 4; r++) for (let c = 0; c < 4; c++) vals[i * 16 + r * 4 + c] = i * 100 + r * 10 + c;
    const x = tf.tensor4d(vals, [2, 4, 4, 1]);
    const y = patchShuffle(x, 2, [Int32Array.from([3, 2, 1, 0]), Int32Array.from([0, 1, 2, 3])]);
    const out = y.arraySync() as number[][][][];
    expect(out[0].map((row) => row.map((v) => v[0]))).toEqual([
      [22, 23, 20, 21],
      [32, 33, 30, 31],
      [2, 3, 0, 1],
      [12, 13, 10, 11],
    ]);
    expect(Array.from(y.dataSync().slice(16))).toEqual(Array.from(vals.slice(16)));
    tf.dispose([x, y]);
    expect(() => patchShuffle(tf.zeros([1, 6, 6, 1]) as tf.Tensor4D, 4, [new Int32Array(16)])).toThrow(/not divisible/);
  });
});

describe('DeYO configs', () => {
  it('load with the published settings', () => {
    expect(resolveConfig('configs/imagenet/deyo.yaml', {})).toMatchObject({ alg: 'deyo', model: 'resnet50', lr: 0.00025, momentum: 0.9, batchSize: 64, plpdThreshold: 0.3, patchLen: 4, deyoMargin: null, deyoMarginE0: null });
    expect(resolveConfig('configs/cifar10/deyo.yaml', {})).toMatchObject({ alg: 'deyo', lr: 0.001, batchSize: 200, plpdThreshold: 0.2, patchLen: 4 });
  });
});

describe.skipIf(!available)('DeYO parity with PyTorch (resnext_small)', () => {
  it('deyo: 3 steps', async () => {
    const c = JSON.parse(readFileSync(join(ADAPT, 'deyo.json'), 'utf8')) as DeyoCase;
    const fx = await readSafetensors(join(ADAPT, 'deyo.safetensors'));
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    const xw = nhwc(inputs, 'x0');
    warmUp(model, xw);
    xw.dispose();
    const rows: Int32Array[] = [];
    for (let s = 0; s < c.steps.length; s++) {
      const t = fx.get(`perm${s}`)!;
      const flat = rawInts(t);
      const k = t.shape[1];
      for (let i = 0; i < t.shape[0]; i++) rows.push(flat.slice(i * k, (i + 1) * k));
    }
    const before = tf.memory().numTensors;
    const alg = await ALGORITHMS.deyo.create(model, options(c), { rng: replayRng(rows) });
    expect(model.normLayers.filter((l) => l.trainable).flatMap((l) => [`${l.name}.weight`, `${l.name}.bias`])).toEqual(c.adapted);
    for (let s = 0; s < c.steps.length; s++) {
      const x = nhwc(inputs, `x${s}`);
      const r = alg.step(x);
      x.dispose();
      check(`deyo logits${s}`, 'deyo.logits', r.logits, raw(fx, `logits${s}`));
      r.logits.dispose();
      expect(r.updated).toBe(c.steps[s].updated);
      expect(r.metrics).toEqual({ reliable: c.steps[s].reliable, used: c.steps[s].used });
    }
    expect(rows).toHaveLength(0); // one permutation per S1 sample, no more
    const sd = model.stateDict();
    for (const l of model.normLayers) {
      for (const p of ['weight', 'bias']) {
        const k = `${l.name}.${p}`;
        check(`deyo final ${k}`, 'deyo.final.affine', sd.get(k)!, raw(fx, `final.${k}`));
      }
    }
    tf.dispose([...sd.values()]);
    alg.dispose();
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('refuses the MECTA norm layer', async () => {
    const model = buildModel('resnext29', weights, { rng: new Rng(3) });
    model.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0 });
    await expect(ALGORITHMS.deyo.create(model, options({ optimizer: { lr: 0.01, momentum: 0.9 }, deyo_margin: 1.28, deyo_margin_e0: 0.92, plpd_threshold: 0.08, patch_len: 4 }), { rng: new Rng(1) })).rejects.toThrow(/accum-bn/);
    model.dispose();
  });

  it('deyo: 20 steps leak no tensor', async () => {
    const model = buildModel('resnext29', weights, { rng: new Rng(3) });
    const xs = [0, 1, 2].map((i) => nhwc(inputs, `x${i}`));
    warmUp(model, xs[0]);
    const before = tf.memory().numTensors;
    const alg = await ALGORITHMS.deyo.create(model, options({ optimizer: { lr: 0.01, momentum: 0.9 }, deyo_margin: 1.28, deyo_margin_e0: 0.92, plpd_threshold: 0.08, patch_len: 4 }), { rng: new Rng(1) });
    let steady = -1;
    let used = 0;
    for (let i = 0; i < 20; i++) {
      const r = alg.step(xs[i % 3]);
      r.logits.dispose();
      used += r.metrics?.used ?? 0;
      if (i === 2) steady = tf.memory().numTensors;
    }
    expect(used).toBeGreaterThan(0);
    expect(tf.memory().numTensors).toBe(steady);
    const st = alg.saveState();
    alg.loadState(st);
    tf.dispose([...st.values()]);
    alg.reset();
    alg.dispose();
    warmUp(model, xs[0]); // reset's loadStateDict dropped those constants (see sar.test.ts)
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(xs);
    model.dispose();
  });
});
