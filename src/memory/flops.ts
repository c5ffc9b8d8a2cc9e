/**
 * Operation counts of an adaptation step (docs/memory.md#flops), counted from the shapes of the
 * layers each forward actually calls, with the convention of MECTA's utils/count_op.py (and thop)
 * for the layers that dominate:
 *
 * - convolution: multiply-accumulates, N·Ho·Wo·C_out·(C_in/groups)·k² (bias ignored);
 * - linear: rows·in·out MACs; attention: q·kᵀ and attn·v, N·T²·D MACs each;
 * - norm layers: count_op's batch-norm counts per element, 6 with batch statistics (train-mode
 *   BN, MECTA, LayerNorm: statistics + affine) and 4 in eval mode ('source'), 6 in the backward;
 * - not counted (as count_op, which has no entry for them): activations, residual adds, pooling,
 *   softmax, reshapes; and the optimizer update.
 *
 * So "GFLOPs" here are GMACs of the products plus the norm-layer element counts, like the
 * reference's printout. The backward counts what the engine's backward runs: for each counted op
 * whose tape node lies on the path from the trained variables to the loss (probe.ts
 * backwardPath), its input gradient (the same MACs as the forward; tfjs computes it for every op
 * on the path, also for a first layer whose input needs none) and, when its weight trains, its
 * weight gradient (the same again); a norm layer's backward 6 per element (0 for a fully matched
 * MECTA layer, whose backward passes g through). A checkpointed segment's recomputation in the
 * backward (docs/memory.md#gradient-checkpointing) adds its forward counts to the backward.
 */
import { tf } from '../tf.js';
import { Conv2d } from '../models/ops/conv.js';
import { Linear } from '../models/ops/linear.js';
import { BatchNormLayer } from '../models/batch-norm.js';
import { LayerNormLayer } from '../models/layer-norm.js';
import { FoldedConvBn } from '../models/fold.js';
import { VisionTransformer } from '../models/vit.js';
import { checkpointForwardDepth } from '../models/grad-checkpoint.js';
import { addTapeListener, backwardPath, recomputing } from './probe.js';

/** One counted op call. */
interface OpCount {
  forward: number;
  /** What its backward runs when its node is on the backward path. */
  backward: number;
  tape: object | null;
  start: number;
  end: number;
  recompute: boolean;
  /** Filled when its tape is measured: on the backward path. */
  onPath?: boolean;
}

interface EngineState {
  activeTape: unknown[] | null;
  gradientDepth: number;
  kernelDepth: number;
}

const state = () => (tf.engine() as unknown as { state: EngineState }).state;

let active: FlopCounter | null = null;
let installed = false;

/** The counts of one step, in multiply-accumulates / element operations (see the file comment). */
export interface StepFlops {
  forward: number;
  backward: number;
  /** Of `backward`: the forwards of recomputed checkpointed segments. */
  recompute: number;
}

/** Conv MACs for an NHWC input of spatial size h×w. */
function convMacs(conv: Conv2d, n: number, h: number, w: number): { macs: number; outElems: number } {
  const ho = Math.floor((h + 2 * conv.pad - conv.kernel) / conv.stride) + 1;
  const wo = Math.floor((w + 2 * conv.pad - conv.kernel) / conv.stride) + 1;
  const outElems = n * ho * wo * conv.outChannels;
  return { macs: outElems * (conv.inChannels / conv.groups) * conv.kernel * conv.kernel, outElems };
}

/** Wraps `proto[method]` so that every call is counted by the active counter. */
function wrap<T extends object>(proto: T, method: string, count: (self: never, args: never[], result: unknown) => { forward: number; backward: number } | null): void {
  const p = proto as Record<string, unknown>;
  const orig = p[method] as (...a: unknown[]) => unknown;
  p[method] = function (this: unknown, ...args: unknown[]) {
    const c = active;
    if (!c) return orig.apply(this, args);
    const st = state();
    const tape = st.gradientDepth > 0 && checkpointForwardDepth() === 0 ? st.activeTape : null;
    const start = tape ? tape.length : 0;
    const result = orig.apply(this, args);
    const n = count(this as never, args as never[], result);
    if (n) {
      let end = tape ? tape.length : 0;
      // Called inside a custom op's forward (the tape is paused there): the op's own node, appended
      // right after its forward returns, is the one the backward runs.
      if (tape && end === start && st.kernelDepth > 0) end = start + 1;
      c.ops.push({ ...n, tape, start, end, recompute: recomputing() });
    }
    return result;
  };
}

function install(): void {
  if (installed) return;
  installed = true;
  wrap(Conv2d.prototype, 'apply', (conv: Conv2d, [x]: tf.Tensor4D[]) => {
    const { macs } = convMacs(conv, x.shape[0], x.shape[1], x.shape[2]);
    return { forward: macs, backward: macs * (conv.trainable ? 2 : 1) };
  });
  const folded = (f: FoldedConvBn, [x]: (tf.Tensor4D | tf.Tensor4D[])[]) => {
    const x0 = Array.isArray(x) ? x[0] : x;
    const { macs, outElems } = convMacs(f.conv, x0.shape[0], x0.shape[1], x0.shape[2]);
    // conv + eval BN, as the unfolded layers count (inference only: no backward)
    return { forward: macs + 4 * outElems, backward: 0 };
  };
  wrap(FoldedConvBn.prototype, 'apply', folded);
  wrap(FoldedConvBn.prototype, 'applyParts', folded);
  wrap(Linear.prototype, 'apply', (lin: Linear, [x]: tf.Tensor2D[]) => {
    const macs = x.shape[0] * lin.inFeatures * lin.outFeatures;
    return { forward: macs, backward: macs * (lin.trainable ? 2 : 1) };
  });
  wrap(BatchNormLayer.prototype, 'apply', (bn: BatchNormLayer, [x]: tf.Tensor4D[]) => {
    const matched = bn.mode === 'mecta' && bn.matched;
    return { forward: x.size * (bn.mode === 'source' ? 4 : 6), backward: matched ? 0 : 6 * x.size };
  });
  wrap(LayerNormLayer.prototype, 'apply', (ln: LayerNormLayer, [x]: tf.Tensor[]) => ({ forward: 6 * x.size, backward: 6 * x.size }));
  wrap(VisionTransformer.prototype, 'attention', (_v: VisionTransformer, [, x]: tf.Tensor3D[]) => {
    const [n, t, d] = x.shape;
    const macs = 2 * n * t * t * d; // q·kᵀ and attn·v; the projections are Linear calls
    return { forward: macs, backward: 2 * macs };
  });
  addTapeListener((tape, xs, y) => {
    const c = active;
    if (!c) return;
    const mine = c.ops.filter((o) => o.tape === tape);
    if (mine.length === 0) return;
    const onPath = backwardPath(tape as never, xs, y);
    for (const o of mine) {
      let on = false;
      for (let i = o.start; i < Math.min(o.end, onPath.length) && !on; i++) on = onPath[i];
      o.onPath = on;
    }
  });
}

/** Counts the ops between `begin()` and `end()`; one counter is active at a time. */
export class FlopCounter {
  ops: OpCount[] = [];

  constructor() {
    install();
  }

  begin(): void {
    this.ops = [];
    active = this;
  }

  end(): StepFlops {
    if (active === this) active = null;
    let forward = 0;
    let backward = 0;
    let recompute = 0;
    for (const o of this.ops) {
      if (o.recompute) recompute += o.forward;
      else forward += o.forward;
      if (o.onPath) backward += o.backward;
    }
    this.ops = [];
    return { forward, backward: backward + recompute, recompute };
  }
}

/** The forward counts of whatever `fn` runs (e.g. one plain forward: the fixture check). */
export function countForward(fn: () => void): number {
  const c = new FlopCounter();
  c.begin();
  try {
    fn();
  } catch (e) {
    c.end();
    throw e;
  }
  return c.end().forward;
}
