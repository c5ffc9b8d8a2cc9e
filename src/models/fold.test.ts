/**
 * The folded inference path (fold.ts) against the unfolded one on the RobustBench-architecture
 * ResNeXt fixture: same logits to float32 round-off, the cache follows loadStateDict and
 * optimizer-style variable assigns, no tensor growth after the first forward, and the path is
 * never taken under a gradient tape or outside 'source' mode.
 */
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { buildModel } from './registry.js';
import { folding } from './fold.js';
import type { Classifier } from './types.js';
import { expectClose, fixtureTensor } from './test-helpers.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'models');
let st: StateDict;
let io: StateDict;

beforeAll(async () => {
  await initBackend('wasm');
  st = await readSafetensors(join(DIR, 'resnext_small.safetensors'));
  io = await readSafetensors(join(DIR, 'resnext_small.io.safetensors'));
});

afterEach(() => {
  folding.enabled = true;
});

function logits(model: Classifier, fold: boolean): Float32Array {
  folding.enabled = fold;
  const x = fixtureTensor(io, 'input') as tf.Tensor4D;
  const y = model.forward(x);
  const v = y.dataSync() as Float32Array;
  x.dispose();
  y.dispose();
  return v;
}

describe('folded conv → BN → ReLU (source mode)', () => {
  it('gives the unfolded logits and the PyTorch eval logits', () => {
    const model = buildModel('resnext29', st, { rng: new Rng(1) });
    const folded = logits(model, true);
    const plain = logits(model, false);
    expectClose('folded vs unfolded', folded, plain, 1e-5);
    expect(Array.from(folded)).not.toEqual(Array.from(plain)); // the folded path really ran
    expectClose('folded vs PyTorch', folded, fixtureTensor(io, 'logits_eval'));
    model.dispose();
  });

  it('rebuilds after loadStateDict and a BN variable assign; no growth after the first forward', () => {
    const model = buildModel('resnext29', st, { rng: new Rng(1) });
    logits(model, true);
    const n0 = tf.memory().numTensors;
    logits(model, true);
    expect(tf.memory().numTensors).toBe(n0);
    // New BN statistics and a new conv filter through loadStateDict.
    const sd = model.stateDict();
    const bumped = new Map(
      [...sd].map(([k, t]) => [k, k.endsWith('bn_1.running_mean') || k === 'stage_1.0.conv_conv.weight' ? tf.mul(t, 1.5) : t.clone()]),
    );
    model.loadStateDict(bumped);
    expectClose('after loadStateDict', logits(model, true), logits(model, false), 1e-5);
    // An optimizer-style assign to a BN weight.
    const layer = model.batchNormLayers[3];
    tf.tidy(() => layer.weight.assign(tf.mul(layer.weight, 0.5)));
    expectClose('after assign', logits(model, true), logits(model, false), 1e-5);
    for (const m of [sd, bumped]) for (const t of m.values()) t.dispose();
    expect(tf.memory().numTensors).toBe(n0); // the stale folded filters were freed
    model.dispose();
  });

  it('is not used under a gradient tape or with batch statistics', () => {
    const model = buildModel('resnext29', st, { rng: new Rng(1) });
    const x = fixtureTensor(io, 'input') as tf.Tensor4D;
    const plain = logits(model, false);
    folding.enabled = true;
    // Under a tape the unfolded ops run: bit-identical to the unfolded forward.
    tf.engine().startScope();
    let underTape: Float32Array | null = null;
    tf.grad((xi: tf.Tensor) => {
      const y = model.forward(xi as tf.Tensor4D);
      underTape = y.dataSync() as Float32Array;
      return tf.sum(y);
    })(x);
    tf.engine().endScope();
    expect(Array.from(underTape!)).toEqual(Array.from(plain));
    model.setNormMode('batch');
    const a = logits(model, true);
    const b = logits(model, false);
    expect(Array.from(a)).toEqual(Array.from(b));
    x.dispose();
    model.dispose();
  });
});
