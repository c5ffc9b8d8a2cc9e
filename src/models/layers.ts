/**
 * Building blocks shared by the CIFAR models: a convolution with PyTorch padding whose input
 * gradient is a forward convolution (backends.md §2/§3), a linear layer, global average pooling,
 * lean-tape elementwise ops, and the per-channel primitives of the norm layer.
 *
 * Conv filters and linear weights are constants, never `tf.Variable`s: `Conv2DBackpropFilter` is not
 * registered on the WASM backend, and only the norm layers' affine parameters are ever adapted.
 * Every persistent tensor is `tf.keep`-ed so that building a model inside a caller's `tf.tidy` is
 * harmless.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { RawTensor } from '../io/types.js';

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
 * alive until the whole backward pass ends.
 */
export function customOp<T extends tf.Tensor>(
  f: (inputs: tf.Tensor[], save: tf.GradSaveFunc) => CustomOpResult<T>,
): (...inputs: tf.Tensor[]) => T {
  const op = tf.customGrad((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const res = f(args.slice(0, -1) as tf.Tensor[], save);
    return { value: res.value, gradFunc: (dy: T, saved: tf.Tensor[]) => tf.tidy(() => res.gradFunc(dy, saved)) };
  });
  return op as (...inputs: tf.Tensor[]) => T;
}

// ---------------------------------------------------------------------------------------------
// Per-channel reduction
// ---------------------------------------------------------------------------------------------

/**
 * Per-channel mean over every other axis of an NHWC tensor, as a [C] vector: ONE average pool over
 * the whole [N·H, W] plane (XNNPACK's NHWC pooling streams the data once). backends.md §2 found
 * tf.sum/tf.moments slow on WASM and suggested matMul with a ones vector; measured here, that matMul
 * is fast only while its right operand is a constant (XNNPACK caches the packed weights), and the
 * activations are fresh tensors every call: 10–25 ms against ~1 ms for this pool at [16,32,32,128],
 * with the same float32 accuracy (≈5e-6 relative against float64).
 */
export function channelMean(x: tf.Tensor): tf.Tensor1D {
  const c = x.shape[x.shape.length - 1];
  const w = x.rank >= 2 ? x.shape[x.shape.length - 2] : 1;
  const rows = x.size / (c * w);
  const plane = tf.reshape(x, [1, rows, w, c]) as tf.Tensor4D;
  return tf.reshape(tf.avgPool(plane, [rows, w], 1, 'valid'), [c]) as tf.Tensor1D;
}

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
 * This turns the stride-s transposed convolution into a plain forward conv (backends.md §2 item 1).
 */
function dilate(dy: tf.Tensor4D, stride: number, rows: number, cols: number): tf.Tensor4D {
  const [n, ho, wo, c] = dy.shape;
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
 * 2-D convolution (optionally grouped) on NHWC input with PyTorch semantics. The filter is
 * transposed OIHW → HWIO once at construction; the flipped, in/out-swapped filter used for the
 * input gradient is built lazily on the first backward and cached. The op saves nothing for
 * backward: dx = conv(dilate(dy), flip(W)ᵀ, stride 1, pad k−1−p) needs only the constant filter.
 */
export class Conv2d {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernel: number;
  readonly stride: number;
  readonly pad: number;
  readonly groups: number;
  /** Per-group HWIO filters [k, k, in/G, out/G]. */
  private filters: tf.Tensor4D[];
  /** Per-group flipped, transposed filters [k, k, out/G, in/G] (lazy). */
  private flipped: tf.Tensor4D[] | null = null;
  private readonly op: (x: tf.Tensor4D) => tf.Tensor4D;

  /** `weight`: PyTorch layout [out, in/groups, k, k]. */
  constructor(weight: tf.Tensor4D, spec: Conv2dSpec) {
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
    this.filters = this.splitFilter(weight);
    this.op = customOp<tf.Tensor4D>(([x]) => {
      const x4 = x as tf.Tensor4D;
      const [, h, w] = x4.shape;
      return {
        value: this.run(x4, this.filters, this.stride, this.pad),
        // Nothing saved: the closure holds only JS numbers and the layer (whose filters are kept).
        gradFunc: (dy) => [this.inputGrad(dy, h, w)],
      };
    });
  }

  private splitFilter(weight: tf.Tensor4D): tf.Tensor4D[] {
    return tf.tidy(() => {
      const hwio = tf.transpose(weight, [2, 3, 1, 0]) as tf.Tensor4D; // OIHW → HWIO
      const parts = this.groups === 1 ? [hwio] : tf.split(hwio, this.groups, 3);
      return parts.map((p) => tf.keep(p.clone()) as tf.Tensor4D);
    });
  }

  private run(x: tf.Tensor4D, filters: tf.Tensor4D[], stride: number, pad: number): tf.Tensor4D {
    // Numeric padding = PyTorch's symmetric padding; 'same' would pad (0, 1) at stride 2
    // (backends.md §2 pitfall).
    if (filters.length === 1) return tf.conv2d(x, filters[0], stride, pad);
    // tfjs has no grouped conv: split the channels, convolve each group, concatenate (§3 "split").
    const xs = tf.split(x, filters.length, 3);
    return tf.concat(
      xs.map((xi, i) => tf.conv2d(xi as tf.Tensor4D, filters[i], stride, pad)),
      3,
    );
  }

  private inputGrad(dy: tf.Tensor4D, h: number, w: number): tf.Tensor4D {
    if (this.flipped === null) {
      // flip spatially and swap in/out: [k,k,I,O] → [k,k,O,I]
      this.flipped = this.filters.map((f) =>
        tf.keep(tf.tidy(() => tf.transpose(tf.reverse(f, [0, 1]), [0, 1, 3, 2]) as tf.Tensor4D)),
      );
    }
    const padT = this.kernel - 1 - this.pad;
    let src = dy;
    if (this.stride > 1) {
      // rows needed so that a stride-1 conv with padding padT yields h rows: h − k + 1 + 2p
      src = dilate(dy, this.stride, h - this.kernel + 1 + 2 * this.pad, w - this.kernel + 1 + 2 * this.pad);
    }
    return this.run(src, this.flipped, 1, padT);
  }

  apply(x: tf.Tensor4D): tf.Tensor4D {
    return this.op(x);
  }

  /** The filter in PyTorch layout [out, in/groups, k, k] (a new tensor). */
  weightOIHW(): tf.Tensor4D {
    return tf.tidy(() => {
      const hwio = this.filters.length === 1 ? this.filters[0] : tf.concat(this.filters, 3);
      return tf.transpose(hwio, [3, 2, 0, 1]) as tf.Tensor4D;
    });
  }

  /** PyTorch shape of the weight. */
  get weightShape(): number[] {
    return [this.outChannels, this.inChannels / this.groups, this.kernel, this.kernel];
  }

  /** Replaces the filter (PyTorch layout, same shape); the input is not retained. */
  setWeight(weight: tf.Tensor4D): void {
    const fresh = this.splitFilter(weight);
    this.dispose();
    this.filters = fresh;
  }

  dispose(): void {
    for (const f of this.filters) f.dispose();
    if (this.flipped) for (const f of this.flipped) f.dispose();
    this.flipped = null;
  }
}

// ---------------------------------------------------------------------------------------------
// Linear and pooling
// ---------------------------------------------------------------------------------------------

/** PyTorch nn.Linear with a constant weight stored as [in, out]. */
export class Linear {
  private weight: tf.Tensor2D; // [in, out]
  private bias: tf.Tensor1D | null;
  readonly inFeatures: number;
  readonly outFeatures: number;

  /** `weight`: PyTorch layout [out, in]. */
  constructor(weight: tf.Tensor2D, bias: tf.Tensor1D | null) {
    [this.outFeatures, this.inFeatures] = weight.shape;
    this.weight = tf.keep(tf.transpose(weight)) as tf.Tensor2D;
    this.bias = bias ? (tf.keep(bias.clone()) as tf.Tensor1D) : null;
  }

  apply(x: tf.Tensor2D): tf.Tensor2D {
    // Autodiff is fine here: the weight is a constant, so only dx = dy·Wᵀ is ever requested.
    const y = tf.matMul(x, this.weight);
    return this.bias ? (tf.add(y, this.bias) as tf.Tensor2D) : (y as tf.Tensor2D);
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
    const w = tf.keep(tf.transpose(weight)) as tf.Tensor2D;
    this.weight.dispose();
    this.weight = w;
  }

  setBias(bias: tf.Tensor1D): void {
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
let addOp: ((a: tf.Tensor4D, b: tf.Tensor4D) => tf.Tensor4D) | null = null;

/** relu that saves its output (not its input) for the mask dy·[y > 0]. */
export function relu(x: tf.Tensor4D): tf.Tensor4D {
  reluOp ??= customOp<tf.Tensor4D>(([input], save) => {
    const y = tf.relu(input) as tf.Tensor4D;
    save([y]);
    return { value: y, gradFunc: (dy, [out]) => [tf.mul(dy, tf.step(out))] };
  });
  return reluOp(x);
}

/**
 * relu(a + b) for residual joins: saves only the output, where tf.add + tf.relu would keep both
 * summands and the sum alive until the backward.
 */
export function addRelu(a: tf.Tensor4D, b: tf.Tensor4D): tf.Tensor4D {
  addReluOp ??= customOp<tf.Tensor4D>(([x, y], save) => {
    const out = tf.relu(tf.add(x, y)) as tf.Tensor4D;
    save([out]);
    return {
      value: out,
      gradFunc: (dy, [saved]) => {
        const g = tf.mul(dy, tf.step(saved));
        return [g, g.clone()]; // distinct tensors: the tape may dispose one while the other is in use
      },
    };
  });
  return addReluOp(a, b);
}

/** a + b (same shapes) saving nothing for backward. */
export function add(a: tf.Tensor4D, b: tf.Tensor4D): tf.Tensor4D {
  addOp ??= customOp<tf.Tensor4D>(([x, y]) => ({
    value: tf.add(x, y) as tf.Tensor4D,
    gradFunc: (dy) => [dy.clone(), dy.clone()],
  }));
  return addOp(a, b);
}
