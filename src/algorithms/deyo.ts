/**
 * DeYO (Lee et al., ICLR 2024, "Entropy is not Enough for Test-Time Adaptation: From the Perspective
 * of Disentangled Factors"): entropy minimisation on samples that are confident (entropy filter)
 * and whose prediction rests on the object's shape (PLPD filter), each weighted by both.
 *
 * Per batch (the official methods/deyo.py with config.py's defaults, github:Jhyun17/DeYO):
 * 1. forward at θ, predict from it; S1 = {H < deyo_margin} (Eq. 8, deyo_margin = 0.5·ln C);
 *    S1 empty: no step;
 * 2. x' = the S1 images with their patch_len × patch_len grid of patches shuffled (patch_len 4:
 *    the number of patches per row and column, one random permutation per image), forwarded
 *    without gradient;
 * 3. PLPD_i = p(x_i)[ŷ_i] − p(x'_i)[ŷ_i], ŷ = argmax p(x) (Eq. 7); S2 = {i ∈ S1 : PLPD_i > τ}
 *    (τ = plpd_threshold, 0.2; 0.3 in the paper's mild ResNet-50 runs); S2 empty: no step;
 * 4. loss = mean over S2 of α_i·H_i with α_i = exp(−(H_i − E0)) + exp(PLPD_i) (Eq. 10,
 *    E0 = 0.4·ln C), α without gradient; one optimizer step (SGD, momentum 0.9).
 * Adapted layers: as SAR (src/algorithms/sar.ts), the official collect_params is the same.
 * The image side must be divisible by patch_len (32 and 224 are by 4); the official code then
 * resizes to the same size, an identity.
 *
 * Not with the MECTA norm layer: the patch-shuffled forward would enter MECTA's accumulated
 * statistics (and replace the layers' per-forward records the cache-stopping rule reads), so
 * create() refuses --accum-bn.
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec, StepResult } from './types.js';
import { GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import { softmaxEntropy } from './losses.js';
import { configureSarParams } from './sar.js';
import { CtaError } from '../util/errors.js';

/** DeYO's options (config.py's --deyo_margin, --deyo_margin_e0, --plpd_threshold, --patch_len). */
const DEYO_OPTIONS = {
  ...GRADIENT_OPTIONS,
  // null = 0.5·ln C / 0.4·ln C, resolved from the model's class count in create()
  deyoMargin: { type: 'number', min: 0, exclusiveMin: true, nullable: true, default: null, defaultText: '0.5·ln(classes)', group: 'algorithm', description: 'DeYO entropy filter threshold (Eqn. 8)' },
  deyoMarginE0: { type: 'number', min: 0, exclusiveMin: true, nullable: true, default: null, defaultText: '0.4·ln(classes)', group: 'algorithm', description: 'DeYO entropy weighting margin E0 (Eqn. 10)' },
  plpdThreshold: { type: 'number', default: 0.2, group: 'algorithm', description: 'DeYO PLPD threshold τ (Eqn. 8; the paper uses 0.3 for ResNet-50 BN on ImageNet-C)' },
  patchLen: { type: 'int', min: 1, default: 4, group: 'algorithm', description: 'DeYO: patches per image row and column for the shuffled view' },
} as const satisfies Record<string, FieldSpec>;

interface DeyoValues {
  deyoMargin?: number | null;
  deyoMarginE0?: number | null;
  plpdThreshold?: number;
  patchLen?: number;
}

/** Per batch; summed per domain (summary.json). */
const METRICS = {
  reliable: { summary: 'reliable', description: 'samples with entropy below deyo-margin (Eqn. 8)' },
  used: { summary: 'updated', description: 'of those, samples with PLPD above plpd-threshold, in the loss' },
};

/**
 * x [n, H, W, C] (NHWC) with every image's p × p grid of patches permuted: patch j of image i
 * (row-major over the grid) becomes its patch perms[i][j].
 */
export function patchShuffle(x: tf.Tensor4D, p: number, perms: readonly Int32Array[]): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  if (h % p !== 0 || w % p !== 0) throw new CtaError(`deyo: the image size ${h}×${w} is not divisible by --patch-len ${p}`);
  const s = h / p;
  const t = w / p;
  const idx = new Int32Array(n * p * p);
  for (let i = 0; i < n; i++) for (let j = 0; j < p * p; j++) idx[i * p * p + j] = i * p * p + perms[i][j];
  return tf.tidy(() => {
    const patches = tf.reshape(tf.transpose(tf.reshape(x, [n, p, s, p, t, c]), [0, 1, 3, 2, 4, 5]), [n * p * p, s, t, c]);
    const moved = tf.gather(patches, tf.tensor1d(idx, 'int32'));
    return tf.reshape(tf.transpose(tf.reshape(moved, [n, p, p, s, t, c]), [0, 1, 3, 2, 4, 5]), [n, h, w, c]) as tf.Tensor4D;
  });
}

export const deyo = {
  description: 'DeYO: entropy minimisation on confident samples whose prediction survives patch shuffling (PLPD), weighted by both',
  usesGradients: true,
  norm: 'adaptive', // test-batch statistics (deyo.configure_model)
  options: DEYO_OPTIONS,
  metrics: METRICS,
  async create(model, opts, ctx) {
    if (model.normMode === 'mecta') {
      throw new CtaError("deyo does not run with --accum-bn: its patch-shuffled forward would enter MECTA's accumulated statistics");
    }
    const o = opts as typeof opts & DeyoValues;
    configureSarParams(model);
    const adapter = new GradientAdapter(model, opts, 'deyo');
    const lnC = Math.log(model.numClasses);
    // thresholds as float32: PyTorch compares float32 values against the scalars in float32
    const margin = Math.fround(o.deyoMargin ?? 0.5 * lnC);
    const e0 = o.deyoMarginE0 ?? 0.4 * lnC;
    const tau = Math.fround(o.plpdThreshold ?? DEYO_OPTIONS.plpdThreshold.default);
    const p = o.patchLen ?? DEYO_OPTIONS.patchLen.default;

    const alg: Algorithm = {
      name: 'deyo',
      step(x): StepResult {
        if (opts.episodic) adapter.restore();
        const counts = { reliable: 0, used: 0 };
        const res = adapter.step(x, (z) => {
          const ent = softmaxEntropy(z);
          const h = ent.dataSync();
          const s1: number[] = [];
          for (let i = 0; i < h.length; i++) if (h[i] < margin) s1.push(i);
          counts.reliable = s1.length;
          if (s1.length === 0) return null;
          // the shuffled view and its prediction carry no gradient: values only
          const perms = s1.map(() => ctx.rng.permutation(p * p));
          const plpd = tf.tidy(() => {
            const xs = patchShuffle(tf.gather(x, s1) as tf.Tensor4D, p, perms);
            const probs = tf.softmax(tf.gather(z, s1)).arraySync() as number[][];
            const probsPrime = tf.softmax(model.forward(xs)).arraySync() as number[][];
            return probs.map((row, k) => {
              let cls = 0; // first maximum on ties, as torch.argmax
              for (let j = 1; j < row.length; j++) if (row[j] > row[cls]) cls = j;
              return Math.fround(row[cls] - probsPrime[k][cls]);
            });
          });
          const w = new Float32Array(h.length);
          s1.forEach((i, k) => {
            if (plpd[k] > tau) {
              w[i] = Math.exp(-(h[i] - e0)) + Math.exp(plpd[k]);
              counts.used++;
            }
          });
          if (counts.used === 0) return null;
          return tf.div(tf.sum(tf.mul(ent, tf.tensor1d(w))), counts.used) as tf.Scalar;
        });
        return { ...res, metrics: counts };
      },
      reset() {
        adapter.resetAll();
      },
      saveState() {
        const out = new Map<string, tf.Tensor>();
        adapter.saveState(out);
        return out;
      },
      loadState(state) {
        adapter.loadState(state);
      },
      stateBytes: () => adapter.stateBytes(),
      dispose() {
        adapter.dispose();
      },
    };
    return alg;
  },
} satisfies AlgorithmSpec;
