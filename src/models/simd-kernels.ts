/**
 * The per-element work of a BatchNorm layer as whole-layer passes: batch statistics, the affine
 * output, and the input/affine gradients (standard BN and MECTA's pruned PreG,
 * docs/mecta-norm.md#preg and #refill), each a tf op that a test or another backend can run as
 * the reference (kernel-reference.ts).
 *
 * Why: as tf ops a train-mode BN is ~13 elementwise kernels per step (two average-pool sums and a
 * squared difference for the statistics, a multiply and an add for the output, and
 * sub/mul/pool/mul/mul/mul/sub/add for the gradient), each a full pass over an activation that is
 * 8–16 MB at ResNeXt-29 b16, plus MECTA's zero-filled channel scatter of the centred input. On the
 * WASM backend these run as small WebAssembly SIMD functions (simd-kernels.wat, through
 * wasm-heap.ts) that read and write tfjs's own heap: statistics in two read passes, the output in
 * one, the gradient in one read pass and one write pass, and a pruned cache is read compactly
 * through its channel list instead of being scattered. ReLU likewise writes its output and a
 * 1-bit mask in one pass (docs/porting.md#batchnorm).
 *
 * The kernels run on the calling thread. Sums accumulate in float32 over 64-row blocks and in
 * float64 across blocks. kernels.ts decides when they run; other backends, channel counts that
 * are not a multiple of 4, and `setBnKernels(false)` / `setHeapKernels(false)` take the tf-op
 * formulation (kernel-reference.ts).
 */
import { tf } from '../tf.js';
import { Heap, withHeap } from './wasm-heap.js';
import { lastDim, runKernel, sizeOf } from './channel-kernels.js';

type Info = tf.TensorInfo;

interface BackwardAttrs {
  kept: number[] | null; // channels the pruned cache x holds, in order; null: x has every channel
}

const KERNELS = {
  /** x [.., C] → mean [C], biased variance [C] (two passes: the centred sum avoids cancellation). */
  CtaBnStats(h: Heap, [x]: Info[]): Info[] {
    const c = lastDim(x);
    const rows = sizeOf(x) / c;
    const mean = h.out([c]);
    const variance = h.out([c]);
    const acc = h.scratch(c * 4);
    const tot = h.scratch(c * 8);
    const px = h.ptr(x);
    h.f64(tot, c).fill(0);
    h.k.reduce(0, px, 0, 0, rows, c, acc, tot);
    const pm = h.ptr(mean);
    const sums = h.f64(tot, c);
    const mv = h.f32(pm, c);
    for (let i = 0; i < c; i++) mv[i] = sums[i] / rows;
    sums.fill(0);
    h.k.reduce(1, px, 0, pm, rows, c, acc, tot);
    const sq = h.f64(tot, c);
    const vv = h.f32(h.ptr(variance), c);
    for (let i = 0; i < c; i++) vv[i] = sq[i] / rows;
    return [mean, variance];
  },

  /** y = x·a + b per channel. */
  CtaBnAffine(h: Heap, [x, a, b]: Info[]): Info[] {
    const c = lastDim(x);
    const y = h.out(x.shape.slice());
    h.k.affine(h.ptr(x), h.ptr(a), h.ptr(b), h.ptr(y), sizeOf(x) / c, c);
    return [y];
  },

  /** y = x·a + b per channel and x's channels `kept` ([.., K]), from one read of x. */
  CtaBnAffineGather(h: Heap, [x, a, b]: Info[], attrs: { kept: number[] }): Info[] {
    const c = lastDim(x);
    const k = attrs.kept.length;
    const y = h.out(x.shape.slice());
    const xk = h.out([...x.shape.slice(0, -1), k]);
    const idx = h.scratch(4 * k);
    h.i32(idx, k).set(attrs.kept);
    h.k.affineGather(h.ptr(x), h.ptr(a), h.ptr(b), h.ptr(y), idx, h.ptr(xk), sizeOf(x) / c, c, k);
    return [y, xk];
  },

  /**
   * (g, x, μ_b, r_b, s) → dx, S = Σ g·x̂, Σ g, with x̂ = (x − μ_b)·r_b (bnBackward's formula). With
   * `kept`, x and μ_b hold only those channels and every other channel has x̂ = 0
   * (docs/mecta-norm.md#refill).
   */
  CtaBnBackward(h: Heap, [g, x, mu, rstd, s]: Info[], attrs: BackwardAttrs): Info[] {
    const c = lastDim(g);
    const rows = sizeOf(g) / c;
    const kept = attrs.kept;
    const k = kept ? kept.length : c;
    const dx = h.out(g.shape.slice());
    const S = h.out([c]);
    const sumG = h.out([c]);
    const acc = h.scratch(2 * c * 4);
    const tot = h.scratch(2 * c * 8);
    const kc = h.scratch(c * 4);
    const c0 = h.scratch(c * 4);
    const idx = kept ? h.scratch(k * 4) : 0;
    const [pg, px, pmu, pdx, ps] = [h.ptr(g), h.ptr(x), h.ptr(mu), h.ptr(dx), h.ptr(s)];
    h.f64(tot, 2 * c).fill(0);
    // Pass 1: Σ g·(x − μ_b) per cached channel and Σ g per channel.
    let sumGT: Float64Array;
    let sums: Float64Array;
    if (kept) {
      h.i32(idx, k).set(kept);
      h.k.sumsIdx(pg, px, pmu, idx, rows, c, k, acc, tot);
      sums = h.f64(tot, c);
      sumGT = h.f64(tot + 8 * c, k);
    } else {
      h.k.reduce(2, px, pg, pmu, rows, c, acc, tot);
      sumGT = h.f64(tot, c);
      sums = h.f64(tot + 8 * c, c);
    }
    const r = h.f32(h.ptr(rstd), c);
    const sv = h.f32(ps, c);
    const kv = h.f32(kc, c).fill(0);
    const c0v = h.f32(c0, c);
    const Sv = h.f32(h.ptr(S), c).fill(0);
    const gv = h.f32(h.ptr(sumG), c);
    // k = r²·s·mean(g·t) per cached channel, c0 = −s·mean(g); a channel without cache has S = 0.
    for (let j = 0; j < k; j++) {
      const ch = kept ? kept[j] : j;
      kv[j] = (r[ch] * r[ch] * sv[ch] * sumGT[j]) / rows;
      Sv[ch] = r[ch] * sumGT[j];
    }
    for (let i = 0; i < c; i++) {
      gv[i] = sums[i];
      c0v[i] = (-sv[i] * sums[i]) / rows;
    }
    // Pass 2: dx = g·s − (x − μ_b)·k + c0.
    if (kept) h.k.dxIdx(pg, px, pmu, idx, ps, kc, c0, pdx, rows, c, k);
    else h.k.bnDx(pg, px, pmu, ps, kc, c0, pdx, rows, c);
    return [dx, S, sumG];
  },

  /** relu(a [+ b]) and its mask [y > 0] packed 32 per int32 word. */
  CtaReluPack(h: Heap, [a, b]: Info[]): Info[] {
    const n = sizeOf(a);
    const y = h.out(a.shape.slice());
    const words = h.out([Math.ceil(n / 32)], 'int32');
    h.k.reluPack(h.ptr(a), b ? h.ptr(b) : 0, h.ptr(y), h.ptr(words), n);
    return [y, words];
  },

  /** dy·mask for a mask packed by CtaReluPack. */
  CtaMaskGrad(h: Heap, [dy, words]: Info[]): Info[] {
    const dx = h.out(dy.shape.slice());
    h.k.maskGrad(h.ptr(dy), h.ptr(words), h.ptr(dx), sizeOf(dy));
    return [dx];
  },
};

type KernelName = keyof typeof KERNELS;

for (const [name, body] of Object.entries(KERNELS) as Array<[KernelName, (h: Heap, i: Info[], a: never) => Info[]]>) {
  tf.registerKernel({
    kernelName: name,
    backendName: 'wasm',
    kernelFunc: ({ inputs, attrs, backend }) => {
      const outs = withHeap(backend, (heap) => body(heap, Object.values(inputs) as Info[], attrs as never));
      return outs.length === 1 ? outs[0] : outs;
    },
  });
}

// The typed calls of the kernels above. kernels.ts chooses them (on WASM, for the shapes
// `bnShapes` / `packedShapes` accept) or their tf-op formulas in kernel-reference.ts.

/** Whether the BN kernels take these tensors (float32, channels a multiple of 4, rows ≥ 1). */
export function bnShapes(...ts: tf.Tensor[]): boolean {
  const c = ts[0].shape[ts[0].rank - 1];
  return c > 0 && c % 4 === 0 && ts[0].size > 0 && ts.every((t) => t.dtype === 'float32');
}

/** Whether ReLU's packed-mask kernels take these tensors (float32, sizes a multiple of 4). */
export function packedShapes(...ts: tf.Tensor[]): boolean {
  return ts.every((t) => t.dtype === 'float32' && t.size > 0 && t.size % 4 === 0);
}

/**
 * relu(a + b) (or relu(a)) and its mask [y > 0] as int32 words of 32 bits (1 bit per element), in
 * one pass.
 */
export function reluPack(a: tf.Tensor4D, b?: tf.Tensor4D): [tf.Tensor4D, tf.Tensor] {
  const [y, words] = runKernel('CtaReluPack', b ? [a, b] : [a]);
  return [y as tf.Tensor4D, words as tf.Tensor1D];
}

/** dy·mask for a mask from reluPack (bit-for-bit: dy where y > 0, else 0). */
export function maskGrad(dy: tf.Tensor, words: tf.Tensor): tf.Tensor {
  return runKernel('CtaMaskGrad', [dy, words])[0];
}

export function channelStats(x: tf.Tensor4D): { mean: tf.Tensor1D; variance: tf.Tensor1D } {
  const [mean, variance] = runKernel('CtaBnStats', [x]) as tf.Tensor1D[];
  return { mean, variance };
}

export function channelAffine(x: tf.Tensor4D, a: tf.Tensor1D, b: tf.Tensor1D): tf.Tensor4D {
  return runKernel('CtaBnAffine', [x, a, b])[0] as tf.Tensor4D;
}

/** The output and the kept channels of x from one pass. */
export function channelAffineKeep(x: tf.Tensor4D, a: tf.Tensor1D, b: tf.Tensor1D, kept: Int32Array): [tf.Tensor4D, tf.Tensor4D] {
  const [y, xk] = runKernel('CtaBnAffineGather', [x, a, b], { kept: Array.from(kept) });
  return [y as tf.Tensor4D, xk as tf.Tensor4D];
}

/** A pruned cache is read compactly through its channel list. */
export function bnBackward(
  g: tf.Tensor4D,
  x: tf.Tensor4D,
  mean: tf.Tensor1D,
  rstd: tf.Tensor1D,
  s: tf.Tensor1D,
  kept: Int32Array | null,
): { dx: tf.Tensor4D; S: tf.Tensor1D; sumG: tf.Tensor1D } {
  const [dx, S, sumG] = runKernel('CtaBnBackward', [g, x, mean, rstd, s], { kept: kept ? Array.from(kept) : null });
  return { dx: dx as tf.Tensor4D, S: S as tf.Tensor1D, sumG: sumG as tf.Tensor1D };
}
