import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initBackend, tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import { Adam, SGD, createOptimizer, type OptimizerOptions, type ParamGroup } from './optim.js';

beforeAll(async () => {
  await initBackend('wasm');
});

const vals = (t: tf.Tensor) => Array.from(t.dataSync());

function expectClose(got: number[], want: number[], tol = 1e-6) {
  expect(got.length).toBe(want.length);
  got.forEach((g, i) => expect(Math.abs(g - want[i])).toBeLessThanOrEqual(tol * Math.max(1, Math.abs(want[i]))));
}

describe('SGD (PyTorch momentum semantics)', () => {
  it('buf = g on the first step, then buf = m·buf + g; θ -= lr·buf', () => {
    const p = tf.variable(tf.tensor1d([1, 2]));
    const opt = new SGD([p], { lr: 0.1, momentum: 0.9 });
    const g1 = tf.tensor1d([0.5, -1]);
    opt.step([g1]);
    // buf = [0.5, -1]; θ = [1 - 0.05, 2 + 0.1]
    expectClose(vals(p), [0.95, 2.1]);
    const g2 = tf.tensor1d([0.1, 0.2]);
    opt.step([g2]);
    // buf = [0.45 + 0.1, -0.9 + 0.2] = [0.55, -0.7]; θ = [0.95 - 0.055, 2.1 + 0.07]
    expectClose(vals(p), [0.895, 2.17]);
    // zero gradient (PyTorch 1.12 zeroed .grad): momentum still moves θ; buf = [0.495, -0.63]
    opt.step([null]);
    expectClose(vals(p), [0.8455, 2.233]);
    // masked out (PyTorch >= 2.0 .grad None): untouched, buffer kept
    opt.step([g2], [false]);
    expectClose(vals(p), [0.8455, 2.233]);
    const st = opt.saveState();
    expectClose(vals(st.get('sgd.momentum_buffer.0')!), [0.495, -0.63]);
    for (const t of st.values()) t.dispose();
    tf.dispose([p, g1, g2]);
    opt.dispose();
  });

  it('momentum 0 is plain gradient descent with no state', () => {
    const p = tf.variable(tf.tensor1d([1]));
    const opt = new SGD([p], { lr: 0.5, momentum: 0 });
    const g = tf.tensor1d([2]);
    opt.step([g]);
    opt.step([g]);
    expectClose(vals(p), [-1]);
    expect(opt.hasState(0)).toBe(false);
    tf.dispose([p, g]);
    opt.dispose();
  });

  it('a zero-gradient first step creates a zero buffer (same as skipping it for SGD)', () => {
    const p = tf.variable(tf.tensor1d([3]));
    const opt = new SGD([p], { lr: 0.1, momentum: 0.9 });
    opt.step([null]);
    expectClose(vals(p), [3]);
    expect(opt.hasState(0)).toBe(true);
    const g = tf.tensor1d([1]);
    opt.step([g]); // buf = 0.9·0 + 1
    expectClose(vals(p), [2.9]);
    tf.dispose([p, g]);
    opt.dispose();
  });

  it('per-parameter masks and state save/load continue identically', () => {
    const a = tf.variable(tf.tensor1d([1, 1]));
    const b = tf.variable(tf.tensor2d([[0.5]]));
    const opt = new SGD([a, b], { lr: 0.01, momentum: 0.9 });
    const ga = tf.tensor1d([1, -2]);
    const gb = tf.tensor2d([[4]]);
    opt.step([ga, gb]);
    opt.step([ga, gb], [true, false]);
    expectClose(vals(b), [0.46]);
    expectClose(vals(a), [1 - 0.01 - 0.019, 1 + 0.02 + 0.038]);
    const saved = opt.saveState();
    expect([...saved.keys()].sort()).toEqual(['sgd.momentum_buffer.0', 'sgd.momentum_buffer.1']);
    const a2 = tf.variable(a.clone());
    const b2 = tf.variable(b.clone());
    const opt2 = new SGD([a2, b2], { lr: 0.01, momentum: 0.9 });
    opt2.loadState(saved);
    for (const t of saved.values()) t.dispose();
    opt.step([ga, gb]);
    opt2.step([ga, gb]);
    expectClose(vals(a2), vals(a), 0);
    expectClose(vals(b2), vals(b), 0);
    tf.dispose([a, b, a2, b2, ga, gb]);
    opt.dispose();
    opt2.dispose();
  });

  it('rejects state of the wrong shape', () => {
    const p = tf.variable(tf.tensor1d([1, 2]));
    const opt = new SGD([p], { lr: 0.1, momentum: 0.9 });
    const bad = tf.tensor1d([1, 2, 3]);
    expect(() => opt.loadState(new Map([['sgd.momentum_buffer.0', bad]]))).toThrow(/shape/);
    tf.dispose([p, bad]);
    opt.dispose();
  });
});

/** Scalar double-precision Adam written from the PyTorch docs, as an independent reference. */
function adamRef(theta: number, grads: number[], lr: number): number[] {
  let m = 0;
  let v = 0;
  const out: number[] = [];
  grads.forEach((g, k) => {
    const t = k + 1;
    m = 0.9 * m + 0.1 * g;
    v = 0.999 * v + 0.001 * g * g;
    const mHat = m / (1 - 0.9 ** t);
    const vHat = v / (1 - 0.999 ** t);
    // PyTorch puts eps after dividing sqrt(v) by sqrt(bias_correction2): same as sqrt(vHat) + eps
    theta -= (lr * mHat) / (Math.sqrt(vHat) + 1e-8);
    out.push(theta);
  });
  return out;
}

describe('Adam (PyTorch formula)', () => {
  it('first step moves by lr·sign(g); later steps match the hand formula', () => {
    const p = tf.variable(tf.tensor1d([1, -1]));
    const opt = new Adam([p], { lr: 0.1 });
    const gs = [
      [0.5, -3],
      [-0.2, 1e-3],
      [0.7, 0],
    ];
    const ref0 = adamRef(1, gs.map((g) => g[0]), 0.1);
    const ref1 = adamRef(-1, gs.map((g) => g[1]), 0.1);
    // hand-computed first two steps of parameter 0:
    // t=1: m=0.05, v=2.5e-4, m̂=0.5, v̂=0.25 → θ = 1 − 0.1·0.5/(0.5+1e-8) ≈ 0.9
    // t=2: m=0.025, v=2.8975e-4, m̂=0.025/0.19, v̂=2.8975e-4/0.001999 → θ ≈ 0.9 − 0.0345606
    expect(ref0[0]).toBeCloseTo(0.9, 7);
    expect(ref0[1]).toBeCloseTo(0.9 - 0.0345606, 6);
    gs.forEach((g, k) => {
      const gt = tf.tensor1d(g);
      opt.step([gt]);
      gt.dispose();
      expectClose(vals(p), [ref0[k], ref1[k]], 2e-6);
    });
    tf.dispose(p);
    opt.dispose();
  });

  it('keeps a per-parameter step count (a masked parameter does not advance)', () => {
    const a = tf.variable(tf.tensor1d([0]));
    const b = tf.variable(tf.tensor1d([0]));
    const opt = createOptimizer('adam', [a, b], { lr: 0.01, momentum: 0.9 });
    const g = tf.tensor1d([1]);
    const g2 = tf.tensor1d([-0.5]);
    opt.step([g, g], [true, false]);
    opt.step([g2, g2]);
    expectClose(vals(a), [adamRef(0, [1, -0.5], 0.01)[1]]);
    expectClose(vals(b), [adamRef(0, [-0.5], 0.01)[0]]);
    const st = opt.saveState();
    expect(vals(st.get('adam.step.0')!)).toEqual([2]);
    expect(vals(st.get('adam.step.1')!)).toEqual([1]);
    // round trip
    const a2 = tf.variable(a.clone());
    const b2 = tf.variable(b.clone());
    const opt2 = createOptimizer('adam', [a2, b2], { lr: 0.01, momentum: 0.9 });
    opt2.loadState(st);
    for (const t of st.values()) t.dispose();
    opt.step([g, g2]);
    opt2.step([g, g2]);
    expectClose(vals(a2), vals(a), 0);
    expectClose(vals(b2), vals(b), 0);
    tf.dispose([a, b, a2, b2, g, g2]);
    opt.dispose();
    opt2.dispose();
  });
});

describe('optimizer memory', () => {
  it('does not leak tensors over many steps, clear() and dispose()', () => {
    const p = tf.variable(tf.randomNormal([8, 3]));
    const g = tf.randomNormal([8, 3]);
    const before = tf.memory().numTensors;
    for (const name of ['sgd', 'adam'] as const) {
      const opt = createOptimizer(name, [p], { lr: 1e-3, momentum: 0.9 });
      for (let i = 0; i < 20; i++) opt.step([i % 3 === 0 ? null : g], i % 5 === 4 ? [false] : undefined);
      const st = opt.saveState();
      opt.clear();
      opt.loadState(st);
      for (const t of st.values()) t.dispose();
      opt.dispose();
    }
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([p, g]);
  });
});

/**
 * torch.optim trajectories from scripts/make-optim-fixtures.py (torch 1.13, float32): SGD with
 * momentum, Nesterov, dampening and weight decay, Adam with weight decay, AdamW, and parameter
 * groups with their own lr / weight decay / betas, including a zero-filled `.grad` (null here)
 * and a `.grad = None` step (masked here). Parameters after every step and the final state, to
 * 1e-6 relative (measured: 1.2e-7, one float32 rounding).
 */
describe('PyTorch parity (test/fixtures/optim/torch_optim.json)', () => {
  type TorchOpts = { lr: number; momentum?: number; dampening?: number; nesterov?: boolean; weight_decay?: number; betas?: [number, number]; eps?: number };
  interface Fixture {
    shapes: number[][];
    params0: number[][];
    grads: (number[] | 0 | null)[][];
    cases: {
      case: string;
      optimizer: 'SGD' | 'Adam' | 'AdamW';
      options: TorchOpts;
      groups: (Partial<TorchOpts> & { params: number[] })[] | null;
      params: number[][][];
      state: Record<string, Record<string, number | number[]>>;
    }[];
  }
  const fx = JSON.parse(
    readFileSync(join(process.cwd(), 'test', 'fixtures', 'optim', 'torch_optim.json'), 'utf8'),
  ) as Fixture;
  const ours = (o: Partial<TorchOpts>): Partial<OptimizerOptions> => {
    const out: Partial<OptimizerOptions> = {};
    if (o.lr !== undefined) out.lr = o.lr;
    if (o.momentum !== undefined) out.momentum = o.momentum;
    if (o.dampening !== undefined) out.dampening = o.dampening;
    if (o.nesterov !== undefined) out.nesterov = o.nesterov;
    if (o.weight_decay !== undefined) out.weightDecay = o.weight_decay;
    if (o.betas) [out.beta1, out.beta2] = o.betas;
    if (o.eps !== undefined) out.eps = o.eps;
    return out;
  };
  /** Largest |got − want| / max(|want|, 1) over a case (the parameters are O(1)). */
  let worst = 0;
  const relClose = (label: string, got: ArrayLike<number>, want: number[]) => {
    expect(got.length, label).toBe(want.length);
    for (let k = 0; k < want.length; k++) {
      const e = Math.abs(got[k] - want[k]) / Math.max(1, Math.abs(want[k]));
      worst = Math.max(worst, e);
      expect(e, `${label}[${k}]: ${got[k]} vs ${want[k]}`).toBeLessThanOrEqual(1e-6);
    }
  };
  afterAll(() => console.log(`torch.optim parity: max relative error ${worst.toExponential(2)}`));

  for (const c of fx.cases) {
    it(c.case, () => {
      const before = tf.memory().numTensors;
      const params = fx.params0.map((v, i) => tf.tidy(() => tf.variable(tf.tensor(v, fx.shapes[i]))));
      const name = c.optimizer.toLowerCase() as 'sgd' | 'adam' | 'adamw';
      const defaults = ours(c.options) as OptimizerOptions;
      const groups: ParamGroup[] | null = c.groups && c.groups.map((g) => ({ ...ours(g), params: g.params.map((i) => params[i]) }));
      const opt = createOptimizer(name, groups ?? params, defaults);
      // flat order = group order (here the parameters' own order in every case)
      expect(opt.params.every((p, i) => p === params[i])).toBe(true);
      fx.grads.forEach((row, s) => {
        const grads = row.map((g, i) => (Array.isArray(g) ? tf.tensor(g, fx.shapes[i]) : null));
        opt.step(grads, row.map((g) => g !== null));
        tf.dispose(grads.filter((g): g is tf.Tensor => g !== null));
        params.forEach((p, i) => relClose(`${c.case} step ${s} param ${i}`, p.dataSync(), c.params[s][i]));
      });
      const st = opt.saveState();
      const want = new Map<string, number[]>();
      for (const [i, slots] of Object.entries(c.state)) {
        for (const [slot, v] of Object.entries(slots)) want.set(`${name}.${slot}.${i}`, typeof v === 'number' ? [v] : v);
      }
      expect([...st.keys()].sort()).toEqual([...want.keys()].sort());
      for (const [k, v] of want) relClose(`${c.case} ${k}`, st.get(k)!.dataSync(), v);
      tf.dispose([...st.values()]);
      opt.dispose();
      tf.dispose(params);
      expect(tf.memory().numTensors).toBe(before);
    });
  }
});

describe('hyper-parameters and groups', () => {
  it('a group lr / weight decay overrides the defaults; defaults changed in place apply next step', () => {
    const a = tf.variable(tf.tensor1d([1]));
    const b = tf.variable(tf.tensor1d([1]));
    const defaults = { lr: 0.1, momentum: 0 };
    const opt = new SGD([{ params: [a] }, { params: [b], lr: 0.01, weightDecay: 0.5 }], defaults);
    const g = tf.tensor1d([1]);
    opt.step([g, g]);
    expectClose(vals(a), [0.9]);
    expectClose(vals(b), [1 - 0.01 * (1 + 0.5)]);
    defaults.lr = 0.2; // as cta-train's schedule: read at the next step (group b keeps its own lr)
    opt.step([g, g]);
    expectClose(vals(a), [0.7]);
    expectClose(vals(b), [0.985 - 0.01 * (1 + 0.5 * 0.985)]);
    tf.dispose([a, b, g]);
    opt.dispose();
  });

  it('weight decay acts on a zero gradient, not on a masked parameter', () => {
    const p = tf.variable(tf.tensor1d([2]));
    const opt = new SGD([p], { lr: 0.1, weightDecay: 0.5 });
    opt.step([null]);
    expectClose(vals(p), [1.9]);
    opt.step([null], [false]);
    expectClose(vals(p), [1.9]);
    tf.dispose(p);
    opt.dispose();
  });

  it('rejects what torch.optim rejects, as one-line CtaErrors', () => {
    const p = tf.variable(tf.tensor1d([1]));
    expect(() => new SGD([p], { lr: 0.1, nesterov: true })).toThrow(CtaError);
    expect(() => new SGD([p], { lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true })).toThrow(/Nesterov/);
    expect(() => new SGD([p], { lr: -1 })).toThrow(/learning rate/);
    expect(() => new Adam([p], { lr: 0.1, beta2: 1 })).toThrow(/beta2/);
    expect(() => new SGD([{ params: [p] }, { params: [p], lr: 1 }], { lr: 0.1 })).toThrow(/more than one parameter group/);
    expect(() => new Adam([{ params: [p], weightDecay: -1 }], { lr: 0.1 })).toThrow(/group 0|weight decay/);
    p.dispose();
  });
});
