/**
 * LAME (Boudiaf et al., CVPR 2022, "Parameter-free Online Test-time Adaptation"): the source model
 * is left as it is (eval-mode norm layers, no gradient, nothing stored across batches); only its
 * outputs are corrected, per batch, by a Laplacian-regularised assignment (the paper's
 * concave-convex bound optimisation; github:fiveai/LAME src/adaptation/lame.py, the same code in
 * mariodoebler/test-time-adaptation classification/methods/lame.py). For a batch of N images
 * with source probabilities p and penultimate features f (Classifier.forwardFeatures):
 * 1. unary a = −log(p + 1e-10)                                                       [N, K]
 * 2. features normalised to unit L2 norm (torch F.normalize, ε 1e-12), affinity W   [N, N]:
 *    - 'knn': W_ij = 1 when j is among the k nearest neighbours of i (Euclidean, i itself — the
 *      nearest — excluded), else 0;
 *    - 'rbf': W_ij = exp(−‖f_i − f_j‖² / (2σ²)), σ = the mean over i of the distance to its k-th
 *      nearest point counting i itself (so its diagonal is 1);
 *    - 'linear': W = f·fᵀ;
 *    optionally symmetrised, W ← (W + Wᵀ)/2 (FORCE_SYMMETRY);
 * 3. bound optimisation (laplacian_optimization, λ = 1): Y ← softmax(−a); then up to max-steps
 *    times Y ← softmax(−a + λ·W·Y), with the energy E = Σ a·Y − λ·(W·Y)·Y + Y·log max(Y, 1e-20)
 *    after each; it stops after step i (0-based) when i > 1 and |E − E_prev| ≤ 1e-8·|E_prev|.
 * The prediction is Y (returned as log Y, whose softmax and argmax are Y's).
 *
 * Defaults are the official code's: affinity 'rbf' with k = 5 (fiveai/LAME defaults.py and its
 * configs/method/best/LAME/overall_best.yaml, which keeps the default affinity; mariodoebler's
 * conf.py the same), symmetry off, 100 steps. The SIGMA option of both codes is read by no
 * affinity (rbf derives σ from the k-th distance), so it has no counterpart here.
 *
 * Choices of this port: steps 1–3 run in float64 on the CPU (N ≤ a few hundred; W·Y is N²K
 * multiply-adds per step); the official code runs them in float32, where the 1e-8 relative
 * convergence test only stops once E no longer changes at all, so it may take more steps. Ties
 * among neighbour distances go to the lower index (torch.topk leaves their order unspecified).
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec, StepResult } from './types.js';
import type { FieldSpec } from '../config/schema.js';
import { CtaError } from '../util/errors.js';

export const LAME_AFFINITIES = ['knn', 'rbf', 'linear'] as const;
export type LameAffinity = (typeof LAME_AFFINITIES)[number];

/** LAME's options (cfg.ADAPTATION.LAME_* of the official code; max-steps is laplacian_optimization's). */
export const LAME_OPTIONS = {
  lameAffinity: { type: 'enum', choices: LAME_AFFINITIES, default: 'rbf', group: 'algorithm', description: 'LAME: affinity between the batch features: knn (k nearest neighbours), rbf (σ from the k-th distance) or linear' },
  lameKnn: { type: 'int', min: 1, default: 5, group: 'algorithm', description: 'LAME: k of the knn affinity and of the rbf bandwidth' },
  lameForceSymmetry: { type: 'bool', default: false, group: 'algorithm', description: 'LAME: symmetrise the affinity, (W + Wᵀ)/2' },
  lameMaxSteps: { type: 'int', min: 1, default: 100, group: 'algorithm', description: 'LAME: at most this many bound-optimisation steps per batch' },
} as const satisfies Record<string, FieldSpec>;

export interface LameValues {
  lameAffinity?: LameAffinity;
  lameKnn?: number;
  lameForceSymmetry?: boolean;
  lameMaxSteps?: number;
}

const METRICS = {
  lameSteps: { summary: 'lame_steps', description: 'bound-optimisation steps run (summed over the batches)' },
  changed: { summary: 'changed', description: "images whose predicted class differs from the source model's" },
};

/** λ of laplacian_optimization (hard-coded 1 in the official code). */
const BOUND_LAMBDA = 1;
const CONVERGENCE = 1e-8;

/** Pairwise Euclidean distances of the rows of `f` ([n, d] row-major). */
function distances(f: Float64Array, n: number, d: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      let s = 0;
      for (let t = 0; t < d; t++) {
        const u = f[i * d + t] - f[j * d + t];
        s += u * u;
      }
      out[i * n + j] = out[j * n + i] = Math.sqrt(s);
    }
  }
  return out;
}

/** Row i's column indices by increasing distance (ties: lower index first). */
function sortedRow(dist: Float64Array, n: number, i: number): number[] {
  const idx = Array.from({ length: n }, (_, j) => j);
  return idx.sort((a, b) => dist[i * n + a] - dist[i * n + b] || a - b);
}

/** The affinity matrix W [n, n] of unit-norm features `f` (step 2 of the file comment). */
export function lameAffinity(kind: LameAffinity, f: Float64Array, n: number, d: number, k: number): Float64Array {
  const w = new Float64Array(n * n);
  if (kind === 'linear') {
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let t = 0; t < d; t++) s += f[i * d + t] * f[j * d + t];
        w[i * n + j] = s;
      }
    }
    return w;
  }
  const dist = distances(f, n, d);
  if (kind === 'knn') {
    const m = Math.min(k + 1, n);
    for (let i = 0; i < n; i++) for (const j of sortedRow(dist, n, i).slice(1, m)) w[i * n + j] = 1;
    return w;
  }
  const m = Math.min(k, n);
  let sigma = 0;
  for (let i = 0; i < n; i++) sigma += dist[i * n + sortedRow(dist, n, i)[m - 1]];
  sigma /= n;
  for (let q = 0; q < n * n; q++) w[q] = Math.exp(-(dist[q] * dist[q]) / (2 * sigma * sigma));
  return w;
}

/** Row-wise softmax of `z` [n, k] in place. */
function softmaxRows(z: Float64Array, n: number, k: number): void {
  for (let i = 0; i < n; i++) {
    let mx = -Infinity;
    for (let c = 0; c < k; c++) mx = Math.max(mx, z[i * k + c]);
    let s = 0;
    for (let c = 0; c < k; c++) s += z[i * k + c] = Math.exp(z[i * k + c] - mx);
    for (let c = 0; c < k; c++) z[i * k + c] /= s;
  }
}

/**
 * laplacian_optimization (step 3 of the file comment) for unary `a` [n, k] and affinity `w`
 * [n, n]: the assignment Y [n, k] and the number of steps run.
 */
export function laplacianOptimization(a: Float64Array, w: Float64Array, n: number, k: number, maxSteps: number): { y: Float64Array; steps: number } {
  let y = a.map((v) => -v);
  softmaxRows(y, n, k);
  let oldE = Infinity;
  let steps = 0;
  for (let it = 0; it < maxSteps; it++) {
    steps = it + 1;
    const pairwise = new Float64Array(n * k);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const wij = w[i * n + j];
        if (wij === 0) continue;
        for (let c = 0; c < k; c++) pairwise[i * k + c] += BOUND_LAMBDA * wij * y[j * k + c];
      }
    }
    const next = new Float64Array(n * k);
    for (let q = 0; q < n * k; q++) next[q] = -a[q] + pairwise[q];
    softmaxRows(next, n, k);
    y = next;
    let e = 0;
    for (let q = 0; q < n * k; q++) e += a[q] * y[q] - BOUND_LAMBDA * pairwise[q] * y[q] + y[q] * Math.log(Math.max(y[q], 1e-20));
    if (it > 1 && Math.abs(e - oldE) <= CONVERGENCE * Math.abs(oldE)) break;
    oldE = e;
  }
  return { y, steps };
}

/** LAME's assignment for source logits [n, k] and features [n, d] (read back, float64). */
export function lameAssign(logits: Float32Array, features: Float32Array, n: number, k: number, d: number, o: Required<LameValues>): { y: Float64Array; steps: number } {
  const a = new Float64Array(n * k);
  for (let i = 0; i < n; i++) {
    let mx = -Infinity;
    for (let c = 0; c < k; c++) mx = Math.max(mx, logits[i * k + c]);
    let s = 0;
    for (let c = 0; c < k; c++) s += Math.exp(logits[i * k + c] - mx);
    for (let c = 0; c < k; c++) a[i * k + c] = -Math.log(Math.exp(logits[i * k + c] - mx) / s + 1e-10);
  }
  const f = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let t = 0; t < d; t++) s += features[i * d + t] ** 2;
    const inv = 1 / Math.max(Math.sqrt(s), 1e-12);
    for (let t = 0; t < d; t++) f[i * d + t] = features[i * d + t] * inv;
  }
  const w = lameAffinity(o.lameAffinity, f, n, d, o.lameKnn);
  if (o.lameForceSymmetry) {
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) w[i * n + j] = w[j * n + i] = 0.5 * (w[i * n + j] + w[j * n + i]);
    }
  }
  return laplacianOptimization(a, w, n, k, o.lameMaxSteps);
}

function argmaxRow(v: ArrayLike<number>, i: number, k: number): number {
  let best = 0;
  for (let c = 1; c < k; c++) if (v[i * k + c] > v[i * k + best]) best = c;
  return best;
}

export const lame = {
  description: "LAME: Laplacian adjustment of the source model's outputs over a kNN/RBF affinity of the batch features; no parameter changes",
  usesGradients: false,
  norm: 'source', // the official configure_model: model.eval(), nothing trains
  options: LAME_OPTIONS,
  metrics: METRICS,
  async create(model, opts) {
    const v = opts as unknown as LameValues;
    const o: Required<LameValues> = {
      lameAffinity: v.lameAffinity ?? LAME_OPTIONS.lameAffinity.default,
      lameKnn: v.lameKnn ?? LAME_OPTIONS.lameKnn.default,
      lameForceSymmetry: v.lameForceSymmetry ?? LAME_OPTIONS.lameForceSymmetry.default,
      lameMaxSteps: v.lameMaxSteps ?? LAME_OPTIONS.lameMaxSteps.default,
    };
    if (!LAME_AFFINITIES.includes(o.lameAffinity)) throw new CtaError(`--lame-affinity: expected one of ${LAME_AFFINITIES.join(', ')}, got '${o.lameAffinity}'`);
    for (const key of ['lameKnn', 'lameMaxSteps'] as const) {
      if (!Number.isInteger(o[key]) || o[key] < 1) throw new CtaError(`lame: ${key} must be a positive integer, got ${o[key]}`);
    }
    model.setTrainable(false); // nothing trains; keeps the analytic backward cache at zero
    const alg: Algorithm = {
      name: 'lame',
      step(x): StepResult {
        const { features, logits } = model.forwardFeatures(x);
        const [n, k] = logits.shape;
        const d = features.shape[1];
        const z = logits.dataSync() as Float32Array;
        const f = features.dataSync() as Float32Array;
        tf.dispose([features, logits]);
        const { y, steps } = lameAssign(z, f, n, k, d, o);
        const out = new Float32Array(n * k);
        let changed = 0;
        for (let i = 0; i < n; i++) {
          for (let c = 0; c < k; c++) out[i * k + c] = Math.log(Math.max(y[i * k + c], 1e-300));
          if (argmaxRow(y, i, k) !== argmaxRow(z, i, k)) changed++;
        }
        return { logits: tf.tensor2d(out, [n, k]), updated: false, metrics: { lameSteps: steps, changed } };
      },
      reset() {
        /* nothing carries over between batches */
      },
      saveState() {
        return new Map();
      },
      loadState() {
        /* stateless */
      },
      dispose() {
        /* nothing owned */
      },
    };
    return alg;
  },
} satisfies AlgorithmSpec;
