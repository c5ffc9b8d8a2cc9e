/**
 * Ops that save nothing (or only shapes) for the backward, where tfjs's own gradients would keep
 * whole activations on the tape: global average pooling, same-shape add, reshape.
 */
import { tf } from '../../tf.js';
import { customOp } from './custom-op.js';

/**
 * Global average pool NHWC → [N, C] (= RobustBench's AvgPool2d(8) on the final 8×8 map), as an
 * NHWC average pool (tf.mean over axes 1, 2 would transpose first on WASM). Custom gradient:
 * dy/HW spread over the spatial grid by a broadcasting multiply (no tf.tile), nothing saved.
 */
let poolOp: ((x: tf.Tensor4D) => tf.Tensor2D) | null = null;

export function globalAvgPool(x: tf.Tensor4D): tf.Tensor2D {
  poolOp ??= customOp<tf.Tensor2D>(([input]) => {
    const [n, h, w, c] = input.shape as [number, number, number, number];
    return {
      value: tf.reshape(tf.avgPool(input as tf.Tensor4D, [h, w], 1, 'valid'), [n, c]) as tf.Tensor2D,
      gradFunc: (dy) => [tf.mul(tf.reshape(tf.div(dy, h * w), [n, 1, 1, c]), tf.ones([1, h, w, 1]))],
    };
  });
  return poolOp(x);
}

let addOp: ((a: tf.Tensor, b: tf.Tensor) => tf.Tensor) | null = null;

/** a + b (same shapes) saving nothing for backward. */
export function add<T extends tf.Tensor>(a: T, b: T): T {
  addOp ??= customOp<tf.Tensor>(([x, y]) => ({
    value: tf.add(x, y),
    gradFunc: (dy) => [dy.clone(), dy.clone()],
  }));
  return addOp(a, b) as T;
}

/**
 * tf.reshape saving nothing for backward. tfjs's Reshape gradient saves its input only to read
 * the input's shape, which keeps every reshaped activation alive until the backward (ViT-B/16
 * Tent: ~70 MB per image of activations no gradient needs); here the shape is kept instead.
 */
export function reshape<T extends tf.Tensor>(x: tf.Tensor, shape: number[]): T {
  const from = x.shape.slice();
  return customOp<T>(([t]) => ({ value: tf.reshape(t, shape) as T, gradFunc: (dy) => [tf.reshape(dy, from)] }))(x);
}
