/**
 * relu and relu(a + b) that save only a bit-packed mask [y > 0] for the backward instead of their
 * float output (or both summands): WebAssembly SIMD words of 32 flags where the kernels run
 * (simd-kernels.ts), matMul-packed float32 words elsewhere (kernel-reference.ts); kernels.ts
 * chooses. Gradients are bit-for-bit dy·step(y).
 */
import { tf } from '../../tf.js';
import { reluMask } from '../kernels.js';
import { customOp } from './custom-op.js';

let reluOp: ((x: tf.Tensor4D) => tf.Tensor4D) | null = null;
let addReluOp: ((a: tf.Tensor4D, b: tf.Tensor4D) => tf.Tensor4D) | null = null;
/** Whether the relu op being called should keep its mask (inside an op the tape always reads off). */
let keepMask = false;

/** Without a recording tape the op saves nothing and no backward can call its gradient. */
function noMask(): tf.Tensor[] {
  throw new Error('relu: no mask was saved (no gradient tape was recording)');
}

/** relu saving only its bit-packed mask [y > 0] for the backward dy·mask. */
export function relu(x: tf.Tensor4D): tf.Tensor4D {
  reluOp ??= customOp<tf.Tensor4D>(([input], save) => {
    if (!keepMask) return { value: tf.relu(input) as tf.Tensor4D, gradFunc: noMask };
    const mask = reluMask(input as tf.Tensor4D);
    const [y, words] = mask.pack(input as tf.Tensor4D);
    save([words]);
    return { value: y, gradFunc: (dy, [w]) => [mask.grad(dy, w)] };
  });
  keepMask = tf.engine().isTapeOn();
  return reluOp(x);
}

/**
 * relu(a + b) for residual joins: saves only the bit-packed mask, where tf.add + tf.relu would keep
 * both summands and the sum alive until the backward.
 */
export function addRelu(a: tf.Tensor4D, b: tf.Tensor4D): tf.Tensor4D {
  addReluOp ??= customOp<tf.Tensor4D>(([x, y], save) => {
    if (!keepMask) return { value: tf.relu(tf.add(x, y)) as tf.Tensor4D, gradFunc: noMask };
    const mask = reluMask(x as tf.Tensor4D, y as tf.Tensor4D);
    const [out, words] = mask.pack(x as tf.Tensor4D, y as tf.Tensor4D);
    save([words]);
    return {
      value: out,
      gradFunc: (dy, [w]) => {
        const g = mask.grad(dy, w);
        return [g, g.clone()]; // distinct tensors: the tape may dispose one while the other is in use
      },
    };
  });
  keepMask = tf.engine().isTapeOn();
  return addReluOp(a, b);
}
