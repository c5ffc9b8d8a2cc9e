/**
 * SAR (src/algorithms/sar.ts) against its float64 PyTorch re-statement
 * (scripts/fixtures_lib/sar_ref.py, fixtures from scripts/make-sar-deyo-fixtures.py over
 * test/fixtures/models/resnext_small): three steps per case, pre-update logits, the S1/S2 counters,
 * resets and the final norm-layer affine parameters; the kept EMA after a reset; the parameter
 * selection; no tensor leak over 20 steps, with and without MECTA.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import type { Classifier } from '../models/types.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from './registry.js';
import { sarAdapts } from './sar.js';
import { resolveConfig } from '../config/load.js';
import type { AdaptOptions } from './types.js';
import { ErrorLog, fixtureBatch as nhwc, fixtureData as raw } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const TOL = 1e-4;
/**
 * Final affine parameters: TOL, or twice the error of float32 PyTorch itself against the float64
 * reference where that is larger (the fixture JSON's float32_torch_rel_err, measured by the
 * generator). Measured: float32 PyTorch is 6.5e-4 off on bn_1.bias and 3–6e-4 on the stage_1
 * biases, TS/WASM up to 8e-4 on the same tensors, the rest below 1e-4. Cause: conditioning, not
 * the formula: the float64 reference itself moves those biases by 6.1e-4 (1.0e-4 with ρ = 0) when
 * the input images are perturbed by 1e-7 relative, i.e. float32 round-off. The SAM gradient, taken
 * at θ + ε̂ on this barely trained network, crosses ReLU inputs within round-off of zero in the
 * first layers (as parity.test.ts describes for the Fisher), and those biases are small; the
 * logits stay within 1e-4.
 */
const F32_FACTOR = 2;
/**
 * Error against the size of the 3-step update θ_ref − θ_0 (reported; not the required bound): the
 * update is a few percent of ‖θ‖, so the same round-off weighs ~50× more; measured 4.8e-2 on WASM.
 */
const UPDATE_TOL = 1e-1;

interface SarCase {
  case: string;
  optimizer: { lr: number; momentum: number };
  e_margin: number;
  sam_rho: number;
  sar_reset_ema: number;
  adapted: string[];
  float32_torch_rel_err: Record<string, number>;
  steps: { updated: boolean; reliable: number; used: number; reset: boolean; ema: number | null }[];
}

const errors = new ErrorLog();
const check = (label: string, kind: string, a: tf.Tensor | ArrayLike<number>, b: ArrayLike<number>, tol = TOL) =>
  errors.check(label, kind, a, b, tol);

/** The lazily built per-model constants (flipped conv filters, folded filters) before counting tensors. */
function warmUp(model: Classifier, x: tf.Tensor4D): void {
  const mode = model.normMode;
  if (mode !== 'source') model.setNormMode('source');
  const { value, grads } = tf.engine().gradients(() => tf.sum(model.forward(x)) as tf.Scalar, model.trainableParams());
  tf.dispose([value, ...grads, model.forward(x)]);
  for (const l of model.normLayers) l.reset();
  if (mode === 'batch') model.setNormMode('batch');
}

/**
 * A reset (loadStateDict) drops those constants until the next forward/backward needs them, so
 * the final count is taken after building them again.
 */
function rewarm(model: Classifier, x: tf.Tensor4D): void {
  const mode = model.normMode;
  const mecta = model.mectaOptions;
  warmUp(model, x);
  if (mode === 'mecta') model.setNormMode('mecta', mecta!);
}

function options(c: Pick<SarCase, 'optimizer' | 'e_margin' | 'sam_rho' | 'sar_reset_ema'>) {
  const o: AdaptOptions & { sarMarginE0: number; samRho: number; sarResetEma: number } = {
    lr: c.optimizer.lr,
    momentum: c.optimizer.momentum,
    optimizer: 'sgd',
    episodic: false,
    eMargin: 0,
    dMargin: 0,
    fisherAlpha: 0,
    fisherSize: 0,
    matchedUpdate: 'momentum',
    sarMarginE0: c.e_margin,
    samRho: c.sam_rho,
    sarResetEma: c.sar_reset_ema,
  };
  return o;
}

const available = existsSync(WEIGHTS) && existsSync(join(ADAPT, 'sar.json'));
let weights: StateDict;
let inputs: StateDict;

beforeAll(async () => {
  await initBackend('wasm');
  if (!available) return;
  weights = await readSafetensors(WEIGHTS);
  inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
});

afterAll(() => {
  errors.report('sar parity, max relative errors');
});

describe('SAR parameter selection (official collect_params)', () => {
  it('freezes ResNet layer4, ViT blocks 9-11 and the final norm; adapts everything else', () => {
    for (const n of ['bn1', 'layer1.0.bn1', 'layer3.5.downsample.1', 'blocks.0.norm1', 'blocks.8.norm2', 'blocks.1.norm1', 'stage_3.1.bn_expand', 'block3.layer.1.bn2', 'bn_1']) {
      expect(sarAdapts(n), n).toBe(true);
    }
    for (const n of ['layer4.0.bn1', 'layer4.2.downsample.1', 'blocks.9.norm1', 'blocks.10.norm2', 'blocks.11.norm1', 'norm', 'fc_norm.x']) {
      expect(sarAdapts(n), n).toBe(false);
    }
  });
});

describe('SAR configs', () => {
  it('load with the published settings', () => {
    expect(resolveConfig('configs/imagenet/sar.yaml', {})).toMatchObject({ alg: 'sar', model: 'resnet50', lr: 0.00025, momentum: 0.9, optimizer: 'sgd', batchSize: 64, samRho: 0.05, sarResetEma: 0.2, sarMarginE0: null });
    expect(resolveConfig('configs/imagenet/vit-sar.yaml', {})).toMatchObject({ alg: 'sar', model: 'vit_b16', lr: 0.00025, batchSize: 16 });
    expect(resolveConfig('configs/cifar10/sar.yaml', {})).toMatchObject({ alg: 'sar', lr: 0.001, momentum: 0.9, batchSize: 200, samRho: 0.05 });
  });
});

describe.skipIf(!available)('SAR parity with PyTorch (resnext_small)', () => {
  for (const name of ['sar', 'sar_reset']) {
    it(`${name}: 3 steps`, async () => {
      const c = JSON.parse(readFileSync(join(ADAPT, `${name}.json`), 'utf8')) as SarCase;
      const fx = await readSafetensors(join(ADAPT, `${name}.safetensors`));
      const model = buildModel('resnext29', weights, { rng: new Rng(0) });
      const xw = nhwc(inputs, 'x0');
      warmUp(model, xw);
      xw.dispose();
      const before = tf.memory().numTensors;
      const alg = await ALGORITHMS.sar.create(model, options(c), { rng: new Rng(1) });
      expect(model.normMode).toBe('batch');
      expect(model.normLayers.filter((l) => l.trainable).flatMap((l) => [`${l.name}.weight`, `${l.name}.bias`])).toEqual(c.adapted);
      for (let s = 0; s < c.steps.length; s++) {
        const x = nhwc(inputs, `x${s}`);
        const r = alg.step(x);
        x.dispose();
        check(`${name} logits${s}`, `${name}.logits`, r.logits, raw(fx, `logits${s}`));
        r.logits.dispose();
        const want = c.steps[s];
        expect(r.updated).toBe(want.updated);
        expect(r.metrics).toEqual({ reliable: want.reliable, used: want.used, resets: want.reset ? 1 : 0 });
      }
      // the EMA survives a reset (official SAR.forward re-assigns it after reset())
      const st = alg.saveState();
      const ema = st.get('sar.ema')!.dataSync()[0];
      expect(Math.abs(ema - c.steps[2].ema!)).toBeLessThan(1e-5);
      tf.dispose([...st.values()]);
      const sd = model.stateDict();
      for (const l of model.normLayers) {
        for (const p of ['weight', 'bias']) {
          const k = `${l.name}.${p}`;
          const tol = Math.max(TOL, F32_FACTOR * c.float32_torch_rel_err[`final.${k}`]);
          check(`${name} final ${k}`, `${name}.final.affine`, sd.get(k)!, raw(fx, `final.${k}`), tol);
          if (!c.steps[2].reset) {
            // the same error against the size of the 3-step update θ_ref − θ_0
            const theta0 = raw(weights, k);
            const got = sd.get(k)!.dataSync();
            const want = raw(fx, `final.${k}`);
            check(`${name} update ${k}`, `${name}.final.update`, Array.from(got, (v, i) => v - theta0[i]), Array.from(want, (v, i) => v - theta0[i]), UPDATE_TOL);
          }
        }
      }
      tf.dispose([...sd.values()]);
      alg.dispose();
      const xr = nhwc(inputs, 'x0');
      rewarm(model, xr);
      xr.dispose();
      expect(tf.memory().numTensors).toBe(before);
      model.dispose();
    });
  }

  it.runIf(existsSync(join(ADAPT, 'sar_mecta.json')))('sar_mecta: 3 steps under the MECTA norm layer (both forwards accumulate)', async () => {
    type MectaCase = SarCase & {
      mecta: { beta: number; init_beta: number | null; forget_gate: boolean; dist_metric: 'skl' | 'kl' | 'simple'; dist_scale: number; beta_thre: number; prune_q: number };
      steps: (SarCase['steps'][number] & { beta: number[][]; matched: boolean[][] })[];
      input_ulp_sensitivity: Record<string, number>;
    };
    const c = JSON.parse(readFileSync(join(ADAPT, 'sar_mecta.json'), 'utf8')) as MectaCase;
    const fx = await readSafetensors(join(ADAPT, 'sar_mecta.safetensors'));
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    const xw = nhwc(inputs, 'x0');
    warmUp(model, xw);
    xw.dispose();
    const m = c.mecta;
    model.setNormMode('mecta', { beta: m.beta, initBeta: m.init_beta, forgetGate: m.forget_gate, distMetric: m.dist_metric, distScale: m.dist_scale, betaThre: m.beta_thre, pruneQ: m.prune_q });
    const alg = await ALGORITHMS.sar.create(model, options(c), { rng: new Rng(1) });
    expect(model.normMode).toBe('mecta');
    for (let s = 0; s < c.steps.length; s++) {
      const x = nhwc(inputs, `x${s}`);
      const r = alg.step(x);
      x.dispose();
      check(`sar_mecta logits${s}`, 'sar_mecta.logits', r.logits, raw(fx, `logits${s}`));
      r.logits.dispose();
      const want = c.steps[s];
      expect(r.updated).toBe(want.updated);
      expect(r.metrics).toEqual({ reliable: want.reliable, used: want.used, resets: 0 });
      // the layers' records are those of the second (perturbed) forward
      check(`sar_mecta beta${s}`, 'sar_mecta.beta', model.normLayers.map((l) => l.last?.beta ?? NaN), want.beta[1]);
      expect(model.normLayers.map((l) => l.last?.cached === false)).toEqual(want.matched[1]);
    }
    const sd = model.stateDict();
    for (const l of model.normLayers) {
      for (const p of ['weight', 'bias', 'running_mean', 'running_var']) {
        const k = `${l.name}.${p}`;
        if (p.startsWith('running')) {
          check(`sar_mecta final ${k}`, 'sar_mecta.final.stats', sd.get(k)!, raw(fx, `final.${k}`));
          continue;
        }
        // no float32 PyTorch run here (the MECTA reference keeps float64 statistics): the bound is
        // twice the float64 reference's own change under a 1e-7 relative input perturbation
        // (measured up to 1.5e-3 on the stage_1 biases; TS/WASM 2.6e-4), where that exceeds TOL
        const tol = Math.max(TOL, F32_FACTOR * c.input_ulp_sensitivity[`final.${k}`]);
        check(`sar_mecta final ${k}`, 'sar_mecta.final.affine', sd.get(k)!, raw(fx, `final.${k}`), tol);
      }
    }
    tf.dispose([...sd.values()]);
    alg.dispose();
    model.dispose();
  });

  for (const withMecta of [false, true]) {
    it(`sar${withMecta ? ' + MECTA' : ''}: 20 steps leak no tensor`, async () => {
      const model = buildModel('resnext29', weights, { rng: new Rng(3) });
      const xs = [0, 1, 2].map((i) => nhwc(inputs, `x${i}`));
      warmUp(model, xs[0]);
      if (withMecta) {
        model.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0.05, pruneQ: 0.5 });
      }
      const before = tf.memory().numTensors;
      // resets now and then (threshold above the EMA of some steps), so reset is covered too
      const alg = await ALGORITHMS.sar.create(model, options({ optimizer: { lr: 0.01, momentum: 0.9 }, e_margin: 1.26, sam_rho: 0.05, sar_reset_ema: 1.15 }), { rng: new Rng(1) });
      expect(model.normMode).toBe(withMecta ? 'mecta' : 'batch');
      let steady = -1;
      let resets = 0;
      for (let i = 0; i < 20; i++) {
        const r = alg.step(xs[i % 3]);
        r.logits.dispose();
        resets += r.metrics?.resets ?? 0;
        if (i === 2) steady = tf.memory().numTensors;
        // a reset may drop model constants for a while (rewarm), never add tensors
        if (i > 2) expect(tf.memory().numTensors).toBeLessThanOrEqual(steady);
      }
      if (!withMecta) expect(resets).toBeGreaterThan(0);
      const st = alg.saveState();
      alg.loadState(st);
      tf.dispose([...st.values()]);
      alg.reset();
      alg.dispose();
      rewarm(model, xs[0]);
      expect(tf.memory().numTensors).toBe(before);
      tf.dispose(xs);
      model.dispose();
    });
  }
});
