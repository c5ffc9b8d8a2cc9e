/**
 * Channel moves on NHWC tensors (the last axis) as plain loops over the backend's own memory:
 * split into equal groups, concatenate, gather a channel list, scatter it back with zeros; and
 * the unstack along the first axis that ViT's per-head products use.
 *
 * Why: grouped convolutions (tfjs has none: split → per-group conv → concat) and MECTA's channel
 * pruning (docs/mecta-norm.md#pruning: keep a random channel subset) move channels in every step.
 * On the WASM backend tf.split / tf.slice first copy the WHOLE input out of the heap (`readSync` =
 * HEAPU8.slice) and then copy one row of C/G floats at a time with `subarray`/`set`; tf.gather
 * looks up an index per element in C++. Here the input is read in place through a heap view and
 * written straight into the output's heap memory in one pass: in a ResNeXt-29 Tent step the stock
 * SplitV + Concat were a visible share of the profile. On WASM the split, concat and gather run as
 * simd-kernels.wat functions (a bulk-memory row copy, an indexed gather), which beat JS loops with
 * per-row subarray/set by a wide margin (measurements: docs/porting.md#measurements).
 *
 * Registered as kernels for the 'wasm' and 'cpu' backends (both keep float32 data in typed arrays
 * this code can address); kernels.ts gives other backends (tfjs-node, WebGL) the equivalent tf ops
 * (kernel-reference.ts) and registers the gradients of split, concat, gather and scatter, so they
 * also work under autodiff.
 */
import { tf } from '../tf.js';
import { type Heap, withHeap } from './wasm-heap.js';

type Info = tf.TensorInfo;

/** The two backends whose float32 tensors are typed arrays this file can read and write. */
interface Memory {
  /** A fresh float32 output of `shape` (contents undefined). */
  alloc(shape: number[]): Info;
  /** A Float32Array over a tensor's data (no copy). Call after every alloc of the kernel. */
  view(t: Info): Float32Array;
  /** WASM only: the heap for simd-kernels.wat's row copies and gather (faster than JS loops). */
  heap?: Heap;
}

interface WasmBackendLike {
  makeOutput(shape: number[], dtype: 'float32'): Info;
  typedArrayFromHeap(t: Info): Float32Array;
}

interface CpuBackendLike {
  makeTensorInfo(shape: number[], dtype: 'float32', values: Float32Array): Info;
  data: { get(id: object): { values: Float32Array } };
}

const MEMORY: Record<string, (backend: unknown) => Memory> = {
  // A heap view taken before a later malloc could be detached by heap growth: every kernel body
  // allocates its outputs first and only then takes views.
  wasm: (backend) => {
    const b = backend as WasmBackendLike;
    return { alloc: (shape) => b.makeOutput(shape, 'float32'), view: (t) => b.typedArrayFromHeap(t) };
  },
  cpu: (backend) => {
    const b = backend as CpuBackendLike;
    return {
      alloc: (shape) => b.makeTensorInfo(shape, 'float32', new Float32Array(shape.reduce((a, d) => a * d, 1))),
      view: (t) => b.data.get(t.dataId).values,
    };
  },
};

/** Copies `n` floats (runs are short: a plain loop beats subarray + set below ~64). */
function copy(src: Float32Array, si: number, dst: Float32Array, di: number, n: number): void {
  if (n >= 64) {
    dst.set(src.subarray(si, si + n), di);
    return;
  }
  for (let j = 0; j < n; j++) dst[di + j] = src[si + j];
}

/** Shape helpers and `runKernel`, also used by simd-kernels.ts's kernels. */
export const lastDim = (t: Info) => t.shape[t.shape.length - 1];
export const sizeOf = (t: Info) => t.shape.reduce((a, d) => a * d, 1);
const withLast = (shape: number[], c: number) => [...shape.slice(0, -1), c];

interface SplitAttrs {
  groups: number;
}
interface PhaseAttrs {
  stride: number;
}
export interface ConcatAttrs {
  widths: number[];
}
export interface GatherAttrs {
  channels: number[];
  total: number; // channels of the input (for the gradient)
}
export interface ScatterAttrs {
  channels: number[];
  total: number;
}

/** Kernel bodies: inputs (in order), attrs, memory → outputs. */
const KERNELS = {
  CtaSplitChannels(inputs: Info[], attrs: SplitAttrs, mem: Memory): Info[] {
    const [x] = inputs;
    const c = lastDim(x);
    const w = c / attrs.groups;
    const outs = Array.from({ length: attrs.groups }, () => mem.alloc(withLast(x.shape, w)));
    const h = mem.heap;
    if (h && x.shape.every((d) => d > 0)) {
      const px = h.ptr(x);
      outs.forEach((o, g) => h.k.copyCols(px + 4 * g * w, 4 * c, h.ptr(o), 4 * w, sizeOf(x) / c, 4 * w));
      return outs;
    }
    const xv = mem.view(x);
    const ov = outs.map((o) => mem.view(o));
    const rows = xv.length / c;
    for (let m = 0; m < rows; m++) {
      for (let g = 0; g < ov.length; g++) copy(xv, m * c + g * w, ov[g], m * w, w);
    }
    return outs;
  },

  CtaConcatChannels(inputs: Info[], _attrs: object, mem: Memory): Info[] {
    const widths = inputs.map(lastDim);
    const c = widths.reduce((a, v) => a + v, 0);
    const out = mem.alloc(withLast(inputs[0].shape, c));
    const h = mem.heap;
    if (h && out.shape.every((d) => d > 0)) {
      const po = h.ptr(out);
      const rows = sizeOf(out) / c;
      let at = 0;
      inputs.forEach((t, g) => {
        if (widths[g] > 0) h.k.copyCols(h.ptr(t), 4 * widths[g], po + 4 * at, 4 * c, rows, 4 * widths[g]);
        at += widths[g];
      });
      return [out];
    }
    const ov = mem.view(out);
    const iv = inputs.map((t) => mem.view(t));
    const rows = ov.length / c;
    for (let m = 0; m < rows; m++) {
      let at = m * c;
      for (let g = 0; g < iv.length; g++) {
        copy(iv[g], m * widths[g], ov, at, widths[g]);
        at += widths[g];
      }
    }
    return [out];
  },

  CtaGatherChannels(inputs: Info[], attrs: GatherAttrs, mem: Memory): Info[] {
    const [x] = inputs;
    const c = lastDim(x);
    const idx = Int32Array.from(attrs.channels);
    const k = idx.length;
    const out = mem.alloc(withLast(x.shape, k));
    const h = mem.heap;
    if (h && out.shape.every((d) => d > 0)) {
      const pi = h.scratch(4 * k);
      h.i32(pi, k).set(idx);
      h.k.gatherIdx(h.ptr(x), pi, h.ptr(out), sizeOf(out) / k, c, k);
      return [out];
    }
    const xv = mem.view(x);
    const ov = mem.view(out);
    const rows = ov.length / k;
    for (let m = 0; m < rows; m++) {
      const xb = m * c;
      const ob = m * k;
      for (let j = 0; j < k; j++) ov[ob + j] = xv[xb + idx[j]];
    }
    return [out];
  },

  CtaScatterChannels(inputs: Info[], attrs: ScatterAttrs, mem: Memory): Info[] {
    const [x] = inputs;
    const idx = Int32Array.from(attrs.channels);
    const k = idx.length;
    const c = attrs.total;
    const out = mem.alloc(withLast(x.shape, c));
    const xv = mem.view(x);
    const ov = mem.view(out);
    ov.fill(0); // fresh heap memory is not zeroed
    const rows = xv.length / k;
    for (let m = 0; m < rows; m++) {
      const xb = m * k;
      const ob = m * c;
      for (let j = 0; j < k; j++) ov[ob + idx[j]] = xv[xb + j];
    }
    return [out];
  },

  /**
   * Sub-pixel phases back into space: parts in (ry, rx, group) order, each [N, Ho, Wo, Cg] →
   * [N, s·Ho, s·Wo, G·Cg] with out[n, s·y + ry, s·x + rx, g·Cg + c] = part[(ry·s + rx)·G + g][n, y, x, c]
   * (= depthToSpace of their channel concat; WASM's DepthToSpace takes ~40 ns per element).
   */
  CtaPhasesToSpace(inputs: Info[], attrs: PhaseAttrs, mem: Memory): Info[] {
    const s = attrs.stride;
    const groups = inputs.length / (s * s);
    const [n, ho, wo, cg] = inputs[0].shape;
    const c = groups * cg;
    const out = mem.alloc([n, ho * s, wo * s, c]);
    const ov = mem.view(out);
    const iv = inputs.map((t) => mem.view(t));
    const rowOut = wo * s * c;
    for (let b = 0; b < n; b++) {
      for (let y = 0; y < ho; y++) {
        for (let x = 0; x < wo; x++) {
          const src = ((b * ho + y) * wo + x) * cg;
          for (let ry = 0; ry < s; ry++) {
            const dstRow = (b * ho * s + y * s + ry) * rowOut;
            for (let rx = 0; rx < s; rx++) {
              const dst = dstRow + (x * s + rx) * c;
              for (let g = 0; g < groups; g++) copy(iv[(ry * s + rx) * groups + g], src, ov, dst + g * cg, cg);
            }
          }
        }
      }
    }
    return [out];
  },

  /**
   * x [B, ...] → B tensors [...], each a contiguous block (= tf.unstack(x); on WASM that copies
   * all of x out of the heap once per entry; docs/porting.md#channel-moves).
   */
  CtaUnstackRows(inputs: Info[], _attrs: object, mem: Memory): Info[] {
    const [x] = inputs;
    const rows = x.shape[0];
    const inner = x.shape.slice(1);
    const size = inner.reduce((a, d) => a * d, 1);
    const outs = Array.from({ length: rows }, () => mem.alloc(inner));
    const xv = mem.view(x);
    outs.forEach((o, r) => mem.view(o).set(xv.subarray(r * size, (r + 1) * size)));
    return outs;
  },
};

type KernelName = keyof typeof KERNELS;

for (const [name, body] of Object.entries(KERNELS) as Array<[KernelName, (i: Info[], a: never, m: Memory) => Info[]]>) {
  for (const [backendName, memory] of Object.entries(MEMORY)) {
    tf.registerKernel({
      kernelName: name,
      backendName,
      kernelFunc: ({ inputs, attrs, backend }) => {
        const exec = (heap?: Heap) => body(Object.values(inputs) as Info[], attrs as never, { ...memory(backend), heap });
        const outs = backendName === 'wasm' ? withHeap(backend, exec) : exec();
        return name === 'CtaSplitChannels' || name === 'CtaUnstackRows' ? outs : outs[0];
      },
    });
  }
}

/** The backends whose tensors these kernels address (kernels.ts runs them there). */
export const HEAP_BACKENDS: readonly string[] = Object.keys(MEMORY);

/** Runs a registered kernel on positional inputs ('0', '1', …); always returns a list. */
export function runKernel(name: string, inputs: tf.Tensor[], attrs: object = {}): tf.Tensor[] {
  const map: Record<string, tf.Tensor> = {};
  inputs.forEach((t, i) => (map[String(i)] = t));
  const out = tf.engine().runKernel(name, map, attrs as unknown as tf.NamedAttrMap);
  return Array.isArray(out) ? (out as tf.Tensor[]) : [out as tf.Tensor];
}

// The typed calls of the kernels above; kernels.ts chooses them or their tf-op formulas
// (kernel-reference.ts), and registers the gradients.

export function splitChannels<T extends tf.Tensor>(x: T, groups: number): T[] {
  return runKernel('CtaSplitChannels', [x], { groups }) as T[];
}

export function concatChannels<T extends tf.Tensor>(parts: T[]): T {
  return runKernel('CtaConcatChannels', parts, { widths: parts.map((p) => p.shape[p.rank - 1]) })[0] as T;
}

export function gatherChannels<T extends tf.Tensor>(x: T, channels: ArrayLike<number>): T {
  return runKernel('CtaGatherChannels', [x], { channels: Array.from(channels), total: x.shape[x.rank - 1] })[0] as T;
}

export function scatterChannels<T extends tf.Tensor>(x: T, channels: ArrayLike<number>, total: number): T {
  return runKernel('CtaScatterChannels', [x], { channels: Array.from(channels), total })[0] as T;
}

export function phasesToSpace(parts: tf.Tensor4D[], stride: number): tf.Tensor4D {
  return runKernel('CtaPhasesToSpace', parts, { stride })[0] as tf.Tensor4D;
}

export function unstackRows<T extends tf.Tensor>(x: tf.Tensor): T[] {
  return runKernel('CtaUnstackRows', [x], {}) as T[];
}
