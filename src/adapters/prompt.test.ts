/**
 * Prompts (src/adapters/prompt.ts) on the reduced timm ViT against the float64 PyTorch re-statement
 * of VPT and L2P (scripts/make-prompt-fixtures.py, fixtures_lib/prompt_ref.py): logits, L2P's query /
 * selection / pull term, one Tent step's prompt update; --prompt-tokens 0 is the base model; the
 * classifier reads the class token; seeded initialisation; option errors; clone; no tensor leak
 * over 20 adaptation steps.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import { readNpy } from '../io/npy.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from '../algorithms/registry.js';
import type { AdaptOptions } from '../algorithms/types.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { isAdapterHost } from '../models/injection.js';
import { expectClose, observed } from '../models/test-helpers.js';
import { attachAdapters } from './attach.js';
import { selectPrompts } from './prompt.js';
import { PassCounter } from '../runner/pass-count.js';
import { errorOf } from '../util/test-errors.js';

const FIX = join(process.cwd(), 'test', 'fixtures');
const cfgJson = JSON.parse(readFileSync(join(FIX, 'prompt', 'config.json'), 'utf8')) as { tokens: number; pool: number; lp: number; top_n: number; lr: number; momentum: number; pull: number };

let sd: StateDict;
let ref: StateDict;
let input: tf.Tensor4D;

beforeAll(async () => {
  await initBackend('wasm');
  sd = await readSafetensors(join(FIX, 'imagenet', 'vit_small.safetensors'));
  ref = await readSafetensors(join(FIX, 'prompt', 'prompts.safetensors'));
  const u8 = await readNpy(join(FIX, 'prompt', 'input.npy'));
  input = tf.tidy(() => tf.transpose(tf.div(tf.tensor4d(Float32Array.from(u8.data as Uint8Array), u8.shape as [number, number, number, number]), 255), [0, 2, 3, 1])) as tf.Tensor4D;
});

afterAll(() => {
  input?.dispose();
  console.log(`prompt max relative errors: ${[...observed.entries()].map(([k, v]) => `${k}=${v.toExponential(2)}`).join(' ')}`);
});

const data = (key: string) => {
  const t = ref.get(key);
  if (!t) throw new Error(`fixture key ${key} missing`);
  return t;
};

/** The fixture's initial values of variant `v` (names without the `<v>.init.` prefix). */
function initOf(v: string): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  const prefix = `${v}.init.`;
  for (const [k, t] of ref) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), tf.tensor(Float32Array.from(t.data), t.shape));
  return out;
}

const VARIANTS = {
  vpt_shallow: { promptTokens: cfgJson.tokens, promptDepth: 'shallow', promptPool: 0 },
  vpt_deep: { promptTokens: cfgJson.tokens, promptDepth: 'deep', promptPool: 0 },
  l2p: { promptTokens: cfgJson.lp, promptDepth: 'shallow', promptPool: cfgJson.pool, promptTopN: cfgJson.top_n, promptBatchwise: true, promptPullCoeff: cfgJson.pull },
  l2p_sample: { promptTokens: cfgJson.lp, promptDepth: 'shallow', promptPool: cfgJson.pool, promptTopN: cfgJson.top_n, promptBatchwise: false, promptPullCoeff: cfgJson.pull },
} as const;
type Variant = keyof typeof VARIANTS;

function model(): Classifier {
  return buildModel('vit_b16', sd, { rng: new Rng(1) });
}

/** A ViT with variant `v`'s prompts, from the fixture's initial values (or drawn from `seed`). */
function prompted(v: Variant, opts: { seed?: number; fixtureInit?: boolean } = {}): Classifier {
  const m = model();
  const init = opts.fixtureInit === false ? undefined : initOf(v === 'l2p_sample' ? 'l2p' : v);
  try {
    attachAdapters(m, 'prompt', VARIANTS[v], { seed: opts.seed ?? 5, init });
  } finally {
    if (init) tf.dispose([...init.values()]);
  }
  return m;
}

const tentOptions = (): AdaptOptions => ({ lr: cfgJson.lr, momentum: cfgJson.momentum, optimizer: 'sgd', episodic: false, matchedUpdate: 'momentum' });

function adapterState(m: Classifier): Map<string, tf.Tensor> {
  if (!isAdapterHost(m) || !m.adapters) throw new Error('no adapters');
  return m.adapters.saveState();
}

describe('prompts on the ViT (VPT, L2P) against PyTorch', () => {
  it('--prompt-tokens 0 is the base model: same logits, no parameters', () => {
    const base = model();
    const m = model();
    attachAdapters(m, 'prompt', { promptTokens: 0 }, { seed: 1 });
    expect(m.parameters().filter((p) => p.kind === 'adapter')).toHaveLength(0);
    const a = base.forward(input);
    const b = m.forward(input);
    expect(Array.from(b.dataSync())).toEqual(Array.from(a.dataSync()));
    tf.dispose([a, b]);
    base.dispose();
    m.dispose();
  });

  for (const v of ['vpt_shallow', 'vpt_deep', 'l2p', 'l2p_sample'] as const) {
    it(`${v}: logits match`, () => {
      const m = prompted(v);
      const y = m.forward(input);
      expectClose(`${v}.logits`, y, data(`${v}.logits`).data, 1e-5);
      y.dispose();
      m.dispose();
    });
  }

  it('the classifier reads the class token: permuting the prompt tokens leaves the logits unchanged', () => {
    const init = initOf('vpt_shallow');
    const e = init.get('prompt.embeddings')!;
    const reversed = tf.reverse(e, 1);
    const m = model();
    attachAdapters(m, 'prompt', VARIANTS.vpt_shallow, { seed: 1, init: new Map([['prompt.embeddings', reversed]]) });
    const y = m.forward(input);
    // order-invariant only if the head reads the class token (prompts carry no position embedding)
    expectClose('vpt.permuted', y, data('vpt_shallow.logits').data, 1e-5);
    tf.dispose([y, reversed, ...init.values()]);
    m.dispose();
  });

  it('L2P: query = the frozen model’s class-token feature, batchwise majority selection, pull term', () => {
    const m = prompted('l2p');
    const base = model();
    const q = base.forwardFeatures(input);
    expectClose('l2p.query', q.features, data('l2p.query').data, 1e-5);
    tf.dispose([q.features, q.logits]);
    base.dispose();
    const y = m.forward(input);
    y.dispose();
    const set = (m as Classifier & { adapters: { lastSelection: { ids: number[][] } | null; auxLoss(): tf.Scalar | null } }).adapters;
    const want = Array.from(data('l2p.idx').data);
    expect(set.lastSelection!.ids.flat()).toEqual(want);
    const perSample = Array.from(data('l2p_sample.idx').data);
    expect(perSample).not.toEqual(want); // the fixture's samples disagree, so the majority vote matters
    expect(set.auxLoss()!.dataSync()[0]).toBeCloseTo(-cfgJson.pull * data('l2p.reduce_sim').data[0], 5);
    m.dispose();
  });

  it('selectPrompts: top-N per sample with ties to the lower id; batchwise = the N most chosen', () => {
    // 3 samples, pool 4: sample rows pick {1,2}, {1,3}, {1,2}; ties in similarity go to the lower id.
    const sim = [0.1, 0.9, 0.5, 0.2, 0.0, 0.8, 0.1, 0.7, 0.3, 0.6, 0.6, 0.6];
    expect(selectPrompts(sim, 3, 4, 2, false)).toEqual([[1, 2], [1, 3], [1, 2]]);
    expect(selectPrompts(sim, 3, 4, 2, true)).toEqual([[1, 2], [1, 2], [1, 2]]);
  });

  for (const v of ['vpt_shallow', 'vpt_deep', 'l2p', 'l2p_sample'] as const) {
    it(`${v}: one Tent step moves the prompts as PyTorch does; the backbone stays frozen`, async () => {
      const m = prompted(v);
      const before = adapterState(m);
      const norms0 = m.normLayers.map((l) => l.weight.dataSync().slice());
      const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
      const trained = m.parameters().filter((p) => p.requiresGrad);
      expect(trained.every((p) => p.kind === 'adapter')).toBe(true);
      const res = alg.step(input);
      expect(res.updated).toBe(true);
      expectClose(`${v}.tent_logits`, res.logits, data(`${v}.logits`).data, 1e-5);
      res.logits.dispose();
      const after = adapterState(m);
      for (const [name, t] of after) {
        const want = data(`${v}.tent.${name}`).data;
        const t0 = before.get(name)!.dataSync();
        expectClose(`${v}.tent[${name}]`, t, want, 1e-4);
        const got = Array.from(t.dataSync(), (x, i) => x - t0[i]);
        const exp = Array.from(want, (x, i) => x - t0[i]);
        expectClose(`${v}.update[${name}]`, got, exp, 1e-3);
      }
      m.normLayers.forEach((l, i) => expect(Array.from(l.weight.dataSync())).toEqual(Array.from(norms0[i])));
      tf.dispose([...before.values(), ...after.values()]);
      alg.dispose();
      m.dispose();
    });
  }

  it('seeded initialisation: VPT U(±√(6/(3p²+D))), L2P U[0, 0.01); the same seed gives the same values', () => {
    const draw = (v: Variant, seed: number) => {
      const m = prompted(v, { seed, fixtureInit: false });
      const s = adapterState(m);
      const out = new Map([...s].map(([k, t]) => [k, Array.from(t.dataSync())]));
      tf.dispose([...s.values()]);
      m.dispose();
      return out;
    };
    const bound = Math.sqrt(6 / (3 * 8 * 8 + 48));
    const deep = draw('vpt_deep', 3);
    expect([...deep.keys()]).toEqual(['prompt.embeddings', 'prompt.deep_embeddings']);
    expect(deep.get('prompt.deep_embeddings')).toHaveLength(1 * cfgJson.tokens * 48); // depth 2: one deep layer
    for (const vals of deep.values()) {
      expect(Math.max(...vals.map(Math.abs))).toBeLessThanOrEqual(bound);
      expect(Math.max(...vals.map(Math.abs))).toBeGreaterThan(0.9 * bound);
    }
    expect(draw('vpt_deep', 3)).toEqual(deep);
    expect(draw('vpt_deep', 4).get('prompt.embeddings')).not.toEqual(deep.get('prompt.embeddings'));
    const pool = draw('l2p', 3);
    expect([...pool.keys()]).toEqual(['prompt_pool.prompt', 'prompt_pool.key']);
    for (const vals of pool.values()) expect(vals.every((x) => x >= 0 && x < 0.01)).toBe(true);
  });

  it('refuses bad option combinations and non-ViT models with one line (exit 2)', async () => {
    const m = model();
    expect(errorOf(() => attachAdapters(m, 'prompt', { promptTokens: 3, promptDepth: 'deep', promptPool: 4 }))).toMatch(/^--prompt-depth deep: L2P/);
    expect(errorOf(() => attachAdapters(m, 'prompt', { promptTokens: 3, promptPool: 2, promptTopN: 3 }))).toBe('--prompt-top-n 3: larger than the pool (--prompt-pool 2)');
    expect(errorOf(() => attachAdapters(m, 'prompt', { promptTokens: 0, promptPool: 2, promptTopN: 1 }))).toBe('--prompt-tokens: an L2P pool needs at least 1 token per prompt');
    m.dispose();
    const cnn = buildModel('resnext29', await readSafetensors(join(FIX, 'models', 'resnext_small.safetensors')), { rng: new Rng(1) });
    expect(errorOf(() => attachAdapters(cnn, 'prompt', { promptTokens: 3 }))).toMatch(/^--adapt-params prompt(: | applies to the ViT, not )--model resnext29/);
    cnn.dispose();
  });

  it('clone(): the copy has its own prompts and gives the same logits', () => {
    for (const v of ['vpt_deep', 'l2p'] as const) {
      const m = prompted(v);
      const c = m.clone();
      const a = m.forward(input);
      const b = c.forward(input);
      expect(Array.from(b.dataSync())).toEqual(Array.from(a.dataSync()));
      tf.dispose([a, b]);
      m.dispose();
      const d = c.forward(input); // the copy still works once the original is gone
      expectClose(`${v}.clone`, d, data(`${v}.logits`).data, 1e-5);
      d.dispose();
      c.dispose();
    }
  });

  it('20 Tent steps (L2P; 5 for VPT-deep) keep the tensor count constant (no leak)', async () => {
    const x = tf.slice(input, [0, 0, 0, 0], [2, -1, -1, -1]) as tf.Tensor4D; // two images keep it quick
    const start = tf.memory().numTensors;
    // L2P exercises every per-forward tensor (query, selection, pull term); VPT-deep the rest.
    for (const [v, steps] of [['l2p', 20], ['vpt_deep', 5]] as const) {
      const m = prompted(v);
      const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
      alg.step(x).logits.dispose(); // optimizer slots exist from here on
      const before = tf.memory().numTensors;
      for (let i = 0; i < steps; i++) alg.step(x).logits.dispose();
      expect(tf.memory().numTensors, v).toBe(before);
      alg.dispose();
      m.dispose();
    }
    expect(tf.memory().numTensors).toBe(start); // and dispose() frees the prompts, the kept pull term
    x.dispose();
  });

  it("the runner counts L2P's query forward (the prompt-free model) as a pass of its own, not a backward", () => {
    const counter = new PassCounter();
    const l2p = counter.watch(prompted('l2p'));
    const vpt = counter.watch(prompted('vpt_shallow'));
    try {
      tf.tidy(() => l2p.forward(input));
      const n = input.shape[0];
      expect(counter.take()).toMatchObject({ forwards: 2 * n, forward_calls: 2, backwards: 0 });
      tf.tidy(() => vpt.forward(input));
      expect(counter.take()).toMatchObject({ forwards: n, forward_calls: 1 });
      // a copy is watched on its own (ctx.cloneModel): it starts without the observer
      const copy = l2p.clone();
      expect(copy.innerPassObserver ?? null).toBeNull();
      copy.dispose();
    } finally {
      l2p.dispose();
      vpt.dispose();
    }
  });
});
