/** The matrix product of trainable layers, with a backward of plain 2-D products. */
import { tf } from '../../tf.js';
import { customOp } from './custom-op.js';

/**
 * x·w for x [rows, k], w [k, n], with the backward as plain 2-D products of explicitly transposed
 * operands, dx = dy·wᵀ and dw = xᵀ·dy. tfjs's own matMul gradient uses the transposeB / transposeA
 * forms, which WASM runs 20–35× slower (docs/porting.md#matrix-products): on ViT-B/16 that made a
 * KAdaptation step (24 [788, 768]·[768, 768] updates at batch 4) several times slower than the
 * model's own backward. Saves x and w, as the autodiff does. Used by the trainable Linear
 * (source training, --train all) and the --adapt-params modules.
 */
export function matMul(x: tf.Tensor2D, w: tf.Tensor2D | tf.Variable): tf.Tensor2D {
  return customOp<tf.Tensor2D>(([a, b], save) => {
    save([a, b]);
    return {
      value: tf.matMul(a, b) as tf.Tensor2D,
      gradFunc: (dy, [as, bs]) => [tf.matMul(dy, tf.transpose(bs)), tf.matMul(tf.transpose(as), dy)],
    };
  })(x, w);
}
