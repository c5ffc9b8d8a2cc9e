/**
 * Inference-only conv → eval-BN (→ ReLU) folding, for segments that need no backward (the Source
 * method; issue "Speed", item "fused conv + BN + ReLU"). Eval BN is the per-channel affine
 * y = a·x + c (docs/methods.md#source), so BN(conv(x, W)) = conv(x, W·a) + c: one FusedConv2D
 * with bias (and ReLU) replaces a conv plus a multiply, an add and a ReLU pass over the activation
 * (docs/porting.md#folded-inference).
 *
 * The folded filters are cached, because XNNPACK packs a filter once per filter tensor and
 * re-packing every forward costs more than the fusion saves at small spatial sizes; they are
 * rebuilt whenever a source tensor's data changes identity (`setWeight`, `loadStateDict` and
 * `Variable.assign` all replace it), so a stale copy cannot be used.
 *
 * Folding changes the float32 rounding order (W·a is rounded before the convolution): logits move
 * by about 1e-6 relative, well inside the 1e-4 parity tolerance against PyTorch.
 */
import { tf } from '../tf.js';
import type { Conv2d, Conv2dSpec } from './ops/conv.js';
import { addRelu, relu } from './ops/relu-mask.js';
import { bnKeys, divDim } from './infer.js';
import type { BatchNormLayer } from './batch-norm.js';
import { concatChannels } from './channel-kernels.js';

interface Part {
  filter: tf.Tensor4D;
  bias: tf.Tensor1D;
}

export class FoldedConvBn {
  private key: object[] = [];
  private parts: Part[] = [];

  /**
   * `outSplit` > 1 (ungrouped convs only): fold into that many filters over equal slices of the
   * output channels, so a following grouped conv gets its group inputs without a channel split.
   */
  constructor(
    readonly conv: Conv2d,
    private readonly bn: BatchNormLayer,
    private readonly relu: boolean,
    private readonly outSplit = 1,
  ) {
    if (outSplit > 1 && conv.groups > 1) throw new Error('FoldedConvBn: outSplit needs an ungrouped conv');
  }

  private current(): Part[] {
    const key = [...this.conv.filterIds, ...this.bn.stateIds];
    if (key.length === this.key.length && key.every((k, i) => k === this.key[i])) return this.parts;
    this.disposeParts();
    this.parts = tf.tidy(() => {
      const [a, c] = this.bn.sourceAffine();
      const { filters, owned } = this.conv.groupFilters();
      const pieces = this.outSplit > 1 ? (tf.split(filters[0], this.outSplit, 3) as tf.Tensor4D[]) : filters;
      const n = pieces.length;
      const scales = n > 1 ? (tf.split(a, n) as tf.Tensor1D[]) : [a];
      const shifts = n > 1 ? (tf.split(c, n) as tf.Tensor1D[]) : [c];
      const parts = pieces.map((f, i) => ({
        filter: tf.keep(tf.mul(f, scales[i]) as tf.Tensor4D), // HWIO: the last axis is the output channel
        bias: tf.keep(shifts[i]),
      }));
      if (owned) for (const f of filters) f.dispose();
      return parts;
    });
    this.key = key;
    return this.parts;
  }

  private run(x: tf.Tensor4D, p: Part): tf.Tensor4D {
    return tf.fused.conv2d({
      x,
      filter: p.filter,
      strides: this.conv.stride,
      pad: this.conv.pad, // numeric: PyTorch's symmetric padding
      bias: p.bias,
      activation: this.relu ? 'relu' : 'linear',
    });
  }

  /** Ungrouped, unsplit: one output. */
  apply(x: tf.Tensor4D): tf.Tensor4D {
    const parts = this.current();
    if (parts.length !== 1) throw new Error('FoldedConvBn.apply: use applyParts for grouped or split convs');
    this.bn.noteSourceForward(this.outShape(x));
    return this.run(x, parts[0]);
  }

  /**
   * Grouped conv: one input per group → one output per group. Split conv: one input → `outSplit`
   * outputs (consecutive output-channel slices).
   */
  applyParts(x: tf.Tensor4D | tf.Tensor4D[]): tf.Tensor4D[] {
    const parts = this.current();
    const xs = Array.isArray(x) ? x : parts.map(() => x);
    if (xs.length !== parts.length) throw new Error(`FoldedConvBn.applyParts: ${xs.length} inputs for ${parts.length} parts`);
    this.bn.noteSourceForward(this.outShape(xs[0]));
    return xs.map((xi, i) => this.run(xi, parts[i]));
  }

  private outShape(x: tf.Tensor4D): number[] {
    const [n, h, w] = x.shape;
    const k = this.conv.kernel;
    const s = this.conv.stride;
    const p = this.conv.pad;
    return [n, Math.floor((h + 2 * p - k) / s) + 1, Math.floor((w + 2 * p - k) / s) + 1, this.conv.outChannels];
  }

  private disposeParts(): void {
    for (const p of this.parts) {
      p.filter.dispose();
      p.bias.dispose();
    }
    this.parts = [];
    this.key = [];
  }

  dispose(): void {
    this.disposeParts();
  }
}

/**
 * A bottleneck block (ResNeXt / torchvision ResNet: 1×1 reduce → BN → ReLU → k×k conv, grouped
 * or not, carrying the stride → BN → ReLU → 1×1 expand → BN, plus an optional 1×1 conv → BN
 * shortcut; then ReLU(shortcut + branch)) with every conv → BN (→ ReLU) folded. The reduce conv is
 * folded per group of the k×k conv, so the grouped conv needs no channel split of its input.
 */
export interface FoldedBottleneck {
  reduce: FoldedConvBn;
  conv: FoldedConvBn;
  expand: FoldedConvBn;
  down: FoldedConvBn | null;
}

export interface BottleneckLayers {
  reduce: [Conv2d, BatchNormLayer];
  conv: [Conv2d, BatchNormLayer];
  expand: [Conv2d, BatchNormLayer];
  down: [Conv2d, BatchNormLayer] | null;
}

/** One stage of a bottleneck network (ResNeXt-29, ResNet-50): `blocks` blocks of these widths. */
export interface BottleneckStage {
  blocks: number;
  inner: number; // reduce / k×k conv width
  out: number; // expand width
  stride: number; // of block 0
}

/** Where one block sits and what it takes: its input width, stride and whether it downsamples. */
export interface BottleneckBlock {
  stage: number; // 0-based
  index: number; // within the stage
  st: BottleneckStage;
  inC: number;
  stride: number;
  /** The downsample branch: block 0 when the stride or the width changes (`_make_layer`). */
  down: boolean;
}

/**
 * PyTorch module names of a bottleneck's convs and BNs, relative to the block's prefix
 * (`downsample.0` / `.1` are common to both families).
 */
export interface BottleneckNames {
  reduce: [conv: string, bn: string];
  conv: [conv: string, bn: string];
  expand: [conv: string, bn: string];
}

/** The state_dict keys (and PyTorch shapes) of block `b` under `prefix`, in module order. */
export function bottleneckKeys(out: Map<string, number[]>, prefix: string, n: BottleneckNames, b: BottleneckBlock, groups: number): void {
  const { st, inC } = b;
  out.set(`${prefix}.${n.reduce[0]}.weight`, [st.inner, inC, 1, 1]);
  bnKeys(out, `${prefix}.${n.reduce[1]}`, st.inner);
  out.set(`${prefix}.${n.conv[0]}.weight`, [st.inner, divDim(st.inner, groups), 3, 3]);
  bnKeys(out, `${prefix}.${n.conv[1]}`, st.inner);
  out.set(`${prefix}.${n.expand[0]}.weight`, [st.out, st.inner, 1, 1]);
  bnKeys(out, `${prefix}.${n.expand[1]}`, st.out);
  if (b.down) {
    out.set(`${prefix}.downsample.0.weight`, [st.out, inC, 1, 1]);
    bnKeys(out, `${prefix}.downsample.1`, st.out);
  }
}

/** Builds block `b`'s layers from the model's weights (`conv` / `norm`: the model's loaders). */
export function bottleneckLayers(
  prefix: string,
  n: BottleneckNames,
  b: BottleneckBlock,
  groups: number,
  conv: (name: string, spec: Conv2dSpec) => Conv2d,
  norm: (name: string) => BatchNormLayer,
): BottleneckLayers {
  const { stride } = b;
  return {
    reduce: [conv(`${prefix}.${n.reduce[0]}`, { stride: 1, pad: 0, groups: 1 }), norm(`${prefix}.${n.reduce[1]}`)],
    conv: [conv(`${prefix}.${n.conv[0]}`, { stride, pad: 1, groups }), norm(`${prefix}.${n.conv[1]}`)],
    expand: [conv(`${prefix}.${n.expand[0]}`, { stride: 1, pad: 0, groups: 1 }), norm(`${prefix}.${n.expand[1]}`)],
    down: b.down ? [conv(`${prefix}.downsample.0`, { stride, pad: 0, groups: 1 }), norm(`${prefix}.downsample.1`)] : null,
  };
}

/** Calls `visit` for every block in module order; returns the last block's output width. */
export function forEachBottleneck(stages: readonly BottleneckStage[], stem: number, visit: (b: BottleneckBlock) => void): number {
  let inC = stem;
  stages.forEach((st, stage) => {
    for (let index = 0; index < st.blocks; index++) {
      const first = index === 0;
      visit({ stage, index, st, inC, stride: first ? st.stride : 1, down: first && (st.stride !== 1 || inC !== st.out) });
      inC = st.out;
    }
  });
  return inC;
}

/** A bottleneck's layers and their folded twin, built together with the model. */
export interface Bottleneck {
  layers: BottleneckLayers;
  folded: FoldedBottleneck;
}

/** `own` registers each folded layer with the model, which disposes it. */
export function bottleneck(l: BottleneckLayers, own: <T extends { dispose(): void }>(o: T) => T): Bottleneck {
  const folded: FoldedBottleneck = {
    reduce: own(new FoldedConvBn(l.reduce[0], l.reduce[1], true, l.conv[0].groups)),
    conv: own(new FoldedConvBn(l.conv[0], l.conv[1], true)),
    expand: own(new FoldedConvBn(l.expand[0], l.expand[1], false)),
    down: l.down ? own(new FoldedConvBn(l.down[0], l.down[1], false)) : null,
  };
  return { layers: l, folded };
}

const convBn = ([conv, bn]: [Conv2d, BatchNormLayer], x: tf.Tensor4D) => bn.apply(conv.apply(x));

/**
 * One bottleneck forward: the folded layers when `fold` (see `foldable`), otherwise conv → BN as
 * the PyTorch modules compute them, in any norm mode and under a gradient tape.
 */
export function runBottleneck(b: Bottleneck, x: tf.Tensor4D, fold: boolean): tf.Tensor4D {
  if (fold) {
    const f = b.folded;
    const groups = f.conv.applyParts(f.reduce.applyParts(x));
    const h = f.expand.apply(groups.length === 1 ? groups[0] : concatChannels(groups));
    const residual = f.down ? f.down.apply(x) : x;
    return tf.relu(tf.add(residual, h)) as tf.Tensor4D;
  }
  const l = b.layers;
  const h = convBn(l.expand, relu(convBn(l.conv, relu(convBn(l.reduce, x)))));
  return addRelu(l.down ? convBn(l.down, x) : x, h);
}

/** Switch for A/B measurements and tests (the folded and unfolded paths must agree). */
export const folding = { enabled: true };

/** Whether `forward` may take the folded path: eval BN ('source') and no gradient tape recording. */
export function foldable(normMode: string): boolean {
  return folding.enabled && normMode === 'source' && !tf.engine().isTapeOn();
}
