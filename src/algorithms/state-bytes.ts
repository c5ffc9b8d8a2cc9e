/**
 * Byte counts for Algorithm.stateBytes() (docs/memory.md#method-state): what a method holds beyond
 * the model's own weights, counted from the tensors it keeps (float32 unless a tensor says
 * otherwise; a buffer shared by several tensors counted once).
 */
import { tf } from '../tf.js';
import type { Classifier } from '../models/types.js';
import type { Optimizer } from './optim.js';

/** Bytes of the distinct data buffers of `tensors`. */
export function tensorBytes(tensors: Iterable<tf.Tensor | null | undefined>): number {
  const seen = new Set<object>();
  let bytes = 0;
  for (const t of tensors) {
    if (!t || t.isDisposed || seen.has(t.dataId as object)) continue;
    seen.add(t.dataId as object);
    bytes += t.dtype === 'string' ? 0 : t.size * tf.util.bytesPerElement(t.dtype);
  }
  return bytes;
}

/** The optimizer's slots (momentum buffers; Adam's moments and step counters). */
export function optimizerBytes(opt: Optimizer): number {
  const state = opt.saveState(); // clones share the slots' buffers: nothing is copied
  try {
    return tensorBytes(state.values());
  } finally {
    for (const t of state.values()) t.dispose();
  }
}

/**
 * A model copy (a teacher or an anchor): its parameters and norm statistics in float32, from the
 * shapes (caches a copy may build for inference, e.g. folded filters, are not counted).
 */
export function modelBytes(model: Classifier): number {
  let n = 0;
  for (const p of model.parameters()) n += p.shape.reduce((a, d) => a * d, 1);
  for (const l of model.normLayers) if (l.runningMean) n += 2 * l.numFeatures;
  return n * 4;
}
