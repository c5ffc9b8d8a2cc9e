/**
 * MEMO (docs/methods.md#memo; Zhang, Levine & Finn, NeurIPS 2022, "MEMO: Test Time Robustness via
 * Adaptation and Augmentation"), as github:mariodoebler/test-time-adaptation runs it
 * (classification/methods/memo.py, cfgs/*\/memo.yaml). Per test sample x, independently:
 * 1. reset the model and optimizer to the source state (episodic, EPISODIC: True in every cfg);
 * 2. B AugMix views of x (src/algorithms/augmix.ts; B = TEST.N_AUGMENTATIONS, 32 CIFAR / 64 ImageNet);
 * 3. one SGD step on the marginal entropy H(p̄), p̄ = mean over the views of softmax(f(view))
 *    (Eq. 1 of the paper; computed as log-mean-exp of the log-softmax), over EVERY parameter;
 * 4. predict x with the UPDATED model (memo.py returns self.model(x[0]) after forward_and_adapt).
 * Normalisation: the model's BatchNorm layers become the official AlphaBatchNorm with BN.ALPHA
 * (0.1; src/algorithms/bn-alpha.ts), so both the views' forward and the prediction use
 * 0.9·source + 0.1·(statistics of that forward's batch), a single image for the prediction.
 * Optimiser (conf.py defaults under the cfgs): SGD momentum 0.9, dampening 0, Nesterov, weight
 * decay 0; lr 0.005 (CIFAR) / 0.00025 (ImageNet). (The authors' github:zhangmarvin/memo uses plain
 * SGD without momentum; one Nesterov step from a fresh optimiser is 1.9·lr·g, docs/methods.md#memo.)
 *
 * Choices of this port: a batch of the stream is taken sample by sample (the official cfgs run
 * batch size 1), so the result does not depend on --batch-size. MECTA's accumulated statistics
 * would replace BN-α, so --accum-bn is refused; --n-layer is refused (every parameter trains).
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmContext, AlgorithmSpec, AdaptOptions, StepResult } from './types.js';
import { disposeGrads, GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import type { Classifier } from '../models/types.js';
import { TRAIN_ALL } from './param-select.js';
import { CtaError } from '../util/errors.js';
import { BN_ALPHA_OPTIONS, configureAlphaBn, type BnAlphaValues } from './bn-alpha.js';
import { augmixViews } from './augmix.js';
import { withoutSideEffects } from '../models/norm-policy.js';

// every optimizer field but `episodic`: MEMO resets before every sample by definition
const { episodic: _episodic, ...OPTIMIZER_FIELDS } = GRADIENT_OPTIONS;

export const MEMO_OPTIONS = {
  ...OPTIMIZER_FIELDS,
  ...BN_ALPHA_OPTIONS,
  memoAugmentations: { type: 'int', min: 1, default: 32, group: 'algorithm', description: 'MEMO: AugMix views per test sample (TEST.N_AUGMENTATIONS: 32 CIFAR, 64 ImageNet)' },
} as const satisfies Record<string, FieldSpec>;

export interface MemoValues extends BnAlphaValues {
  memoAugmentations?: number;
}

/** Per batch; the runner counts forwards and backwards for every method (src/runner/pass-count.ts). */
const METRICS = {
  views: { summary: 'views', description: 'AugMix views forwarded and back-propagated (memo-augmentations per sample)' },
};

/** The marginal entropy −Σ_c p̄_c log p̄_c of the mean softmax over the rows of `z` (memo.py). */
export function marginalEntropy(z: tf.Tensor2D): tf.Scalar {
  return tf.tidy(() => {
    const logp = tf.logSoftmax(z);
    const avg = tf.maximum(tf.sub(tf.logSumExp(logp, 0), Math.log(z.shape[0])), -3.4028234663852886e38);
    return tf.neg(tf.sum(tf.mul(avg, tf.exp(avg)))) as tf.Scalar;
  });
}

/** Test hook: the views of sample `i` of the batch (a new [n,H,W,3] tensor); default AugMix from ctx.rng. */
export type MemoViews = (x: tf.Tensor4D, sample: number, n: number) => tf.Tensor4D;

export async function createMemo(model: Classifier, opts: AdaptOptions, ctx: AlgorithmContext, views?: MemoViews): Promise<Algorithm> {
  const o = opts as AdaptOptions & MemoValues;
  if (opts.nLayer !== undefined && opts.nLayer !== null) throw new CtaError('memo trains every parameter; it cannot be combined with --n-layer');
  const nAug = o.memoAugmentations ?? MEMO_OPTIONS.memoAugmentations.default;
  configureAlphaBn(model, o.bnAlpha ?? BN_ALPHA_OPTIONS.bnAlpha.default);
  model.setTrainable(true);
  model.requiresGrad(TRAIN_ALL);
  const adapter = new GradientAdapter(model, { ...opts, episodic: true }, 'memo');
  const makeViews: MemoViews = views ?? ((xi, _i, n) => augmixViews(xi, n, ctx.rng));

  const alg: Algorithm = {
    name: 'memo',
    step(x): StepResult {
      const b = x.shape[0];
      const rows: tf.Tensor2D[] = [];
      try {
        for (let i = 0; i < b; i++) {
          adapter.restore();
          const xi = tf.slice(x, [i, 0, 0, 0], [1, -1, -1, -1]);
          try {
            const v = makeViews(xi, i, nAug);
            try {
              const r = adapter.grads(v, (z) => marginalEntropy(z));
              r.logits.dispose();
              try {
                adapter.apply(r);
              } finally {
                disposeGrads(r.grads);
              }
            } finally {
              v.dispose();
            }
            // the prediction (one image, no tape) leaves the records of the adapted views'
            // forward, which is what the analytic cache reports (docs/memory.md#analytic)
            rows.push(tf.tidy(() => withoutSideEffects(model, () => model.forward(xi))));
          } finally {
            xi.dispose();
          }
        }
        const logits = tf.concat(rows, 0) as tf.Tensor2D;
        return { logits, updated: true, metrics: { views: nAug * b } };
      } finally {
        tf.dispose(rows);
      }
    },
    reset() {
      adapter.resetAll();
    },
    saveState() {
      // episodic: nothing carries over from one sample to the next
      return new Map();
    },
    loadState() {
      /* episodic */
    },
    stateBytes() {
      // optimizer slots and the source snapshot every sample returns to
      return adapter.stateBytes();
    },
    dispose() {
      adapter.dispose();
    },
  };
  return alg;
}

export const memo = {
  description: 'MEMO: per-sample marginal-entropy step over AugMix views (all parameters, BN-α), reset after each sample',
  usesGradients: true,
  predicts: 'after-update', // each sample is scored after its own update (MEMO's evaluation)
  norm: 'adaptive',
  options: MEMO_OPTIONS,
  metrics: METRICS,
  create(model, opts, ctx) {
    return createMemo(model, opts, ctx);
  },
} satisfies AlgorithmSpec;
