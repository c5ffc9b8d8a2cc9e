/**
 * Ops of the module forwards that save nothing for the backward, where tfjs's own gradients would
 * keep whole activations on the tape (as src/models/ops/lean.ts does for the model's adds and
 * reshapes; docs/porting.md#tape-memory): a scalar scale, a broadcast bias add, and the sum of a
 * fused output with updates placed at column offsets (LoRA / KAdaptation on q, v slices of qkv).
 * The modules' matrix product is src/models/ops/mat-mul.ts, shared with the trainable Linear.
 */
import { tf } from '../tf.js';
import { customOp } from '../models/ops/custom-op.js';

/** t·s for a constant s (d/dt = s; nothing saved). */
export function scaled<T extends tf.Tensor>(t: T, s: number): T {
  if (s === 1) return t;
  return customOp<T>(([x]) => ({ value: tf.mul(x, s) as T, gradFunc: (dy) => [tf.mul(dy, s)] }))(t);
}

/** y [rows, n] + b [n] (d/dy = dy, d/db = Σ_rows dy; nothing saved). */
export function addBias(y: tf.Tensor2D, b: tf.Tensor1D | tf.Variable): tf.Tensor2D {
  return customOp<tf.Tensor2D>(([x, bias]) => ({ value: tf.add(x, bias) as tf.Tensor2D, gradFunc: (dy) => [dy.clone(), tf.sum(dy, 0)] }))(y, b);
}

/**
 * y [rows, n] + each part [rows, w_i] at its column offset (zeros elsewhere); offsets ascending,
 * parts not overlapping. The gradient of each part is its columns of dy.
 */
export function addColumns(y: tf.Tensor2D, parts: readonly { offset: number; t: tf.Tensor2D }[]): tf.Tensor2D {
  const rows = y.shape[0];
  const n = y.shape[1];
  const spans = parts.map((p) => ({ offset: p.offset, width: p.t.shape[1] }));
  return customOp<tf.Tensor2D>(([base, ...ts]) => {
    const pieces: tf.Tensor[] = [];
    let col = 0;
    spans.forEach((s, i) => {
      if (s.offset > col) pieces.push(tf.zeros([rows, s.offset - col]));
      pieces.push(ts[i]);
      col = s.offset + s.width;
    });
    if (col < n) pieces.push(tf.zeros([rows, n - col]));
    return {
      value: tf.add(base, pieces.length === 1 ? pieces[0] : tf.concat(pieces, 1)) as tf.Tensor2D,
      gradFunc: (dy) => [dy.clone(), ...spans.map((s) => tf.slice(dy, [0, s.offset], [rows, s.width]))],
    };
  })(y, ...parts.map((p) => p.t));
}
