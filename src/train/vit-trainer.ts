/**
 * Source training of a small Vision Transformer (timm key names, src/models/vit.ts) from scratch,
 * the recipe people use for ViTs (DeiT / timm's train.py, scaled down):
 * - AdamW (decoupled weight decay, Loshchilov & Hutter, ICLR 2019; src/algorithms/optim.ts) with
 *   two parameter groups as timm's `param_groups_weight_decay`: decay on the matrices (linear
 *   weights, patch-embedding filter), none on biases, LayerNorm affines, pos_embed, cls_token;
 * - a per-step learning rate: linear warmup from 0 over `warmupSteps`, then cosine to 0;
 * - cross-entropy (mean over the batch); optional RandomCrop / flip (src/train/augment.ts).
 *
 * The model is the same VisionTransformer class the runner builds, with every parameter selected
 * through the generic parameter API (`requiresGrad(() => true)` → `parameters()` variables), so
 * the saved state_dict is exactly what `buildModel('vit_b16')` loads. The head count and input
 * normalisation, which the timm weights do not carry, go into the safetensors `__metadata__`
 * (VIT_META_KEYS), which `cta-eval --weights` reads back (src/models/weights-variant.ts).
 */
import { rename } from 'node:fs/promises';
import { tf } from '../tf.js';
import type { StateDict } from '../io/types.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { VisionTransformer, inferVit } from '../models/vit.js';
import type { InputNorm } from '../models/base.js';
import { VIT_METADATA } from '../models/weights-variant.js';
import { crossEntropy } from '../algorithms/losses.js';
import { AdamW, type ParamGroup } from '../algorithms/optim.js';
import type { AugmentOptions, ImageSet } from './augment.js';
import { evaluate, runEpochs, type EpochRecord } from './trainer.js';
import { vitDecays } from './vit-init.js';

/** safetensors `__metadata__` keys of a cta-train ViT (read back by resolveWeights). */
export const VIT_META_KEYS = VIT_METADATA;

export interface VitTrainOptions {
  epochs: number;
  batchSize: number;
  /** Peak learning rate (after warmup). */
  lr: number;
  /** AdamW decoupled weight decay on the decayed group. */
  weightDecay: number;
  /** Linear-warmup steps (0: none). */
  warmupSteps: number;
  beta1: number;
  beta2: number;
  augment: AugmentOptions | null;
  seed: number;
  logEvery: number;
  evalBatchSize: number;
}

export const DEFAULT_VIT_TRAIN: VitTrainOptions = {
  epochs: 10,
  batchSize: 128,
  lr: 1e-3,
  weightDecay: 0.05,
  warmupSteps: 0, // cta-train: one epoch's steps unless --warmup-steps
  beta1: 0.9,
  beta2: 0.999,
  augment: { pad: 4, flip: true },
  seed: 1,
  logEvery: 50,
  evalBatchSize: 500,
};

/** Linear warmup to `base` over `warmup` steps, then cosine from `base` to 0 at `total`. */
export function warmupCosineLr(base: number, step: number, total: number, warmup: number): number {
  if (warmup > 0 && step < warmup) return (base * (step + 1)) / warmup;
  const span = total - warmup;
  if (span <= 0) return base;
  return (base * (1 + Math.cos((Math.PI * (step - warmup)) / span))) / 2;
}

/**
 * A VisionTransformer from `sd` with every parameter trainable (tf.Variables); `inputNorm` defaults
 * to vit_b16's mean = std = 0.5.
 */
export function buildTrainableVit(sd: StateDict, heads: number, inputNorm?: InputNorm): VisionTransformer {
  const model = new VisionTransformer(sd, inferVit(sd), { config: { heads, ...(inputNorm ? { inputNorm } : {}) } });
  model.requiresGrad(() => true);
  return model;
}

/** The model's variables in two AdamW groups (decay / no decay), state_dict order within each. */
export function vitParamGroups(model: VisionTransformer, weightDecay: number): { groups: ParamGroup[]; count: number; decayed: number } {
  const decay: tf.Variable[] = [];
  const plain: tf.Variable[] = [];
  let count = 0;
  let decayed = 0;
  for (const p of model.parameters()) {
    if (!p.requiresGrad || !p.variable) continue;
    const n = p.shape.reduce((a, b) => a * b, 1);
    count += n;
    if (vitDecays(p.name, p.shape)) {
      decay.push(p.variable);
      decayed += n;
    } else plain.push(p.variable);
  }
  return { groups: [{ params: decay, weightDecay }, { params: plain, weightDecay: 0 }], count, decayed };
}

export interface VitTrainHooks {
  log?: (line: string) => void;
  onEpoch?: (rec: EpochRecord, model: VisionTransformer) => Promise<void> | void;
}

function argmaxRow(data: ArrayLike<number>, off: number, k: number): number {
  let best = 0;
  for (let j = 1; j < k; j++) if (data[off + j] > data[off + best]) best = j;
  return best;
}

/** One AdamW step on a batch (NHWC float32 in [0, 1]); the caller sets the group learning rates. */
export function vitTrainStep(model: VisionTransformer, opt: AdamW, x: tf.Tensor4D, labels: tf.Tensor1D): { loss: number; correct: number } {
  return tf.tidy(() => {
    let logitsData: Float32Array | null = null;
    const params = opt.params as tf.Variable[];
    const { value, grads } = tf.variableGrads(() => {
      const logits = model.forward(x);
      logitsData = logits.dataSync() as Float32Array;
      return crossEntropy(logits, labels);
    }, params);
    opt.step(params.map((p) => grads[p.name]));
    const lab = labels.dataSync();
    const k = model.numClasses;
    let correct = 0;
    for (let i = 0; i < lab.length; i++) if (argmaxRow(logitsData!, i * k, k) === lab[i]) correct++;
    return { loss: value.dataSync()[0], correct };
  });
}

/** Trains `model` in place; evaluates on `test` after every epoch when given. */
export async function trainVit(
  model: VisionTransformer,
  train: ImageSet,
  test: ImageSet | null,
  opts: VitTrainOptions,
  hooks: VitTrainHooks = {},
): Promise<EpochRecord[]> {
  const { groups } = vitParamGroups(model, opts.weightDecay);
  // AdamW reads the group's lr at every step: the schedule writes it there.
  const opt = new AdamW(groups, { lr: opts.lr, beta1: opts.beta1, beta2: opts.beta2 });
  try {
    return await runEpochs(model, train, test, {
      ...opts,
      schedule: (step, total) => {
        const lr = warmupCosineLr(opts.lr, step, total, opts.warmupSteps);
        for (const g of groups) (g as { lr?: number }).lr = lr;
        return lr;
      },
      step: (x, y) => vitTrainStep(model, opt, x, y),
      evaluate: (set) => evaluate(model, set, opts.evalBatchSize).accuracy,
      formatLr: (lr) => lr.toExponential(3),
    }, hooks);
  } finally {
    opt.dispose();
  }
}

/** The model's state_dict (timm order, float32) plus the metadata cta-eval needs to rebuild it. */
export function vitFileContents(model: VisionTransformer, extra: Record<string, string> = {}): { tensors: Map<string, TensorToWrite>; metadata: Record<string, string> } {
  const tensors = new Map<string, TensorToWrite>();
  const sd = model.stateDict();
  try {
    for (const [key, t] of sd) tensors.set(key, { dtype: 'float32', shape: t.shape, data: t.dataSync() as Float32Array });
  } finally {
    for (const t of sd.values()) t.dispose();
  }
  const norm = model.inputNormalisation;
  const metadata = {
    ...extra,
    [VIT_META_KEYS.heads]: String(model.config.heads),
    [VIT_META_KEYS.mean]: norm.mean.join(','),
    [VIT_META_KEYS.std]: norm.std.join(','),
  };
  return { tensors, metadata };
}

/** Writes the model atomically (temp file + rename). */
export async function saveVit(path: string, model: VisionTransformer, metadata: Record<string, string> = {}): Promise<void> {
  const { tensors, metadata: meta } = vitFileContents(model, metadata);
  const tmp = `${path}.tmp-${process.pid}`;
  await writeSafetensors(tmp, tensors, meta);
  await rename(tmp, path);
}
