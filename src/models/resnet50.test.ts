/**
 * ResNet-50 against PyTorch (test/fixtures/imagenet, scripts/make-imagenet-fixtures.py): a reduced
 * torchvision ResNet (same Bottleneck / _make_layer, blocks [2,2,1,1], small widths) — eval and
 * batch-statistics logits, the RobustBench wrapper layout (model. + normalize.mean/std), one Tent
 * step through the max-pool and every BN — and the full-size torchvision key list built with
 * random weights and run once at 224 px.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import { readNpy } from '../io/npy.js';
import type { StateDict } from '../io/types.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from '../algorithms/registry.js';
import type { AdaptOptions } from '../algorithms/types.js';
import { buildModel } from './registry.js';
import { ResNet50, inferResNet, resnetExpectedKeys } from './resnet50.js';
import { expectClose, observed } from './test-helpers.js';
import { randomStateDictForKeys, testImages, type KeyShape } from './test-weights.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'imagenet');
const arch = JSON.parse(readFileSync(join(DIR, 'arch.json'), 'utf8')) as {
  resnet50_small: { bn_layers: string[]; wrap_mean: number[]; wrap_std: number[]; tent_lr: number; tent_momentum: number; input_size: number };
  full: { resnet50: { num_parameters: number; num_entries: number; state_dict: KeyShape[] } };
};

let sd: StateDict;
let io: StateDict;
let input: tf.Tensor4D;

beforeAll(async () => {
  await initBackend('wasm');
  sd = await readSafetensors(join(DIR, 'resnet50_small.safetensors'));
  io = await readSafetensors(join(DIR, 'resnet50_small.io.safetensors'));
  const u8 = await readNpy(join(DIR, 'resnet50_small.input.npy'));
  // NCHW uint8 → NHWC in [0, 1], exactly the float the stream produces (uint8/255)
  input = tf.tidy(() => tf.transpose(tf.div(tf.tensor4d(Float32Array.from(u8.data as Uint8Array), u8.shape as [number, number, number, number]), 255), [0, 2, 3, 1])) as tf.Tensor4D;
});

afterAll(() => {
  input?.dispose();
  const rows = [...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`);
  console.log(`resnet50 max relative errors: ${rows.join(' ')}`);
});

const small = (weights: StateDict) => new ResNet50(weights, inferResNet(weights), { rng: new Rng(1), inputSize: arch.resnet50_small.input_size });
const ref = (key: string) => io.get(key)!.data;

describe('ResNet-50 (reduced) against torchvision', () => {
  it('the registry accepts the torchvision key names and reads the architecture off the shapes', () => {
    const a = inferResNet(sd);
    expect(a.prefix).toBe('');
    expect(a.stages.map((s) => s.blocks)).toEqual([2, 2, 1, 1]);
    expect(a.depth).toBe(2 + 3 * 6);
    expect([...resnetExpectedKeys(a).keys()]).toEqual([...sd.keys()].filter((k) => !k.endsWith('num_batches_tracked')));
    const m = buildModel('resnet50', sd, { rng: new Rng(1) }); // the CLI path (224 px input)
    expect(m.inputShape).toEqual([224, 224, 3]);
    expect(m.normLayers.map((l) => l.name)).toEqual(arch.resnet50_small.bn_layers);
    expect(m.normLayers.every((l) => l.kind === 'batch')).toBe(true);
    m.dispose();
  });

  it("eval ('source') and batch-statistics logits match (ImageNet mean/std inside the model)", () => {
    const m = small(sd);
    m.setNormMode('source');
    const y1 = m.forward(input);
    expectClose('resnet50.logits_eval', y1, ref('logits_eval'));
    m.setNormMode('batch');
    const y2 = m.forward(input);
    expectClose('resnet50.logits_train', y2, ref('logits_train'));
    tf.dispose([y1, y2]);
    m.dispose();
  });

  it('the RobustBench layout (model. prefix, normalize.mean/std buffers) uses the buffers', () => {
    const wrapped: StateDict = new Map([
      ['normalize.mean', { dtype: 'float32', shape: [1, 3, 1, 1], data: Float32Array.from(arch.resnet50_small.wrap_mean) }],
      ['normalize.std', { dtype: 'float32', shape: [1, 3, 1, 1], data: Float32Array.from(arch.resnet50_small.wrap_std) }],
    ]);
    for (const [k, v] of sd) wrapped.set(`model.${k}`, v);
    const a = inferResNet(wrapped);
    expect(a.prefix).toBe('model.');
    expect(a.hasNormalize).toBe(true);
    const m = small(wrapped);
    expect(m.normLayers[0].name).toBe('model.bn1');
    const y = m.forward(input);
    expectClose('resnet50.logits_wrapped', y, ref('logits_wrapped'));
    // stateDict keeps the layout (buffers first) and loads back unchanged
    const state = m.stateDict();
    expect([...state.keys()].slice(0, 3)).toEqual(['normalize.mean', 'normalize.std', 'model.conv1.weight']);
    m.loadStateDict(state);
    const y2 = m.forward(input);
    expect(Array.from(y2.dataSync())).toEqual(Array.from(y.dataSync()));
    tf.dispose([y, y2, ...state.values()]);
    m.dispose();
  });

  it('one Tent step (SGD, momentum 0.9) matches: pre-update logits and every BN affine update', async () => {
    const m = small(sd);
    const opts: AdaptOptions = {
      lr: arch.resnet50_small.tent_lr,
      momentum: arch.resnet50_small.tent_momentum,
      optimizer: 'sgd',
      episodic: false,
      eMargin: 0.4 * Math.log(10),
      dMargin: 0.4,
      fisherAlpha: 1,
      fisherSize: 4,
      matchedUpdate: 'momentum',
    };
    const before = new Map(m.normLayers.map((l) => [l.name, [l.weight.dataSync().slice(), l.bias.dataSync().slice()]]));
    const alg = await ALGORITHMS.tent.create(m, opts, { rng: new Rng(2) });
    const res = alg.step(input);
    expect(res.updated).toBe(true);
    expectClose('resnet50.tent_logits', res.logits, ref('tent_logits'));
    res.logits.dispose();
    for (const l of m.normLayers) {
      const [w0, b0] = before.get(l.name)!;
      for (const [what, v, v0] of [['weight', l.weight, w0], ['bias', l.bias, b0]] as const) {
        const want = ref(`tent.${l.name}.${what}`);
        expectClose(`resnet50.tent_param[${l.name}.${what}]`, v, want);
        // the update itself, relative to its own size (a stricter view than the parameter)
        const got = Array.from(v.dataSync(), (x, i) => x - v0[i]);
        const exp = Array.from(want, (x, i) => x - v0[i]);
        expectClose(`resnet50.tent_update[${l.name}.${what}]`, got, exp, 2e-3);
      }
    }
    alg.dispose();
    m.dispose();
  });

  it('rejects a state dict with a missing layer, naming the key', () => {
    const broken = new Map(sd);
    broken.delete('layer2.1.conv2.weight');
    expect(() => buildModel('resnet50', broken, { rng: new Rng(1) })).toThrow(/missing.*layer2\.1\.conv2\.weight/);
    expect(() => buildModel('resnet50', sd, { rng: new Rng(1), expect: { depth: 50 } })).toThrow(CtaError);
  });
});

describe('ResNet-50 at full size (torchvision resnet50() key names and shapes)', () => {
  it('expects exactly the 267 tensors (320 with num_batches_tracked) of torchvision, 25,557,032 parameters', () => {
    const full = arch.full.resnet50;
    const shapesOnly: StateDict = new Map(full.state_dict.map((k) => [k.name, { dtype: 'float32', shape: k.shape, data: new Float32Array(0) }]));
    const a = inferResNet(shapesOnly);
    expect(a.depth).toBe(50);
    expect(a.stages.map((s) => s.blocks)).toEqual([3, 4, 6, 3]);
    const expected = resnetExpectedKeys(a);
    expect([...expected.entries()].map(([name, shape]) => ({ name, shape }))).toEqual(full.state_dict);
    // parameters = every entry except the BN running buffers
    let params = 0;
    for (const [k, s] of expected) if (!/running_(mean|var)$/.test(k)) params += s.reduce((x, y) => x * y, 1);
    expect(params).toBe(full.num_parameters);
    expect(full.num_entries + 53).toBe(320); // docs/data-formats.md#resnet-50: 320 entries incl. 53 counters
  });

  it('builds from a random state dict and runs one 224×224 forward (source and batch modes)', () => {
    const t0 = performance.now();
    const weights = randomStateDictForKeys(arch.full.resnet50.state_dict, 5);
    const m = buildModel('resnet50', weights, { rng: new Rng(1), expect: { depth: 50 } });
    const tBuild = performance.now() - t0;
    expect(m.normLayers).toHaveLength(53);
    expect(m.numClasses).toBe(1000);
    const x = tf.tensor4d(testImages(2, 224), [2, 224, 224, 3]);
    const t1 = performance.now();
    const y = m.forward(x);
    const tFwd = performance.now() - t1;
    expect(y.shape).toEqual([2, 1000]);
    const v = y.dataSync();
    expect(v.every(Number.isFinite)).toBe(true);
    m.setNormMode('batch');
    const yb = m.forward(x);
    expect(yb.dataSync().every(Number.isFinite)).toBe(true);
    console.log(`resnet50 full size: build ${(tBuild / 1000).toFixed(1)} s, forward of 2 images ${(tFwd / 1000).toFixed(2)} s`);
    tf.dispose([x, y, yb]);
    m.dispose();
  });
});
