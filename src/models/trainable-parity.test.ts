/**
 * Trainable variants of every layer against PyTorch: with `requiresGrad(TRAIN_ALL)` one Tent
 * entropy loss on the fixture input gives the gradient of EVERY parameter (conv filters, norm
 * affines, the classifier) as the float64 PyTorch reference of scripts/make-trainable-fixtures.py
 * (test/fixtures/trainable). Also: `--n-layer N` selects MECTA's filter=N parameters, toggling
 * trainable/frozen keeps values and leaks nothing, and frozen layers stay memory-economic.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { readNpy } from '../io/npy.js';
import { buildModel } from './registry.js';
import { ResNet50, inferResNet } from './resnet50.js';
import type { Classifier } from './types.js';
import { GradientAdapter, disposeGrads } from '../algorithms/gradient-adapter.js';
import type { AdaptOptions } from '../algorithms/types.js';
import { softmaxEntropy } from '../algorithms/losses.js';
import { TRAIN_ALL, TRAIN_NORM, nLayerNames } from '../algorithms/param-select.js';

const ROOT = process.cwd();
const TRAINABLE = join(ROOT, 'test', 'fixtures', 'trainable');
const MODELS = join(ROOT, 'test', 'fixtures', 'models');
const IMAGENET = join(ROOT, 'test', 'fixtures', 'imagenet');
const TOL = 1e-4;

/** The CIFAR fixtures read weights + NCHW input from test/fixtures/models, the ImageNet ones from test/fixtures/imagenet. */
const CASES = [
  { fixture: 'resnext_small', arch: 'resnext29', dir: MODELS },
  { fixture: 'wrn_small', arch: 'wrn28_10', dir: MODELS },
  { fixture: 'resnet50_small', arch: 'resnet50', dir: IMAGENET },
  { fixture: 'vit_small', arch: 'vit_b16', dir: IMAGENET },
] as const;
const BN_CASES = CASES.filter((c) => c.arch !== 'vit_b16');
const imagenetArch = JSON.parse(readFileSync(join(IMAGENET, 'arch.json'), 'utf8')) as { resnet50_small: { input_size: number } };

const OPTS = { lr: 1e-3, momentum: 0.9, optimizer: 'sgd', episodic: false, matchedUpdate: 'momentum' } as unknown as AdaptOptions;
const nLayerRef = JSON.parse(readFileSync(join(TRAINABLE, 'n_layer.json'), 'utf8')).n_layer as Record<string, Record<string, string[]>>;

const worst = new Map<string, number>();
const data = new Map<string, { sd: StateDict; input: Float32Array; shape: number[]; ref: StateDict }>();

beforeAll(async () => {
  await initBackend('wasm');
  for (const c of CASES) {
    let input: Float32Array;
    let shape: number[];
    if (c.dir === MODELS) {
      const io = await readSafetensors(join(MODELS, `${c.fixture}.io.safetensors`));
      input = Float32Array.from(io.get('input')!.data as Float32Array);
      shape = io.get('input')!.shape;
    } else {
      const u8 = await readNpy(join(IMAGENET, `${c.fixture}.input.npy`)); // uint8 NCHW; ToTensor = /255
      input = Float32Array.from(u8.data as Uint8Array, (v) => v / 255);
      shape = u8.shape;
    }
    data.set(c.fixture, {
      sd: await readSafetensors(join(c.dir, `${c.fixture}.safetensors`)),
      input,
      shape,
      ref: await readSafetensors(join(TRAINABLE, `${c.fixture}.grads.safetensors`)),
    });
  }
});

/** The fixture's NCHW input as NHWC. */
function inputOf(fixture: string): tf.Tensor4D {
  const { input, shape } = data.get(fixture)!;
  return tf.tidy(() => tf.transpose(tf.tensor4d(input, shape as [number, number, number, number]), [0, 2, 3, 1]));
}

afterAll(() => {
  console.log(`trainable parity, max relative error per model: ${[...worst].map(([k, v]) => `${k}=${v.toExponential(2)}`).join(' ')}`);
});

const build = (arch: string, sd: StateDict): Classifier =>
  arch === 'resnet50'
    ? new ResNet50(sd, inferResNet(sd), { rng: new Rng(1), inputSize: imagenetArch.resnet50_small.input_size })
    : buildModel(arch, sd, { rng: new Rng(1) });

/** max |a − b| / max |b| (relative to the tensor's scale: tiny entries are not over-weighted). */
function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  let m = 0;
  for (let i = 0; i < b.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return m === 0 ? d : d / m;
}

describe.each(CASES)('$fixture: gradients of all parameters vs PyTorch', ({ fixture, arch }) => {
  it('one entropy loss, every parameter trainable', () => {
    const { sd, ref } = data.get(fixture)!;
    const model = build(arch, sd);
    model.setNormMode('batch'); // Tent: batch statistics (docs/methods.md#configuration)
    model.requiresGrad(TRAIN_ALL);
    const params = model.parameters();
    expect(params.every((p) => p.requiresGrad && p.variable !== null)).toBe(true);
    const refNames = [...ref.keys()].filter((k) => k.startsWith('grad.')).map((k) => k.slice(5));
    expect(params.map((p) => p.name)).toEqual(refNames); // state_dict order, PyTorch names
    const adapter = new GradientAdapter(model, OPTS, 'tent');
    const x = inputOf(fixture);
    const r = adapter.grads(x, (z) => tf.mean(softmaxEntropy(z)) as tf.Scalar);
    expect(r.grads).not.toBeNull();
    const errs: string[] = [];
    let maxErr = 0;
    adapter.keys.forEach((name, i) => {
      const g = r.grads![i];
      expect(g, name).not.toBeNull();
      const torch = tf.tidy(() => params[i].toTorch(g!));
      const e = relErr(torch.dataSync(), ref.get(`grad.${name}`)!.data as Float32Array);
      torch.dispose();
      maxErr = Math.max(maxErr, e);
      if (!(e <= TOL)) errs.push(`${name} ${e.toExponential(2)}`);
    });
    worst.set(fixture, maxErr);
    expect(errs).toEqual([]);
    disposeGrads(r.grads);
    r.logits.dispose();
    x.dispose();
    adapter.dispose();
    model.dispose();
  });
});

describe('parameter selection', () => {
  it.each(BN_CASES)('$fixture: --n-layer N trains the parameters of MECTA filter=N', ({ fixture, arch }) => {
    const model = build(arch, data.get(fixture)!.sd);
    for (const [n, names] of Object.entries(nLayerRef[fixture])) {
      if (Number(n) === 0) {
        expect(nLayerNames(model, 0)).toEqual([]);
        continue;
      }
      const adapter = new GradientAdapter(model, { ...OPTS, nLayer: Number(n) }, 'tent');
      expect(adapter.keys).toEqual(names);
      expect(model.parameters().filter((p) => p.requiresGrad).map((p) => p.name)).toEqual(names);
      adapter.dispose();
    }
    expect(() => nLayerNames(model, 1000)).toThrow(/--n-layer 1000/);
    model.dispose();
  });

  it('the default stays the norm-layer affines (today\'s Tent), every conv frozen', () => {
    const model = build('resnext29', data.get('resnext_small')!.sd);
    const on = model.parameters().filter((p) => p.requiresGrad);
    expect(on.length).toBeGreaterThan(0);
    expect(on.every((p) => p.kind === 'norm')).toBe(true);
    expect(model.parameters().filter((p) => p.kind === 'conv').every((p) => p.variable === null)).toBe(true);
    const adapter = new GradientAdapter(model, OPTS, 'tent');
    expect(adapter.params).toEqual(model.trainableParams());
    adapter.dispose();
    model.dispose();
  });

  it('saved optimizer state is keyed by PyTorch names and reloads', () => {
    const { sd } = data.get('resnext_small')!;
    const model = build('resnext29', sd);
    model.setNormMode('batch');
    model.requiresGrad((p) => p.kind === 'norm' || p.name === 'classifier.weight');
    const adapter = new GradientAdapter(model, OPTS, 'tent');
    const x = inputOf('resnext_small');
    adapter.step(x, (z) => tf.mean(softmaxEntropy(z)) as tf.Scalar).logits.dispose();
    const st = new Map<string, tf.Tensor>();
    adapter.saveState(st);
    expect(st.has('optim.sgd.momentum_buffer.classifier.weight')).toBe(true);
    expect(st.has('optim.sgd.momentum_buffer.bn_1.bias')).toBe(true);
    const again = new GradientAdapter(model, OPTS, 'tent');
    again.loadState(st);
    const st2 = new Map<string, tf.Tensor>();
    again.saveState(st2);
    expect([...st2.keys()]).toEqual([...st.keys()]);
    for (const [k, t] of st) expect(Array.from(st2.get(k)!.dataSync())).toEqual(Array.from(t.dataSync()));
    for (const t of [...st.values(), ...st2.values()]) t.dispose();
    x.dispose();
    adapter.dispose();
    again.dispose();
    model.dispose();
  });
});

describe('trainable ↔ frozen', () => {
  function logits(model: Classifier, x: tf.Tensor4D): Float32Array {
    const y = model.forward(x);
    const v = y.dataSync() as Float32Array;
    y.dispose();
    return v;
  }

  it.each(CASES)('$fixture: switching trainable ↔ frozen keeps every value', ({ fixture, arch }) => {
    const { sd } = data.get(fixture)!;
    const x = inputOf(fixture);
    const model = build(arch, sd);
    model.setNormMode('batch');
    const before = logits(model, x);
    const stateBefore = model.stateDict();
    model.requiresGrad(TRAIN_ALL);
    expect(Array.from(logits(model, x))).toEqual(Array.from(before)); // same values through the trainable ops
    model.requiresGrad(TRAIN_NORM);
    expect(Array.from(logits(model, x))).toEqual(Array.from(before));
    const stateAfter = model.stateDict();
    for (const [k, t] of stateBefore) expect(Array.from(stateAfter.get(k)!.dataSync()), k).toEqual(Array.from(t.dataSync()));
    for (const t of [...stateBefore.values(), ...stateAfter.values()]) t.dispose();
    model.dispose();
    x.dispose();
  });

  it.each(CASES)('$fixture: toggling and a trainable step leak no tensor', ({ fixture, arch }) => {
    const { sd } = data.get(fixture)!;
    const x = inputOf(fixture);
    const model = build(arch, sd);
    model.setNormMode('batch');
    const n0 = tf.memory().numTensors;
    for (let i = 0; i < 2; i++) {
      model.requiresGrad(TRAIN_ALL);
      const adapter = new GradientAdapter(model, OPTS, 'tent');
      const out = adapter.step(x, (z) => tf.mean(softmaxEntropy(z)) as tf.Scalar);
      out.logits.dispose();
      adapter.dispose();
      model.requiresGrad(TRAIN_NORM);
    }
    expect(tf.memory().numTensors).toBe(n0);
    model.dispose();
    x.dispose();
  });
});
