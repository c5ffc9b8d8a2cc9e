/**
 * Backend matrix: whole adaptation steps on the `cpu` backend equal the same steps on `wasm`.
 * On WASM the model runs its heap and SIMD kernels (src/models/channel-kernels.ts,
 * src/models/simd-kernels.ts); on cpu, and on WASM with `setHeapKernels(false)`, it runs their tf-op
 * fallbacks (src/models/kernel-reference.ts, chosen in src/models/kernels.ts). Those are checked
 * kernel by kernel elsewhere; this runs them end to end on test/fixtures/models/resnext_small
 * with the batches of test/fixtures/adapt: Tent on the whole model, and EATA on the MECTA norm
 * layer (accumulated statistics, forget gate, prune-q 0.5, a one-batch Fisher). Three legs
 * against WASM-with-kernels: cpu, and WASM with the fallbacks, which isolates the fallback code
 * from the backends' own kernels (conv, matMul).
 *
 * One process, two backends: tf.setBackend switches the active backend, and each run builds its
 * model and inputs under the backend it measures, reads everything back to JS arrays and disposes
 * it before the next, so no tensor crosses backends. Pruning draws from a seeded JS generator, so
 * every leg caches the same channels.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import type { MectaOptions } from '../models/types.js';
import { relu } from '../models/ops/relu-mask.js';
import { setHeapKernels } from '../models/kernels.js';
import { Rng } from '../util/rng.js';
import { ALGORITHMS } from './registry.js';
import type { AdaptOptions, AlgorithmContext } from './types.js';
import { ErrorLog, fixtureBatch } from './parity-helpers.js';

const ROOT = join(process.cwd(), 'test', 'fixtures');
const WEIGHTS = join(ROOT, 'models', 'resnext_small.safetensors');
const INPUTS = join(ROOT, 'adapt', 'inputs.safetensors');
const available = existsSync(WEIGHTS) && existsSync(INPUTS);

type Tol = Record<'logits' | 'params' | 'update1' | 'update' | 'stats' | 'beta' | 'fisher', number>;

/**
 * Bounds on ‖leg − wasm‖ / ‖wasm‖ per tensor; the measured maxima (this fixture, both cases) are
 * in the comments. Every leg computes in float32, so the forward quantities (logits, MECTA β,
 * accumulated statistics) agree to a few float32 roundings. Gradients do not: on this barely
 * trained network and 8-sample batches the entropy gradient is ill-conditioned in float32 —
 * scaling the affine parameters by (1 + 1e-7·N(0,1)), one rounding, moves it by 3e-3 (measured on
 * both backends; ReLU inputs within round-off of zero flip). So the update is compared against
 * its own size after the first step (the gradient at θ0, same inputs; θ1 − θ0 also carries θ1's
 * own rounding, large against a 0.01-lr step) and again after the last, where the later gradients
 * were taken at parameters that already differ by roundings.
 */
const TOL: Record<'cpu' | 'fallback', Tol> = {
  cpu: {
    logits: 3e-5, // measured 3.3e-6
    params: 3e-4, // against ‖θ‖; measured 2.6e-5
    update1: 1e-2, // measured 2.8e-3: the one-rounding sensitivity above
    update: 3e-2, // measured 4.9e-3
    stats: 1e-5, // measured 1.3e-7
    beta: 1e-5, // measured 5.6e-8
    fisher: 8e-2, // a squared gradient; measured 2.3e-2
  },
  fallback: {
    logits: 3e-5, // measured 8.1e-6
    params: 3e-4, // measured 7.2e-5
    update1: 3e-3, // measured 9.0e-4
    update: 3e-2, // measured 8.7e-3
    stats: 1e-5, // measured 1.6e-6
    beta: 1e-5, // measured 7.2e-7
    fisher: 5e-2, // measured 9.4e-3
  },
};

const MECTA: MectaOptions = {
  beta: 0.1,
  initBeta: null,
  forgetGate: true,
  distMetric: 'skl',
  distScale: 1,
  betaThre: 0.05,
  pruneQ: 0.5,
};

const OPTS: AdaptOptions = {
  lr: 0.01,
  momentum: 0.9,
  optimizer: 'sgd',
  episodic: false,
  // the thresholds of the eata fixture case (test/fixtures/adapt/eata.json)
  eMargin: 1.2,
  dMargin: 0.9875,
  fisherAlpha: 2,
  fisherSize: 8,
  matchedUpdate: 'momentum',
};

interface RunOut {
  logits: Float32Array[];
  counts: (number | undefined)[][];
  betas: number[][];
  matched: boolean[][];
  /** Affine parameters after the first step. */
  first: Map<string, Float32Array>;
  /** Norm-layer state after the last step. */
  state: Map<string, Float32Array>;
  fisher: Map<string, Float32Array>;
}

let weights: StateDict;
let inputs: StateDict;
const errors = new ErrorLog();

beforeAll(async () => {
  await initBackend('wasm');
  if (!available) return;
  weights = await readSafetensors(WEIGHTS);
  inputs = await readSafetensors(INPUTS);
});

afterAll(() => {
  errors.report('backend matrix (against wasm), max relative errors');
});

/** NCHW fixture batch → NHWC tensor on the active backend. */
function nhwc(key: string): tf.Tensor4D {
  return fixtureBatch(inputs, key);
}

/**
 * Without the WASM kernels, ReLU saves its mask bit-packed through constant matrices that
 * src/models/kernel-reference.ts builds once per word width (24, 16 or 8 bits) and keeps for the process;
 * they are built here, before any leak count starts. (The model's own lazily built constants go
 * with `model.dispose()`.)
 */
function warmReluConstants(): void {
  for (const n of [24, 16, 8]) {
    const x = tf.linspace(-1, 1, n).reshape([1, 1, 1, n]) as tf.Tensor4D;
    const g = tf.grad((t: tf.Tensor) => tf.sum(relu(t as tf.Tensor4D)))(x);
    tf.dispose([x, g]);
  }
}

type Leg = 'wasm' | 'wasm-fallback' | 'cpu';

async function run(leg: Leg, alg: 'tent' | 'eata', mecta: MectaOptions | null, steps: number): Promise<RunOut> {
  const backend = leg === 'cpu' ? 'cpu' : 'wasm';
  expect(await tf.setBackend(backend)).toBe(true);
  expect(tf.getBackend()).toBe(backend);
  setHeapKernels(leg !== 'wasm-fallback');
  try {
    warmReluConstants();
    const before = tf.memory().numTensors;
    const model = buildModel('resnext29', weights, { rng: new Rng(0) });
    if (mecta) model.setNormMode('mecta', mecta);
    const ctx: AlgorithmContext = {
      rng: new Rng(1),
      fisherData: () =>
        (async function* () {
          yield nhwc('fisher_x0');
        })(),
    };
    const a = await ALGORITHMS[alg].create(model, OPTS, ctx);
    const out: RunOut = { logits: [], counts: [], betas: [], matched: [], first: new Map(), state: new Map(), fisher: new Map() };
    for (const [k, t] of a.saveState()) {
      if (k.startsWith('eata.fisher.')) out.fisher.set(k, t.dataSync() as Float32Array);
      t.dispose();
    }
    const read = (into: Map<string, Float32Array>, suffixes: string[]) => {
      const sd = model.stateDict();
      for (const l of model.normLayers) {
        for (const p of suffixes) into.set(`${l.name}.${p}`, sd.get(`${l.name}.${p}`)!.dataSync() as Float32Array);
      }
      tf.dispose([...sd.values()]);
    };
    for (let s = 0; s < steps; s++) {
      const x = nhwc(`x${s}`);
      const r = a.step(x);
      x.dispose();
      out.logits.push(r.logits.dataSync() as Float32Array);
      r.logits.dispose();
      out.counts.push([Number(r.updated), r.metrics?.reliable, r.metrics?.used]);
      out.betas.push(model.normLayers.map((l) => l.last?.beta ?? NaN));
      out.matched.push(model.normLayers.map((l) => l.last?.cached === false));
      if (s === 0) read(out.first, ['weight', 'bias']);
    }
    read(out.state, ['weight', 'bias', 'running_mean', 'running_var']);
    a.dispose();
    model.dispose();
    expect(tf.memory().numTensors, `${leg}: tensors left after the run`).toBe(before);
    return out;
  } finally {
    setHeapKernels(true);
    await tf.setBackend('wasm');
  }
}

function check(label: string, kind: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: number): void {
  errors.check(label, kind, got, want, tol);
}

/** θ − θ0 of `got` against that of `want` (θ0: the fixture weights). */
function checkUpdate(label: string, kind: string, key: string, got: Float32Array, want: Float32Array, tol: number): void {
  const theta0 = weights.get(key)!.data;
  const upd = (v: Float32Array) => Array.from(v, (x, i) => x - theta0[i]);
  check(label, kind, upd(got), upd(want), tol);
}

function compare(name: string, got: RunOut, want: RunOut, tol: Tol, withStats: boolean): void {
  expect(got.counts, `${name}: updated / reliable / used per step`).toEqual(want.counts);
  expect(got.matched, `${name}: matched layers per step`).toEqual(want.matched);
  got.logits.forEach((l, s) => check(`${name} logits${s}`, `${name}.logits`, l, want.logits[s], tol.logits));
  if (withStats) got.betas.forEach((b, s) => check(`${name} beta${s}`, `${name}.beta`, b, want.betas[s], tol.beta));
  for (const [k, v] of want.first) checkUpdate(`${name} step-1 update ${k}`, `${name}.update1`, k, got.first.get(k)!, v, tol.update1);
  for (const [k, v] of want.state) {
    const isStat = k.endsWith('running_mean') || k.endsWith('running_var');
    if (isStat && !withStats) continue;
    const g = got.state.get(k)!;
    check(`${name} final ${k}`, `${name}.${isStat ? 'stats' : 'params'}`, g, v, isStat ? tol.stats : tol.params);
    if (!isStat) checkUpdate(`${name} update ${k}`, `${name}.update`, k, g, v, tol.update);
  }
  for (const [k, v] of want.fisher) check(`${name} ${k}`, `${name}.fisher`, got.fisher.get(k)!, v, tol.fisher);
}

describe.skipIf(!available)('backend matrix: cpu and the WASM fallbacks equal WASM on whole adaptation steps (resnext_small)', () => {
  it('tent, whole model, 2 steps', async () => {
    const wasm = await run('wasm', 'tent', null, 2);
    expect(wasm.counts.every((c) => c[0] === 1)).toBe(true);
    compare('tent.fallback', await run('wasm-fallback', 'tent', null, 2), wasm, TOL.fallback, false);
    compare('tent.cpu', await run('cpu', 'tent', null, 2), wasm, TOL.cpu, false);
  });

  it('eata + MECTA (accum-bn, forget gate, prune-q 0.5, one-batch Fisher), 2 steps', async () => {
    const wasm = await run('wasm', 'eata', MECTA, 2);
    // the run exercises what it names: a Fisher, two steps taken, the second with matched layers
    expect(wasm.fisher.size).toBeGreaterThan(0);
    expect(wasm.counts.map((c) => c[0])).toEqual([1, 1]);
    expect(wasm.matched[1].some(Boolean)).toBe(true);
    compare('eata_mecta.fallback', await run('wasm-fallback', 'eata', MECTA, 2), wasm, TOL.fallback, true);
    compare('eata_mecta.cpu', await run('cpu', 'eata', MECTA, 2), wasm, TOL.cpu, true);
  });
});
