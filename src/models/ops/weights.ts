/**
 * Weight plumbing shared by the conv and linear layers: PyTorch tensors in, the trainable switch,
 * and the record of the input a trainable layer saved for its weight gradient (which the memory
 * accounting reads, docs/memory.md#trainable-weights). Every persistent tensor is `tf.keep`-ed so
 * that building a model inside a caller's `tf.tidy` is harmless.
 */
import { tf } from '../../tf.js';
import { CtaError } from '../../util/errors.js';
import type { RawTensor } from '../../io/types.js';

/** Converts a float RawTensor (PyTorch layout) to a tf tensor of the same shape. */
export function rawToTensor(raw: RawTensor, key: string): tf.Tensor {
  if (!(raw.data instanceof Float32Array)) {
    throw new CtaError(`weight '${key}' has dtype ${raw.dtype}, expected a floating-point tensor`);
  }
  return tf.tensor(raw.data, raw.shape, 'float32');
}

/**
 * Runs `make` and then disposes `temps` (inputs the constructed object has copied or referenced
 * through refcounted variables). `tf.tidy` cannot be used for this: it only returns tensors.
 */
export function usingTemps<T>(temps: tf.Tensor[], make: () => T): T {
  try {
    return make();
  } finally {
    for (const t of temps) t.dispose();
  }
}

/** Options of a Conv2d / Linear layer. */
export interface WeightOptions {
  /**
   * Keep the weight in a `tf.Variable` and return its gradient (source-model training). Default
   * false: a constant weight, and a conv op that saves nothing for backward.
   */
  trainable?: boolean;
}

/**
 * The input a trainable conv / linear layer saved for its weight gradient in its last forward
 * (docs/memory.md#trainable-weights): its shape, its float32 bytes, its data buffer (inputs shared by
 * several layers, e.g. a block's first conv and its projection shortcut, are saved once) and its
 * position in forward order.
 */
export interface WeightInput {
  shape: number[];
  bytes: number;
  buffer: object;
  seq: number;
}

const weightInputs = new WeakMap<tf.Tensor, WeightInput>();
let weightInputSeq = 0;

let recordsSuspended = 0;

/**
 * Runs `fn` without updating the records (withoutSideEffects, norm-policy.ts: a teacher,
 * augmented or prediction-only forward must not replace what the adapted forward recorded).
 */
export function withoutWeightRecords<T>(fn: () => T): T {
  recordsSuspended++;
  try {
    return fn();
  } finally {
    recordsSuspended--;
  }
}

/** Called by a trainable layer on each forward: what its weight gradient will read. */
export function recordWeightInput(weight: tf.Tensor, x: tf.Tensor): void {
  if (recordsSuspended > 0) return;
  weightInputs.set(weight, { shape: x.shape.slice(), bytes: x.size * 4, buffer: x.dataId as object, seq: weightInputSeq++ });
}

/** What the layer whose trainable weight variable is `weight` saved in its last forward, if any. */
export function lastWeightInput(weight: tf.Tensor): WeightInput | undefined {
  return weightInputs.get(weight);
}
