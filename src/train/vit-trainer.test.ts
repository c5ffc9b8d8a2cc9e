/**
 * ViT source training (cta-train --model vit_b16): timm-style initialisation, the warmup + cosine
 * schedule and weight-decay groups, that a few AdamW steps on a tiny ViT reduce the loss without
 * leaking tensors, and that the written safetensors (with its head count / mean / std metadata)
 * loads through loadWeightFile → resolveWeights → buildModel('vit_b16') and gives the in-memory
 * model's logits.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { loadWeightFile } from '../io/state-dict.js';
import { buildModel } from '../models/registry.js';
import { VIT_METADATA, resolveWeights } from '../models/weights-variant.js';
import { VisionTransformer, inferVit, vitExpectedKeys } from '../models/vit.js';
import { AdamW } from '../algorithms/optim.js';
import { expectClose } from '../models/test-helpers.js';
import { makeBatch, type ImageSet } from './augment.js';
import { evaluate } from './trainer.js';
import { initVit, truncNormal, vitArchOf, vitDecays, type VitTrainConfig } from './vit-init.js';
import { DEFAULT_VIT_TRAIN, buildTrainableVit, saveVit, trainVit, vitParamGroups, vitTrainStep, warmupCosineLr } from './vit-trainer.js';
import { toySet } from './toy-set.js';

/** dim 24 with 2 heads: vit_b16's default 12 heads would also divide 24, so a lost head count changes the logits. */
const TINY: VitTrainConfig = { dim: 24, depth: 2, heads: 2, mlpDim: 48, patch: 8, imageSize: 32, numClasses: 10 };
let dir: string;

beforeAll(async () => {
  await initBackend('wasm');
  dir = mkdtempSync(join(tmpdir(), 'cta-train-vit-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));


const std = (a: Float32Array | Float64Array) => {
  let s = 0;
  let q = 0;
  for (const v of a) {
    s += v;
    q += v * v;
  }
  return Math.sqrt(q / a.length - (s / a.length) ** 2);
};

describe('init', () => {
  it('timm key names and shapes, trunc-normal(0.02) linears, zero biases, LayerNorm 1/0, tiny cls_token', () => {
    const sd = initVit({ ...TINY, dim: 64, mlpDim: 256 }, new Rng(3));
    const arch = inferVit(sd);
    expect(arch).toEqual({ dim: 64, depth: 2, mlpDim: 256, patch: 8, grid: 4, numClasses: 10, qkvBias: true });
    expect([...sd.keys()]).toEqual([...vitExpectedKeys(arch).keys()]);
    for (const [k, t] of sd) expect(t.shape, k).toEqual(vitExpectedKeys(arch).get(k));
    const data = (k: string) => sd.get(k)!.data as Float32Array;
    for (const k of ['blocks.0.attn.qkv.weight', 'blocks.1.mlp.fc1.weight', 'pos_embed']) {
      expect(std(data(k)), k).toBeGreaterThan(0.0185);
      expect(std(data(k)), k).toBeLessThan(0.0215);
    }
    expect(Array.from(data('blocks.0.attn.qkv.bias')).every((v) => v === 0)).toBe(true);
    expect(Array.from(data('head.bias')).every((v) => v === 0)).toBe(true);
    expect(Array.from(data('blocks.1.norm2.weight')).every((v) => v === 1)).toBe(true);
    expect(Array.from(data('norm.bias')).every((v) => v === 0)).toBe(true);
    expect(Math.max(...Array.from(data('cls_token'), Math.abs))).toBeLessThan(1e-5);
    // PyTorch's Conv2d default: U(±1/√(3·8·8))
    const bound = 1 / Math.sqrt(3 * 64);
    const w = data('patch_embed.proj.weight');
    expect(Math.max(...Array.from(w, Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...Array.from(w, Math.abs))).toBeGreaterThan(0.9 * bound);
    // deterministic in the seed
    const again = initVit({ ...TINY, dim: 64, mlpDim: 256 }, new Rng(3));
    expect(Array.from(again.get('blocks.1.attn.proj.weight')!.data)).toEqual(Array.from(data('blocks.1.attn.proj.weight')));
  });

  it('trunc-normal respects its bounds; shape errors name the flag', () => {
    const t = truncNormal(new Rng(1), 5000, 1, -0.5, 0.5);
    expect(Math.max(...Array.from(t, Math.abs))).toBeLessThanOrEqual(0.5);
    expect(() => vitArchOf({ ...TINY, heads: 5 })).toThrow(/--vit-heads 5: does not divide --vit-dim 24/);
    expect(() => vitArchOf({ ...TINY, patch: 5 })).toThrow(/--patch 5: does not divide the 32-pixel image side/);
    expect(() => vitArchOf({ ...TINY, depth: 0 })).toThrow(/--vit-depth: expected an integer ≥ 1, got 0/);
  });
});

describe('schedule and parameter groups', () => {
  it('linear warmup to the peak, then cosine to 0', () => {
    expect(warmupCosineLr(1e-3, 0, 100, 10)).toBeCloseTo(1e-4, 12);
    expect(warmupCosineLr(1e-3, 9, 100, 10)).toBeCloseTo(1e-3, 12);
    expect(warmupCosineLr(1e-3, 10, 100, 10)).toBeCloseTo(1e-3, 12);
    expect(warmupCosineLr(1e-3, 55, 100, 10)).toBeCloseTo(5e-4, 12);
    expect(warmupCosineLr(1e-3, 100, 100, 10)).toBeCloseTo(0, 12);
    expect(warmupCosineLr(1e-3, 0, 100, 0)).toBeCloseTo(1e-3, 12);
  });

  it('decay on matrices only: not biases, LayerNorms, pos_embed, cls_token; every parameter trains', () => {
    expect(vitDecays('blocks.0.attn.qkv.weight', [72, 24])).toBe(true);
    expect(vitDecays('patch_embed.proj.weight', [24, 3, 8, 8])).toBe(true);
    expect(vitDecays('blocks.0.attn.qkv.bias', [72])).toBe(false);
    expect(vitDecays('norm.weight', [24])).toBe(false);
    expect(vitDecays('pos_embed', [1, 17, 24])).toBe(false);
    expect(vitDecays('cls_token', [1, 1, 24])).toBe(false);
    const before = tf.memory().numTensors;
    const model = buildTrainableVit(initVit(TINY, new Rng(1)), TINY.heads);
    const { groups, count, decayed } = vitParamGroups(model, 0.05);
    const total = [...vitExpectedKeys(model.architecture).values()].reduce((s, sh) => s + sh.reduce((a, b) => a * b, 1), 0);
    expect(count).toBe(total);
    // 2 blocks × (qkv 72·24 + proj 24·24 + fc1 48·24 + fc2 24·48) + patch 24·192 + head 10·24
    expect(decayed).toBe(2 * (72 * 24 + 24 * 24 + 48 * 24 + 24 * 48) + 24 * 192 + 10 * 24);
    expect(groups.map((g) => g.weightDecay)).toEqual([0.05, 0]);
    expect(model.parameters().every((p) => p.requiresGrad && p.variable !== null)).toBe(true);
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });
});

describe('training', () => {
  it('a few AdamW steps on a tiny set reduce the loss and leak no tensor', () => {
    const set = toySet(20, 5);
    const model = buildTrainableVit(initVit(TINY, new Rng(2)), TINY.heads);
    const { groups } = vitParamGroups(model, 0.05);
    const opt = new AdamW(groups, { lr: 1e-2 });
    const buf = new Float32Array(set.n * 32 * 32 * 3);
    makeBatch(set, Int32Array.from({ length: set.n }, (_, i) => i), buf, null, null);
    const x = tf.tensor4d(buf, [set.n, 32, 32, 3]);
    const y = tf.tensor1d(set.labels, 'int32');
    const first = vitTrainStep(model, opt, x, y).loss; // creates the optimizer state
    const before = tf.memory().numTensors;
    let loss = first;
    for (let i = 0; i < 11; i++) loss = vitTrainStep(model, opt, x, y).loss;
    expect(tf.memory().numTensors).toBe(before);
    expect(first).toBeGreaterThan(2);
    expect(loss).toBeLessThan(0.8 * first);
    x.dispose();
    y.dispose();
    opt.dispose();
    model.dispose();
  });

  it('trainVit is deterministic in the seed; the saved file rebuilds through the registry with its heads and logits', async () => {
    const set = toySet(48, 7);
    const opts = { ...DEFAULT_VIT_TRAIN, epochs: 2, batchSize: 16, lr: 2e-3, warmupSteps: 2, augment: { pad: 2, flip: true }, seed: 4, logEvery: 0 };
    const run = async () => {
      const model = buildTrainableVit(initVit(TINY, new Rng(opts.seed)), TINY.heads);
      const recs = await trainVit(model, set, set, opts);
      return { model, recs };
    };
    const before = tf.memory().numTensors;
    const a = await run();
    const b = await run();
    expect(a.recs.map((r) => r.trainLoss)).toEqual(b.recs.map((r) => r.trainLoss));
    expect(a.recs[1].steps).toBe(6);
    b.model.dispose();

    const path = join(dir, 'vit.safetensors');
    await saveVit(path, a.model, { note: 'test' });
    const file = await loadWeightFile(path);
    expect(file.format).toBe('safetensors');
    expect(file.metadata).toMatchObject({ note: 'test', [VIT_METADATA.heads]: '2', [VIT_METADATA.mean]: '0.5,0.5,0.5', [VIT_METADATA.std]: '0.5,0.5,0.5' });
    const resolved = resolveWeights(file.sd, file.format, 'vit_b16', path, file.metadata);
    expect(resolved.heads).toBe(2);
    expect(resolved.inputNorm).toEqual({ mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] });
    const loaded = buildModel('vit_b16', resolved.sd, { rng: new Rng(0), expect: { heads: resolved.heads }, inputNorm: resolved.inputNorm });
    const mine = evaluate(a.model, set, 16, true);
    const theirs = evaluate(loaded, set, 16, true);
    expectClose('logits', theirs.logits!, mine.logits!, 1e-5);
    expect(theirs.accuracy).toBe(mine.accuracy);
    expect((loaded as VisionTransformer).config.heads).toBe(2);
    // Without the metadata vit_b16's 12 heads would be used: other logits.
    const twelve = buildModel('vit_b16', resolved.sd, { rng: new Rng(0) });
    expect((twelve as VisionTransformer).config.heads).toBe(12);
    const wrong = evaluate(twelve, set, 16, true).logits!;
    expect(Math.max(...Array.from(wrong, (v, i) => Math.abs(v - mine.logits![i])))).toBeGreaterThan(1e-5);
    for (const m of [a.model, loaded, twelve]) m.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('bad metadata is one error naming the file and key', () => {
    const sd = initVit(TINY, new Rng(1));
    const meta = (m: Record<string, string>) => () => resolveWeights(sd, 'safetensors', 'vit_b16', 'w.safetensors', m);
    expect(meta({ [VIT_METADATA.heads]: 'two' })).toThrow(/^--weights w\.safetensors: metadata vit_heads 'two' is not a positive integer$/);
    expect(meta({ [VIT_METADATA.mean]: '0.5,0.5' , [VIT_METADATA.std]: '1,1,1' })).toThrow(/metadata input_mean '0\.5,0\.5' is not 3 comma-separated numbers/);
    expect(meta({ [VIT_METADATA.mean]: '0,0,0', [VIT_METADATA.std]: '1,0,1' })).toThrow(/input_std '1,0,1' is not 3 comma-separated positive numbers/);
    expect(meta({ [VIT_METADATA.mean]: '0,0,0' })).toThrow(/metadata has input_mean without input_std/);
    // CNNs ignore ViT metadata; a plain timm file has none
    expect(resolveWeights(sd, 'safetensors', 'vit_b16', 'w', {}).heads).toBeUndefined();
  });
});
