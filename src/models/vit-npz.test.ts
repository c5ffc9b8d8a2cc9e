/**
 * Google ViT .npz → timm names (src/models/vit-npz.ts) against the plain-PyTorch reference of
 * scripts/make-npz-fixtures.py: a reduced checkpoint in the real Flax name layout (width 24, 4 heads,
 * depth 2) gives the reference logits to 1e-5; the head count comes from the file; the variant and
 * exit-2 errors naming the key for a missing tensor, a wrong shape, a stray array and pre_logits.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readNpz } from '../io/npz.js';
import { readNpy } from '../io/npy.js';
import { readSafetensors } from '../io/safetensors.js';
import type { RawTensor, StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { buildModel } from './registry.js';
import { expectClose, observed } from './test-helpers.js';
import { inferVit, vitExpectedKeys, type VisionTransformer } from './vit.js';
import { googleVitToTimm, isGoogleVitNpz } from './vit-npz.js';
import { resolveWeights } from './weights-variant.js';
import { errorOf } from '../util/test-errors.js';

const DIR = join(process.cwd(), 'test', 'fixtures', 'npz');
const arch = (JSON.parse(readFileSync(join(DIR, 'expected.json'), 'utf8')) as { arch: { dim: number; heads: number; depth: number; mlp: number; patch: number; img: number; classes: number } }).arch;

let npz: StateDict;
let input: tf.Tensor4D;
let logits: Float32Array | Float64Array;

beforeAll(async () => {
  await initBackend('wasm');
  npz = await readNpz(join(DIR, 'vit_tiny.npz'));
  logits = (await readSafetensors(join(DIR, 'vit_tiny.io.safetensors'))).get('logits')!.data;
  const u8 = await readNpy(join(DIR, 'vit_tiny.input.npy'));
  input = tf.tidy(() => tf.transpose(tf.div(tf.tensor4d(Float32Array.from(u8.data as Uint8Array), u8.shape as [number, number, number, number]), 255), [0, 2, 3, 1])) as tf.Tensor4D;
});

afterAll(() => {
  input?.dispose();
  console.log(`vit-npz max relative errors: ${[...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`).join(' ')}`);
});

const without = (sd: StateDict, key: string): StateDict => new Map([...sd].filter(([k]) => k !== key));
const withTensor = (sd: StateDict, key: string, t: RawTensor): StateDict => new Map([...sd, [key, t]]);

describe('Google ViT .npz', () => {
  it('maps to the timm state_dict, in timm order, with the head count from the attention kernels', () => {
    expect(isGoogleVitNpz(npz)).toBe(true);
    const { sd, info } = googleVitToTimm(npz, 'vit_tiny.npz');
    expect(info).toEqual({ dim: arch.dim, depth: arch.depth, heads: arch.heads, headDim: arch.dim / arch.heads, mlpDim: arch.mlp, patch: arch.patch, numClasses: arch.classes });
    const a = inferVit(sd);
    expect(a).toMatchObject({ dim: arch.dim, depth: arch.depth, mlpDim: arch.mlp, patch: arch.patch, grid: arch.img / arch.patch, numClasses: arch.classes, qkvBias: true });
    expect([...sd.keys()]).toEqual([...vitExpectedKeys(a).keys()]);
    for (const [k, shape] of vitExpectedKeys(a)) expect(sd.get(k)!.shape, k).toEqual(shape);
  });

  it('gives the PyTorch logits of the same weights to 1e-5 (kernels transposed, q/k/v fused, HWIO → OIHW)', () => {
    const w = resolveWeights(npz, 'npz', 'vit_b16', 'vit_tiny.npz');
    expect(w.variant).toBe('npz-google');
    expect(w.heads).toBe(arch.heads);
    const m = buildModel('vit_b16', w.sd, { rng: new Rng(1), expect: { heads: w.heads } }) as VisionTransformer;
    expect(m.config.heads).toBe(arch.heads);
    expect(m.inputNormalisation).toEqual({ mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }); // Google's (x/127.5 − 1)
    const y = m.forward(input);
    expectClose('npz.logits', y, logits, 1e-5);
    y.dispose();
    m.dispose();
    // Width 24 also splits into vit_b16's default 12 heads (of 2 channels), a different network:
    // the head count must come from the file, and ignoring it changes the logits.
    const wrong = buildModel('vit_b16', w.sd, { rng: new Rng(1) });
    const z = wrong.forward(input);
    expect(Math.max(...Array.from(z.dataSync(), (v, i) => Math.abs(v - logits[i])))).toBeGreaterThan(1e-2);
    z.dispose();
    wrong.dispose();
  });

  it('reads training checkpoints with the opt/target/ prefix and ignores the optimiser state', () => {
    const prefixed: StateDict = new Map([...npz].map(([k, t]) => [`opt/target/${k}`, t]));
    prefixed.set('opt/state/step', { dtype: 'int64', shape: [], data: new Float64Array([10]) });
    const { sd } = googleVitToTimm(prefixed, 'ckpt.npz');
    expect(sd).toEqual(googleVitToTimm(npz, 'vit_tiny.npz').sd);
  });

  it('refuses, naming the key: a missing tensor, a wrong shape, a stray array, pre_logits, big_vision names, another --model', () => {
    const dense = 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel';
    expect(errorOf(() => googleVitToTimm(without(npz, dense), 'w.npz'))).toBe(
      `w.npz: Google ViT checkpoint does not match a ViT (width 24, 4 heads, 2 blocks): missing ${dense} [24,48]`,
    );
    const q = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/value/kernel';
    expect(errorOf(() => googleVitToTimm(withTensor(npz, q, { dtype: 'float32', shape: [24, 6, 4], data: new Float32Array(576) }), 'w.npz'))).toBe(
      `w.npz: Google ViT checkpoint does not match a ViT (width 24, 4 heads, 2 blocks): ${q} has shape [24,6,4], expected [24,4,6]`,
    );
    expect(errorOf(() => googleVitToTimm(withTensor(npz, 'Transformer/extra/scale', { dtype: 'float32', shape: [3], data: new Float32Array(3) }), 'w.npz'))).toMatch(
      /: 1 unexpected \(Transformer\/extra\/scale\)$/,
    );
    expect(errorOf(() => googleVitToTimm(without(npz, 'embedding/kernel'), 'w.npz'))).toBe('w.npz: Google ViT checkpoint is missing embedding/kernel (the patch embedding, [p, p, 3, D])');
    const preLogits = withTensor(npz, 'pre_logits/kernel', { dtype: 'float32', shape: [24, 24], data: new Float32Array(576) });
    expect(errorOf(() => googleVitToTimm(preLogits, 'in21k.npz'))).toMatch(/^in21k\.npz: Google ViT checkpoint has a pre_logits layer \(the representation layer of an ImageNet-21k pre-training checkpoint\)/);
    const bigVision: StateDict = new Map([...npz].map(([k, t]) => [`params/${k}`, t]));
    expect(errorOf(() => resolveWeights(bigVision, 'npz', 'vit_b16', 'bv.npz'))).toMatch(/^--weights bv\.npz is a big_vision checkpoint/);
    expect(errorOf(() => resolveWeights(npz, 'npz', 'resnet50', 'w.npz'))).toBe(
      '--weights w.npz is a Google ViT checkpoint (Flax names such as embedding/kernel); it needs --model vit_b16, not resnet50',
    );
  });

  it('names the variant of PyTorch checkpoints by model family and container', () => {
    const sd: StateDict = new Map([['fc.weight', { dtype: 'float32', shape: [1, 1], data: new Float32Array(1) }]]);
    expect(resolveWeights(sd, 'safetensors', 'vit_b16', 'w').variant).toBe('timm-safetensors');
    expect(resolveWeights(sd, 'torch-zip', 'vit_b16', 'w').variant).toBe('timm-torch');
    expect(resolveWeights(sd, 'safetensors', 'resnext29', 'w').variant).toBe('pytorch-safetensors');
    expect(resolveWeights(sd, 'npz', 'resnet50', 'w').variant).toBe('pytorch-npz');
  });
});
