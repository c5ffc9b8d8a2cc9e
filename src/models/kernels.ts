/**
 * The one place that chooses between our kernels and their tf-op formulas. Every kernel is an
 * entry of KERNELS with two implementations of one signature:
 * - `native`: the WebAssembly SIMD kernels of simd-kernels.ts ('simd': WASM backend only) or the
 *   heap channel moves of channel-kernels.ts ('heap': the WASM and cpu backends);
 * - `reference`: the tf-op formula (kernel-reference.ts), for every other backend and switch.
 * The table is resolved once per backend and switch setting (`active`); per call only `accepts`
 * remains, the shapes and dtypes a native kernel takes (channels a multiple of 4, float32).
 * Callers import the ops from here; the switches turn the native side off for tests and A/B runs.
 */
import { tf } from '../tf.js';
import * as heap from './channel-kernels.js';
import type { ConcatAttrs, GatherAttrs, ScatterAttrs } from './channel-kernels.js';
import * as reference from './kernel-reference.js';
import * as simd from './simd-kernels.js';

export { channelMean, type Stats } from './kernel-reference.js';

type Tier = 'simd' | 'heap';

interface Entry<F extends (...args: any[]) => any> {
  tier: Tier;
  /** Whether the native kernel takes these arguments; the reference takes everything. */
  accepts: (...args: Parameters<F>) => boolean;
  native: F;
  reference: F;
}

const entry = <F extends (...args: any[]) => any>(e: Entry<F>): Entry<F> => e;
const allFloat = (ts: tf.Tensor[]) => ts.every((t) => t.dtype === 'float32');

/** The ReLU mask pair: the gradient must read the words its own forward packed. */
export interface ReluMask {
  /** relu(a [+ b]) and its packed mask [y > 0]. */
  pack(a: tf.Tensor4D, b?: tf.Tensor4D): [tf.Tensor4D, tf.Tensor];
  /** dy·mask, bit-for-bit the tf.step(y) of the forward. */
  grad(dy: tf.Tensor, words: tf.Tensor): tf.Tensor;
}

const KERNELS = {
  channelStats: entry<typeof reference.channelStats>({
    tier: 'simd',
    accepts: (x) => simd.bnShapes(x),
    native: simd.channelStats,
    reference: reference.channelStats,
  }),
  channelAffine: entry<typeof reference.channelAffine>({
    tier: 'simd',
    accepts: (x, a, b) => simd.bnShapes(x, a, b),
    native: simd.channelAffine,
    reference: reference.channelAffine,
  }),
  channelAffineKeep: entry<typeof reference.channelAffineKeep>({
    tier: 'simd',
    accepts: (x, a, b, kept) => simd.bnShapes(x, a, b) && kept.length > 0,
    native: simd.channelAffineKeep,
    reference: reference.channelAffineKeep,
  }),
  bnBackward: entry<typeof reference.bnBackward>({
    tier: 'simd',
    accepts: (g, x, mean, rstd, s) => simd.bnShapes(g, x, mean, rstd, s),
    native: simd.bnBackward,
    reference: reference.bnBackward,
  }),
  reluMask: entry<(a: tf.Tensor4D, b?: tf.Tensor4D) => ReluMask>({
    tier: 'simd',
    accepts: (a, b) => (b ? simd.packedShapes(a, b) && a.size === b.size : simd.packedShapes(a)),
    native: () => ({ pack: simd.reluPack, grad: simd.maskGrad }),
    reference: () => ({ pack: reference.reluPack, grad: reference.maskGrad }),
  }),
  splitChannels: entry<(x: tf.Tensor, groups: number) => tf.Tensor[]>({
    tier: 'heap',
    accepts: (x) => allFloat([x]),
    native: heap.splitChannels,
    reference: reference.splitChannels,
  }),
  concatChannels: entry<(parts: tf.Tensor[]) => tf.Tensor>({
    tier: 'heap',
    accepts: (parts) => allFloat(parts),
    native: heap.concatChannels,
    reference: reference.concatChannels,
  }),
  gatherChannels: entry<(x: tf.Tensor, channels: ArrayLike<number>) => tf.Tensor>({
    tier: 'heap',
    accepts: (x) => allFloat([x]),
    native: heap.gatherChannels,
    reference: reference.gatherChannels,
  }),
  scatterChannels: entry<(x: tf.Tensor, channels: ArrayLike<number>, total: number) => tf.Tensor>({
    tier: 'heap',
    accepts: (x) => allFloat([x]),
    native: heap.scatterChannels,
    reference: reference.scatterChannels,
  }),
  phasesToSpace: entry<typeof reference.phasesToSpace>({
    tier: 'heap',
    accepts: (parts) => allFloat(parts),
    native: heap.phasesToSpace,
    reference: reference.phasesToSpace,
  }),
  unstackRows: entry<(x: tf.Tensor) => tf.Tensor[]>({
    tier: 'heap',
    accepts: (x) => allFloat([x]),
    native: heap.unstackRows,
    reference: reference.unstackRows,
  }),
};

type Kernels = { [K in keyof typeof KERNELS]: (typeof KERNELS)[K]['reference'] };

let heapKernels = true;
let bnKernels = true;
const resolved = new Map<string, Kernels>();

/** Turns the heap kernels off (tf-op formulas everywhere, the SIMD ones included), for tests of the fallback path. */
export function setHeapKernels(on: boolean): void {
  heapKernels = on;
}

/** Turns the SIMD kernels off (their tf-op formulas), for tests and A/B measurements. */
export function setBnKernels(on: boolean): void {
  bnKernels = on;
}

/** Whether a tier's native kernels run on `backend` under the current switches. */
function tierOn(tier: Tier, backend: string): boolean {
  if (!heapKernels) return false;
  return tier === 'simd' ? bnKernels && backend === 'wasm' : heap.HEAP_BACKENDS.includes(backend);
}

/** The table resolved for the active backend and switches. */
function active(): Kernels {
  const backend = tf.getBackend();
  const key = `${backend}|${heapKernels}|${bnKernels}`;
  let k = resolved.get(key);
  if (!k) {
    const out: Record<string, unknown> = {};
    for (const [name, e] of Object.entries(KERNELS) as Array<[string, Entry<(...a: unknown[]) => unknown>]>) {
      out[name] = tierOn(e.tier, backend) ? (...a: unknown[]) => (e.accepts(...a) ? e.native(...a) : e.reference(...a)) : e.reference;
    }
    k = out as Kernels;
    resolved.set(key, k);
  }
  return k;
}

/** Whether ReLU's packed-mask kernels take these tensors (the WASM kernels, sizes a multiple of 4). */
export function packedReluAvailable(...ts: tf.Tensor[]): boolean {
  return tierOn('simd', tf.getBackend()) && simd.packedShapes(...ts);
}

/** The ReLU mask implementation for these inputs: packed words on WASM, float32 words elsewhere. */
export function reluMask(a: tf.Tensor4D, b?: tf.Tensor4D): ReluMask {
  return active().reluMask(a, b);
}

/** Batch mean and biased variance per channel of an NHWC tensor. */
export function channelStats(x: tf.Tensor4D): reference.Stats {
  return active().channelStats(x);
}

/** x·a + b per channel. */
export function channelAffine(x: tf.Tensor4D, a: tf.Tensor1D, b: tf.Tensor1D): tf.Tensor4D {
  return active().channelAffine(x, a, b);
}

/**
 * MECTA's caching forward with pruning (docs/mecta-norm.md#pruning): the output x·a + b and the
 * kept channels of x to save, both from one pass on the WASM kernels (`kept`: K ≥ 1 distinct
 * channels).
 */
export function channelAffineKeep(x: tf.Tensor4D, a: tf.Tensor1D, b: tf.Tensor1D, kept: Int32Array): [tf.Tensor4D, tf.Tensor4D] {
  return active().channelAffineKeep(x, a, b, kept);
}

/**
 * The shared BN input gradient (docs/mecta-norm.md#preg, with the batch statistics μ_b, σ_b = 1/r):
 *   dx = s·(g − mean g − x̂·mean(g·x̂)),  x̂ = t·r,  t = x − μ_b
 * with s = γ/σ (σ = σ_b for train-mode BN; σ = σ_r for MECTA's PreG), evaluated as
 * dx = g·s − (t·k + s·mean g) with k = r²·s·mean(g·t), so x̂ is never materialised.
 * Returns dx, S = Σ g·x̂ and Σ g, from which the callers form the affine gradients.
 *
 * `kept` (MECTA pruning, docs/mecta-norm.md#pruning): x and `mean` hold only those channels of g's
 * C; every other channel has t = 0, which gives exactly the refill dx = s·(g − mean g) and S = 0
 * there.
 */
export function bnBackward(
  g: tf.Tensor4D,
  x: tf.Tensor4D,
  mean: tf.Tensor1D,
  rstd: tf.Tensor1D,
  s: tf.Tensor1D,
  kept: Int32Array | null,
): { dx: tf.Tensor4D; S: tf.Tensor1D; sumG: tf.Tensor1D } {
  return active().bnBackward(g, x, mean, rstd, s, kept);
}

/** `x` split along its last axis into `groups` equal parts (= tf.split(x, groups, -1)). */
export function splitChannels<T extends tf.Tensor>(x: T, groups: number): T[] {
  if (groups === 1) return [x.clone()];
  return active().splitChannels(x, groups) as T[];
}

/** The parts concatenated along their last axis (= tf.concat(parts, -1)). */
export function concatChannels<T extends tf.Tensor>(parts: T[]): T {
  if (parts.length === 1) return parts[0].clone();
  return active().concatChannels(parts) as T;
}

/** The listed channels of `x`, in that order (= tf.gather(x, channels, -1)). */
export function gatherChannels<T extends tf.Tensor>(x: T, channels: ArrayLike<number>): T {
  return active().gatherChannels(x, channels) as T;
}

/**
 * `x`'s channels placed at `channels` of a `total`-channel tensor, zeros elsewhere (the transpose
 * of gatherChannels). `channels` must be distinct.
 */
export function scatterChannels<T extends tf.Tensor>(x: T, channels: ArrayLike<number>, total: number): T {
  return active().scatterChannels(x, channels, total) as T;
}

/**
 * Sub-pixel phase outputs interleaved back into space: `parts` in (ry, rx, group) order, each
 * [N, Ho, Wo, C/G] → [N, s·Ho, s·Wo, C] (= tf.depthToSpace(tf.concat(parts, 3), s)). Used inside a
 * hand-written backward only, so no gradient is registered.
 */
export function phasesToSpace(parts: tf.Tensor4D[], stride: number): tf.Tensor4D {
  return active().phasesToSpace(parts, stride);
}

/** `x` unstacked along its first axis (= tf.unstack(x)). */
export function unstackRows<T extends tf.Tensor>(x: tf.Tensor): T[] {
  return active().unstackRows(x) as T[];
}

// Gradients of the heap kernels (they are linear): split ↔ concat, gather ↔ scatter, unstack → stack.
tf.registerGradient({
  kernelName: 'CtaUnstackRows',
  gradFunc: (dys) => ({ '0': () => tf.stack(dys as tf.Tensor[]) }),
});
tf.registerGradient({
  kernelName: 'CtaSplitChannels',
  gradFunc: (dys) => ({ '0': () => concatChannels(dys as tf.Tensor[]) }),
});
tf.registerGradient({
  kernelName: 'CtaConcatChannels',
  gradFunc: (dy, _saved, attrs) => {
    const grads: Record<string, () => tf.Tensor> = {};
    let at = 0;
    (attrs as unknown as ConcatAttrs).widths.forEach((w, i) => {
      const range = Array.from({ length: w }, (_, j) => at + j);
      at += w;
      grads[String(i)] = () => gatherChannels(dy as tf.Tensor, range);
    });
    return grads;
  },
});
tf.registerGradient({
  kernelName: 'CtaGatherChannels',
  gradFunc: (dy, _saved, attrs) => {
    const { channels, total } = attrs as unknown as GatherAttrs;
    return { '0': () => scatterChannels(dy as tf.Tensor, channels, total) };
  },
});
tf.registerGradient({
  kernelName: 'CtaScatterChannels',
  gradFunc: (dy, _saved, attrs) => ({ '0': () => gatherChannels(dy as tf.Tensor, (attrs as unknown as ScatterAttrs).channels) }),
});
