/**
 * 2-D convolution with PyTorch padding and groups whose input gradient is a forward convolution
 * (docs/porting.md#input-gradients) and whose filter gradient avoids `Conv2DBackpropFilter`, which
 * the WASM backend lacks (docs/porting.md#filter-gradients). For adaptation the filters are
 * constants; `{ trainable: true }` keeps them in a tf.Variable (source-model training, or any
 * chosen trainable set).
 */
import { tf } from '../../tf.js';
import { CtaError } from '../../util/errors.js';
import { concatChannels, phasesToSpace, splitChannels } from '../kernels.js';
import { customOp } from './custom-op.js';
import { recordWeightInput, type WeightOptions } from './weights.js';

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
