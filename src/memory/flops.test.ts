/**
 * Operation counts (docs/memory.md#flops, src/memory/flops.ts) against PyTorch's own kernels
 * (test/fixtures/flops/flops.json from scripts/make-flops-fixtures.py, which counts the ATen calls
 * of the same shapes with a dispatch mode): the forward exactly, in eval and train mode; the
 * backward exactly for the norm affines, and with every parameter training up to the one kernel
 * tfjs runs and autograd skips, the first layer's input gradient.
 */
import { readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { loadStateDict } from '../io/state-dict.js';
import { buildModel } from '../models/registry.js';
import { vitExpectedKeys } from '../models/vit.js';
import type { Classifier } from '../models/types.js';
import { randomStateDictForKeys, testImages } from '../models/test-weights.js';
import { TRAIN_ALL, TRAIN_NORM, trainingParameters } from '../algorithms/param-select.js';
import { softmaxEntropy } from '../algorithms/losses.js';
import { FlopCounter, countForward } from './flops.js';

interface Counts {
  forward_eval: number;
  forward_train: number;
  backward_norm: number;
  backward_all: number;
}
const FIX = JSON.parse(readFileSync('test/fixtures/flops/flops.json', 'utf8')) as {
  batch: number;
  vit_small: { dim: number; depth: number; mlp: number; patch: number; size: number; classes: number };
  models: Record<string, Counts>;
};

beforeAll(async () => {
  await initBackend('wasm');
});

async function model(name: string): Promise<Classifier> {
  if (name === 'vit_small') {
    const v = FIX.vit_small;
    const keys = vitExpectedKeys({ dim: v.dim, depth: v.depth, mlpDim: v.mlp, patch: v.patch, grid: v.size / v.patch, numClasses: v.classes, qkvBias: true });
    return buildModel('vit_b16', randomStateDictForKeys([...keys].map(([n, shape]) => ({ name: n, shape }))), { rng: new Rng(1) });
  }
  const arch = name === 'resnext_small' ? 'resnext29' : 'wrn28_10';
  return buildModel(arch, await loadStateDict(`test/fixtures/models/${name}.safetensors`), { rng: new Rng(1) });
}

/** MACs of the first layer (stem conv / patch embedding): its input gradient only tfjs computes. */
function firstLayerMacs(name: string, n: number): number {
  if (name === 'resnext_small') return n * 32 * 32 * 16 * 3 * 9; // 3×3, 3 → 16, pad 1
  if (name === 'wrn_small') return n * 32 * 32 * 16 * 3 * 9;
  const v = FIX.vit_small;
  return n * (v.size / v.patch) ** 2 * v.dim * 3 * v.patch * v.patch;
}

describe('step operation counts against PyTorch (batch 2, 32×32)', () => {
  for (const name of Object.keys(FIX.models)) {
    it(`${name}: forward (eval, train) and backward (norm affines, every parameter)`, async () => {
      const ref = FIX.models[name];
      const m = await model(name);
      const x = tf.tensor4d(testImages(FIX.batch, 32), [FIX.batch, 32, 32, 3]);
      try {
        m.setNormMode('source');
        expect(countForward(() => tf.tidy(() => m.forward(x)))).toBe(ref.forward_eval);
        m.setNormMode('batch');
        expect(countForward(() => tf.tidy(() => m.forward(x)))).toBe(ref.forward_train);
        const counter = new FlopCounter();
        for (const train of ['norm', 'all'] as const) {
          m.requiresGrad(train === 'all' ? TRAIN_ALL : TRAIN_NORM);
          const vars = trainingParameters(m).map((p) => p.variable!);
          counter.begin();
          const { value, grads } = tf.engine().gradients(() => tf.mean(softmaxEntropy(m.forward(x))) as tf.Scalar, vars);
          const c = counter.end();
          value.dispose();
          grads.forEach((g) => g.dispose());
          expect(c.forward).toBe(ref.forward_train);
          expect(c.recompute).toBe(0);
          if (train === 'norm') expect(c.backward).toBe(ref.backward_norm);
          else expect(c.backward).toBe(ref.backward_all + firstLayerMacs(name, FIX.batch));
        }
      } finally {
        x.dispose();
        m.dispose();
      }
    });
  }

  it('a step without a backward counts none; a checkpointed step adds its recomputed forwards', async () => {
    const m = await model('resnext_small');
    const x = tf.tensor4d(testImages(2, 32), [2, 32, 32, 3]);
    m.setNormMode('batch');
    m.requiresGrad(TRAIN_NORM);
    const vars = trainingParameters(m).map((p) => p.variable!);
    const counter = new FlopCounter();
    counter.begin();
    // a loss not connected to the tape: the engine runs no backward (EATA with no selected sample)
    tf.engine().gradients(() => tf.tidy(() => (m.forward(x), tf.scalar(0))), vars, undefined, true).value.dispose();
    expect(counter.end()).toEqual({ forward: FIX.models.resnext_small.forward_train, backward: 0, recompute: 0 });
    m.gradCheckpoint!.segments = 2; // stages of 2 blocks: block 0 of each stage is recomputed
    counter.begin();
    const { value, grads } = tf.engine().gradients(() => tf.mean(softmaxEntropy(m.forward(x))) as tf.Scalar, vars);
    const c = counter.end();
    value.dispose();
    grads.forEach((g) => g.dispose());
    expect(c.forward).toBe(FIX.models.resnext_small.forward_train);
    expect(c.recompute).toBeGreaterThan(0);
    expect(c.backward).toBe(FIX.models.resnext_small.backward_norm + c.recompute);
    x.dispose();
    m.dispose();
  });
});
