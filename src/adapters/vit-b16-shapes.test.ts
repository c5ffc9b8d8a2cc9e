/**
 * Every --adapt-params kind built with its default options on the FULL-size timm
 * vit_base_patch16_224 (width 768, depth 12, MLP 3072, 224 px / patch 16), without a forward: the
 * injection sites the model lists, each kind's trainable-parameter count against the count stated
 * from docs/adapters.md's shapes, sample names and shapes, and no tensor left behind. The other
 * adapter tests use the reduced ViT (width 48), where some defaults (KAdaptation's 32 Kronecker
 * factors) do not even fit; the forward + backward at this size is scripts/vit-b16-adapt-params.mjs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { defaultConfig } from '../config/schema.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { isAdapterHost, type LinearSite } from '../models/injection.js';
import { vitExpectedKeys } from '../models/vit.js';
import { cottaAugment } from '../algorithms/augment.js';
import { attachAdapters, trainableCount } from './attach.js';
import { ADAPT_PARAMS } from './registry.js';

const D = 768;
const L = 12;
const MLP = 3072;

/**
 * Trainable parameters of each kind with its defaults (docs/adapters.md#modules), restated from the
 * documented shapes at width D, depth L.
 */
const EXPECTED: Record<(typeof ADAPT_PARAMS)[number], number> = {
  // norm1, norm2 per block and the final norm: weight + bias
  norm: 2 * D * (2 * L + 1),
  // rank 8: lora_A [8, D], lora_B [D, 8] for the q and v slices of every block's qkv
  lora: L * 2 * 8 * (D + D),
  // 32 factors, rank 1: W_left [32, D/32, 1] + W_right [32, 1, D/32] per slice; rule_left [32, 32, 1] + rule_right [32, 1, 32] per target
  kadaptation: L * 2 * (D + D) + 2 * (2 * 32 * 32),
  // m = 64: down [64, D] + [64], up [D, 64] + [D], after attention and after the MLP
  adapter: L * 2 * (D * 64 + 64 + 64 * D + D),
  // 4 factors, rank 1, m = 24 (D/32 rounded up to a multiple of 4): shared phm_rule [4, 4, 4]; down W_left [4, D/4, 1], W_right [4, 1, 6], bias [24]; up W_left [4, 6, 1], W_right [4, 1, D/4], bias [D]
  compacter: 4 ** 3 + L * 2 * (D + 24 + 24 + 24 + D + D),
  // ranks 1 and 128 beside attn.qkv (D → 3D) and attn.proj (D → D)
  vida: L * ((1 + 128) * (D + 3 * D) + (1 + 128) * (D + D)),
  // VPT-shallow, 5 tokens
  prompt: 5 * D,
};

/** Some names and shapes per kind (PyTorch layouts, docs/adapters.md). */
const SAMPLES: Record<string, [string, number[]][]> = {
  lora: [['blocks.11.attn.qkv.lora_A.q.weight', [8, D]], ['blocks.11.attn.qkv.lora_B.v.weight', [D, 8]]],
  adapter: [['blocks.11.mlp.adapter.down.weight', [64, D]], ['blocks.11.mlp.adapter.up.weight', [D, 64]]],
  vida: [['blocks.11.attn.qkv.vida_down2.weight', [128, D]], ['blocks.11.attn.qkv.vida_up2.weight', [3 * D, 128]], ['blocks.11.attn.proj.vida_up.weight', [D, 1]]],
  prompt: [['prompt.embeddings', [1, 5, D]]],
};

let sd: StateDict;
let model: Classifier;
let before = 0;

beforeAll(async () => {
  await initBackend('wasm');
  before = tf.memory().numTensors;
  // Zeros at timm's shapes: only the shapes matter here (no forward), and zeros are cheap to make.
  sd = new Map();
  for (const [key, shape] of vitExpectedKeys({ dim: D, depth: L, mlpDim: MLP, patch: 16, grid: 14, numClasses: 1000, qkvBias: true })) {
    sd.set(key, { dtype: 'float32', shape, data: new Float32Array(shape.reduce((a, d) => a * d, 1)) });
  }
  model = buildModel('vit_b16', sd, { rng: new Rng(1) });
});

afterAll(() => {
  model?.dispose();
});

describe('--adapt-params on the full-size ViT-B/16 (shapes only)', () => {
  it('the model lists timm ViT-B/16 injection sites: 12 blocks of tokens, qkv, proj, attn, fc1, fc2, mlp', () => {
    expect(isAdapterHost(model)).toBe(true);
    if (!isAdapterHost(model)) return;
    const sites = model.adapterSites();
    expect(sites).toHaveLength(7 * L);
    const lin = sites.filter((s): s is LinearSite => s.kind === 'linear');
    const shape = (role: string) => [...new Set(lin.filter((s) => s.role === role).map((s) => `${s.inFeatures}x${s.outFeatures}`))];
    expect(shape('qkv')).toEqual([`${D}x${3 * D}`]);
    expect(shape('proj')).toEqual([`${D}x${D}`]);
    expect(shape('fc1')).toEqual([`${D}x${MLP}`]);
    expect(shape('fc2')).toEqual([`${MLP}x${D}`]);
    const tokens = sites.filter((s) => s.kind === 'tokens');
    expect(tokens.every((s) => s.kind === 'tokens' && s.tokens === 14 * 14 + 1 && s.dim === D)).toBe(true);
  });

  for (const kind of ADAPT_PARAMS) {
    it(`${kind}: ${EXPECTED[kind].toLocaleString('en-US')} trainable parameters with the defaults`, () => {
      const cfg = defaultConfig() as unknown as Record<string, unknown>;
      const rng = new Rng(4);
      const set = attachAdapters(model, kind, cfg, { seed: 3, augment: (x) => cottaAugment(x, rng) });
      try {
        if (kind === 'norm') {
          expect(set).toBeNull();
          const affine = model.parameters().filter((p) => p.kind === 'norm');
          expect(affine.reduce((a, p) => a + p.shape.reduce((x, d) => x * d, 1), 0)).toBe(EXPECTED.norm);
          return;
        }
        expect(set).not.toBeNull();
        const params = set!.parameters();
        expect(params.every((p) => p.kind === 'adapter')).toBe(true);
        expect(params.reduce((a, p) => a + p.shape.reduce((x, d) => x * d, 1), 0)).toBe(EXPECTED[kind]);
        // what the runner reports as trainable_params once only the modules train
        model.requiresGrad((p) => p.kind === 'adapter');
        expect(trainableCount(model)).toBe(EXPECTED[kind]);
        const shapes = new Map(params.map((p) => [p.name, p.shape]));
        for (const [name, shape] of SAMPLES[kind] ?? []) expect(shapes.get(name), name).toEqual(shape);
        // every block gets its modules (prompt: VPT-shallow, before block 0 only)
        if (kind !== 'prompt' && kind !== 'kadaptation' && kind !== 'compacter') {
          for (let b = 0; b < L; b++) expect(params.some((p) => p.name.startsWith(`blocks.${b}.`)), `block ${b}`).toBe(true);
        }
      } finally {
        if (isAdapterHost(model)) model.setAdapters(null);
        model.requiresGrad(() => false);
      }
    });
  }

  it('leaves no tensor behind once the model is disposed', () => {
    model.dispose();
    expect(tf.memory().numTensors).toBe(before);
    model = undefined as unknown as Classifier;
  });
});
