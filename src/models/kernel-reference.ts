/**
 * The tf-op formulas of every kernel in kernels.ts: what runs on backends without our kernels
 * (tfjs-node, WebGL, WebGPU; cpu for the BN ones), for shapes a kernel does not take (channels not
 * a multiple of 4, other dtypes), under `setBnKernels(false)` / `setHeapKernels(false)`, and as
 * the reference the kernel tests compare against. Each has the signature of its table entry.
 */
import { tf } from '../tf.js';
import { channelAffine as affine, gatherChannels as gather, scatterChannels as scatter } from './kernels.js';

const withLast = (shape: number[], c: number) => [...shape.slice(0, -1), c];

/**
 * Per-channel mean over every other axis of an NHWC tensor, as a [C] vector: ONE average pool over
 * the whole [N·H, W] plane (XNNPACK's NHWC pooling streams the data once). tf.sum/tf.moments are
 * slow on WASM, and a matMul with a ones vector is fast only while its right operand is a constant
 * (XNNPACK caches the packed weights), while the activations are fresh tensors every call; this
 * pool is an order of magnitude faster with the same float32 accuracy (≈5e-6 relative against
 * float64). See docs/porting.md#reductions.
 */
export function channelMean(x: tf.Tensor): tf.Tensor1D {
  const c = x.shape[x.shape.length - 1];
  const w = x.rank >= 2 ? x.shape[x.shape.length - 2] : 1;
  const rows = x.size / (c * w);
  const plane = tf.reshape(x, [1, rows, w, c]) as tf.Tensor4D;
  return tf.reshape(tf.avgPool(plane, [rows, w], 1, 'valid'), [c]) as tf.Tensor1D;
}

export interface Stats {
  mean: tf.Tensor1D;
  variance: tf.Tensor1D; // biased (÷ N·H·W)
}

/** Batch mean and biased variance per channel of an NHWC tensor. */
export function channelStats(x: tf.Tensor4D): Stats {
  const mean = channelMean(x);
  return { mean, variance: channelMean(tf.squaredDifference(x, mean)) };
}

/**
 * x·a + b per channel, as two plain elementwise ops (WASM's FusedBatchNorm is ~3× slower than a
 * multiply, so a one-kernel tf.batchNorm loses).
 */
export function channelAffine(x: tf.Tensor4D, a: tf.Tensor1D, b: tf.Tensor1D): tf.Tensor4D {
  return tf.add(tf.mul(x, a), b) as tf.Tensor4D;
}

/** The output and the kept channels as two dispatched ops (the affine alone may still be a kernel). */
export function channelAffineKeep(x: tf.Tensor4D, a: tf.Tensor1D, b: tf.Tensor1D, kept: Int32Array): [tf.Tensor4D, tf.Tensor4D] {
  return [affine(x, a, b), gather(x, kept)];
}

/** bnBackward's formula (kernels.ts) as tf ops; a pruned cache is scattered back with zeros. */
export function bnBackward(
  g: tf.Tensor4D,
  x: tf.Tensor4D,
  mean: tf.Tensor1D,
  rstd: tf.Tensor1D,
  s: tf.Tensor1D,
  kept: Int32Array | null,
): { dx: tf.Tensor4D; S: tf.Tensor1D; sumG: tf.Tensor1D } {
  const c = g.shape[3];
  const tKept = tf.sub(x, mean) as tf.Tensor4D;
  // (Measured: one channel scatter here is cheaper, as tf ops, than gathering g's kept channels
  // and scattering the t·k correction back.)
  const t = kept ? scatter(tKept, kept, c) : tKept;
  const m = g.size / c;
  const meanG = channelMean(g);
  const meanGT = channelMean(tf.mul(g, t));
  const k = tf.mul(tf.mul(tf.square(rstd), s), meanGT);
  const dx = tf.sub(tf.mul(g, s), tf.add(tf.mul(t, k), tf.mul(s, meanG))) as tf.Tensor4D;
  return { dx, S: tf.mul(tf.mul(rstd, meanGT), m) as tf.Tensor1D, sumG: tf.mul(meanG, m) as tf.Tensor1D };
}

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

/** relu(a [+ b]) and its mask packed by packMask (words of 24, 16 or 8 flags in float32). */
export function reluPack(a: tf.Tensor4D, b?: tf.Tensor4D): [tf.Tensor4D, tf.Tensor] {
  const y = tf.relu(b ? tf.add(a, b) : a) as tf.Tensor4D;
  return [y, packMask(y)];
}

/** dy·mask for a mask from reluPack. */
export function maskGrad(dy: tf.Tensor, words: tf.Tensor): tf.Tensor {
  return tf.mul(dy, unpackMask(words, dy.shape));
}

export function splitChannels<T extends tf.Tensor>(x: T, groups: number): T[] {
  return tf.split(x, groups, x.rank - 1) as T[];
}

export function concatChannels<T extends tf.Tensor>(parts: T[]): T {
  return tf.concat(parts, parts[0].rank - 1);
}

export function gatherChannels<T extends tf.Tensor>(x: T, channels: ArrayLike<number>): T {
  return tf.tidy(() => tf.gather(x, tf.tensor1d(Array.from(channels), 'int32'), x.rank - 1) as T);
}

/** A concat with zeros and one gather that puts every channel in place. */
export function scatterChannels<T extends tf.Tensor>(x: T, channels: ArrayLike<number>, total: number): T {
  const list = Array.from(channels);
  return tf.tidy(() => {
    const removed: number[] = [];
    const at = new Int32Array(total).fill(-1);
    list.forEach((ch, j) => (at[ch] = j));
    for (let ch = 0; ch < total; ch++) if (at[ch] < 0) removed.push(ch);
    const zerosShape = withLast(x.shape, removed.length);
    const full = removed.length ? tf.concat([x, tf.zeros(zerosShape)], x.rank - 1) : x;
    let r = list.length;
    const order = Array.from(at, (j) => (j >= 0 ? j : r++));
    return tf.gather(full, tf.tensor1d(order, 'int32'), x.rank - 1) as T;
  });
}

export function phasesToSpace(parts: tf.Tensor4D[], stride: number): tf.Tensor4D {
  return tf.tidy(() => tf.depthToSpace(tf.concat(parts, 3) as tf.Tensor4D, stride, 'NHWC'));
}

export function unstackRows<T extends tf.Tensor>(x: tf.Tensor): T[] {
  return tf.unstack(x) as T[];
}
