/**
 * RoTTA (Yuan et al., CVPR 2023, "Robust Test-Time Adaptation in Dynamic Scenarios"), following
 * the official code (github:BIT-DA/RoTTA core/adapter/rotta.py, core/utils/bn_layers.py and
 * core/utils/memory.py; mariodoebler/test-time-adaptation methods/rotta.py is the same algorithm):
 *
 * - Robust BN (the paper's robust batch normalization): every BatchNorm normalises with an EMA of the batch
 *   statistics, μ ← (1 − α)·μ + α·μ_b, σ² ← (1 − α)·σ² + α·σ²_b (biased σ²_b), starting from the
 *   source statistics — norm mode 'ema' (src/models/norm-policy.ts MixedPolicy: a train-mode
 *   forward updates the statistics and normalises with the updated ones, the gradient flowing
 *   through the batch part as in RobustBN2d); in eval mode the stored statistics are used as they
 *   are (here: norm mode 'source' for that forward, which reads the same buffers). Only the norm
 *   affines train (configure_model: requires_grad on the RobustBN modules; mariodoebler's version
 *   also trains LayerNorm/GroupNorm affines, which is what a ViT gets here, with per-token
 *   LayerNorm statistics instead of robust BN).
 * - Per batch (forward_and_adapt): the teacher, in eval mode, predicts; its softmax gives each
 *   sample a pseudo-label (argmax) and an uncertainty (entropy −Σ p·log(p + 1e-6)); the samples
 *   enter the category-balanced memory bank one by one (CSTU, {@link BalancedBank}),
 *   and every `update-frequency` samples (counted over the whole stream) the model updates once.
 *   The prediction returned is the teacher's output (forward_and_adapt returns ema_out).
 * - Update (update_model; the paper's time-aware reweighting): the bank's samples x_i with ages a_i (in units of
 *   the capacity); the student sees one strong augmentation of the stacked bank (CoTTA's
 *   get_tta_transforms, one parameter draw per call: ctx.augment), the teacher the bank itself,
 *   both in train mode (so both move their robust-BN statistics); loss = mean_i w_i·CE_i with
 *   CE_i = −Σ softmax(teacher)·log softmax(student) and w_i = exp(−a_i)/(1 + exp(−a_i)); one
 *   optimizer step; then teacher ← (1 − ν)·teacher + ν·student.
 *
 * Published settings (configs/adapter/rotta.yaml and core/configs/defaults.py of the official
 * code; mariodoebler's conf.py ROTTA and cfgs/*_c/rotta.yaml the same): memory size 64, update
 * frequency 64, ν 0.001, α 0.05, λ_t = λ_u = 1, Adam lr 1e-3 betas (0.9, 0.999), no weight decay,
 * one step, batch 64 (official; mariodoebler: 200 on CIFAR, 64 on ImageNet).
 *
 * Choices of this port:
 * - The teacher EMA covers the trained parameters; the reference also averages the frozen ones,
 *   which are equal in both models, so that only adds float round-off there.
 * - The augmentation is ctx.augment with CoTTA's defaults (soft off, noise std 0.005), which are
 *   the arguments RoTTA passes (get_tta_transforms(cfg), gaussian_std 0.005); its draws come from
 *   the algorithm's Rng instead of torch's and NumPy's generators (docs/augment.md).
 * - The bank holds the samples as tensors (the reference keeps views of the batch).
 * - stateBytes (docs/memory.md#method-state): the teacher copy, the banked images, the optimizer
 *   slots, and the configure-time snapshots of student and teacher that reset() reloads.
 * - It does not run under the MECTA norm layer (--accum-bn): robust BN is RoTTA's norm layer, and
 *   MECTA's accumulated statistics would replace it.
 * - `episodic` calls reset() before every batch (mariodoebler's base class; the official code has
 *   no episodic mode).
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec, StepResult } from './types.js';
import { disposeGrads, GradientAdapter } from './gradient-adapter.js';
import { GRADIENT_OPTIONS } from './options.js';
import type { FieldSpec } from '../config/schema.js';
import type { Classifier } from '../models/types.js';
import { TRAIN_NORM } from './param-select.js';
import { modelBytes, tensorBytes } from './state-bytes.js';
import { CtaError } from '../util/errors.js';

/** RoTTA's options (cfg.ADAPTER.RoTTA of the official code). */
export const ROTTA_OPTIONS = {
  ...GRADIENT_OPTIONS,
  rottaMemorySize: { type: 'int', min: 1, default: 64, group: 'algorithm', description: 'RoTTA: capacity of the category-balanced memory bank (MEMORY_SIZE)' },
  rottaUpdateFrequency: { type: 'int', min: 1, default: 64, group: 'algorithm', description: 'RoTTA: one model update every this many test samples (UPDATE_FREQUENCY)' },
  rottaNu: { type: 'number', min: 0, max: 1, default: 0.001, group: 'algorithm', description: 'RoTTA: teacher EMA rate ν, teacher ← (1 − ν)·teacher + ν·student (NU)' },
  rottaAlpha: { type: 'number', min: 0, max: 1, default: 0.05, group: 'algorithm', description: 'RoTTA: robust-BN momentum α of the statistics EMA (ALPHA)' },
  rottaLambdaT: { type: 'number', min: 0, default: 1, group: 'algorithm', description: 'RoTTA: weight of the age term in the bank score (LAMBDA_T)' },
  rottaLambdaU: { type: 'number', min: 0, default: 1, group: 'algorithm', description: 'RoTTA: weight of the uncertainty term in the bank score (LAMBDA_U)' },
} as const satisfies Record<string, FieldSpec>;

export interface RottaValues {
  rottaMemorySize?: number;
  rottaUpdateFrequency?: number;
  rottaNu?: number;
  rottaAlpha?: number;
  rottaLambdaT?: number;
  rottaLambdaU?: number;
}

const METRICS = {
  // Not 'updates': the runner's own per-domain count of batches that stepped has that key.
  updates: { summary: 'model_updates', description: 'model updates (one per update-frequency samples)' },
  admitted: { summary: 'admitted', description: 'samples that entered the memory bank' },
  bank: { summary: 'bank_sum', description: 'memory-bank occupancy after the batch (the per-domain sum over the batch count is the mean occupancy)' },
};

/** One memory-bank entry: the image, its uncertainty (teacher entropy) and age in samples. */
export interface BankItem {
  x: tf.Tensor3D;
  uncertainty: number;
  age: number;
}

/**
 * CSTU, the category-balanced sampling with timeliness and uncertainty (RoTTA,
 * core/utils/memory.py): one list per pseudo-class, capacity/K places per class. A new sample of
 * class c with score s_new = heuristic(0, u) enters
 * - directly when class c holds fewer than capacity/K items and the bank is not full;
 * - when class c holds fewer than capacity/K but the bank is full, in place of the highest-scoring
 *   item of the classes with the most items, if that score exceeds s_new;
 * - otherwise in place of the highest-scoring item of class c, if that score exceeds s_new;
 * ties between items go to the later one (class order, then list order). After every offered
 * sample, admitted or not, every item ages by one. heuristic(a, u) = λ_t/(1 + exp(−a/capacity))
 * + λ_u·u/ln K.
 */
export class BalancedBank {
  readonly classes: BankItem[][];
  private readonly perClass: number;

  constructor(
    readonly capacity: number,
    readonly numClasses: number,
    private readonly lambdaT: number,
    private readonly lambdaU: number,
  ) {
    this.classes = Array.from({ length: numClasses }, () => []);
    this.perClass = capacity / numClasses;
  }

  get size(): number {
    return this.classes.reduce((a, c) => a + c.length, 0);
  }

  score(age: number, uncertainty: number): number {
    return this.lambdaT / (1 + Math.exp(-age / this.capacity)) + (this.lambdaU * uncertainty) / Math.log(this.numClasses);
  }

  /** Evicts the highest-scoring item of `classes` when it scores above `base`; false = refuse. */
  private evictFrom(classes: number[], base: number): boolean {
    let best = -Infinity;
    let at: [number, number] | null = null;
    for (const c of classes) {
      for (let i = 0; i < this.classes[c].length; i++) {
        const it = this.classes[c][i];
        const s = this.score(it.age, it.uncertainty);
        if (at === null || s >= best) {
          best = s;
          at = [c, i];
        }
      }
    }
    if (at === null) return true;
    if (best <= base) return false;
    const [gone] = this.classes[at[0]].splice(at[1], 1);
    gone.x.dispose();
    return true;
  }

  private admits(cls: number, base: number): boolean {
    if (this.classes[cls].length < this.perClass) {
      if (this.size < this.capacity) return true;
      const sizes = this.classes.map((c) => c.length);
      const top = Math.max(...sizes);
      return this.evictFrom(
        sizes.flatMap((n, c) => (n === top ? [c] : [])),
        base,
      );
    }
    return this.evictFrom([cls], base);
  }

  /** Offers one sample; the bank owns `x` when it returns true, otherwise `x` is disposed. */
  add(x: tf.Tensor3D, cls: number, uncertainty: number): boolean {
    const ok = this.admits(cls, this.score(0, uncertainty));
    if (ok) this.classes[cls].push({ x, uncertainty, age: 0 });
    else x.dispose();
    for (const c of this.classes) for (const it of c) it.age++;
    return ok;
  }

  /** The items in bank order (class, then insertion), as get_memory lists them. */
  items(): BankItem[] {
    return this.classes.flat();
  }

  clear(): void {
    for (const c of this.classes) {
      for (const it of c) it.x.dispose();
      c.length = 0;
    }
  }
}

/** Batch mean of w_i · (−Σ softmax(t_i)·log softmax(z_i)) (the official loss with timeliness weights). */
export function rottaLoss(z: tf.Tensor2D, t: tf.Tensor2D, w: tf.Tensor1D): tf.Scalar {
  return tf.tidy(() => tf.mean(tf.mul(tf.neg(tf.sum(tf.mul(tf.softmax(t), tf.logSoftmax(z)), 1)), w)) as tf.Scalar);
}

export const rotta = {
  description: 'RoTTA: robust BN (EMA statistics), category-balanced memory bank, timeliness-weighted EMA teacher–student loss on strong augmentations',
  usesGradients: true,
  norm: 'adaptive', // robust BN ('ema'), set in create() where the model has BatchNorm layers
  options: ROTTA_OPTIONS,
  metrics: METRICS,
  async create(model, opts, ctx) {
    const o = opts as typeof opts & RottaValues;
    if (model.normMode === 'mecta') {
      throw new CtaError("rotta does not run with --accum-bn: its robust BN is its norm layer, and MECTA's accumulated statistics would replace it");
    }
    if (opts.nLayer !== undefined && opts.nLayer !== null) throw new CtaError('rotta does not support --n-layer (a MECTA option)');
    if (!ctx.cloneModel || !ctx.augment) throw new CtaError('rotta needs model copies and augmentation from its context', 1);
    const capacity = o.rottaMemorySize ?? ROTTA_OPTIONS.rottaMemorySize.default;
    const frequency = o.rottaUpdateFrequency ?? ROTTA_OPTIONS.rottaUpdateFrequency.default;
    const nu = o.rottaNu ?? ROTTA_OPTIONS.rottaNu.default;
    const alpha = o.rottaAlpha ?? ROTTA_OPTIONS.rottaAlpha.default;
    const lambdaT = o.rottaLambdaT ?? ROTTA_OPTIONS.rottaLambdaT.default;
    const lambdaU = o.rottaLambdaU ?? ROTTA_OPTIONS.rottaLambdaU.default;
    for (const [k, v] of [['rotta-memory-size', capacity], ['rotta-update-frequency', frequency]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new CtaError(`rotta: --${k} must be a positive integer, got ${v}`);
    }
    // Robust BN on the BatchNorm layers; a LayerNorm-only model (ViT) keeps per-token statistics.
    const robustBn = model.normLayers.some((l) => l.kind === 'batch');
    if (robustBn) model.setNormMode('ema', { momentum: alpha });
    model.setTrainable(true);
    model.requiresGrad(TRAIN_NORM);
    const adapter = new GradientAdapter(model, opts, 'rotta');
    const augment = ctx.augment;
    // The teacher is a copy after configuration (build_ema deep-copies the configured model).
    const teacher = ctx.cloneModel();
    const teacherInitial = teacher.stateDict();
    const teacherParams = new Map(teacher.parameters().map((p) => [p.name, p.variable]));
    const teacherVars = adapter.keys.map((k) => {
      const v = teacherParams.get(k);
      if (!v) throw new Error(`rotta: the teacher copy has no variable for ${k}`);
      return v;
    });
    const [h, w, c] = model.inputShape;
    let bank = new BalancedBank(capacity, model.numClasses, lambdaT, lambdaU);
    let seen = 0; // the official current_instance

    /** The teacher in eval mode: robust BN normalises with its stored statistics, unchanged. */
    const teacherEval = (x: tf.Tensor4D): tf.Tensor2D => {
      if (!robustBn) return teacher.forward(x);
      teacher.setNormMode('source');
      try {
        return teacher.forward(x);
      } finally {
        teacher.setNormMode('ema');
      }
    };

    /** update_model: one step on the bank, then the teacher EMA. */
    const update = (): void => {
      const items = bank.items();
      if (items.length > 0) {
        const sup = tf.stack(items.map((it) => it.x)) as tf.Tensor4D;
        const strong = augment(sup); // drawn before the forwards, as in the reference
        const target = teacher.forward(sup); // train mode: moves the teacher's robust-BN statistics
        const weights = tf.tidy(() => {
          const a = tf.tensor1d(items.map((it) => it.age / capacity));
          return tf.sigmoid(tf.neg(a)) as tf.Tensor1D; // exp(−a)/(1 + exp(−a))
        });
        try {
          const r = adapter.grads(strong, (z) => rottaLoss(z, target, weights));
          r.logits.dispose();
          try {
            adapter.apply(r);
          } finally {
            disposeGrads(r.grads);
          }
        } finally {
          tf.dispose([sup, strong, target, weights]);
        }
      }
      tf.tidy(() => {
        adapter.params.forEach((p, i) => {
          const t = teacherVars[i];
          t.assign(tf.add(tf.mul(t, 1 - nu), tf.mul(p, nu)));
        });
      });
    };

    const reset = (): void => {
      adapter.resetAll();
      teacher.loadStateDict(teacherInitial);
      bank.clear();
      seen = 0;
    };

    const alg: Algorithm = {
      name: 'rotta',
      step(x): StepResult {
        if (opts.episodic) reset();
        const logits = teacherEval(x);
        const { labels, entropy } = tf.tidy(() => {
          const p = tf.softmax(logits);
          return { labels: tf.argMax(p, 1), entropy: tf.sum(tf.mul(tf.neg(p), tf.log(tf.add(p, 1e-6))), 1) };
        });
        const cls = labels.dataSync();
        const ent = entropy.dataSync();
        tf.dispose([labels, entropy]);
        let updates = 0;
        let admitted = 0;
        const samples = tf.unstack(x) as tf.Tensor3D[];
        let i = 0;
        try {
          for (; i < samples.length; i++) {
            if (bank.add(samples[i], cls[i], ent[i])) admitted++; // the bank owns or disposes it
            seen++;
            if (seen % frequency === 0) {
              update();
              updates++;
            }
          }
        } catch (err) {
          logits.dispose();
          tf.dispose(samples.slice(i + 1));
          throw err;
        }
        return { logits, updated: updates > 0, metrics: { updates, admitted, bank: bank.size } };
      },
      reset,
      saveState() {
        const out = new Map<string, tf.Tensor>();
        adapter.saveState(out);
        const sd = teacher.stateDict();
        for (const [k, t] of sd) out.set(`rotta.teacher.${k}`, t);
        const items = bank.items();
        const meta: number[] = [];
        bank.classes.forEach((list, k) => list.forEach((it) => meta.push(k, it.uncertainty, it.age)));
        if (items.length > 0) out.set('rotta.bank.x', tf.stack(items.map((it) => it.x)));
        out.set('rotta.bank.meta', tf.tensor2d(meta, [items.length, 3], 'float32'));
        // [seen mod frequency, updates so far]: exact in float32 for any stream length in use
        out.set('rotta.seen', tf.tensor1d([seen % frequency, Math.floor(seen / frequency)], 'float32'));
        return out;
      },
      loadState(state) {
        adapter.loadState(state);
        const sd = new Map<string, tf.Tensor>();
        for (const [k, t] of state) if (k.startsWith('rotta.teacher.')) sd.set(k.slice('rotta.teacher.'.length), t);
        if (sd.size > 0) teacher.loadStateDict(sd);
        const meta = state.get('rotta.bank.meta');
        if (meta) {
          const m = meta.dataSync();
          const n = m.length / 3;
          const xs = state.get('rotta.bank.x');
          if (n > 0 && (!xs || xs.shape[0] !== n || xs.shape[1] !== h || xs.shape[2] !== w || xs.shape[3] !== c)) {
            throw new CtaError('algorithm state: rotta.bank.x does not match rotta.bank.meta and the model input');
          }
          bank.clear();
          bank = new BalancedBank(capacity, model.numClasses, lambdaT, lambdaU);
          const images = n > 0 ? (tf.unstack(xs!) as tf.Tensor3D[]) : [];
          for (let i = 0; i < n; i++) {
            const k = m[3 * i];
            if (!Number.isInteger(k) || k < 0 || k >= model.numClasses) throw new CtaError(`algorithm state: rotta bank class ${k} out of range`);
            bank.classes[k].push({ x: images[i], uncertainty: m[3 * i + 1], age: m[3 * i + 2] });
          }
        }
        const s = state.get('rotta.seen');
        if (s) {
          const [rest, periods] = s.dataSync();
          seen = periods * frequency + rest;
        }
      },
      stateBytes() {
        const own = adapter.stateBytes();
        return {
          optimizer: own.optimizer,
          teacher: modelBytes(teacher),
          memoryBank: tensorBytes(bank.items().map((it) => it.x)),
          // the adapter's snapshot and the teacher's configure-time state, both reloaded by reset()
          snapshot: own.snapshot + tensorBytes(teacherInitial.values()),
        };
      },
      dispose() {
        adapter.dispose();
        bank.clear();
        teacher.dispose();
        for (const t of teacherInitial.values()) t.dispose();
        teacherInitial.clear();
      },
    };
    return alg;
  },
} satisfies AlgorithmSpec;
