/**
 * Test-only helpers for the model tests (not imported by library code): NCHW ↔ NHWC conversion of
 * fixture tensors and tolerance checks that report the observed error.
 */
import { tf } from '../tf.js';
import type { RawTensor, StateDict } from '../io/types.js';
import type { Classifier } from './types.js';

/** Fixture tensor (PyTorch layout) → tf tensor; 4-D NCHW tensors become NHWC. */
export function fixtureTensor(sd: StateDict, key: string, nhwc = true): tf.Tensor {
  const raw = sd.get(key);
  if (!raw) throw new Error(`fixture key '${key}' missing`);
  const t = tf.tensor(Float32Array.from(raw.data), raw.shape, 'float32');
  if (nhwc && raw.shape.length === 4) {
    const out = tf.transpose(t, [0, 2, 3, 1]);
    t.dispose();
    return out;
  }
  return t;
}

export function rawInts(raw: RawTensor | undefined): Int32Array {
  if (!raw) throw new Error('fixture integer tensor missing');
  return Int32Array.from(raw.data);
}

export interface Closeness {
  rel: number; // ‖a − b‖ / ‖b‖ (absolute ‖a − b‖ when b = 0)
  maxAbs: number; // max |a − b|
  scale: number; // max |b|
}

export function closeness(actual: ArrayLike<number>, expected: ArrayLike<number>): Closeness {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} vs ${expected.length}`);
  let num = 0;
  let den = 0;
  let maxAbs = 0;
  let scale = 0;
  for (let i = 0; i < actual.length; i++) {
    const d = actual[i] - expected[i];
    num += d * d;
    den += expected[i] * expected[i];
    maxAbs = Math.max(maxAbs, Math.abs(d));
    scale = Math.max(scale, Math.abs(expected[i]));
  }
  return { rel: den > 0 ? Math.sqrt(num / den) : Math.sqrt(num), maxAbs, scale };
}

/** Largest relative error seen per label, printed by the tests for the report. */
export const observed = new Map<string, number>();

/**
 * Asserts ‖a − b‖/‖b‖ ≤ tol and, elementwise, |a − b| ≤ tol·max(1, max|b|) (an absolute tolerance
 * scaled to the tensor's magnitude, so entries near zero do not fail on float32 round-off).
 */
export function expectClose(
  label: string,
  actual: tf.Tensor | ArrayLike<number>,
  expected: tf.Tensor | ArrayLike<number>,
  tol = 1e-4,
): Closeness {
  const a = actual instanceof tf.Tensor ? actual.dataSync() : actual;
  const b = expected instanceof tf.Tensor ? expected.dataSync() : expected;
  const c = closeness(a, b);
  const group = label.replace(/\[.*\]/, '');
  observed.set(group, Math.max(observed.get(group) ?? 0, c.rel));
  if (!(c.rel <= tol) || !(c.maxAbs <= tol * Math.max(1, c.scale))) {
    throw new Error(`${label}: rel error ${c.rel.toExponential(3)}, max abs ${c.maxAbs.toExponential(3)} (scale ${c.scale.toExponential(3)}, tol ${tol})`);
  }
  return c;
}

/**
 * How many norm parameters the last forward connected to the loss: γ and β of every layer,
 * except MECTA layers that stopped caching, whose op leaves γ/β out
 * (docs/mecta-norm.md#cache-stopping).
 */
export function connectedNormParams(model: Classifier): number {
  const layers = model.normMode === 'mecta' ? model.normLayers.filter((l) => l.last?.cached) : model.normLayers;
  return 2 * layers.length;
}
