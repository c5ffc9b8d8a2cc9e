/**
 * Numeric parity with the PyTorch reference (test/fixtures/adapt, written by
 * scripts/make-fixtures.py over test/fixtures/models/resnext_small): three adaptation steps per
 * case, comparing the pre-update logits of each step, EATA's counters and moving average, and the
 * final norm-layer parameters (and, with MECTA, running statistics and per-layer β, replaying the
 * reference's pruned channels). Also checks fisher.ts against the saved Fisher/θ*, and that 20
 * steps of every method on the real model leak no tensor.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import type { Classifier, MectaOptions } from '../models/types.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS, ALGORITHM_NAMES, type AlgorithmName } from './registry.js';
import type { AdaptOptions, AlgorithmContext } from './types.js';
import { estimateFisher } from './fisher.js';
import { ErrorLog, fixtureBatch as nhwc, fixtureData as raw } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const ADAPT = join(ROOT, 'adapt');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const TOL = 1e-4;
/**
 * The Fisher is a squared gradient, and on this small, barely trained network a few ReLU inputs of
 * the reference batches lie within float32 round-off of zero (|x| ≈ 1e-5). The WASM kernels round
 * some of them to the other side than float64 PyTorch does; each flipped mask entry moves the
 * gradients of every norm layer below it (measured: gradients of stage_3 match to ~1e-5, those
 * below stage_3.0's ReLU differ by up to ~2e-2 on WASM; the cpu backend stays within ~1e-3). This
 * is float32 conditioning of the fixture, not a formula error, so the Fisher gets a looser bound;
 * θ* is an exact copy.
 */
const FISHER_TOL = 5e-2;
/**
 * The same conditioning reaches the adapted affine parameters through their gradients. Measured
 * on WASM against ‖θ‖: SGD cases ≤ 1e-4, Adam ≤ 1.3e-3; against the size of the 3-step update
 * θ_ref − θ_0: SGD ≤ 1.3e-2, Adam ≤ 6.3e-2 (cpu backend: Adam 1.3e-4 against ‖θ‖). Adam is the most
 * sensitive because m̂/√v̂ rescales every component to ~lr, so a few-percent error on a small
 * early-layer gradient component becomes a few-percent error on a full-size step.
 */
// SGD (the tent/eta/eata cases the acceptance names) is held to the required 1e-4.
const AFFINE_TOL = { sgd: 1e-4, adam: 3e-3 };
const UPDATE_TOL = { sgd: 5e-2, adam: 1e-1 };

interface CaseJson {
  case: string;
  algorithm: AlgorithmName;
  optimizer: { name: 'sgd' | 'adam'; lr: number; momentum?: number };
  inputs?: string;
  episodic: boolean;
  e_margin?: number;
  d_margin?: number;
  fisher_alpha?: number;
  fisher_batches?: number;
  mecta?: {
    beta: number;
    init_beta: number | null;
    forget_gate: boolean;
    dist_metric: 'skl' | 'kl' | 'simple';
    dist_scale: number;
    beta_thre: number;
    prune_q: number;
  };
  matched_update?: string;
  bn_layers?: string[];
  steps: { updated: boolean; reliable?: number; used?: number; beta?: number[]; matched?: boolean[] }[];
}

const errors = new ErrorLog();
const check = (label: string, kind: string, a: tf.Tensor | ArrayLike<number>, b: ArrayLike<number>, tol = TOL) =>
  errors.check(label, kind, a, b, tol);

function mectaOpts(c: CaseJson): MectaOptions | null {
  if (!c.mecta) return null;
  const m = c.mecta;
  return {
    beta: m.beta,
    initBeta: m.init_beta,
    forgetGate: m.forget_gate,
    distMetric: m.dist_metric,
    distScale: m.dist_scale,
    betaThre: m.beta_thre,
    pruneQ: m.prune_q,
  };
}

function adaptOptions(c: CaseJson): AdaptOptions {
  return {
    lr: c.optimizer.lr,
    momentum: c.optimizer.momentum ?? 0.9,
    optimizer: c.optimizer.name,
    episodic: c.episodic,
    eMargin: c.e_margin ?? 0,
    dMargin: c.d_margin ?? 0,
    fisherAlpha: c.fisher_alpha ?? 0,
    fisherSize: (c.fisher_batches ?? 0) * 8,
    matchedUpdate: c.matched_update?.startsWith('skip') ? 'skip' : 'momentum',
  };
}

const available = existsSync(WEIGHTS) && existsSync(join(ADAPT, 'inputs.safetensors'));
/**
 * Another backend's run of this suite (parity-webgpu.test.ts) picks a subset through the
 * environment: PARITY_CASES = fixture cases plus 'forward' / 'fisher' (default or 'all': all),
 * PARITY_LEAK = leak runs as '<alg>' or '<alg>+mecta' (default or 'all': all), PARITY_LEAK_STEPS
 * (20).
 */
const only = (v: string | undefined) => (v && v !== 'all' ? new Set(v.split(',').map((s) => s.trim())) : null);
const ONLY_CASES = only(process.env.PARITY_CASES);
const ONLY_LEAK = only(process.env.PARITY_LEAK);
const LEAK_STEPS = Number(process.env.PARITY_LEAK_STEPS ?? 20);
const wanted = (name: string) => !ONLY_CASES || ONLY_CASES.has(name);
const CASES = ['tent', 'tent_adam', 'eta', 'eata', 'eata_strong', 'tent_mecta'].filter(
  (c) => wanted(c) && existsSync(join(ADAPT, `${c}.json`)),
);

let weights: StateDict;
let inputs: StateDict;

beforeAll(async () => {
  await initBackend((process.env.PARITY_BACKEND as 'wasm' | 'cpu' | 'webgpu' | undefined) ?? 'wasm');
  if (!available) return;
  weights = await readSafetensors(WEIGHTS);
  inputs = await readSafetensors(join(ADAPT, 'inputs.safetensors'));
});

afterAll(() => {
  errors.report('algorithm parity, max relative errors');
});

/**
 * One gradient pass and one inference pass so the model creates its lazily built constants (each
 * Conv2d keeps a flipped filter after its first backward; folded conv → BN filters after the first
 * tape-free 'source' forward), which belong to the model, not to the algorithm under test.
 */
function warmUp(model: Classifier, x: tf.Tensor4D): void {
  // in the freshly built model's 'source' mode, which changes no statistics
  expect(model.normMode).toBe('source');
  const { value, grads } = tf.engine().gradients(() => tf.sum(model.forward(x)) as tf.Scalar, model.trainableParams());
  tf.dispose([value, ...grads, model.forward(x)]);
  for (const l of model.normLayers) l.reset();
}

function fisherCtx(): AlgorithmContext {
  return {
    rng: new Rng(1),
    fisherData: () =>
      (async function* () {
        for (let i = 0; inputs.has(`fisher_x${i}`); i++) yield nhwc(inputs, `fisher_x${i}`);
      })(),
  };
}

describe.skipIf(!available)('parity with PyTorch (resnext_small)', () => {
  it.runIf(wanted('forward'))('forward: source- and batch-mode logits', async () => {
    const io = await readSafetensors(join(ROOT, 'models', 'resnext_small.io.safetensors'));
    const model: Classifier = buildModel('resnext29', weights, { rng: new Rng(0) });
    const x = nhwc(io, 'input');
    for (const [mode, key] of [['source', 'logits_eval'], ['batch', 'logits_train']] as const) {
      model.setNormMode(mode);
      const y = model.forward(x);
      check(`forward ${mode}`, `forward.${mode}`, y, raw(io, key));
      y.dispose();
    }
    x.dispose();
    model.dispose();
  });

  for (const name of CASES) {
    it(`${name}: 3 steps`, async () => {
      const c = JSON.parse(readFileSync(join(ADAPT, `${name}.json`), 'utf8')) as CaseJson;
      const fx = await readSafetensors(join(ADAPT, `${name}.safetensors`));
      const src = fx.has('x0') ? fx : inputs;
      const model: Classifier = buildModel('resnext29', weights, { rng: new Rng(0) });
      const xw = nhwc(src, 'x0');
      warmUp(model, xw);
      xw.dispose();
      const mecta = mectaOpts(c);
      let stepIdx = 0;
      if (mecta) {
        model.setNormMode('mecta', mecta);
        // replay the reference's random channel choice (docs/mecta-norm.md#pruning)
        model.setPruneChooser((layer) => Int32Array.from(raw(fx, `removed.${stepIdx}.${layer}`)));
      }
      const before = tf.memory().numTensors;
      const alg = await ALGORITHMS[c.algorithm].create(model, adaptOptions(c), fisherCtx());
      if (c.algorithm === 'eata') {
        // fisher.ts reproduced the reference's Fisher / θ* from the same clean batches …
        const st = alg.saveState();
        for (const l of model.normLayers) {
          for (const p of ['weight', 'bias']) {
            const k = `${l.name}.${p}`;
            check(`${name} fisher ${k}`, 'fisher', st.get(`eata.fisher.${k}`)!, raw(fx, `fisher.${k}`), FISHER_TOL);
            check(`${name} theta* ${k}`, 'theta_star', st.get(`eata.theta_star.${k}`)!, raw(fx, `theta_star.${k}`), 1e-6);
          }
        }
        tf.dispose([...st.values()]);
        // … and the steps below use the saved reference values, so they test the loss alone.
        const ref = new Map<string, tf.Tensor>();
        for (const [k, t] of fx) {
          const m = /^(fisher|theta_star)\.(.+)$/.exec(k);
          if (m) ref.set(`eata.${m[1]}.${m[2]}`, tf.tensor(Float32Array.from(t.data), t.shape));
        }
        ref.set('optim.had_grad', tf.ones([model.normLayers.length * 2]));
        alg.loadState(ref);
        tf.dispose([...ref.values()]);
      }
      for (let s = 0; s < c.steps.length; s++) {
        stepIdx = s;
        const x = nhwc(src, `x${s}`);
        const r = alg.step(x);
        x.dispose();
        const want = c.steps[s];
        check(`${name} logits${s}`, `${name}.logits`, r.logits, raw(fx, `logits${s}`));
        r.logits.dispose();
        expect(r.updated, `${name} step ${s} updated`).toBe(want.updated);
        if (want.reliable !== undefined) {
          expect(r.metrics?.reliable, `${name} step ${s} reliable`).toBe(want.reliable);
          expect(r.metrics?.used, `${name} step ${s} used`).toBe(want.used);
        }
        if (fx.has(`model_probs${s}`)) {
          const st = alg.saveState();
          check(`${name} probs${s}`, `${name}.probs`, st.get(`${c.algorithm}.probs`)!, raw(fx, `model_probs${s}`));
          tf.dispose([...st.values()]);
        }
        if (want.beta) {
          const betas = model.normLayers.map((l) => l.last?.beta ?? NaN);
          check(`${name} beta${s}`, `${name}.beta`, betas, want.beta);
          expect(model.normLayers.map((l) => l.last?.cached === false)).toEqual(want.matched);
        }
      }
      const sd = model.stateDict();
      const suffixes = mecta ? ['weight', 'bias', 'running_mean', 'running_var'] : ['weight', 'bias'];
      for (const l of model.normLayers) {
        for (const p of suffixes) {
          const k = `${l.name}.${p}`;
          const got = sd.get(k)!.dataSync();
          const want = raw(fx, `final.${k}`);
          if (p.startsWith('running')) {
            check(`${name} final ${k}`, `${name}.final.stats`, got, want);
            continue;
          }
          check(`${name} final ${k}`, `${name}.final.affine`, got, want, AFFINE_TOL[c.optimizer.name]);
          // the same error measured against the size of the 3-step update θ_ref − θ_0
          const theta0 = raw(weights, k);
          const upd = Array.from(want, (v, i) => v - theta0[i]);
          const diff = Array.from(got, (v, i) => v - theta0[i]);
          check(`${name} update ${k}`, `${name}.final.update`, diff, upd, UPDATE_TOL[c.optimizer.name]);
        }
      }
      tf.dispose([...sd.values()]);
      alg.dispose();
      expect(tf.memory().numTensors).toBe(before);
      model.dispose();
    });
  }

  it.runIf(wanted('fisher'))('estimateFisher reproduces the reference Fisher and θ* directly', async () => {
    if (!existsSync(join(ADAPT, 'eata.safetensors'))) return;
    const fx = await readSafetensors(join(ADAPT, 'eata.safetensors'));
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    model.setNormMode('batch');
    const params = model.normLayers.flatMap((l) => [l.weight, l.bias]);
    const keys = model.normLayers.flatMap((l) => [`${l.name}.weight`, `${l.name}.bias`]);
    const info = await estimateFisher(model, params, fisherCtx().fisherData!());
    expect(info.batches).toBe(2);
    keys.forEach((k, i) => {
      check(`fisher ${k}`, 'fisher', info.fisher[i], raw(fx, `fisher.${k}`), FISHER_TOL);
      check(`theta* ${k}`, 'theta_star', info.thetaStar[i], raw(fx, `theta_star.${k}`), 1e-6);
    });
    expect(model.normMode).toBe('batch');
    tf.dispose([...info.fisher, ...info.thetaStar]);
    model.dispose();
  });

  for (const name of ALGORITHM_NAMES) {
    for (const withMecta of [false, true]) {
      if (ONLY_LEAK && !ONLY_LEAK.has(`${name}${withMecta ? '+mecta' : ''}`)) continue;
      if (name === 'deyo' && withMecta) continue; // refused (deyo.test.ts)
      // Their own files run these 20-step leak tests with what the generic loop cannot give: resets and
      // state save/load (sar.test.ts, deyo.test.ts), teacher/anchor copies and augmentation (cotta.test.ts).
      if (['sar', 'deyo', 'cotta', 'cotta_bn'].includes(name)) continue;
      // rotta: teacher copy, memory bank and augmentation (rotta.test.ts); lame refuses MECTA (lame.test.ts)
      if (name === 'rotta' || (name === 'lame' && withMecta)) continue;
      // roid: augmentation and source copy, MECTA only without the consistency loss (roid.test.ts);
      // memo: per-sample AugMix views, 32 steps per image (memo.test.ts); bn_alpha and memo refuse
      // MECTA (bn-alpha.test.ts, memo.test.ts). Each of those files runs its own 20-step leak test.
      if (name === 'roid' || name === 'memo' || (name === 'bn_alpha' && withMecta)) continue;
      it(`${name}${withMecta ? ' + MECTA' : ''}: ${LEAK_STEPS} steps on the real model leak no tensor`, async () => {
        const model = buildModel('resnext29', weights, { rng: new Rng(3) });
        const xs = [0, 1, 2].map((i) => nhwc(inputs, `x${i}`));
        warmUp(model, xs[0]);
        if (withMecta) {
          model.setNormMode('mecta', {
            beta: 0.1,
            initBeta: null,
            forgetGate: true,
            distMetric: 'skl',
            distScale: 1,
            betaThre: 0.05,
            pruneQ: 0.5,
          });
        } else if (name === 'source') model.setNormMode('source');
        const before = tf.memory().numTensors;
        const opts: AdaptOptions = {
          lr: 0.01,
          momentum: 0.9,
          optimizer: 'sgd',
          episodic: false,
          eMargin: 1.2,
          dMargin: 0.9875,
          fisherAlpha: 2,
          fisherSize: 16,
          matchedUpdate: 'momentum',
        };
        const alg = await ALGORITHMS[name].create(model, opts, fisherCtx());
        let steady = -1;
        for (let i = 0; i < LEAK_STEPS; i++) {
          const r = alg.step(xs[i % 3]);
          r.logits.dispose();
          if (i === 2) steady = tf.memory().numTensors;
        }
        expect(tf.memory().numTensors).toBe(steady);
        alg.dispose();
        expect(tf.memory().numTensors).toBe(before);
        tf.dispose(xs);
        model.dispose();
      });
    }
  }
});
