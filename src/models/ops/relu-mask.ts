/**
 * relu and relu(a + b) that save only a bit-packed mask [y > 0] for the backward instead of their
 * float output (or both summands): WebAssembly SIMD words of 32 flags where the kernels run
 * (simd-kernels.ts), matMul-packed float32 words elsewhere. Gradients are bit-for-bit dy·step(y).
 */
import { tf } from '../../tf.js';
import { maskGrad, packedReluAvailable, reluPacked } from '../simd-kernels.js';
import { customOp } from './custom-op.js';

let reluOp: ((x: tf.Tensor4D) => tf.Tensor4D) | null = null;
let addReluOp: ((a: tf.Tensor4D, b: tf.Tensor4D) => tf.Tensor4D) | null = null;
/** Whether the relu op being called should keep its mask (inside an op the tape always reads off). */
let keepMask = false;

/**
 * ReLU masks for the backward, bit-packed: `bits` (24, 16 or 8) 0/1 flags per float32 word, i.e.
 * 1.3–4 bits per element instead of the 32 of a saved float output (or 8 of a bool). Packing is
 * one matMul of the [words, bits] 0/1 matrix with the powers of two 2^0..2^(bits−1); every partial
 * sum is an integer below 2^24, so it is exact in float32 whatever the summation order. Unpacking:
 * q_k = floor(w·2^−k) (an outer product with 2^−k as a matMul, exact) and bit_k = q_k − 2·q_(k+1)
 * (a matMul with a constant [bits + 1, bits] matrix of 1 and −2: integer sums below 2^25, exact).
 * MatMuls with a constant right operand are the fast path on WASM (broadcast multiplies and
 * strided slices measured 3–5× slower). The mask is bit-for-bit the tf.step(y) that dy is
 * multiplied by, so gradients are unchanged.
 */
const packWeights = new Map<number, tf.Tensor2D>(); // bits → [bits, 1]: 2^k
const unpackScales = new Map<number, tf.Tensor2D>(); // bits → [1, bits + 1]: 2^−k
const unpackDiffs = new Map<number, tf.Tensor2D>(); // bits → [bits + 1, bits]: e_k − 2·e_(k+1)

function wordBits(n: number): number {
  for (const b of [24, 16, 8]) if (n % b === 0) return b;
  return 24; // padded
}

function packMask(y: tf.Tensor): tf.Tensor2D {
  const n = y.size;
  const bits = wordBits(n);
  const rows = Math.ceil(n / bits);
  let w = packWeights.get(bits);
  if (!w) {
    w = tf.keep(tf.tensor2d(Float32Array.from({ length: bits }, (_, k) => 2 ** k), [bits, 1]));
    packWeights.set(bits, w);
  }
  let m = tf.reshape(tf.step(y), [n]);
  if (rows * bits !== n) m = tf.pad(m, [[0, rows * bits - n]]);
  return tf.matMul(tf.reshape(m, [rows, bits]) as tf.Tensor2D, w);
}

function unpackMask(words: tf.Tensor, shape: number[]): tf.Tensor {
  const n = shape.reduce((a, d) => a * d, 1);
  const rows = words.shape[0];
  const bits = wordBits(n);
  let s = unpackScales.get(bits);
  let d = unpackDiffs.get(bits);
  if (!s || !d) {
    s = tf.keep(tf.tensor2d(Float32Array.from({ length: bits + 1 }, (_, k) => 2 ** -k), [1, bits + 1]));
    const diff = new Float32Array((bits + 1) * bits);
    for (let k = 0; k < bits; k++) {
      diff[k * bits + k] = 1;
      diff[(k + 1) * bits + k] = -2;
    }
    d = tf.keep(tf.tensor2d(diff, [bits + 1, bits]));
    unpackScales.set(bits, s);
    unpackDiffs.set(bits, d);
  }
  const q = tf.floor(tf.matMul(words as tf.Tensor2D, s)); // [rows, bits + 1]
  const flat = tf.reshape(tf.matMul(q, d), [rows * bits]);
  return tf.reshape(rows * bits === n ? flat : tf.slice(flat, 0, n), shape);
}

/** relu saving only its bit-packed mask [y > 0] for the backward dy·mask. */
export function relu(x: tf.Tensor4D): tf.Tensor4D {
  reluOp ??= customOp<tf.Tensor4D>(([input], save) => {
    if (keepMask && packedReluAvailable(input)) {
      const [y, words] = reluPacked(input as tf.Tensor4D);
      save([words]);
      return { value: y, gradFunc: (dy, [w]) => [maskGrad(dy, w)] };
    }
    const y = tf.relu(input) as tf.Tensor4D;
    if (keepMask) save([packMask(y)]);
    return { value: y, gradFunc: (dy, [words]) => [tf.mul(dy, unpackMask(words, dy.shape))] };
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
    if (keepMask && packedReluAvailable(x, y) && x.size === y.size) {
      const [out, words] = reluPacked(x as tf.Tensor4D, y as tf.Tensor4D);
      save([words]);
      return {
        value: out,
        gradFunc: (dy, [w]) => {
          const g = maskGrad(dy, w);
          return [g, g.clone()];
        },
      };
    }
    const out = tf.relu(tf.add(x, y)) as tf.Tensor4D;
    if (keepMask) save([packMask(out)]);
    return {
      value: out,
      gradFunc: (dy, [words]) => {
        const g = tf.mul(dy, unpackMask(words, dy.shape));
        return [g, g.clone()]; // distinct tensors: the tape may dispose one while the other is in use
      },
    };
  });
  keepMask = tf.engine().isTapeOn();
  return addReluOp(a, b);
}
