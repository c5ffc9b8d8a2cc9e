/**
 * ViT (timm key names) against the plain-PyTorch reference of scripts/make-imagenet-fixtures.py: a
 * reduced model (width 48, 12 heads, depth 2, patch 8, 32 px) — logits and one Tent step's
 * LayerNorm updates — plus the LayerNorm layer's own gradients, the refusal of BN-only modes, and
 * the full-size ViT-B/16 key list built with random weights and run once at 224 px.
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
import { LayerNormLayer } from './layer-norm.js';
import { VIT_B16_CONFIG, VisionTransformer, attentionCore, gelu, inferVit, vitExpectedKeys } from './vit.js';
import { expectClose, observed } from './test-helpers.js';
import { randomStateDictForKeys, testImages, type KeyShape } from './test-weights.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'imagenet');
const arch = JSON.parse(readFileSync(join(DIR, 'arch.json'), 'utf8')) as {
  vit_small: { config: { dim: number; depth: number; heads: number }; ln_layers: string[]; mean: number[]; std: number[]; ln_eps: number; tent_lr: number; tent_momentum: number };
  full: { vit_b16: { num_parameters: number; num_entries: number; state_dict: KeyShape[] } };
};

let sd: StateDict;
let io: StateDict;
let input: tf.Tensor4D;

beforeAll(async () => {
  await initBackend('wasm');
  sd = await readSafetensors(join(DIR, 'vit_small.safetensors'));
  io = await readSafetensors(join(DIR, 'vit_small.io.safetensors'));
  const u8 = await readNpy(join(DIR, 'vit_small.input.npy'));
  input = tf.tidy(() => tf.transpose(tf.div(tf.tensor4d(Float32Array.from(u8.data as Uint8Array), u8.shape as [number, number, number, number]), 255), [0, 2, 3, 1])) as tf.Tensor4D;
});

afterAll(() => {
  input?.dispose();
  const rows = [...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`);
  console.log(`vit max relative errors: ${rows.join(' ')}`);
});

const ref = (key: string) => io.get(key)!.data;
const tentOptions = (): AdaptOptions => ({
  lr: arch.vit_small.tent_lr,
  momentum: arch.vit_small.tent_momentum,
  optimizer: 'sgd',
  episodic: false,
  eMargin: 0.4 * Math.log(10),
  dMargin: 0.4,
  fisherAlpha: 1,
  fisherSize: 2,
  matchedUpdate: 'momentum',
});

describe('ViT (reduced, timm key names) against PyTorch', () => {
  it('reads the architecture off the shapes; the model config supplies heads, mean/std and ε', () => {
    const a = inferVit(sd);
    expect(a).toMatchObject({ dim: 48, depth: 2, mlpDim: 96, patch: 8, grid: 4, numClasses: 10, qkvBias: true });
    expect([...vitExpectedKeys(a).keys()]).toEqual([...sd.keys()]);
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) }) as VisionTransformer;
    expect(m.inputShape).toEqual([32, 32, 3]);
    expect(m.config.heads).toBe(arch.vit_small.config.heads);
    expect(m.config.inputNorm).toEqual({ mean: arch.vit_small.mean, std: arch.vit_small.std });
    expect(m.config.eps).toBe(arch.vit_small.ln_eps);
    expect(m.normLayers.map((l) => l.name)).toEqual(arch.vit_small.ln_layers);
    expect(m.normLayers.every((l) => l.kind === 'layer' && l.runningMean === null)).toBe(true);
    m.dispose();
  });

  it('logits match', () => {
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
    const y = m.forward(input);
    expectClose('vit.logits', y, ref('logits'));
    y.dispose();
    m.dispose();
  });

  it('one Tent step (SGD, momentum 0.9) updates every LayerNorm as PyTorch does', async () => {
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
    const before = new Map(m.normLayers.map((l) => [l.name, [l.weight.dataSync().slice(), l.bias.dataSync().slice()]]));
    const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
    expect(m.trainableParams()).toHaveLength(2 * (2 * arch.vit_small.config.depth + 1));
    const res = alg.step(input);
    expect(res.updated).toBe(true);
    expectClose('vit.tent_logits', res.logits, ref('logits'));
    res.logits.dispose();
    for (const l of m.normLayers) {
      const [w0, b0] = before.get(l.name)!;
      for (const [what, v, v0] of [['weight', l.weight, w0], ['bias', l.bias, b0]] as const) {
        const want = ref(`tent.${l.name}.${what}`);
        expectClose(`vit.tent_param[${l.name}.${what}]`, v, want);
        const got = Array.from(v.dataSync(), (x, i) => x - v0[i]);
        const exp = Array.from(want, (x, i) => x - v0[i]);
        expectClose(`vit.tent_update[${l.name}.${what}]`, got, exp, 1e-3);
      }
    }
    // A record per LayerNorm for the runner's cache accounting (input-sized, cached while adapting).
    expect(m.normLayers.every((l) => l.last !== null && l.last.cached && l.last.forwardBytes > 0)).toBe(true);
    alg.dispose();
    m.dispose();
  });

  it('ETA / EATA run on LayerNorms (Fisher in batch mode); source predicts without touching them', async () => {
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
    const fisherData = async function* () {
      yield input.clone();
    };
    const eata = await ALGORITHMS.eata.create(m, { ...tentOptions(), eMargin: 10 }, { rng: new Rng(2), fisherData });
    const r = eata.step(input);
    expect(r.metrics?.reliable).toBe(2);
    r.logits.dispose();
    eata.dispose();
    m.dispose();
  });

  it('forward and Tent steps leave no tensor behind (lean reshapes/adds, heap unstack)', async () => {
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
    const start = tf.memory().numTensors;
    tf.dispose(m.forward(input));
    expect(tf.memory().numTensors).toBe(start);
    const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
    tf.dispose(alg.step(input).logits); // builds the optimizer slots and the transposed weights
    const after1 = tf.memory().numTensors;
    for (let i = 0; i < 3; i++) tf.dispose(alg.step(input).logits);
    expect(tf.memory().numTensors).toBe(after1);
    alg.dispose();
    m.dispose();
  });

  it('refuses the BN-only modes with a clear message', () => {
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
    const mecta = { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl' as const, distScale: 1, betaThre: 0, pruneQ: 0 };
    expect(() => m.setNormMode('mecta', mecta)).toThrow(CtaError);
    expect(() => m.setNormMode('mecta', mecta)).toThrow(/no BatchNorm layers/);
    expect(() => m.setNormMode('train-update')).toThrow(/LayerNorm/);
    m.setNormMode('batch');
    expect(m.normMode).toBe('batch');
    m.dispose();
  });

  it('stateDict round-trips and a wrong width for 12 heads is refused', () => {
    const m = buildModel('vit_b16', sd, { rng: new Rng(1) });
    const state = m.stateDict();
    expect([...state.keys()]).toEqual([...sd.keys()]);
    m.loadStateDict(state);
    const y = m.forward(input);
    expectClose('vit.logits_reloaded', y, ref('logits'));
    tf.dispose([y, ...state.values()]);
    m.dispose();
    const odd = randomStateDictForKeys(vitKeyList({ dim: 40, depth: 1, mlp: 80, patch: 8, grid: 2, classes: 3 }));
    expect(() => buildModel('vit_b16', odd, { rng: new Rng(1) })).toThrow(/not divisible by the 12 heads/);
  });
});

describe('LayerNorm layer and GELU', () => {
  it('custom gradients equal autodiff of the plain formulas', () => {
    const x = tf.randomNormal([3, 5, 8], 0.3, 1.5, 'float32', 7);
    const g = tf.randomNormal([3, 5, 8], 0, 1, 'float32', 8);
    const layer = new LayerNormLayer('ln', { weight: tf.randomNormal([8], 1, 0.2, 'float32', 9) as tf.Tensor1D, bias: tf.randomNormal([8], 0, 0.2, 'float32', 10) as tf.Tensor1D }, 1e-5);
    const plain = (xi: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => {
      const { mean, variance } = tf.moments(xi, -1, true);
      return tf.add(tf.mul(tf.div(tf.sub(xi, mean), tf.sqrt(tf.add(variance, 1e-5))), w), b);
    };
    const f1 = tf.grads((xi: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(layer.apply(xi), g)));
    const ours = tf.engine().gradients(() => tf.sum(tf.mul(layer.apply(x), g)) as tf.Scalar, [layer.weight, layer.bias]);
    const f2 = tf.grads((xi: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(plain(xi, w, b), g)));
    const [dx2, dw2, db2] = f2([x, layer.weight, layer.bias]);
    const [dx1] = f1([x, layer.weight, layer.bias]);
    expectClose('layernorm.dx', dx1, dx2, 1e-5);
    expectClose('layernorm.dgamma', ours.grads[0], dw2, 1e-5);
    expectClose('layernorm.dbeta', ours.grads[1], db2, 1e-5);
    expectClose('layernorm.y', layer.apply(x), plain(x, layer.weight, layer.bias), 1e-5);
    const gx = tf.grad((xi: tf.Tensor) => tf.sum(tf.mul(gelu(xi), g)))(x);
    const gRef = tf.grad((xi: tf.Tensor) => tf.sum(tf.mul(tf.mul(tf.mul(xi, 0.5), tf.add(tf.erf(tf.mul(xi, Math.SQRT1_2)), 1)), g)))(x);
    expectClose('gelu.dx', gx, gRef, 1e-5);
    layer.dispose();
  });

  it('the attention core and its hand-written backward equal autodiff of softmax(q·s·kᵀ)·v', () => {
    const [q, k, v] = [11, 12, 13].map((seed) => tf.randomNormal([3, 5, 4], 0, 1, 'float32', seed) as tf.Tensor3D);
    const g = tf.randomNormal([3, 5, 4], 0, 1, 'float32', 14);
    const plain = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.matMul(tf.softmax(tf.matMul(tf.mul(a, 0.5), b, false, true)), c);
    const ours = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(attentionCore(a as tf.Tensor3D, b as tf.Tensor3D, c as tf.Tensor3D, 0.5), g)))([q, k, v]);
    const ref = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(plain(a, b, c), g)))([q, k, v]);
    expectClose('attention.y', attentionCore(q, k, v, 0.5), plain(q, k, v), 1e-5);
    ['dq', 'dk', 'dv'].forEach((name, i) => expectClose(`attention.${name}`, ours[i], ref[i], 1e-5));
  });
});

interface VitDims {
  dim: number;
  depth: number;
  mlp: number;
  patch: number;
  grid: number;
  classes: number;
}

/** timm key names and shapes for a ViT of the given dimensions. */
export function vitKeyList(d: VitDims): KeyShape[] {
  const keys = vitExpectedKeys({ dim: d.dim, depth: d.depth, mlpDim: d.mlp, patch: d.patch, grid: d.grid, numClasses: d.classes, qkvBias: true });
  return [...keys].map(([name, shape]) => ({ name, shape }));
}

describe('ViT-B/16 at full size (timm vit_base_patch16_224 key names and shapes)', () => {
  it('expects exactly the 152 tensors and 86,567,656 parameters', () => {
    const full = arch.full.vit_b16;
    const shapesOnly: StateDict = new Map(full.state_dict.map((k) => [k.name, { dtype: 'float32', shape: k.shape, data: new Float32Array(0) }]));
    const a = inferVit(shapesOnly);
    expect(a).toMatchObject({ dim: 768, depth: 12, mlpDim: 3072, patch: 16, grid: 14, numClasses: 1000 });
    const expected = vitExpectedKeys(a);
    expect([...expected.entries()].map(([name, shape]) => ({ name, shape }))).toEqual(full.state_dict);
    let params = 0;
    for (const s of expected.values()) params += s.reduce((x, y) => x * y, 1);
    expect(params).toBe(full.num_parameters);
    expect(full.num_entries).toBe(152);
    expect(VIT_B16_CONFIG.heads).toBe(12);
  });

  it('builds from a random state dict: 25 LayerNorms (38,400 affine parameters), one 224×224 forward', () => {
    const t0 = performance.now();
    const weights = randomStateDictForKeys(arch.full.vit_b16.state_dict, 6);
    const m = buildModel('vit_b16', weights, { rng: new Rng(1), expect: { depth: 12 } });
    weights.clear();
    const tBuild = performance.now() - t0;
    expect(m.inputShape).toEqual([224, 224, 3]);
    expect(m.normLayers).toHaveLength(25);
    expect(m.trainableParams().reduce((a, p) => a + p.size, 0)).toBe(38_400);
    const x = tf.tensor4d(testImages(1, 224), [1, 224, 224, 3]);
    const t1 = performance.now();
    const y = m.forward(x);
    const tFwd = performance.now() - t1;
    expect(y.shape).toEqual([1, 1000]);
    expect(y.dataSync().every(Number.isFinite)).toBe(true);
    console.log(`vit_b16 full size: build ${(tBuild / 1000).toFixed(1)} s, forward of 1 image ${(tFwd / 1000).toFixed(2)} s`);
    tf.dispose([x, y]);
    m.dispose();
  });
});
