/**
 * Source training (src/train): RobustBench-layout initialisation, augmentation, that a few SGD
 * steps on a tiny model reduce the loss, PyTorch-style weight decay, and that the written
 * safetensors loads through buildModel('resnext29') and reproduces the trainer's eval logits.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { parseSafetensorsWithMetadata, readSafetensors } from '../io/safetensors.js';
import { readFileSync } from 'node:fs';
import { buildModel } from '../models/registry.js';
import { inferResNeXt, resnextExpectedKeys } from '../models/resnext.js';
import { SGD } from '../algorithms/optim.js';
import { expectClose } from '../models/test-helpers.js';
import { channelStats, makeBatch, type ImageSet } from './augment.js';
import { checkResNeXtConfig, countValues, initResNeXt, resnextShapes, type ResNeXtConfig } from './init.js';
import { buildTrainable, cosineLr, evaluate, saveModel, trainModel, trainStep } from './trainer.js';
import { toySet } from './toy-set.js';

const TINY: ResNeXtConfig = { depth: 11, cardinality: 2, baseWidth: 32, width: 4, numClasses: 10 };
const NORM = { mean: [0.4, 0.45, 0.5], std: [0.25, 0.2, 0.3] };
let dir: string;

beforeAll(async () => {
  await initBackend('wasm');
  dir = mkdtempSync(join(tmpdir(), 'cta-train-'));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));


describe('init', () => {
  it('the RobustBench configuration gives Hendrycks2020AugMix_ResNeXt: 6,807,882 parameters', () => {
    const shapes = resnextShapes({ depth: 29, cardinality: 4, baseWidth: 32, width: 64, numClasses: 10 }, false);
    const params = [...shapes].filter(([k]) => !k.endsWith('running_mean') && !k.endsWith('running_var'));
    expect(countValues(new Map(params))).toBe(6_807_882);
    expect(shapes.get('stage_1.0.conv_conv.weight')).toEqual([128, 32, 3, 3]);
    expect(shapes.get('stage_3.2.conv_expand.weight')).toEqual([1024, 512, 1, 1]);
    expect(shapes.get('classifier.weight')).toEqual([10, 1024]);
  });

  it('keys and shapes are exactly what the registry expects, with kaiming-normal conv weights', () => {
    const sd = initResNeXt({ ...TINY, width: 16 }, new Rng(3), NORM);
    const expected = resnextExpectedKeys(inferResNeXt(sd));
    expect([...sd.keys()]).toEqual([...expected.keys()]);
    for (const [k, t] of sd) expect(t.shape, k).toEqual(expected.get(k));
    expect(Array.from(sd.get('sigma')!.data)).toEqual(Array.from(Float32Array.from(NORM.std)));
    const w = sd.get('stage_2.0.conv_conv.weight')!; // [D, D/G, 3, 3], n = 9·D
    const std = Math.sqrt(w.data.reduce((a, v) => a + v * v, 0) / w.data.length);
    expect(std / Math.sqrt(2 / (9 * w.shape[0]))).toBeGreaterThan(0.9);
    expect(std / Math.sqrt(2 / (9 * w.shape[0]))).toBeLessThan(1.1);
    expect(Array.from(sd.get('bn_1.weight')!.data).every((v) => v === 1)).toBe(true);
    expect(Array.from(sd.get('bn_1.running_var')!.data).every((v) => v === 1)).toBe(true);
    expect(Array.from(sd.get('classifier.bias')!.data).every((v) => v === 0)).toBe(true);
  });

  it('rejects impossible configurations with one clear message', () => {
    expect(() => checkResNeXtConfig({ ...TINY, depth: 12 })).toThrow(/9·blocks \+ 2/);
    expect(() => checkResNeXtConfig({ ...TINY, width: 1, baseWidth: 32 })).toThrow(/0 channels per group/);
  });
});

describe('augmentation', () => {
  const set = toySet(4, 1);
  const img = 32 * 32 * 3;
  const plain = new Float32Array(4 * img);
  makeBatch(set, [0, 1, 2, 3], plain, null, null);

  it('without augmentation: the images scaled by 1/255', () => {
    for (let i = 0; i < plain.length; i += 97) expect(plain[i]).toBeCloseTo(set.images[i] / 255, 7);
  });

  it('every augmented image is a zero-padded shift by at most 4 pixels, possibly mirrored', () => {
    const rng = new Rng(9);
    let flips = 0;
    for (let rep = 0; rep < 20; rep++) {
      const out = new Float32Array(4 * img);
      makeBatch(set, [0, 1, 2, 3], out, { pad: 4, flip: true }, rng);
      for (let b = 0; b < 4; b++) {
        let found = false;
        for (let dy = -4; dy <= 4 && !found; dy++) {
          for (let dx = -4; dx <= 4 && !found; dx++) {
            for (const flip of [false, true]) {
              let ok = true;
              for (let y = 0; y < 32 && ok; y++) {
                for (let x = 0; x < 32 && ok; x++) {
                  const sy = y + dy;
                  const sx = (flip ? 31 - x : x) + dx;
                  const want = sy < 0 || sy > 31 || sx < 0 || sx > 31 ? 0 : plain[b * img + (sy * 32 + sx) * 3];
                  if (out[b * img + (y * 32 + x) * 3] !== want) ok = false;
                }
              }
              if (ok) {
                found = true;
                if (flip) flips++;
                break;
              }
            }
          }
        }
        expect(found).toBe(true);
      }
    }
    expect(flips).toBeGreaterThan(10); // about half of 80
    expect(flips).toBeLessThan(70);
  });

  it('channelStats: per-channel mean and population std', () => {
    const s = channelStats({ images: Uint8Array.from([0, 255, 51, 255, 255, 51]), labels: new Int32Array(1), n: 1, height: 1, width: 2, channels: 3 });
    expect(s.mean[0]).toBeCloseTo(0.5, 12);
    expect(s.std[0]).toBeCloseTo(0.5, 12);
    expect(s.mean[1]).toBeCloseTo(1, 12);
    expect(s.std[1]).toBeCloseTo(0, 6);
    expect(s.mean[2]).toBeCloseTo(0.2, 12);
  });
});

describe('training', () => {
  it('cosine schedule: lr, lr/2 half way, 0 at the end', () => {
    expect(cosineLr(0.1, 0, 100)).toBeCloseTo(0.1, 12);
    expect(cosineLr(0.1, 50, 100)).toBeCloseTo(0.05, 12);
    expect(cosineLr(0.1, 100, 100)).toBeCloseTo(0, 12);
  });

  it('a few SGD steps on a tiny model reduce the loss; BN running stats and all weights move', () => {
    const model = buildTrainable(initResNeXt(TINY, new Rng(1), NORM));
    try {
      model.setNormMode('train-update');
      const weights = model.trainableWeights();
      const params = [...weights.map((w) => w.variable), ...model.trainableParams()];
      expect(weights.length).toBe(3 * 3 + 3 + 1 + 2); // 3 blocks × 3 convs, 3 downsamples, stem, classifier w+b
      const decay = [...weights.map((w) => w.isWeight), ...model.trainableParams().map(() => false)];
      const before = params.map((p) => p.dataSync().slice());
      const rmBefore = model.batchNormLayers[0].runningMean.dataSync().slice();
      const opt = new SGD(params, { lr: 0.05, momentum: 0.9 });
      const set = toySet(32, 2);
      const buf = new Float32Array(32 * 32 * 32 * 3);
      makeBatch(set, Array.from({ length: 32 }, (_, i) => i), buf, null, null);
      const x = tf.tensor4d(buf, [32, 32, 32, 3]);
      const y = tf.tensor1d(set.labels, 'int32');
      const losses = [trainStep(model, params, decay, opt, 5e-4, x, y).loss]; // creates the momentum buffers
      const n0 = tf.memory().numTensors;
      for (let s = 0; s < 11; s++) losses.push(trainStep(model, params, decay, opt, 5e-4, x, y).loss);
      expect(tf.memory().numTensors).toBe(n0); // a step leaks nothing
      console.log(`tiny model, 12 SGD steps on one batch: loss ${losses.map((l) => l.toFixed(3)).join(" ")}`);
      expect(losses[losses.length - 1]).toBeLessThan(losses[0] * 0.8);
      params.forEach((p, i) => expect(p.dataSync().some((v, j) => v !== before[i][j]), `param ${i}`).toBe(true));
      expect(model.batchNormLayers[0].runningMean.dataSync().some((v, j) => v !== rmBefore[j])).toBe(true);
      opt.dispose();
      x.dispose();
      y.dispose();
    } finally {
      model.dispose();
    }
  });

  it('weight decay is PyTorch SGD weight_decay: θ −= lr·wd·θ on conv/linear weights only', () => {
    const sd = initResNeXt(TINY, new Rng(5), NORM);
    const set = toySet(16, 3);
    const buf = new Float32Array(16 * 32 * 32 * 3);
    makeBatch(set, Array.from({ length: 16 }, (_, i) => i), buf, null, null);
    const after = [0, 0.1].map((wd) => {
      const model = buildTrainable(sd);
      model.setNormMode('train-update');
      const weights = model.trainableWeights();
      const params = [...weights.map((w) => w.variable), ...model.trainableParams()];
      const decay = [...weights.map((w) => w.isWeight), ...model.trainableParams().map(() => false)];
      const opt = new SGD(params, { lr: 0.5, momentum: 0 });
      const x = tf.tensor4d(buf, [16, 32, 32, 3]);
      const y = tf.tensor1d(set.labels, 'int32');
      trainStep(model, params, decay, opt, wd, x, y);
      const out = { values: params.map((p) => p.dataSync().slice()), decay, keys: weights.map((w) => w.key) };
      opt.dispose();
      x.dispose();
      y.dispose();
      model.dispose();
      return out;
    });
    const initial = buildTrainable(sd);
    const init = [...initial.trainableWeights().map((w) => w.variable), ...initial.trainableParams()].map((p) => p.dataSync().slice());
    initial.dispose();
    after[0].values.forEach((v0, i) => {
      const v1 = after[1].values[i];
      const want = Float32Array.from(init[i], (t) => (after[0].decay[i] ? -0.5 * 0.1 * t : 0));
      expectClose(`decay diff ${i}`, Float32Array.from(v1, (v, j) => v - v0[j]), want, 1e-4);
    });
    expect(after[0].keys).toContain('classifier.bias');
  });

  it('the written safetensors loads with buildModel and reproduces the trainer eval logits', async () => {
    const train = toySet(64, 7);
    const test = toySet(20, 8);
    const model = buildTrainable(initResNeXt(TINY, new Rng(2), channelStats(train)));
    const path = join(dir, 'tiny.safetensors');
    let checkpoints = 0;
    const recs = await trainModel(
      model,
      train,
      test,
      { epochs: 2, batchSize: 16, lr: 0.05, momentum: 0.9, weightDecay: 5e-4, augment: { pad: 4, flip: true }, seed: 3, logEvery: 0, evalBatchSize: 8 },
      {
        onEpoch: async (rec, m) => {
          checkpoints++;
          await saveModel(path, m, rec.steps, { epoch: String(rec.epoch) });
        },
      },
    );
    expect(checkpoints).toBe(2);
    expect(recs.map((r) => r.steps)).toEqual([4, 8]);
    expect(recs[1].testAcc).not.toBeNull();
    const mine = evaluate(model, test, 8, true); // 'source' mode after training
    expect(mine.accuracy).toBe(recs[1].testAcc);
    model.dispose();

    const { tensors, metadata } = parseSafetensorsWithMetadata(readFileSync(path), path);
    expect(metadata.epoch).toBe('2');
    const counters = [...tensors].filter(([k]) => k.endsWith('num_batches_tracked'));
    expect(counters.length).toBe(1 + 3 * 4); // bn_1 + per block bn_reduce, bn, bn_expand, downsample.1
    for (const [, t] of counters) {
      expect(t.dtype).toBe('int64');
      expect(t.shape).toEqual([]);
      expect(t.data[0]).toBe(8);
    }
    // PyTorch order: num_batches_tracked right after running_var
    const keys = [...tensors.keys()];
    expect(keys[keys.indexOf('bn_1.running_var') + 1]).toBe('bn_1.num_batches_tracked');
    expect(keys.slice(0, 3)).toEqual(['mu', 'sigma', 'conv_1_3x3.weight']);
    const stats = channelStats(train);
    expectClose('mu', tensors.get('mu')!.data, stats.mean, 1e-6);
    expect(tensors.get('sigma')!.shape).toEqual([1, 3, 1, 1]);

    const loaded = buildModel('resnext29', await readSafetensors(path), { rng: new Rng(0), expect: { depth: 11, cardinality: 2, baseWidth: 32 } });
    try {
      const theirs = evaluate(loaded, test, 8, true);
      expectClose('reloaded logits', theirs.logits!, mine.logits!, 1e-4);
      expect(theirs.accuracy).toBe(mine.accuracy);
    } finally {
      loaded.dispose();
    }
  });
});
