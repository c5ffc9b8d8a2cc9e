/**
 * Inference-only conv → eval-BN (→ ReLU) folding, for segments that need no backward (the Source
 * method; issue "Speed", item "fused conv + BN + ReLU"). Eval BN is the per-channel affine
 * y = a·x + c (algorithms.md C.2), so BN(conv(x, W)) = conv(x, W·a) + c: one FusedConv2D with bias
 * (and ReLU) replaces a conv plus a multiply, an add and a ReLU pass over the activation.
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
import { addRelu, relu, type Conv2d } from './layers.js';
import type { BatchNormLayer } from './norm-layer.js';
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
