/**
 * --adapt-params modules on the reduced ViT (test/fixtures/imagenet/vit_small) and the small
 * ResNeXt (test/fixtures/models/resnext_small): the model's output is unchanged at step 0, the
 * parameter list and counts, what a Tent step trains, clone / state round trips, reset, no tensor
 * leak over 20 steps, and one-line exit-2 errors for bad options.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { isAdapterHost } from '../models/injection.js';
import { ALGORITHMS } from '../algorithms/registry.js';
import type { AdaptOptions } from '../algorithms/types.js';
import { cottaAugment } from '../algorithms/augment.js';
import { testImages } from '../models/test-weights.js';
import { weightRecords } from '../runner/accounting.js';
import { attachAdapters, trainableCount } from './attach.js';
import { vidaScales } from './vida.js';

let vitSd: StateDict;
let cnnSd: StateDict;
let wrnSd: StateDict;
let x: tf.Tensor4D;

beforeAll(async () => {
  await initBackend('wasm');
  vitSd = await readSafetensors(join(process.cwd(), 'test', 'fixtures', 'imagenet', 'vit_small.safetensors'));
  cnnSd = await readSafetensors(join(process.cwd(), 'test', 'fixtures', 'models', 'resnext_small.safetensors'));
  wrnSd = await readSafetensors(join(process.cwd(), 'test', 'fixtures', 'models', 'wrn_small.safetensors'));
  x = tf.tensor4d(testImages(4, 32, 5), [4, 32, 32, 3]);
});

const vit = () => buildModel('vit_b16', vitSd, { rng: new Rng(1) });
const cnn = () => buildModel('resnext29', cnnSd, { rng: new Rng(1) });

const tentOptions = (): AdaptOptions => ({ lr: 0.05, momentum: 0.9, optimizer: 'sgd', episodic: false, matchedUpdate: 'momentum' });

/** Options that fit the width-48 ViT (KAdaptation's default 32 factors do not divide 48). */
const SMALL: Record<string, Record<string, unknown>> = {
  lora: { rank: 4 },
  kadaptation: { kronFactors: 4 },
  adapter: { adapterDim: 8 },
  compacter: { kronFactors: 4, adapterDim: 8 },
  vida: { vidaHighRank: 16, vidaAugmentations: 2 },
};

const augment = (rng: Rng) => (t: tf.Tensor4D) => cottaAugment(t, rng);

function logits(m: Classifier): Float32Array {
  const y = m.forward(x);
  const v = y.dataSync() as Float32Array;
  y.dispose();
  return v;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

describe('--adapt-params on the reduced ViT', () => {
  for (const kind of Object.keys(SMALL)) {
    it(`${kind}: output unchanged at step 0; a Tent step trains only the ${kind} parameters`, async () => {
      const m = vit();
      const base = logits(m);
      const set = attachAdapters(m, kind, SMALL[kind], { seed: 3, augment: augment(new Rng(4)) })!;
      expect(isAdapterHost(m) && m.adapters).toBe(set);
      const params = set.parameters();
      expect(params.length).toBeGreaterThan(0);
      expect(params.every((p) => p.kind === 'adapter' && p.variable !== null)).toBe(true);
      expect(new Set(params.map((p) => p.name)).size).toBe(params.length);
      expect(maxDiff(logits(m), base)).toBe(0);

      const norms = m.normLayers.map((l) => l.weight.dataSync().slice());
      const before = set.saveState();
      const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
      const adapterScalars = params.reduce((a, p) => a + p.shape.reduce((u, d) => u * d, 1), 0);
      expect(trainableCount(m)).toBe(adapterScalars);
      const r = alg.step(x);
      expect(r.updated).toBe(true);
      r.logits.dispose();
      // The analytic accounting sees every module weight's saved input (docs/memory.md#trainable-weights).
      const recs = weightRecords(m);
      expect(recs.length).toBeGreaterThan(0);
      expect(recs.every((w) => w.kind === 'adapter')).toBe(true);
      expect(recs.reduce((a, w) => a + w.bytes, 0)).toBeGreaterThan(0);
      m.normLayers.forEach((l, i) => expect(maxDiff(l.weight.dataSync(), norms[i])).toBe(0));
      const after = set.saveState();
      const moved = [...after].filter(([k, t]) => maxDiff(t.dataSync(), before.get(k)!.dataSync()) > 0).map(([k]) => k);
      expect(moved.length).toBeGreaterThan(0);
      expect(maxDiff(logits(m), base)).toBeGreaterThan(0);

      // clone: same output, own variables
      const copy = m.clone();
      expect(maxDiff(logits(copy), logits(m))).toBeLessThan(1e-6);
      expect((copy as Classifier & { adapters: unknown }).adapters).not.toBe(set);
      copy.dispose();
      expect(maxDiff(logits(m), logits(m))).toBe(0); // the original's variables survive the copy's dispose

      // reset returns to the configure-time modules
      alg.reset();
      expect(maxDiff(logits(m), base)).toBeLessThan(1e-6);
      tf.dispose([...before.values(), ...after.values()]);
      alg.dispose();
      m.dispose();
    });
  }

  for (const kind of Object.keys(SMALL)) {
    it(`${kind}: no tensor leak over 20 ${kind === 'lora' ? 'Tent and EATA' : 'Tent'} steps`, async () => {
      const xs = tf.tidy(() => tf.slice(x, [0, 0, 0, 0], [2, 32, 32, 3]));
      for (const alg of kind === 'lora' ? (['tent', 'eata'] as const) : (['tent'] as const)) {
        const m = vit();
        attachAdapters(m, kind, SMALL[kind], { seed: 3, augment: augment(new Rng(4)) });
        const opts = { ...tentOptions(), eMargin: 0.4 * Math.log(10), dMargin: 0.05, fisherAlpha: 2000, fisherSize: 2 };
        const fisherData = async function* () {
          yield xs.clone();
        };
        const a = await ALGORITHMS[alg].create(m, opts as AdaptOptions, { rng: new Rng(2), fisherData });
        a.step(xs).logits.dispose(); // optimizer slots exist from here
        const start = tf.memory().numTensors;
        for (let i = 0; i < 20; i++) a.step(xs).logits.dispose();
        expect(tf.memory().numTensors, `${kind} under ${alg}`).toBe(start);
        a.dispose();
        m.dispose();
      }
      xs.dispose();
    }, 60_000);
  }

  it('cotta: teacher and anchor carry the modules; reset returns the teacher to them', async () => {
    const m = vit();
    attachAdapters(m, 'lora', { rank: 2 }, { seed: 3 });
    const base = logits(m);
    const rng = new Rng(5);
    const ctx = { rng, cloneModel: () => m.clone(), augment: (t: tf.Tensor4D) => cottaAugment(t, rng) };
    const alg = await ALGORITHMS.cotta.create(m, { ...tentOptions(), cottaAugmentations: 2 } as AdaptOptions, ctx);
    for (let i = 0; i < 2; i++) alg.step(x).logits.dispose();
    const teacher = alg.evaluator!();
    expect(maxDiff(logits(teacher), base)).toBeGreaterThan(0);
    alg.reset();
    expect(maxDiff(logits(teacher), base)).toBeLessThan(1e-6);
    expect(maxDiff(logits(m), base)).toBeLessThan(1e-6);
    alg.dispose();
    m.dispose();
  });

  it('LoRA counts: r·(in + out) per q and v slice of every block', () => {
    const m = vit();
    const set = attachAdapters(m, 'lora', { rank: 4 }, { seed: 1 })!;
    const names = set.parameters().map((p) => p.name);
    expect(names).toEqual([0, 1].flatMap((b) => ['q', 'v'].flatMap((s) => [`blocks.${b}.attn.qkv.lora_A.${s}.weight`, `blocks.${b}.attn.qkv.lora_B.${s}.weight`])));
    expect(set.parameters().map((p) => p.shape)).toEqual([0, 1].flatMap(() => [[4, 48], [48, 4], [4, 48], [48, 4]]));
    m.dispose();
    const m2 = vit();
    const all = attachAdapters(m2, 'lora', { rank: 2, adaptTargets: 'qkv,proj,fc1,fc2', adaptBlocks: '1' }, { seed: 1 })!;
    expect(all.parameters().map((p) => p.name.replace('.weight', ''))).toEqual(['qkv', 'proj', 'fc1', 'fc2'].flatMap((t) => [`blocks.1.${t === 'qkv' || t === 'proj' ? 'attn' : 'mlp'}.${t}.lora_A`, `blocks.1.${t === 'qkv' || t === 'proj' ? 'attn' : 'mlp'}.${t}.lora_B`]));
    m2.dispose();
  });

  it('state round trip: loadState restores the saved values; a mismatch is one exit-2 error', () => {
    const m = vit();
    const set = attachAdapters(m, 'adapter', { adapterDim: 8 }, { seed: 1 })!;
    const state = set.saveState();
    const m2 = vit();
    const other = attachAdapters(m2, 'adapter', { adapterDim: 8 }, { seed: 99 })!;
    other.loadState(state);
    const a = other.saveState();
    for (const [k, t] of state) expect(maxDiff(a.get(k)!.dataSync(), t.dataSync())).toBe(0);
    const m3 = vit();
    const wrong = attachAdapters(m3, 'adapter', { adapterDim: 4 }, { seed: 1 })!;
    expect(() => wrong.loadState(state)).toThrow(/wrong shape/);
    tf.dispose([...state.values(), ...a.values()]);
    for (const mm of [m, m2, m3]) mm.dispose();
  });

  it('ViDA beforeStep sets the scales from the augmented predictions (official: λ_low only; paper: both)', () => {
    for (const mode of ['official', 'paper'] as const) {
      const m = vit();
      const set = attachAdapters(m, 'vida', { ...SMALL.vida, vidaScaleUpdate: mode }, { seed: 3, augment: augment(new Rng(4)) })! as unknown as {
        beforeStep(x: tf.Tensor4D, predict: (x: tf.Tensor4D) => tf.Tensor2D): void;
        scales: { low: number; high: number };
      };
      expect(set.scales).toEqual({ low: 1, high: 1 });
      const start = tf.memory().numTensors;
      set.beforeStep(x, (v) => m.forward(v));
      expect(tf.memory().numTensors).toBe(start);
      const { low, high } = set.scales;
      expect(low).not.toBe(1);
      const u = Math.abs(low - 1);
      expect(high).toBeCloseTo(mode === 'official' ? 1 : low > 1 ? 1 - u : 1 + u, 6);
      m.dispose();
    }
  });

  it('ViDA under tent: the scales are decided again at every step, also on the same batch tensor', async () => {
    const m = vit();
    const set = attachAdapters(m, 'vida', { ...SMALL.vida, vidaScaleUpdate: 'paper' }, { seed: 3, augment: augment(new Rng(4)) })! as unknown as { scales: { low: number; high: number } };
    const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
    const seen: number[] = [];
    for (let i = 0; i < 3; i++) {
      alg.step(x).logits.dispose();
      seen.push(set.scales.low);
    }
    // fresh augmentation draws each time: three different uncertainties
    expect(new Set(seen).size).toBe(3);
    alg.dispose();
    m.dispose();
  });

  it('ViDA scale allotment follows the uncertainty (official: only λ_low moves)', () => {
    expect(vidaScales(0.3, 0.2, 'paper')).toEqual({ low: 0.7, high: 1.3 });
    expect(vidaScales(0.1, 0.2, 'paper')).toEqual({ low: 1.1, high: 0.9 });
    expect(vidaScales(0.3, 0.2, 'official')).toEqual({ low: 0.7, high: 1 });
    expect(vidaScales(0.3, 0.2, 'off')).toEqual({ low: 1, high: 1 });
  });

  it('bad options: one CtaError (exit 2) naming the flag', () => {
    const bad: [string, Record<string, unknown>, RegExp][] = [
      ['lora', { adaptTargets: 'q,zz' }, /--adapt-targets: 'zz'/],
      ['lora', { adaptBlocks: '0-5' }, /--adapt-blocks: '0-5'/],
      ['lora', { rank: 100 }, /--rank 100/],
      ['lora', { adaptTargets: 'qkv,q' }, /either qkv/],
      ['kadaptation', {}, /--kron-factors 32: must divide/],
      ['compacter', { kronFactors: 5 }, /--kron-factors 5/],
      ['adapter', { adaptTargets: 'q' }, /--adapt-targets: 'q'/],
      ['nonsense', {}, /--adapt-params: unknown kind/],
    ];
    for (const [kind, cfg, re] of bad) {
      const m = vit();
      let err: unknown = null;
      try {
        attachAdapters(m, kind, cfg, { seed: 1 });
      } catch (e) {
        err = e;
      }
      expect(err, kind).toBeInstanceOf(CtaError);
      expect((err as CtaError).exitCode).toBe(2);
      expect((err as Error).message).toMatch(re);
      m.dispose();
    }
    const c = cnn();
    expect(() => attachAdapters(c, 'vida', {}, { seed: 1 })).toThrow(/applies to the ViT, not --model resnext29/);
    c.dispose();
  });
});

/** Options that fit the small ResNeXt (its narrowest 1×1 convs have 16 channels). */
const CNN_SMALL: Record<string, Record<string, unknown>> = {
  lora: { rank: 2 },
  adapter: { adapterDim: 4 },
  kadaptation: { kronFactors: 4 },
  compacter: { kronFactors: 4 },
};

describe('--adapt-params on the small ResNeXt (1×1 convs)', () => {
  for (const kind of Object.keys(CNN_SMALL)) {
    it(`${kind}: output unchanged at step 0 in every norm mode; Tent trains it`, async () => {
      const m = cnn();
      for (const mode of ['source', 'batch'] as const) {
        m.setNormMode(mode);
        const base = logits(m);
        attachAdapters(m, kind, CNN_SMALL[kind], { seed: 3 });
        expect(maxDiff(logits(m), base)).toBeLessThan(1e-5);
        m.setAdapters(null);
      }
      const set = attachAdapters(m, kind, CNN_SMALL[kind], { seed: 3 })!;
      expect(set.parameters().some((p) => p.name.includes('downsample.0'))).toBe(true);
      const before = set.saveState();
      const alg = await ALGORITHMS.tent.create(m, tentOptions(), { rng: new Rng(2) });
      const base = logits(m);
      alg.step(x).logits.dispose();
      const start = tf.memory().numTensors;
      for (let i = 0; i < 5; i++) alg.step(x).logits.dispose();
      expect(tf.memory().numTensors).toBe(start);
      expect(maxDiff(logits(m), base)).toBeGreaterThan(0);
      // every module parameter moved (the shared Kronecker rules included), except the
      // up-projection biases: the conv's BatchNorm on batch statistics removes any per-channel
      // constant, so their gradient is zero but for round-off
      const after = set.saveState();
      const still = [...after].filter(([k, t]) => !/\.up\.(bias|b)$/.test(k) && maxDiff(t.dataSync(), before.get(k)!.dataSync()) === 0).map(([k]) => k);
      expect(still).toEqual([]);
      tf.dispose([...before.values(), ...after.values()]);
      alg.dispose();
      m.dispose();
    });
  }

  it('kadaptation: one shared rule per conv role; compacter: one rule, bottleneck width per conv', () => {
    const m = cnn();
    const k = attachAdapters(m, 'kadaptation', { kronFactors: 4 }, { seed: 1 })!;
    const names = k.parameters().map((p) => p.name);
    expect(names.filter((n) => n.startsWith('kadaptation.'))).toEqual(['reduce', 'expand', 'shortcut'].flatMap((r) => [`kadaptation.${r}.rule_left`, `kadaptation.${r}.rule_right`]).sort((a, b) => names.indexOf(a) - names.indexOf(b)));
    // stage_1.0.conv_reduce is 16 → 16: u [4, 4, 1], v [4, 1, 4]
    const shape = (n: string) => k.parameters().find((p) => p.name === n)!.shape;
    expect(shape('stage_1.0.conv_reduce.kadaptation.W_left')).toEqual([4, 4, 1]);
    expect(shape('stage_3.0.downsample.0.kadaptation.W_right')).toEqual([4, 1, 32]);
    const c = attachAdapters(m, 'compacter', { kronFactors: 2 }, { seed: 1 })!;
    const cs = (n: string) => c.parameters().find((p) => p.name === n)!.shape;
    expect(c.parameters().filter((p) => p.name.startsWith('compacter.')).map((p) => p.name)).toEqual(['compacter.phm_rule']);
    // bottleneck m = the conv's width / 32 rounded up to a multiple of n: 2 on 32 channels, 4 on 128
    expect(cs('stage_1.0.conv_expand.compacter.down.W_right')).toEqual([2, 1, 1]);
    expect(cs('stage_3.0.conv_expand.compacter.down.W_right')).toEqual([2, 1, 2]);
    expect(cs('stage_3.0.conv_expand.compacter.up.W_left')).toEqual([2, 2, 1]);
    m.dispose();
  });

  it('kadaptation / compacter: Kronecker factors that do not divide a 1×1 conv are one exit-2 line naming the flag and the conv', () => {
    const wrn = buildModel('wrn28_10', wrnSd, { rng: new Rng(1) });
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['kadaptation', {}, /^--kron-factors 32: must divide the channels of 1×1 conv block2\.layer\.0\.convShortcut \(16→32\); 16 divides every selected 1×1 conv of this model$/],
      ['compacter', { kronFactors: 5 }, /^--kron-factors 5: must divide the 32 output channels of 1×1 conv block2\.layer\.0\.convShortcut; 4 divides every selected site of this model$/],
    ];
    for (const [kind, cfg, re] of cases) {
      let err: unknown = null;
      try {
        attachAdapters(wrn, kind, cfg, { seed: 1 });
      } catch (e) {
        err = e;
      }
      expect(err, kind).toBeInstanceOf(CtaError);
      expect((err as CtaError).exitCode).toBe(2);
      expect((err as Error).message).toMatch(re);
    }
    // the suggested value works, output unchanged at step 0
    wrn.setNormMode('batch');
    const base = logits(wrn);
    const set = attachAdapters(wrn, 'kadaptation', { kronFactors: 16 }, { seed: 3 })!;
    expect(set.parameters().every((p) => p.name.startsWith('kadaptation.shortcut.') || p.name.includes('.convShortcut.kadaptation.'))).toBe(true);
    expect(maxDiff(logits(wrn), base)).toBeLessThan(1e-5);
    wrn.dispose();
  });

  it('WRN: lora on the 1×1 shortcut convs only, output unchanged at step 0', () => {
    const m = buildModel('wrn28_10', wrnSd, { rng: new Rng(1) });
    m.setNormMode('batch');
    const base = logits(m);
    const set = attachAdapters(m, 'lora', { rank: 2 }, { seed: 3 })!;
    const names = set.parameters().map((p) => p.name);
    expect(names.length).toBeGreaterThan(0);
    expect(names.every((n) => n.includes('.convShortcut.lora_'))).toBe(true);
    expect(maxDiff(logits(m), base)).toBeLessThan(1e-5);
    m.dispose();
  });
});
