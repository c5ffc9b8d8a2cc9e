/**
 * Classifier.clone() on the four architectures (reduced fixture models): the copy computes what the
 * original computes in every norm mode, shares no variable with it (updating either leaves the
 * other as it was), takes over the norm mode, MECTA options and per-layer state and the trainable
 * flags, and frees all its tensors on dispose(); and the AlgorithmContext members built from it.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { buildModel } from './registry.js';
import { CifarResNeXt, inferResNeXt } from './resnext.js';
import { ResNet50, inferResNet } from './resnet50.js';
import type { Classifier, MectaOptions, NormMode } from './types.js';
import { testImages } from './test-weights.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { cottaAugment } from '../algorithms/augment.js';

const MODELS = join(process.cwd(), 'test', 'fixtures', 'models');
const IMAGENET = join(process.cwd(), 'test', 'fixtures', 'imagenet');
const MECTA: MectaOptions = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.5 };

const weights: Record<string, StateDict> = {};

beforeAll(async () => {
  await initBackend('wasm');
  weights.resnext = await readSafetensors(join(MODELS, 'resnext_small.safetensors'));
  weights.wrn = await readSafetensors(join(MODELS, 'wrn_small.safetensors'));
  weights.resnet = await readSafetensors(join(IMAGENET, 'resnet50_small.safetensors'));
  weights.vit = await readSafetensors(join(IMAGENET, 'vit_small.safetensors'));
});

interface Subject {
  label: string;
  make(): Classifier;
  /** Whether the norm layers are BatchNorms (modes 'mecta' and 'train-update' apply). */
  bn: boolean;
}

const SUBJECTS: Subject[] = [
  { label: 'resnext29 (mu/sigma buffers)', bn: true, make: () => buildModel('resnext29', weights.resnext, { rng: new Rng(1) }) },
  // A fallback input normalisation is a constructor option, not state_dict content: the copy must keep it.
  { label: 'wrn28_10 (fallback input normalisation)', bn: true, make: () => buildModel('wrn28_10', weights.wrn, { rng: new Rng(2), inputNorm: { mean: [0.4, 0.5, 0.6], std: [0.2, 0.25, 0.3] } }) },
  { label: 'resnet50 (64 px input)', bn: true, make: () => new ResNet50(weights.resnet, inferResNet(weights.resnet), { rng: new Rng(3), inputSize: 64 }) },
  { label: 'vit_b16 (LayerNorms)', bn: false, make: () => buildModel('vit_b16', weights.vit, { rng: new Rng(4) }) },
];

function batch(model: Classifier, seed = 3, n = 4): tf.Tensor4D {
  const [h, , c] = model.inputShape;
  return tf.tensor4d(testImages(n, h, seed), [n, h, h, c]);
}

function logits(model: Classifier, x: tf.Tensor4D): number[] {
  const y = model.forward(x);
  const out = Array.from(y.dataSync());
  y.dispose();
  return out;
}

function snapshot(model: Classifier): Map<string, number[]> {
  const sd = model.stateDict();
  const out = new Map([...sd].map(([k, t]) => [k, Array.from(t.dataSync())]));
  tf.dispose([...sd.values()]);
  return out;
}

for (const s of SUBJECTS) {
  describe(`clone: ${s.label}`, () => {
    const modes: NormMode[] = s.bn ? ['source', 'batch', 'mecta'] : ['source', 'batch'];

    it(`forward of the copy equals the original's (modes ${modes.join(', ')})`, () => {
      const model = s.make();
      const x = batch(model);
      for (const mode of modes) {
        model.setNormMode(mode, mode === 'mecta' ? MECTA : undefined);
        if (mode === 'mecta') logits(model, x); // accumulated statistics and past_size move first
        const copy = model.clone();
        expect(copy.inputShape).toEqual(model.inputShape);
        // Bit-identical: the same values through the same ops (in 'mecta' both update their own statistics).
        expect(logits(copy, x)).toEqual(logits(model, x));
        expect(snapshot(copy)).toEqual(snapshot(model));
        copy.dispose();
      }
      x.dispose();
      model.dispose();
    });

    it('shares no variable: changing either model leaves the other as it was', () => {
      const model = s.make();
      const x = batch(model);
      const copy = model.clone();
      for (const [a, b] of model.normLayers.map((l, i) => [l, copy.normLayers[i]] as const)) {
        expect(b.weight).not.toBe(a.weight);
        expect(b.weight.dataId).not.toBe(a.weight.dataId);
        expect(b.bias.dataId).not.toBe(a.bias.dataId);
        if (a.runningMean) expect(b.runningMean!.dataId).not.toBe(a.runningMean.dataId);
      }
      const before = snapshot(model);
      const ref = logits(model, x);
      // Every parameter and buffer of the copy changes (positive scale keeps stds / variances valid).
      const sd = copy.stateDict();
      const changed = new Map([...sd].map(([k, t]) => [k, tf.mul(t, 1.5)]));
      copy.loadStateDict(changed);
      tf.dispose([...sd.values(), ...changed.values()]);
      expect(snapshot(model)).toEqual(before);
      expect(logits(model, x)).toEqual(ref);
      expect(logits(copy, x)).not.toEqual(ref);
      // And the other way round: updating the original's statistics does not reach the copy.
      if (s.bn) {
        const copyState = snapshot(copy);
        model.setNormMode('train-update');
        logits(model, x);
        expect(snapshot(model)).not.toEqual(before);
        expect(snapshot(copy)).toEqual(copyState);
      }
      copy.dispose();
      x.dispose();
      model.dispose();
    });

    it('takes over the mode, MECTA options, per-layer state and trainable flags, then keeps its own', () => {
      const model = s.make();
      const x = batch(model);
      const first = model.normLayers[0].name;
      model.setTrainable(false);
      model.setTrainable(true, (l) => l.name === first);
      if (s.bn) {
        model.setNormMode('mecta', MECTA);
        logits(model, x);
      } else {
        model.setNormMode('batch');
      }
      const copy = model.clone();
      expect(copy.normMode).toBe(model.normMode);
      expect(copy.mectaOptions).toEqual(model.mectaOptions);
      if (model.mectaOptions) expect(copy.mectaOptions).not.toBe(model.mectaOptions);
      copy.normLayers.forEach((l, i) => {
        const o = model.normLayers[i];
        expect(l.name).toBe(o.name);
        expect(l.trainable).toBe(o.trainable);
        expect(l.weight.trainable).toBe(o.weight.trainable);
        expect(l.pastSize).toBe(o.pastSize);
        expect(l.last).toEqual(o.last);
      });
      if (s.bn) expect(copy.normLayers[0].pastSize).toBe(4);
      expect(copy.trainableParams()).toHaveLength(2);
      expect(copy.trainableParams()[0]).not.toBe(model.trainableParams()[0]);
      // The copy's own switches do not move the original's.
      copy.setNormMode('source');
      copy.setTrainable(true);
      copy.normLayers[0].reset();
      expect(model.normMode).toBe(s.bn ? 'mecta' : 'batch');
      expect(model.trainableParams()).toHaveLength(2);
      if (s.bn) expect(model.normLayers[0].pastSize).toBe(4);
      copy.dispose();
      x.dispose();
      model.dispose();
    });

    it('dispose() frees every tensor of the copy; a disposed model cannot be copied', () => {
      const model = s.make();
      const x = batch(model);
      if (s.bn) model.setNormMode('source'); // the folded conv+BN filters are built lazily: build them too
      logits(model, x);
      const before = tf.memory().numTensors;
      const copy = model.clone();
      expect(tf.memory().numTensors).toBeGreaterThan(before);
      logits(copy, x);
      copy.dispose();
      expect(tf.memory().numTensors).toBe(before);
      x.dispose();
      model.dispose();
      expect(() => model.clone()).toThrow(CtaError);
    });
  });
}

describe('clone: conv/linear weight variables (source training)', () => {
  it('a model built with trainable weights copies them into new variables with the same flags', () => {
    const sd = weights.resnext;
    const model = new CifarResNeXt(sd, inferResNeXt(sd), { rng: new Rng(1), trainWeights: true });
    model.trainableWeights()[0].variable.trainable = false;
    const copy = model.clone() as CifarResNeXt;
    const a = model.trainableWeights();
    const b = copy.trainableWeights();
    expect(b.map((w) => w.key)).toEqual(a.map((w) => w.key));
    b.forEach((w, i) => {
      expect(w.variable).not.toBe(a[i].variable);
      expect(w.variable.trainable).toBe(a[i].variable.trainable);
      expect(Array.from(w.variable.dataSync())).toEqual(Array.from(a[i].variable.dataSync()));
    });
    copy.dispose();
    model.dispose();
  });
});

describe('AlgorithmContext wiring (src/algorithms/context.ts)', () => {
  it('cloneModel copies the model as it is now; augment draws from the algorithm Rng', () => {
    const model = buildModel('resnext29', weights.resnext, { rng: new Rng(1) });
    const rng = new Rng(21);
    const ctx = copiesAndAugmentation(model, rng);
    model.setNormMode('batch');
    const x = batch(model);
    const copy = ctx.cloneModel();
    expect(copy.normMode).toBe('batch');
    expect(logits(copy, x)).toEqual(logits(model, x));
    const a = ctx.augment(x);
    const b = cottaAugment(x, new Rng(21));
    expect(Array.from(a.dataSync())).toEqual(Array.from(b.dataSync()));
    expect(rng.state()).not.toEqual(new Rng(21).state());
    tf.dispose([a, b, x]);
    copy.dispose();
    model.dispose();
  });
});
