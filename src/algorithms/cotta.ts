/**
 * CoTTA (Wang et al., CVPR 2022, "Continual Test-Time Domain Adaptation") and MECTA's `cotta_bn`
 * variant (Hong et al., ICLR 2023, github:SonyResearch/MECTA algorithm/cotta.py).
 *
 * Three models: the student (the run's model, trained), the teacher (an EMA of the student) and
 * the anchor (a frozen copy of the source model), all normalising with the same norm mode (test
 * batch statistics, or MECTA's accumulated ones, each model with its own). Per batch, following
 * the official forward_and_adapt (github:qinenergy/cotta cifar/cotta.py, imagenet/cotta.py):
 * 1. anchor confidence c = mean over the batch of max softmax(anchor(x));
 * 2. teacher target: when c < ap, the mean of the teacher's LOGITS over N augmented copies of x
 *    (ctx.augment, one parameter draw per copy); otherwise the teacher's logits on x;
 * 3. student loss = batch mean of the cross-entropy −Σ softmax(t)·log softmax(s) (CIFAR code), or
 *    the symmetric ½(−Σ softmax(t)·log softmax(s)) + ½(−Σ softmax(s)·log softmax(t)) (ImageNet
 *    code, `cotta-symmetric`); one optimizer step over the trained parameters;
 * 4. teacher ← α·teacher + (1 − α)·student on the trained parameters;
 * 5. stochastic restore: every element of every trained parameter goes back to its source value
 *    with probability p (a fresh uniform per element, restored when u < p).
 * The prediction returned is the teacher target of step 2 (the official code returns outputs_ema).
 *
 * Published settings (verified in the two repositories): α 0.999; p 0.01 (CIFAR) / 0.001
 * (ImageNet); ap 0.92 (CIFAR-10), 0.72 (CIFAR-100), 0.1 (ImageNet, hard-coded there); N 32;
 * Adam lr 1e-3 betas (0.9, 0.999) at batch 200 (CIFAR), SGD lr 0.01 momentum 0.9 nesterov
 * dampening 0 at batch 64 (ImageNet). `cotta` trains every parameter (collect_params takes every
 * module's weight and bias); `cotta_bn` only the norm-layer affines (MECTA's bn_only).
 *
 * Choices of this port:
 * - The CIFAR code runs the N augmented teacher forwards on every batch, the ImageNet code only
 *   when c < ap; with test-batch statistics those forwards are pure, so unused ones are skipped
 *   either way. With MECTA norm they move the teacher's accumulated statistics, so there they run
 *   as `cotta-always-augment` says (true = the CIFAR code, the one MECTA's cotta_bn uses on CIFAR).
 *   Likewise the teacher's forward on x is skipped when it is unused, except under MECTA.
 * - The teacher EMA covers the trained parameters. The reference also averages the frozen ones
 *   (cotta_bn), which are equal in both models, so that only adds float round-off there.
 * - The restore draws come from ctx.rng (the algorithm's stream, so checkpoints cover them), in
 *   the variable layout of each parameter, parameters in state_dict order.
 * - `--n-layer` is refused, as MECTA's cta_eval.py asserts for cotta.
 * - With MECTA norm the student step follows the shared cache-stopping and matched-layer rules
 *   (docs/mecta-norm.md#cache-stopping): MECTA's CoTTA never checks whether a layer cached, so a
 *   batch where none does would fail there in backward; here it takes no optimizer step, while
 *   the teacher EMA and the restore still run.
 * - `episodic` reloads the student, its optimizer and the teacher's parameters (the official
 *   reset() re-copies teacher and anchor from the reloaded student; the anchor never changes
 *   outside MECTA norm, so only MECTA's per-copy statistics differ from that).
 * - saveState holds the optimizer and the teacher's trained parameters; the teacher's and anchor's
 *   MECTA statistics are not part of it.
 * - With --adapt-params modules that keep per-batch state (ViDA's scales) the teacher decides it
 *   from its own predictions and both models take it before the batch's forwards, as the official
 *   ViDA code does (docs/adapters.md#vida); reset and resume give the teacher the student's.
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmContext, AlgorithmSpec, AdaptOptions, StepResult } from './types.js';
import { disposeGrads, GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import type { Classifier } from '../models/types.js';
import { TRAIN_ALL, TRAIN_NORM } from './param-select.js';
import { modelBytes, tensorBytes } from './state-bytes.js';
import { CtaError } from '../util/errors.js';
import { mirrorStepState } from '../adapters/teacher.js';

/** CoTTA's options (the official conf.py OPTIM.MT / RST / AP, the N and loss of forward_and_adapt). */
export const COTTA_OPTIONS = {
  ...GRADIENT_OPTIONS,
  cottaAlpha: { type: 'number', min: 0, max: 1, default: 0.999, group: 'algorithm', description: 'CoTTA: teacher EMA momentum α (OPTIM.MT)' },
  cottaRestoreProb: { type: 'number', min: 0, max: 1, default: 0.01, group: 'algorithm', description: 'CoTTA: per-element probability of restoring a trained parameter to its source value (OPTIM.RST)' },
  cottaAnchorThreshold: { type: 'number', min: 0, max: 1, default: 0.92, group: 'algorithm', description: "CoTTA: use the augmentation-averaged teacher when the anchor's mean confidence is below this (OPTIM.AP)" },
  cottaAugmentations: { type: 'int', min: 1, default: 32, group: 'algorithm', description: 'CoTTA: augmented copies averaged by the teacher' },
  cottaSymmetric: { type: 'bool', default: false, group: 'algorithm', description: 'CoTTA: symmetric cross-entropy (the ImageNet code) instead of teacher→student cross-entropy (CIFAR)' },
  cottaAlwaysAugment: { type: 'bool', default: true, group: 'algorithm', description: 'CoTTA + MECTA norm: run the augmented teacher forwards on every batch (CIFAR code) or only when used (ImageNet code)' },
} as const satisfies Record<string, FieldSpec>;

/** The CoTTA option values (unset = the field defaults above). */
export interface CottaValues {
  cottaAlpha?: number;
  cottaRestoreProb?: number;
  cottaAnchorThreshold?: number;
  cottaAugmentations?: number;
  cottaSymmetric?: boolean;
  cottaAlwaysAugment?: boolean;
}

/** Per batch; summed per domain (summary.json). */
const METRICS = {
  augmented: { summary: 'augmented', description: 'batches whose teacher target is the augmentation average (anchor confidence below the threshold)' },
  restored: { summary: 'restored', description: 'parameter elements restored to their source values' },
  restorable: { summary: 'restorable', description: 'parameter elements subject to the stochastic restore (restored / restorable = the restored fraction)' },
};

/**
 * Test hook: the uniforms of the stochastic restore for trained parameter `i` (variable layout,
 * `n` elements). The default draws them from ctx.rng.
 */
export type RestoreUniforms = (i: number, n: number) => ArrayLike<number>;

/** Batch mean of CoTTA's loss between student logits `z` and teacher logits `t` (a constant). */
export function cottaLoss(z: tf.Tensor2D, t: tf.Tensor2D, symmetric: boolean): tf.Scalar {
  return tf.tidy(() => {
    const ce = tf.neg(tf.sum(tf.mul(tf.softmax(t), tf.logSoftmax(z)), 1));
    if (!symmetric) return tf.mean(ce) as tf.Scalar;
    const back = tf.neg(tf.sum(tf.mul(tf.softmax(z), tf.logSoftmax(t)), 1));
    return tf.mean(tf.add(tf.mul(ce, 0.5), tf.mul(back, 0.5))) as tf.Scalar;
  });
}

/**
 * Builds CoTTA on `model` (its norm mode already set). `trainAll`: every parameter (cotta) or the
 * norm affines (cotta_bn). `uniforms` replaces the restore draws (parity tests).
 */
export async function createCotta(name: string, trainAll: boolean, model: Classifier, opts: AdaptOptions, ctx: AlgorithmContext, uniforms?: RestoreUniforms): Promise<Algorithm> {
  const o = opts as AdaptOptions & CottaValues;
  if (opts.nLayer !== undefined && opts.nLayer !== null) throw new CtaError(`${name} does not support --n-layer (MECTA asserts n_layer is None for CoTTA)`);
  if (!ctx.cloneModel || !ctx.augment) throw new CtaError(`${name} needs model copies and augmentation from its context`);
  const alpha = o.cottaAlpha ?? COTTA_OPTIONS.cottaAlpha.default;
  const restoreP = o.cottaRestoreProb ?? COTTA_OPTIONS.cottaRestoreProb.default;
  const ap = o.cottaAnchorThreshold ?? COTTA_OPTIONS.cottaAnchorThreshold.default;
  const nAug = o.cottaAugmentations ?? COTTA_OPTIONS.cottaAugmentations.default;
  const symmetric = o.cottaSymmetric ?? COTTA_OPTIONS.cottaSymmetric.default;
  const alwaysAugment = o.cottaAlwaysAugment ?? COTTA_OPTIONS.cottaAlwaysAugment.default;
  if (!Number.isInteger(nAug) || nAug < 1) throw new CtaError(`${name}: cotta-augmentations must be a positive integer, got ${nAug}`);

  model.setTrainable(true);
  model.requiresGrad(trainAll ? TRAIN_ALL : TRAIN_NORM);
  const adapter = new GradientAdapter(model, opts, name);
  const augment = ctx.augment;
  const rng = ctx.rng;
  const draw: RestoreUniforms =
    uniforms ??
    ((_i, n) => {
      const u = new Float64Array(n);
      for (let k = 0; k < n; k++) u[k] = rng.next();
      return u;
    });
  // copies after configuration (the official copy_model_and_optimizer runs after configure_model)
  const teacher = ctx.cloneModel();
  const anchor = ctx.cloneModel();
  const initial = model.stateDict();
  const source = adapter.params.map((p) => tf.keep(p.clone()));
  const teacherParams = new Map(teacher.parameters().map((p) => [p.name, p.variable]));
  const teacherVars = adapter.keys.map((k) => {
    const v = teacherParams.get(k);
    if (!v) throw new Error(`${name}: the teacher copy has no variable for ${k}`);
    return v;
  });
  const restorable = adapter.params.reduce((a, p) => a + p.size, 0);

  const teacherTarget = (x: tf.Tensor4D): { target: tf.Tensor2D; augmented: boolean } => {
    const conf = tf.tidy(() => tf.mean(tf.max(tf.softmax(anchor.forward(x)), 1)));
    const c = conf.dataSync()[0];
    conf.dispose();
    const useAug = c < ap;
    const mecta = teacher.normMode === 'mecta';
    let standard: tf.Tensor2D | null = null;
    if (!useAug || mecta) standard = teacher.forward(x);
    let averaged: tf.Tensor2D | null = null;
    if (useAug || (mecta && alwaysAugment)) {
      let sum: tf.Tensor2D | null = null;
      for (let j = 0; j < nAug; j++) {
        const next: tf.Tensor2D = tf.tidy(() => {
          const y = teacher.forward(augment(x));
          return sum ? tf.add(sum, y) : y;
        });
        sum?.dispose();
        sum = next;
      }
      averaged = tf.tidy(() => tf.div(sum!, nAug) as tf.Tensor2D);
      sum!.dispose();
    }
    if (useAug) {
      standard?.dispose();
      return { target: averaged!, augmented: true };
    }
    averaged?.dispose();
    return { target: standard!, augmented: false };
  };

  const emaUpdate = () => {
    tf.tidy(() => {
      adapter.params.forEach((p, i) => {
        const t = teacherVars[i];
        t.assign(tf.add(tf.mul(t, alpha), tf.mul(p, 1 - alpha)));
      });
    });
  };

  const stochasticRestore = (): number => {
    let count = 0;
    if (restoreP <= 0) return 0;
    adapter.params.forEach((p, i) => {
      const u = draw(i, p.size);
      if (u.length !== p.size) throw new Error(`${name}: ${u.length} restore draws for ${p.size} elements`);
      const mask = new Uint8Array(p.size);
      let any = 0;
      for (let k = 0; k < p.size; k++) {
        if (u[k] < restoreP) {
          mask[k] = 1;
          any++;
        }
      }
      if (any === 0) return;
      count += any;
      tf.tidy(() => {
        const m = tf.tensor(mask, p.shape, 'bool');
        p.assign(tf.where(m, source[i], p));
      });
    });
    return count;
  };

  const restoreTeacher = () => {
    teacher.loadStateDict(initial);
    // Trained parameters outside the state_dict (--adapt-params modules, docs/adapters.md#state)
    // go back to their configure-time values too (for state_dict parameters this is a no-op).
    teacherVars.forEach((t, i) => t.assign(source[i]));
    mirrorStepState(teacher, model);
  };

  const alg: Algorithm = {
    name,
    // The official code predicts with the teacher; an evaluation without adapting does too (plain forward).
    evaluator: () => teacher,
    step(x): StepResult {
      if (opts.episodic) {
        adapter.restore();
        restoreTeacher();
      }
      // A module set's per-batch state (ViDA's scales) comes from the teacher, set on both models
      // before either forward (the official ViDA forward_and_adapt; src/adapters/teacher.ts).
      adapter.prepare(x, teacher);
      const { target, augmented } = teacherTarget(x);
      let r: ReturnType<GradientAdapter['grads']>;
      try {
        r = adapter.grads(x, (z) => cottaLoss(z, target, symmetric));
      } catch (err) {
        target.dispose();
        throw err;
      }
      r.logits.dispose(); // the student's prediction is not returned (the official code returns the teacher's)
      let updated = false;
      try {
        updated = adapter.apply(r);
      } catch (err) {
        target.dispose();
        throw err;
      } finally {
        disposeGrads(r.grads);
      }
      emaUpdate();
      const restored = stochasticRestore();
      return { logits: target, updated, metrics: { augmented: augmented ? 1 : 0, restored, restorable } };
    },
    reset() {
      adapter.resetAll();
      restoreTeacher();
      for (const l of teacher.normLayers) l.reset();
      for (const l of anchor.normLayers) l.reset();
    },
    saveState() {
      const out = new Map<string, tf.Tensor>();
      adapter.saveState(out);
      adapter.keys.forEach((k, i) => out.set(`cotta.teacher.${k}`, teacherVars[i].clone()));
      return out;
    },
    loadState(state) {
      adapter.loadState(state);
      adapter.keys.forEach((k, i) => {
        const t = state.get(`cotta.teacher.${k}`);
        if (t) teacherVars[i].assign(t);
      });
      // the student's modules are loaded before the method's state (src/runner/checkpoint.ts)
      mirrorStepState(teacher, model);
    },
    stateBytes() {
      const own = adapter.stateBytes();
      return {
        optimizer: own.optimizer,
        teacher: modelBytes(teacher),
        // the anchor model and the source values of the trained parameters (stochastic restore)
        anchor: modelBytes(anchor) + tensorBytes(source),
        // the adapter's snapshot and the one the teacher reloads on reset
        snapshot: own.snapshot + tensorBytes(initial.values()),
      };
    },
    dispose() {
      adapter.dispose();
      teacher.dispose();
      anchor.dispose();
      tf.dispose(source);
      for (const t of initial.values()) t.dispose();
      initial.clear();
    },
  };
  return alg;
}

export const cotta = {
  description: 'CoTTA: EMA teacher, anchor-gated augmentation-averaged targets, stochastic restore; trains every parameter',
  usesGradients: true,
  norm: 'adaptive', // test-batch statistics (configure_model drops the running statistics)
  options: COTTA_OPTIONS,
  metrics: METRICS,
  create(model, opts, ctx) {
    return createCotta('cotta', true, model, opts, ctx);
  },
} satisfies AlgorithmSpec;

export const cottaBn = {
  description: "CoTTA on the norm-layer affines only (MECTA's cotta_bn)",
  usesGradients: true,
  norm: 'adaptive',
  options: COTTA_OPTIONS,
  metrics: METRICS,
  create(model, opts, ctx) {
    return createCotta('cotta_bn', false, model, opts, ctx);
  },
} satisfies AlgorithmSpec;
