/**
 * ROID (docs/methods.md#roid; Marsden, Döbler & Yang, WACV 2024, "Universal Test-time Adaptation
 * through Weight Ensembling, Diversity Weighting, and Prior Correction"), as the authors' code
 * runs it (github:mariodoebler/test-time-adaptation, classification/methods/roid.py, conf.py ROID.*).
 * On the norm-layer affines, test-batch statistics, one step per batch with the logits z of the
 * forward before the update:
 * 1. weights (no gradient): diversity d_i = 1 − cos(m, softmax(z_i)) against the moving average m
 *    of the batch-mean probabilities; certainty c_i = −H(z_i); both min-max normalised over the
 *    batch; w_i = exp(d_i·c_i/T); samples with d_i below the batch mean of d get w_i = 0 and are
 *    dropped; then m ← 0.9·m + 0.1·mean_i softmax(z_i) (all samples; m starts uniform);
 * 2. loss = Σ_kept w_i·SLR(z_i)/B, the soft likelihood ratio SLR(z) = −Σ_c p_c log(p_c/(1−p_c) + 1e-5)
 *    with p clamped to [0, 0.99]; plus the consistency term Σ_kept w_i·SCE(z'_i, z_i)/B, z' the
 *    logits of one augmented copy of the kept samples (get_tta_transforms with reflect padding and
 *    no blur or noise: ctx.augment) and SCE the symmetric cross-entropy (½ each way, both
 *    sides back-propagated as in the official code);
 * 3. one optimizer step; then weight ensembling θ ← 0.99·θ + 0.01·θ_source on the trained
 *    parameters;
 * 4. prediction: the pre-update logits times the smoothed prior (prior correction):
 *    p̂ = mean_i softmax(z_i), s = max(1/B, 1/C)/max p̂, z·(p̂ + s)/(1 + s·C).
 * Published: T = 1/3, momenta 0.99 (source) / 0.9 (probabilities); Adam lr 1e-3 β (0.9, 0.999) at
 * batch 200 (CIFAR), SGD lr 2.5e-4 momentum 0.9 Nesterov at batch 64 (ImageNet).
 *
 * Choices of this port: B is the batch's own size (the official code divides by the configured
 * TEST.BATCH_SIZE; they differ only on a final partial batch). When every d_i (or c_i) is equal
 * the min-max normalisation is 0/0 (NaN in the reference); here that weight factor is 0. The
 * source copy holds only the trained parameters (the official code deep-copies the whole model to
 * the CPU), reported as 'anchor' bytes. With MECTA norm only `--roid-consistency false` runs: the
 * augmented forward would otherwise enter the accumulated statistics.
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmContext, AlgorithmSpec, AdaptOptions, StepResult } from './types.js';
import { disposeGrads, GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import type { Classifier } from '../models/types.js';
import { CtaError } from '../util/errors.js';
import { tensorBytes } from './state-bytes.js';

export const ROID_OPTIONS = {
  ...GRADIENT_OPTIONS,
  roidWeighting: { type: 'bool', default: true, group: 'algorithm', description: 'ROID: certainty and diversity loss weights (ROID.USE_WEIGHTING)' },
  roidPriorCorrection: { type: 'bool', default: true, group: 'algorithm', description: 'ROID: prior correction of the predictions (ROID.USE_PRIOR_CORRECTION)' },
  roidConsistency: { type: 'bool', default: true, group: 'algorithm', description: 'ROID: consistency loss with one augmented view (ROID.USE_CONSISTENCY)' },
  roidMomentumSrc: { type: 'number', min: 0, max: 1, default: 0.99, group: 'algorithm', description: 'ROID: weight ensembling θ ← m·θ + (1 − m)·θ_source (ROID.MOMENTUM_SRC)' },
  roidMomentumProbs: { type: 'number', min: 0, max: 1, default: 0.9, group: 'algorithm', description: 'ROID: momentum of the class-probability moving average (ROID.MOMENTUM_PROBS)' },
  roidTemperature: { type: 'number', min: 0, exclusiveMin: true, default: 1 / 3, defaultText: '1/3', group: 'algorithm', description: 'ROID: temperature of the sample weights (ROID.TEMPERATURE)' },
} as const satisfies Record<string, FieldSpec>;

export interface RoidValues {
  roidWeighting?: boolean;
  roidPriorCorrection?: boolean;
  roidConsistency?: boolean;
  roidMomentumSrc?: number;
  roidMomentumProbs?: number;
  roidTemperature?: number;
}

const METRICS = {
  kept: { summary: 'kept', description: 'samples with a non-zero loss weight (diversity weight at or above the batch mean)' },
  augmented: { summary: 'augmented', description: 'augmented copies of the kept samples forwarded for the consistency loss' },
};

/** Per-sample soft likelihood ratio loss (utils/losses.py SoftLikelihoodRatio, clip 0.99, eps 1e-5). */
export function softLikelihoodRatio(z: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => {
    const p = tf.clipByValue(tf.softmax(z), 0, 0.99);
    return tf.neg(tf.sum(tf.mul(p, tf.log(tf.add(tf.div(p, tf.sub(1, p)), 1e-5))), 1)) as tf.Tensor1D;
  });
}

/** Per-sample symmetric cross-entropy ½·CE(softmax(t), s) + ½·CE(softmax(s), t) (α 0.5). */
export function symmetricCrossEntropy(s: tf.Tensor2D, t: tf.Tensor2D): tf.Tensor1D {
  return tf.tidy(() => {
    const a = tf.sum(tf.mul(tf.softmax(t), tf.logSoftmax(s)), 1);
    const b = tf.sum(tf.mul(tf.softmax(s), tf.logSoftmax(t)), 1);
    return tf.mul(tf.add(a, b), -0.5) as tf.Tensor1D;
  });
}

/** (v − min)/(max − min), 0 where max = min. */
function minMax(v: Float64Array): Float64Array {
  let lo = Infinity;
  let hi = -Infinity;
  for (const x of v) {
    lo = Math.min(lo, x);
    hi = Math.max(hi, x);
  }
  return v.map((x) => (hi > lo ? (x - lo) / (hi - lo) : 0));
}

/**
 * The sample weights and the moving-average update from the logits (row-major B×C values) and m:
 * returns the weights (0 = dropped) and the new m.
 */
export function roidWeights(z: ArrayLike<number>, b: number, c: number, m: ArrayLike<number>, temperature: number, momentum: number): { weights: Float64Array; next: Float64Array } {
  const div = new Float64Array(b);
  const cert = new Float64Array(b);
  const mean = new Float64Array(c);
  let mNorm = 0;
  for (let k = 0; k < c; k++) mNorm += m[k] * m[k];
  mNorm = Math.sqrt(mNorm);
  for (let i = 0; i < b; i++) {
    let max = -Infinity;
    for (let k = 0; k < c; k++) max = Math.max(max, z[i * c + k]);
    let sum = 0;
    for (let k = 0; k < c; k++) sum += Math.exp(z[i * c + k] - max);
    let dot = 0;
    let pNorm = 0;
    let negEnt = 0;
    for (let k = 0; k < c; k++) {
      const logp = z[i * c + k] - max - Math.log(sum);
      const p = Math.exp(logp);
      dot += p * m[k];
      pNorm += p * p;
      negEnt += p * logp;
      mean[k] += p / b;
    }
    // torch cosine_similarity: x·y / sqrt(max(‖x‖²‖y‖², ε²)), ε = 1e-8
    div[i] = 1 - dot / Math.max(Math.sqrt(pNorm) * mNorm, 1e-8);
    cert[i] = negEnt;
  }
  const d = minMax(div);
  const ce = minMax(cert);
  let dMean = 0;
  for (const x of d) dMean += x / b;
  const weights = new Float64Array(b);
  for (let i = 0; i < b; i++) weights[i] = d[i] < dMean ? 0 : Math.exp((d[i] * ce[i]) / temperature);
  const next = Float64Array.from(m, (x, k) => momentum * x + (1 - momentum) * mean[k]);
  return { weights, next };
}

/** z·(p̂ + s)/(1 + s·C) with p̂ the batch-mean softmax and s = max(1/B, 1/C)/max p̂. */
export function priorCorrect(z: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => {
    const [b, c] = z.shape;
    const prior = tf.mean(tf.softmax(z), 0);
    const smooth = tf.div(Math.max(1 / b, 1 / c), tf.max(prior));
    const smoothed = tf.div(tf.add(prior, smooth), tf.add(tf.mul(smooth, c), 1));
    return tf.mul(z, smoothed) as tf.Tensor2D;
  });
}

export async function createRoid(model: Classifier, opts: AdaptOptions, ctx: AlgorithmContext): Promise<Algorithm> {
  const o = opts as AdaptOptions & RoidValues;
  const weighting = o.roidWeighting ?? ROID_OPTIONS.roidWeighting.default;
  const prior = o.roidPriorCorrection ?? ROID_OPTIONS.roidPriorCorrection.default;
  const consistency = o.roidConsistency ?? ROID_OPTIONS.roidConsistency.default;
  const momSrc = o.roidMomentumSrc ?? ROID_OPTIONS.roidMomentumSrc.default;
  const momProbs = o.roidMomentumProbs ?? ROID_OPTIONS.roidMomentumProbs.default;
  const temperature = o.roidTemperature ?? ROID_OPTIONS.roidTemperature.default;
  if (consistency && model.normMode === 'mecta') {
    throw new CtaError('roid: the consistency loss forwards augmented images, which would enter the MECTA accumulated statistics; use --roid-consistency false with --accum-bn');
  }
  if (consistency && !ctx.augment) throw new CtaError('roid needs augmentation from its context for the consistency loss');
  const adapter = new GradientAdapter(model, opts, 'roid');
  const c = model.numClasses;
  const source = adapter.params.map((p) => tf.keep(p.clone()));
  const uniform = () => new Float64Array(c).fill(1 / c);
  let probs: Float64Array = uniform();

  const alg: Algorithm = {
    name: 'roid',
    step(x): StepResult {
      if (opts.episodic) {
        adapter.restore();
        probs = uniform();
      }
      const b = x.shape[0];
      let kept = b;
      let augmented = 0;
      const r = adapter.grads(x, (z) => {
        let w: Float64Array | null = null;
        if (weighting) {
          const res = roidWeights(z.dataSync(), b, c, probs, temperature, momProbs);
          w = res.weights;
          probs = res.next;
        }
        const slr = softLikelihoodRatio(z);
        let loss = w ? tf.sum(tf.mul(slr, tf.tensor1d(Float32Array.from(w)))) : tf.sum(slr);
        loss = tf.div(loss, b);
        if (consistency) {
          const idx: number[] = [];
          for (let i = 0; i < b; i++) if (!w || w[i] !== 0) idx.push(i);
          kept = idx.length;
          // the kept rows of z by a one-hot matrix product (tf.gather's gradient kernel is missing on WASM)
          const sel = new Float32Array(idx.length * b);
          idx.forEach((i, k) => (sel[k * b + i] = 1));
          const zKept = tf.matMul(tf.tensor2d(sel, [idx.length, b]), z) as tf.Tensor2D;
          const xKept = idx.length === b ? x : tf.gather(x, idx);
          const zAug = model.forward(ctx.augment!(xKept, { padding: 'reflect', cottaAugs: false }));
          augmented = idx.length;
          const sce = symmetricCrossEntropy(zAug, zKept);
          const wk = tf.tensor1d(Float32Array.from(idx, (i) => (w ? w[i] : 1)));
          loss = tf.add(loss, tf.div(tf.sum(tf.mul(sce, wk)), b));
        } else if (w) {
          kept = w.reduce((a, v) => a + (v !== 0 ? 1 : 0), 0);
        }
        return loss as tf.Scalar;
      });
      let updated = false;
      try {
        updated = adapter.apply(r);
      } catch (err) {
        r.logits.dispose();
        throw err;
      } finally {
        disposeGrads(r.grads);
      }
      if (momSrc < 1) {
        tf.tidy(() => adapter.params.forEach((p, i) => p.assign(tf.add(tf.mul(p, momSrc), tf.mul(source[i], 1 - momSrc)))));
      }
      let logits = r.logits;
      if (prior) {
        logits = priorCorrect(r.logits);
        r.logits.dispose();
      }
      return { logits, updated, metrics: { kept, augmented } };
    },
    reset() {
      adapter.resetAll();
      probs = uniform();
    },
    saveState() {
      const out = new Map<string, tf.Tensor>();
      adapter.saveState(out);
      out.set('roid.class_probs_ema', tf.tensor1d(Float32Array.from(probs)));
      return out;
    },
    loadState(state) {
      adapter.loadState(state);
      const m = state.get('roid.class_probs_ema');
      probs = m ? Float64Array.from(m.dataSync()) : uniform();
    },
    stateBytes() {
      // the source values of the trained parameters (weight ensembling)
      return { ...adapter.stateBytes(), anchor: tensorBytes(source) };
    },
    dispose() {
      adapter.dispose();
      tf.dispose(source);
    },
  };
  return alg;
}

export const roid = {
  description: 'ROID: diversity/certainty-weighted soft likelihood ratio + consistency, weight ensembling with the source, prior correction',
  usesGradients: true,
  norm: 'adaptive', // test-batch statistics (configure_model drops the running statistics)
  options: ROID_OPTIONS,
  metrics: METRICS,
  create(model, opts, ctx) {
    return createRoid(model, opts, ctx);
  },
} satisfies AlgorithmSpec;
