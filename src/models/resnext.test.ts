import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import { readTorchPt } from '../io/torch-pt.js';
import type { StateDict } from '../io/types.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { Conv2d } from './ops/conv.js';
import { MODEL_NAMES, buildModel } from './registry.js';
import { CifarResNeXt } from './resnext.js';
import type { Classifier } from './types.js';
import { connectedNormParams, expectClose, fixtureTensor, observed } from './test-helpers.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'models');
const meta = JSON.parse(readFileSync(join(DIR, 'resnext_small.json'), 'utf8')) as {
  depth: number;
  cardinality: number;
  base_width: number;
  bn_layers: string[];
  stage_inner_width: number[];
  stage_out_channels: number[];
};

let st: StateDict;
let pt: StateDict;
let io: StateDict;

beforeAll(async () => {
  await initBackend('wasm');
  st = await readSafetensors(join(DIR, 'resnext_small.safetensors'));
  pt = await readTorchPt(join(DIR, 'resnext_small.pt'));
  io = await readSafetensors(join(DIR, 'resnext_small.io.safetensors'));
});

afterAll(() => {
  const rows = [...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`);
  console.log(`resnext max relative errors: ${rows.join(' ')}`);
});

const build = (sd: StateDict, seed = 1) => buildModel('resnext29', sd, { rng: new Rng(seed) });

function logits(model: Classifier): tf.Tensor2D {
  const x = fixtureTensor(io, 'input') as tf.Tensor4D; // NCHW → NHWC
  const y = model.forward(x);
  x.dispose();
  return y;
}

describe('registry', () => {
  it('lists the architectures', () => {
    expect(MODEL_NAMES).toEqual(['resnext29', 'wrn28_10', 'resnet50', 'vit_b16']);
  });
});

describe('CifarResNeXt against PyTorch (resnext_small fixture)', () => {
  for (const source of ['safetensors', 'pt'] as const) {
    it(`eval ('source') and train ('batch') logits match, weights from .${source}`, () => {
      const model = build(source === 'pt' ? pt : st);
      expect(model).toBeInstanceOf(CifarResNeXt);
      const arch = (model as CifarResNeXt).architecture;
      expect(arch.depth).toBe(meta.depth);
      expect(arch.cardinality).toBe(meta.cardinality);
      expect(arch.baseWidth).toBe(meta.base_width);
      expect(arch.stages.map((s) => s.inner)).toEqual(meta.stage_inner_width);
      expect(arch.stages.map((s) => s.out)).toEqual(meta.stage_out_channels);
      expect(model.normLayers.map((l) => l.name)).toEqual(meta.bn_layers);
      expect(model.numClasses).toBe(10);

      const yEval = logits(model);
      expectClose(`resnext.logits_eval.${source}`, yEval, fixtureTensor(io, 'logits_eval'));
      model.setNormMode('batch');
      const yTrain = logits(model);
      expectClose(`resnext.logits_train.${source}`, yTrain, fixtureTensor(io, 'logits_train'));
      tf.dispose([yEval, yTrain]);
      model.dispose();
    });
  }

  it('stateDict returns the PyTorch keys, layouts and values; loadStateDict round-trips', () => {
    const model = build(st);
    const state = model.stateDict();
    const fileKeys = [...st.keys()].filter((k) => !k.endsWith('num_batches_tracked'));
    expect([...state.keys()]).toEqual(fileKeys);
    for (const [k, t] of state) {
      expect(t.shape, k).toEqual(st.get(k)!.shape);
      expect(Array.from(t.dataSync()), k).toEqual(Array.from(st.get(k)!.data));
    }
    // Load a perturbed copy into a second model, then the original back: logits follow.
    const other = build(st);
    const yRef = logits(model);
    const bumped = new Map([...state].map(([k, t]) => [k, k === 'classifier.bias' ? tf.add(t, 1) : t.clone()]));
    other.loadStateDict(bumped);
    const yBumped = logits(other);
    expectClose('resnext.loadStateDict', tf.sub(yBumped, 1), yRef, 1e-5);
    // num_batches_tracked is accepted and ignored; a wrong shape is rejected before any change.
    const bad = new Map(state);
    bad.set('bn_1.num_batches_tracked', tf.scalar(3));
    bad.set('bn_1.weight', tf.zeros([5]));
    expect(() => other.loadStateDict(bad)).toThrow(/wrong shape.*bn_1\.weight \[5\] expected \[16\]/);
    tf.dispose([...state.values(), ...bumped.values(), yRef, yBumped, bad.get('bn_1.num_batches_tracked')!, bad.get('bn_1.weight')!]);
    model.dispose();
    other.dispose();
  });

  it('reports every key mismatch in one error and checks pinned architecture facts', () => {
    const sd: StateDict = new Map(st);
    sd.delete('stage_2.1.bn.running_var');
    sd.delete('classifier.bias');
    sd.set('stage_4.0.conv_reduce.weight', st.get('stage_1.0.conv_reduce.weight')!);
    sd.set('bn_1.weight', { ...st.get('bn_1.weight')!, shape: [4, 4] });
    let msg = '';
    try {
      build(sd);
    } catch (e) {
      expect(e).toBeInstanceOf(CtaError);
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/2 missing \(stage_2\.1\.bn\.running_var, classifier\.bias\)/);
    expect(msg).toMatch(/1 unexpected \(stage_4\.0\.conv_reduce\.weight\)/);
    expect(msg).toMatch(/1 wrong shape \(bn_1\.weight \[4,4\] expected \[16\]\)/);
    expect(msg).toMatch(/depth 20, cardinality 4, base width 32/);
    expect(() => buildModel('resnext29', st, { rng: new Rng(1), expect: { cardinality: 32 } })).toThrow(
      /cardinality 32 expected, weights have 4/,
    );
    expect(() => buildModel('resnext29', st, { rng: new Rng(1), expect: { depth: 29 } })).toThrow(/depth 29 expected, weights have 20/);
    expect(() => buildModel('resnet50', st, { rng: new Rng(1) })).toThrow(CtaError);
    // mu without sigma: sigma is reported missing.
    const lone: StateDict = new Map(st);
    lone.delete('sigma');
    expect(() => build(lone)).toThrow(/1 missing \(sigma\)/);
    // A WRN state_dict under the ResNeXt name fails cleanly too.
    expect(() => build(new Map([['conv1.weight', st.get('conv_1_3x3.weight')!]]))).toThrow(CtaError);
  });

  it('forward and gradient steps in every norm mode leave no tensors behind', () => {
    const model = build(st);
    const x = fixtureTensor(io, 'input') as tf.Tensor4D;
    const mecta = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0.00125, pruneQ: 0.7 } as const;
    for (const mode of ['source', 'batch', 'train-update', 'mecta'] as const) {
      model.setNormMode(mode, mecta);
      const step = () =>
        tf.tidy(() => {
          model.forward(x);
          const params = model.trainableParams();
          const { grads } = tf.variableGrads(() => tf.mean(tf.logSoftmax(model.forward(x))) as tf.Scalar, params);
          expect(Object.keys(grads).length).toBe(connectedNormParams(model));
        });
      step(); // warm-up builds the convs' cached flipped filters
      const before = tf.memory().numTensors;
      step();
      step();
      expect(tf.memory().numTensors, mode).toBe(before);
    }
    // MECTA records per layer (docs/memory.md#analytic): pruned channel count, β in [0, 1].
    for (const l of model.normLayers) {
      const r = l.last!;
      expect(r.beta).toBeGreaterThanOrEqual(0);
      expect(r.beta).toBeLessThanOrEqual(1);
      expect(r.forwardBytes % 4).toBe(0);
    }
    x.dispose();
    model.dispose();
  });

  it('trainable flags select the adapted parameters; the seeded pruning is reproducible', () => {
    const model = build(st);
    expect(model.trainableParams().length).toBe(2 * meta.bn_layers.length);
    model.setTrainable(false);
    model.setTrainable(true, (l) => l.name.startsWith('stage_3'));
    expect(model.trainableParams().length).toBe(2 * meta.bn_layers.filter((n) => n.startsWith('stage_3')).length);
    model.setTrainable(true);

    const seen: string[] = [];
    model.setPruneChooser((layer, channels) => {
      seen.push(layer);
      return Int32Array.from({ length: Math.floor(channels * 0.5) }, (_, i) => i);
    });
    model.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.5 });
    tf.tidy(() => {
      model.forward(fixtureTensor(io, 'input') as tf.Tensor4D);
    });
    expect(seen).toEqual(meta.bn_layers);
    model.dispose();

    // Same seed → same logits after identical pruned gradient steps; the random choice is used.
    const run = (seed: number) => {
      const m = build(st, seed);
      m.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: false, distMetric: 'skl', distScale: 1, betaThre: 0, pruneQ: 0.5 });
      const x = fixtureTensor(io, 'input') as tf.Tensor4D;
      const g = tf.tidy(() => {
        const { grads } = tf.variableGrads(() => tf.sum(m.forward(x)) as tf.Scalar, m.trainableParams());
        return tf.concat(Object.values(grads).map((t) => t.flatten()));
      });
      const out = Array.from(g.dataSync());
      tf.dispose([g, x]);
      m.dispose();
      return out;
    };
    const a = run(5);
    expect(run(5)).toEqual(a);
    expect(run(6)).not.toEqual(a);
  });
});

describe('whole-model gradients against PyTorch Tent runs (adapt fixtures)', () => {
  const ADAPT = join(process.cwd(), 'test', 'fixtures', 'adapt');

  /**
   * Three Tent steps (entropy loss, PyTorch SGD with momentum: buf ← m·buf + g, θ ← θ − lr·buf)
   * written out here so that the check covers only the model's forward and backward.
   */
  async function tentRun(name: string, setup: (m: Classifier, ref: StateDict) => void, onStep?: (k: number) => void) {
    const ref = await readSafetensors(join(ADAPT, `${name}.safetensors`));
    const inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
    const js = JSON.parse(readFileSync(join(ADAPT, `${name}.json`), 'utf8')) as {
      optimizer: { lr: number; momentum: number };
      steps: { updated: boolean }[];
    };
    const model = build(st);
    setup(model, ref);
    const params = model.trainableParams();
    const bufs: (tf.Tensor | null)[] = params.map(() => null);
    const { lr, momentum } = js.optimizer;
    js.steps.forEach((step, k) => {
      onStep?.(k);
      tf.tidy(() => {
        const x = fixtureTensor(inputs, `x${k}`) as tf.Tensor4D;
        let logits: tf.Tensor | null = null;
        const { grads } = tf.variableGrads(() => {
          const y = model.forward(x);
          logits = tf.keep(y.clone());
          return tf.neg(tf.mean(tf.sum(tf.mul(tf.softmax(y), tf.logSoftmax(y)), 1))) as tf.Scalar;
        }, params);
        expectClose(`${name}.logits[${k}]`, logits!, fixtureTensor(ref, `logits${k}`));
        tf.dispose(logits!);
        if (!step.updated) return;
        params.forEach((v, i) => {
          // no gradient = a matched MECTA layer (its op does not take γ/β): the reference's zeros
          const g = grads[v.name] ?? tf.zerosLike(v);
          const buf = bufs[i] ? tf.add(tf.mul(bufs[i]!, momentum), g) : g;
          bufs[i]?.dispose();
          bufs[i] = tf.keep(buf);
          v.assign(tf.sub(v, tf.mul(buf, lr)));
        });
      });
    });
    for (const layer of model.normLayers) {
      expectClose(`${name}.final.weight[${layer.name}]`, layer.weight, fixtureTensor(ref, `final.${layer.name}.weight`));
      // Biases start at 0 and stay small after three steps, so their relative error (float32
      // gradients vs the float64 reference) runs up to ~8e-5; allow 2e-4 there.
      expectClose(`${name}.final.bias[${layer.name}]`, layer.bias, fixtureTensor(ref, `final.${layer.name}.bias`), 2e-4);
      if (ref.has(`final.${layer.name}.running_mean`)) {
        expectClose(`${name}.final.running_mean[${layer.name}]`, layer.runningMean!, fixtureTensor(ref, `final.${layer.name}.running_mean`));
        expectClose(`${name}.final.running_var[${layer.name}]`, layer.runningVar!, fixtureTensor(ref, `final.${layer.name}.running_var`));
      }
    }
    tf.dispose(bufs.filter((b): b is tf.Tensor => b !== null));
    model.dispose();
  }

  it("Tent with batch statistics ('batch')", async () => {
    await tentRun('tent', (m) => m.setNormMode('batch'));
  });

  it("Tent + MECTA ('mecta': forget gate, beta_thre, pruning with the fixture's channels)", async () => {
    let step = 0;
    await tentRun(
      'tent_mecta',
      (m, ref) => {
        m.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0.05, pruneQ: 0.5 });
        m.setPruneChooser((layer) => Int32Array.from(ref.get(`removed.${step}.${layer}`)!.data));
      },
      (k) => (step = k),
    );
  });
});

describe('Conv2d input gradient (flipped-filter conv; sub-pixel phases when strided)', () => {
  const cases = [
    { k: 3, stride: 1, pad: 1, groups: 1, size: 8 },
    { k: 3, stride: 2, pad: 1, groups: 1, size: 8 },
    { k: 3, stride: 2, pad: 1, groups: 1, size: 7 },
    { k: 3, stride: 2, pad: 1, groups: 4, size: 8 },
    { k: 1, stride: 2, pad: 0, groups: 1, size: 8 },
    { k: 1, stride: 2, pad: 0, groups: 1, size: 9 },
    { k: 1, stride: 1, pad: 0, groups: 1, size: 5 },
    { k: 7, stride: 2, pad: 3, groups: 1, size: 12 }, // ResNet-50's stem shape
    { k: 3, stride: 2, pad: 1, groups: 2, size: 6 },
    { k: 3, stride: 2, pad: 1, groups: 4, size: 7 }, // odd size: dilated fallback
  ];
  for (const c of cases) {
    it(`k${c.k} s${c.stride} p${c.pad} g${c.groups} on ${c.size}×${c.size}`, () => {
      tf.tidy(() => {
        const cin = 8;
        const cout = 12;
        const wOIHW = tf.randomNormal([cout, cin / c.groups, c.k, c.k], 0, 1, 'float32', 1) as tf.Tensor4D;
        const conv = new Conv2d(wOIHW, { stride: c.stride, pad: c.pad, groups: c.groups });
        const x = tf.randomNormal([2, c.size, c.size, cin], 0, 1, 'float32', 2) as tf.Tensor4D;
        // Reference: tf.conv2d per group (PyTorch padding) with tf's own gradient.
        const ref = (inp: tf.Tensor4D) => {
          const hwio = tf.transpose(wOIHW, [2, 3, 1, 0]) as tf.Tensor4D;
          if (c.groups === 1) return tf.conv2d(inp, hwio, c.stride, c.pad);
          const ws = tf.split(hwio, c.groups, 3) as tf.Tensor4D[];
          const xs = tf.split(inp, c.groups, 3) as tf.Tensor4D[];
          return tf.concat(xs.map((xi, i) => tf.conv2d(xi, ws[i], c.stride, c.pad)), 3);
        };
        const y = conv.apply(x);
        const yRef = ref(x);
        expectClose('conv.forward', y, yRef, 1e-5);
        const dy = tf.randomNormal(yRef.shape, 0, 1, 'float32', 3);
        const dx = tf.engine().gradients(() => conv.apply(x), [x], dy).grads[0];
        const dxRef = tf.engine().gradients(() => ref(x), [x], dy).grads[0];
        expectClose('conv.dx', dx, dxRef, 1e-5);
        // PyTorch round trip of the filter layout.
        expect(Array.from(conv.weightOIHW().dataSync())).toEqual(Array.from(wOIHW.dataSync()));
        conv.dispose();
      });
    });
  }
});
