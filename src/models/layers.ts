/**
 * Building blocks shared by the CIFAR models: a convolution with PyTorch padding whose input
 * gradient is a forward convolution (docs/porting.md#input-gradients), a linear layer, global
 * average pooling, lean-tape elementwise ops, and the per-channel primitives of the norm layer.
 *
 * For adaptation, conv filters and linear weights are constants: only the norm layers' affine
 * parameters are adapted. `cta-train` builds them with `{ trainable: true }` (tf.Variables); their
 * gradients are computed here without `Conv2DBackpropFilter`, which the WASM backend lacks.
 * Every persistent tensor is `tf.keep`-ed so that building a model inside a caller's `tf.tidy` is
 * harmless.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { RawTensor } from '../io/types.js';
import { concatChannels, phasesToSpace, splitChannels } from './channel-kernels.js';
import { maskGrad, packedReluAvailable, reluPacked } from './simd-kernels.js';

/** Converts a float RawTensor (PyTorch layout) to a tf tensor of the same shape. */
export function rawToTensor(raw: RawTensor, key: string): tf.Tensor {
  if (!(raw.data instanceof Float32Array)) {
    throw new CtaError(`weight '${key}' has dtype ${raw.dtype}, expected a floating-point tensor`);
  }
  return tf.tensor(raw.data, raw.shape, 'float32');
}

/**
 * Runs `make` and then disposes `temps` (inputs the constructed object has copied or referenced
 * through refcounted variables). `tf.tidy` cannot be used for this: it only returns tensors.
 */
export function usingTemps<T>(temps: tf.Tensor[], make: () => T): T {
  try {
    return make();
  } finally {
    for (const t of temps) t.dispose();
  }
}

/** What a custom op's forward returns: its value and the gradient w.r.t. each input. */
export interface CustomOpResult<T extends tf.Tensor> {
  value: T;
  gradFunc: (dy: T, saved: tf.Tensor[]) => tf.Tensor[];
}

/**
 * Typed wrapper around `tf.customGrad`: `f` receives its tensor inputs as an array plus the save
 * function. As with `tf.customGrad`, the forward runs inside a tidy with the tape paused, and
 * `save` keeps tensors only while a gradient tape is recording (otherwise it is a no-op), so a
 * forward outside `tf.grads` retains nothing.
 *
 * The gradient function is wrapped in its own tidy: tfjs calls a custom op's gradient eagerly and
 * outside any per-node scope, so without it every temporary of every layer's backward would stay
 * alive until the whole backward pass ends. After it, {@link releaseConsumed} frees what the rest
 * of the backward can no longer need (memory-economic backward).
 */
export function customOp<T extends tf.Tensor>(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => CustomOpResult<T>,
): (...inputs: tf.Tensor[]) => T {
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const inputs = args.slice(0, -1) as tf.Tensor[];
    const res = f(inputs, save);
    const inputIds = inputs.map((t) => t.id);
    const outId = res.value.id; // customGrad records this very tensor as the node's output
    return {
      value: res.value,
      gradFunc: (dy: T, saved: tf.Tensor[]) => {
        const grads = tf.tidy(() => res.gradFunc(dy, saved));
        releaseConsumed(outId, inputIds, dy, saved, grads);
        return grads;
      },
    };
  });
  return op as (...inputs: tf.Tensor[]) => T;
}

/**
 * Input gradients returned by custom ops during the current backward, by input tensor id. Keyed
 * by the engine's 'backward' scope object, so the bookkeeping of one backward cannot outlive it.
 */
const returnedGrads = new WeakMap<object, Map<number, tf.Tensor[]>>();

/**
 * Memory-economic backward. tfjs-core's `backpropagateGradients` keeps every tensor's accumulated
 * gradient, every summand folded into a sum after the first, and every node's saved tensors alive
 * until the whole backward ends (docs/porting.md#tape-memory): about one extra copy of all
 * activations. Once a custom op's gradient has run, three things are dead and are freed here:
 * - its saved tensors (the engine disposes them again at the end: a no-op);
 * - dy, the gradient of its output: the tape reads it only when it calls this node (the node that
 *   produced a tensor runs after all of that tensor's consumers);
 * - the gradients custom ops returned earlier for this op's output: the tape has already summed
 *   them into dy, but disposes only the first summand.
 * Only inside an engine backward (`tf.grads`, `tf.variableGrads`, `engine().gradients`), and dy
 * only when the backward created it: a caller's own dy for the final output is never touched.
 * Gradients returned for tensors no op produced (the variables, the inputs) are never freed here.
 */
function releaseConsumed(outId: number, inputIds: number[], dy: tf.Tensor, saved: tf.Tensor[], grads: tf.Tensor[]): void {
  const scope = tf.engine().state.activeScope;
  if (!scope || scope.name !== 'backward') return;
  for (const t of saved) t.dispose();
  let pending = returnedGrads.get(scope);
  if (!pending) returnedGrads.set(scope, (pending = new Map()));
  const summands = pending.get(outId);
  pending.delete(outId);
  if (summands) for (const t of summands) if (!grads.includes(t)) t.dispose();
  if (dy.scopeId === scope.id && !dy.kept && !grads.includes(dy)) dy.dispose();
  inputIds.forEach((id, i) => {
    const list = pending.get(id);
    if (list) list.push(grads[i]);
    else pending.set(id, [grads[i]]);
  });
}

// channelMean lives in simd-kernels.ts (BN's fallback reductions use it); re-exported here.
export { channelMean } from './simd-kernels.js';

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

export interface Conv2dSpec {
  stride: number;
  pad: number; // PyTorch symmetric zero padding
  groups: number;
}

/**
 * Zero-dilates dy by `stride` (stride − 1 zeros after every row/column) and trims it to `rows` ×
 * `cols`, the size a stride-1 convolution with padding k−1−p needs to reproduce the input size.
 * This turns the stride-s transposed convolution into a plain forward conv
 * (docs/porting.md#input-gradients).
 */
function dilate(dy: tf.Tensor4D, stride: number, rows: number, cols: number): tf.Tensor4D {
  const [n, ho, wo, c] = dy.shape;
  if (tf.getBackend() === 'webgpu') {
    // tfjs-webgpu's Pad shader does not compile for rank 6 (it indexes a 'vec6' struct): the
    // same dilation as two rank-4 pads, columns first.
    const z: [number, number][] = [[0, 0], [0, 0], [0, stride - 1], [0, 0]];
    const wide = tf.pad(tf.reshape(dy, [n * ho, wo, 1, c]), z);
    const tall = tf.pad(tf.reshape(wide, [n, ho, 1, wo * stride * c]), z);
    const full = tf.reshape(tall, [n, ho * stride, wo * stride, c]) as tf.Tensor4D;
    return rows === ho * stride && cols === wo * stride ? full : tf.slice(full, [0, 0, 0, 0], [n, rows, cols, c]);
  }
  const expanded = tf.pad(tf.reshape(dy, [n, ho, 1, wo, 1, c]), [
    [0, 0],
    [0, 0],
    [0, stride - 1],
    [0, 0],
    [0, stride - 1],
    [0, 0],
  ]);
  const full = tf.reshape(expanded, [n, ho * stride, wo * stride, c]) as tf.Tensor4D;
  if (rows === ho * stride && cols === wo * stride) return full;
  return tf.slice(full, [0, 0, 0, 0], [n, rows, cols, c]);
}

/**
 * One output phase r (input rows i ≡ r mod s) of a stride-s transposed convolution, 1-D: the
 * forward reads input i = s·y + ky − p, so dx[s·m + r] = Σ dy[m − d]·W[ky] over the taps
 * ky ≡ r + p (mod s), d = (ky − r − p)/s. As a stride-1 correlation of dy with padding
 * (before, after): taps[j] is the kernel index at correlation offset j.
 */
interface Phase1d {
  taps: number[];
  before: number;
  after: number;
}

/** The s phases of one spatial axis (input length n, output length nOut); null if any is empty. */
function phases1d(n: number, nOut: number, k: number, s: number, p: number): Phase1d[] | null {
  const out: Phase1d[] = [];
  for (let r = 0; r < s; r++) {
    const ds: number[] = [];
    for (let ky = 0; ky < k; ky++) if ((((ky - r - p) % s) + s) % s === 0) ds.push((ky - r - p) / s);
    if (ds.length === 0) return null;
    const dMax = Math.max(...ds);
    const kf = dMax - Math.min(...ds) + 1;
    const taps = Array.from({ length: kf }, (_, j) => s * (dMax - j) + r + p);
    const rows = Math.ceil((n - r) / s); // dx rows of this phase
    const after = rows - nOut - dMax + kf - 1;
    if (dMax < 0 || after < 0 || rows !== n / s) return null;
    out.push({ taps, before: dMax, after });
  }
  return out;
}

/** Options of a Conv2d / Linear layer. */
export interface WeightOptions {
  /**
   * Keep the weight in a `tf.Variable` and return its gradient (source-model training). Default
   * false: a constant weight, and a conv op that saves nothing for backward.
   */
  trainable?: boolean;
}

/**
 * dL/dW of a (grouped) convolution with PyTorch stride/padding, as HWIO [k, k, in/G, out], without
 * the `Conv2DBackpropFilter` kernel that WASM lacks (docs/porting.md#filter-gradients). Two forms,
 * whichever was fastest on WASM (measured at [64,32,32,C], groups of 8–128 channels):
 * - 1×1, no padding: dW = xsᵀ·dy, one matMul per group of the transposed input [Cin, M] against
 *   dy [M, Cout] (M = N·Ho·Wo); a stride is a window-1 average pool (an exact subsample) first.
 *   The transpose is explicit: WASM's matMul with transposeA falls back to a slow loop (~5–10×).
 * - k×k: the filter gradient is itself a convolution, dW[i,j,c,o] = Σ_{n,y,x} xp[n, s·y+i, s·x+j, c]
 *   · dy[n,y,x,o]: convolve xp transposed to [Cin, Hp, Wp, N] (input channels as the batch, the
 *   images as channels) with dy transposed to the filter [Ho, Wo, N, Cout] at dilation s, 'valid',
 *   which gives [Cin, k', k', Cout] with k' ≥ k (the first k rows/cols are the gradient). XNNPACK
 *   runs it at about the speed of the forward conv; an im2col of strided slices was 10–40× slower.
 */
export function convFilterGrad(
  x: tf.Tensor4D,
  dy: tf.Tensor4D,
  kernel: number,
  stride: number,
  pad: number,
  groups = 1,
): tf.Tensor4D {
  return tf.tidy(() => {
    const [n, , , cin] = x.shape;
    const [, ho, wo, cout] = dy.shape;
    const cg = cin / groups;
    const og = cout / groups;
    if (kernel === 1 && pad === 0) {
      const xs = stride === 1 ? x : (tf.avgPool(x, 1, stride, 'valid') as tf.Tensor4D);
      if (xs.shape[1] !== ho || xs.shape[2] !== wo) throw new Error(`convFilterGrad: subsampled input ${xs.shape} vs dy ${dy.shape}`);
      const m = n * ho * wo;
      const xt = tf.transpose(tf.reshape(xs, [m, cin])) as tf.Tensor2D; // [Cin, M]
      const dy2 = tf.reshape(dy, [m, cout]) as tf.Tensor2D;
      const g =
        groups === 1
          ? tf.matMul(xt, dy2)
          : tf.concat(
              tf.split(xt, groups, 0).map((xi, i) => tf.matMul(xi, tf.slice(dy2, [0, i * og], [m, og]))),
              1,
            );
      return tf.reshape(g, [1, 1, cg, cout]) as tf.Tensor4D;
    }
    const xp = pad > 0 ? tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) : x;
    const xt = tf.transpose(xp, [3, 1, 2, 0]) as tf.Tensor4D; // [Cin, Hp, Wp, N]
    const f = tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D; // [Ho, Wo, N, Cout]
    const xs = groups === 1 ? [xt] : (tf.split(xt, groups, 0) as tf.Tensor4D[]);
    const fs = groups === 1 ? [f] : (tf.split(f, groups, 3) as tf.Tensor4D[]);
    const parts = xs.map((xi, i) => {
      const r = tf.conv2d(xi, fs[i], 1, 'valid', 'NHWC', stride) as tf.Tensor4D; // [Cin/G, k', k', Cout/G]
      return r.shape[1] === kernel && r.shape[2] === kernel ? r : tf.slice(r, [0, 0, 0, 0], [cg, kernel, kernel, og]);
    });
    const g = parts.length === 1 ? parts[0] : tf.concat(parts, 3); // [Cin/G, k, k, Cout]
    return tf.transpose(g, [1, 2, 0, 3]) as tf.Tensor4D;
  });
}

/**
 * 2-D convolution (optionally grouped) on NHWC input with PyTorch semantics. The filter is
 * transposed OIHW → HWIO once at construction; the flipped, in/out-swapped filter used for the
 * input gradient is built lazily on the first backward and cached. The op saves nothing for
 * backward: dx = conv(dilate(dy), flip(W)ᵀ, stride 1, pad k−1−p) needs only the constant filter.
 *
 * With `{ trainable: true }` the HWIO filter is one `tf.Variable` [k, k, in/G, out], the op also
 * returns dL/dW (`convFilterGrad`) and saves its input for that, the only case in which it saves
 * anything. A grouped trainable conv runs as ONE dense conv with the block-diagonal filter (zeros
 * off the group blocks) and takes the diagonal blocks of the dense filter gradient: at the narrow
 * widths trained here, splitting the channels costs more than the G× extra multiply-adds
 * (measured on WASM: docs/porting.md#measurements).
 */
export class Conv2d {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernel: number;
  readonly stride: number;
  readonly pad: number;
  readonly groups: number;
  /** Per-group HWIO filters [k, k, in/G, out/G] (frozen mode; empty when trainable). */
  private filters: tf.Tensor4D[] = [];
  /** The whole HWIO filter [k, k, in/G, out] (trainable mode only). */
  private variable: tf.Variable<tf.Rank.R4> | null = null;
  /** Per-group flipped, transposed filters [k, k, out/G, in/G] (lazy; frozen mode only). */
  private flipped: tf.Tensor4D[] | null = null;
  /** Per phase (ry, rx): sub-pixel filters [kfy, kfx, out, in] (lazy; frozen, strided, ungrouped). */
  private phaseFilters: { key: string; filters: tf.Tensor4D[] } | null = null;
  /** The trainable op (input and weight in, both gradients out; saves its input). */
  private readonly trainOp: (x: tf.Tensor4D, w: tf.Tensor) => tf.Tensor4D;
  /** The frozen op (input gradient only; saves nothing). */
  private readonly frozenOp: (x: tf.Tensor4D) => tf.Tensor4D;

  /** `weight`: PyTorch layout [out, in/groups, k, k]. */
  constructor(weight: tf.Tensor4D, spec: Conv2dSpec, opts: WeightOptions = {}) {
    const [out, inPerGroup, kh, kw] = weight.shape;
    if (kh !== kw) throw new CtaError(`non-square conv kernels are not supported (${kh}×${kw})`);
    if (out % spec.groups !== 0) throw new CtaError(`conv with ${out} outputs cannot be split into ${spec.groups} groups`);
    if (kh - 1 - spec.pad < 0) throw new CtaError(`conv padding ${spec.pad} larger than kernel − 1 is not supported`);
    this.outChannels = out;
    this.inChannels = inPerGroup * spec.groups;
    this.kernel = kh;
    this.stride = spec.stride;
    this.pad = spec.pad;
    this.groups = spec.groups;
    // Both forms' ops exist from the start; setRequiresGrad switches which one apply() runs.
    this.trainOp = customOp<tf.Tensor4D>(([x, wHwio], save) => {
        const x4 = x as tf.Tensor4D;
        const [, h, w] = x4.shape;
        save([x4]); // a no-op unless a gradient tape is recording
        return {
          value: tf.conv2d(x4, this.denseFilter(wHwio as tf.Tensor4D), this.stride, this.pad),
          gradFunc: (dy, [xs]) => [this.inputGrad(dy, h, w), this.filterGrad(xs as tf.Tensor4D, dy)],
        };
      });
      this.frozenOp = customOp<tf.Tensor4D>(([x]) => {
        const x4 = x as tf.Tensor4D;
        const [, h, w] = x4.shape;
        return {
          value: this.run(x4, this.filters, this.stride, this.pad),
          // Nothing saved: the closure holds only JS numbers and the layer (whose filters are kept).
          gradFunc: (dy) => [this.inputGrad(dy, h, w)],
        };
      });
    if (opts.trainable === true) {
      // Unnamed: tfjs registers variable names globally, and several models may coexist.
      this.variable = tf.variable(tf.tidy(() => tf.transpose(weight, [2, 3, 1, 0]) as tf.Tensor4D), true);
    } else {
      this.filters = this.splitFilter(weight);
    }
  }

  /** Whether the weight is a variable whose gradient the op returns. */
  get trainable(): boolean {
    return this.variable !== null;
  }

  /**
   * Switches between the trainable form (one HWIO variable, input saved, weight gradient
   * returned) and the frozen form (constant per-group filters, nothing saved: the memory-economic
   * backward of docs/memory.md). The values are kept exactly (a transpose-free regrouping).
   */
  setRequiresGrad(on: boolean): void {
    if (on === this.trainable) return;
    if (on) {
      const hwio = tf.tidy(() => (this.filters.length === 1 ? this.filters[0].clone() : tf.concat(this.filters, 3))) as tf.Tensor4D;
      this.disposeFrozen();
      this.variable = tf.variable(hwio, true);
      hwio.dispose();
    } else {
      const v = this.variable!;
      this.filters = tf.tidy(() => this.groupsOf(v).map((p) => tf.keep(p.clone()) as tf.Tensor4D));
      v.dispose();
      this.variable = null;
    }
  }

  /** Grouped HWIO [k, k, in/G, out] → dense block-diagonal HWIO [k, k, in, out]. */
  private denseFilter(hwio: tf.Tensor4D): tf.Tensor4D {
    if (this.groups === 1) return hwio;
    const cg = this.inChannels / this.groups;
    return tf.concat(
      this.groupsOf(hwio).map((f, i) => tf.pad(f, [[0, 0], [0, 0], [i * cg, this.inChannels - (i + 1) * cg], [0, 0]])),
      3,
    ) as tf.Tensor4D;
  }

  private groupsOf(hwio: tf.Tensor4D): tf.Tensor4D[] {
    return this.groups === 1 ? [hwio] : (tf.split(hwio, this.groups, 3) as tf.Tensor4D[]);
  }

  private splitFilter(weight: tf.Tensor4D): tf.Tensor4D[] {
    return tf.tidy(() => {
      const hwio = tf.transpose(weight, [2, 3, 1, 0]) as tf.Tensor4D; // OIHW → HWIO
      return this.groupsOf(hwio).map((p) => tf.keep(p.clone()) as tf.Tensor4D);
    });
  }

  private run(x: tf.Tensor4D, filters: tf.Tensor4D[], stride: number, pad: number): tf.Tensor4D {
    // Numeric padding = PyTorch's symmetric padding; 'same' would pad (0, 1) at stride 2
    // (docs/porting.md#padding).
    if (filters.length === 1) return tf.conv2d(x, filters[0], stride, pad);
    // tfjs has no grouped conv: split the channels, convolve each group, concatenate
    // (docs/porting.md#grouped-convolution).
    const xs = splitChannels(x, filters.length);
    return concatChannels(xs.map((xi, i) => tf.conv2d(xi, filters[i], stride, pad)));
  }

  /** flip spatially and swap in/out: [k,k,I,O] → [k,k,O,I] */
  private static flip(f: tf.Tensor4D): tf.Tensor4D {
    return tf.transpose(tf.reverse(f, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D;
  }

  private inputGrad(dy: tf.Tensor4D, h: number, w: number): tf.Tensor4D {
    let flipped: tf.Tensor4D[];
    if (this.variable) {
      // The weight changes every step: flip the current value (small next to the activations).
      flipped = [Conv2d.flip(this.denseFilter(this.variable))];
    } else {
      this.flipped ??= this.filters.map((f) => tf.keep(tf.tidy(() => Conv2d.flip(f))));
      flipped = this.flipped;
    }
    const padT = this.kernel - 1 - this.pad;
    if (this.stride === 1) return this.run(dy, flipped, 1, padT);
    const rows = h - this.kernel + 1 + 2 * this.pad; // a stride-1 conv with padding padT yields h rows
    const cols = w - this.kernel + 1 + 2 * this.pad;
    if (this.kernel === 1 && this.pad === 0) {
      // A 1×1 conv commutes with zero insertion: convolve the s² times smaller dy, then dilate.
      return dilate(this.run(dy, flipped, 1, 0), this.stride, rows, cols);
    }
    if (!this.variable) {
      // Sub-pixel phases: faster than the dilated form for the 7×7/2 stem, even for 3×3/2. Grouped
      // 3×3/2 lost while the per-group split and 4·G-piece concat were tf.split / tf.concat; with
      // the heap channel kernels it wins (timings: docs/porting.md#measurements).
      const sub = this.subPixelInputGrad(dy, h, w);
      if (sub) return sub;
    }
    return this.run(dilate(dy, this.stride, rows, cols), flipped, 1, padT);
  }

  /**
   * Stride-s input gradient of a (grouped) conv without the zeros of the dilated form (which
   * spends (s² − 1)/s² of its multiply-adds on them): each of the s² output phases (ry, rx) is a
   * stride-1 conv of dy with the taps that reach it (`phases1d`), and depthToSpace interleaves
   * the phases. Exact up to float32 summation order. Null when the shapes do not split evenly
   * (then: dilation).
   */
  private subPixelInputGrad(dy: tf.Tensor4D, h: number, w: number): tf.Tensor4D | null {
    const [, ho, wo] = dy.shape;
    const s = this.stride;
    const py = phases1d(h, ho, this.kernel, s, this.pad);
    const px = phases1d(w, wo, this.kernel, s, this.pad);
    if (!py || !px) return null;
    const key = `${h}x${w}`;
    if (this.phaseFilters?.key !== key) {
      this.phaseFilters?.filters.forEach((f) => f.dispose());
      // Per phase, per group: [k, k, in/G, out/G] → taps [kfy, kfx, in/G, out/G] → [kfy, kfx, out/G, in/G]
      this.phaseFilters = {
        key,
        filters: tf.tidy(() =>
          py.flatMap((fy) =>
            px.flatMap((fx) =>
              this.filters.map((f) => {
                const sub = tf.gather(tf.gather(f, tf.tensor1d(fy.taps, 'int32'), 0), tf.tensor1d(fx.taps, 'int32'), 1);
                return tf.keep(tf.transpose(sub, [0, 1, 3, 2]) as tf.Tensor4D);
              }),
            ),
          ),
        ),
      };
    }
    const filters = this.phaseFilters.filters;
    const g = this.groups;
    const dys = g === 1 ? [dy] : splitChannels(dy, g);
    const parts = py.flatMap((fy, iy) =>
      px.flatMap((fx, ix) =>
        dys.map((d, gi) => tf.conv2d(d, filters[(iy * px.length + ix) * g + gi], 1, [[0, 0], [fy.before, fy.after], [fx.before, fx.after], [0, 0]])),
      ),
    );
    // channel order (ry, rx, group, c) = depthToSpace's (by, bx, C)
    return phasesToSpace(parts, s);
  }

  /** dL/dW in HWIO [k, k, in/G, out]: the diagonal blocks of the dense filter gradient. */
  private filterGrad(x: tf.Tensor4D, dy: tf.Tensor4D): tf.Tensor4D {
    const dense = convFilterGrad(x, dy, this.kernel, this.stride, this.pad);
    if (this.groups === 1) return dense;
    const k = this.kernel;
    const cg = this.inChannels / this.groups;
    const og = this.outChannels / this.groups;
    return tf.concat(
      Array.from({ length: this.groups }, (_, i) => tf.slice(dense, [0, 0, i * cg, i * og], [k, k, cg, og])),
      3,
    ) as tf.Tensor4D;
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    if (this.variable) recordWeightInput(this.variable, x);
    return this.variable ? this.trainOp(x, this.variable) : this.frozenOp(x);
  }

  /**
   * The current per-group HWIO filters [k, k, in/G, out/G] (new tensors from a trainable variable;
   * the layer's own tensors otherwise, which the caller must not dispose). For inference folding.
   */
  groupFilters(): { filters: tf.Tensor4D[]; owned: boolean } {
    if (this.variable) return { filters: tf.tidy(() => this.groupsOf(this.variable!).map((f) => tf.keep(f.clone()))), owned: true };
    return { filters: this.filters, owned: false };
  }

  /** Identity of the filter data: changes whenever setWeight / a variable assign replaces it. */
  get filterIds(): object[] {
    return this.variable ? [this.variable.dataId] : this.filters.map((f) => f.dataId);
  }

  /** The trainable HWIO filter variable [k, k, in/G, out], or null for a frozen conv. */
  get weightVariable(): tf.Variable | null {
    return this.variable;
  }

  /** The filter in PyTorch layout [out, in/groups, k, k] (a new tensor). */
  weightOIHW(): tf.Tensor4D {
    return tf.tidy(() => {
      const hwio = this.variable ?? (this.filters.length === 1 ? this.filters[0] : tf.concat(this.filters, 3));
      return tf.transpose(hwio, [3, 2, 0, 1]) as tf.Tensor4D;
    });
  }

  /** PyTorch shape of the weight. */
  get weightShape(): number[] {
    return [this.outChannels, this.inChannels / this.groups, this.kernel, this.kernel];
  }

  /** Replaces the filter (PyTorch layout, same shape); the input is not retained. */
  setWeight(weight: tf.Tensor4D): void {
    if (this.variable) {
      tf.tidy(() => this.variable!.assign(tf.transpose(weight, [2, 3, 1, 0]) as tf.Tensor4D));
      return;
    }
    const fresh = this.splitFilter(weight);
    this.disposeFrozen();
    this.filters = fresh;
  }

  /** Frees the frozen form's filters and the caches derived from them. */
  private disposeFrozen(): void {
    for (const f of this.filters) f.dispose();
    this.filters = [];
    if (this.flipped) for (const f of this.flipped) f.dispose();
    this.flipped = null;
    this.phaseFilters?.filters.forEach((f) => f.dispose());
    this.phaseFilters = null;
  }

  dispose(): void {
    this.disposeFrozen();
    this.variable?.dispose();
    this.variable = null;
  }
}

/**
 * The input a trainable conv / linear layer saved for its weight gradient in its last forward
 * (docs/memory.md#trainable-weights): its shape, its float32 bytes, its data buffer (inputs shared by
 * several layers, e.g. a block's first conv and its projection shortcut, are saved once) and its
 * position in forward order.
 */
export interface WeightInput {
  shape: number[];
  bytes: number;
  buffer: object;
  seq: number;
}

const weightInputs = new WeakMap<tf.Tensor, WeightInput>();
let weightInputSeq = 0;

function recordWeightInput(weight: tf.Tensor, x: tf.Tensor): void {
  weightInputs.set(weight, { shape: x.shape.slice(), bytes: x.size * 4, buffer: x.dataId as object, seq: weightInputSeq++ });
}

/** What the layer whose trainable weight variable is `weight` saved in its last forward, if any. */
export function lastWeightInput(weight: tf.Tensor): WeightInput | undefined {
  return weightInputs.get(weight);
}

// ---------------------------------------------------------------------------------------------
// Linear and pooling
// ---------------------------------------------------------------------------------------------

/**
 * PyTorch nn.Linear with the weight stored as [in, out]: constants by default, `tf.Variable`s
 * (weight and bias) with `{ trainable: true }`.
 */
export class Linear {
  private weight: tf.Tensor2D; // [in, out]
  private bias: tf.Tensor1D | null;
  readonly inFeatures: number;
  readonly outFeatures: number;
  private isVariable: boolean;

  /** `weight`: PyTorch layout [out, in]. */
  constructor(weight: tf.Tensor2D, bias: tf.Tensor1D | null, opts: WeightOptions = {}) {
    [this.outFeatures, this.inFeatures] = weight.shape;
    this.isVariable = opts.trainable === true;
    if (this.isVariable) {
      this.weight = tf.variable(tf.tidy(() => tf.transpose(weight)), true) as tf.Variable<tf.Rank.R2>;
      this.bias = bias ? (tf.variable(bias, true) as tf.Variable<tf.Rank.R1>) : null;
    } else {
      this.weight = tf.keep(tf.transpose(weight)) as tf.Tensor2D;
      this.bias = bias ? (tf.keep(bias.clone()) as tf.Tensor1D) : null;
    }
  }

  apply(x: tf.Tensor2D): tf.Tensor2D {
    if (this.isVariable) recordWeightInput(this.weight, x);
    // Autodiff is fine here: MatMul's gradient is two matMuls, both registered on WASM.
    const y = tf.matMul(x, this.weight);
    return this.bias ? (tf.add(y, this.bias) as tf.Tensor2D) : (y as tf.Tensor2D);
  }

  /** Whether weight and bias are variables whose gradients the backward computes. */
  get trainable(): boolean {
    return this.isVariable;
  }

  /**
   * Switches weight and bias between variables (trainable) and constants (frozen), values kept.
   * Either way the matMul autodiff saves the same two operands, so a frozen Linear's backward is
   * unchanged.
   */
  setRequiresGrad(on: boolean): void {
    if (on === this.isVariable) return;
    const w = this.weight;
    const b = this.bias;
    if (on) {
      this.weight = tf.variable(w, true) as tf.Variable<tf.Rank.R2>;
      this.bias = b ? (tf.variable(b, true) as tf.Variable<tf.Rank.R1>) : null;
    } else {
      this.weight = tf.keep(w.clone()) as tf.Tensor2D;
      this.bias = b ? (tf.keep(b.clone()) as tf.Tensor1D) : null;
    }
    w.dispose();
    b?.dispose();
    this.isVariable = on;
  }

  /** The trainable weight [in, out] and bias variables (empty for a frozen layer). */
  get variables(): { weight: tf.Variable; bias: tf.Variable | null } | null {
    return this.trainable ? { weight: this.weight as tf.Variable, bias: this.bias as tf.Variable | null } : null;
  }

  weightOutIn(): tf.Tensor2D {
    return tf.transpose(this.weight) as tf.Tensor2D;
  }

  biasValue(): tf.Tensor1D | null {
    return this.bias ? (this.bias.clone() as tf.Tensor1D) : null;
  }

  get hasBias(): boolean {
    return this.bias !== null;
  }

  setWeight(weight: tf.Tensor2D): void {
    if (this.isVariable) {
      tf.tidy(() => (this.weight as tf.Variable).assign(tf.transpose(weight)));
      return;
    }
    const w = tf.keep(tf.transpose(weight)) as tf.Tensor2D;
    this.weight.dispose();
    this.weight = w;
  }

  setBias(bias: tf.Tensor1D): void {
    if (this.isVariable && this.bias) {
      (this.bias as tf.Variable).assign(bias);
      return;
    }
    const b = tf.keep(bias.clone()) as tf.Tensor1D;
    this.bias?.dispose();
    this.bias = b;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias?.dispose();
  }
}

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

// ---------------------------------------------------------------------------------------------
// Elementwise ops with lean tapes
// ---------------------------------------------------------------------------------------------

let reluOp: ((x: tf.Tensor4D) => tf.Tensor4D) | null = null;
let addReluOp: ((a: tf.Tensor4D, b: tf.Tensor4D) => tf.Tensor4D) | null = null;
let addOp: ((a: tf.Tensor, b: tf.Tensor) => tf.Tensor) | null = null;
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
