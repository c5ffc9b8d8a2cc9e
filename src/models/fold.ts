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
import type { Conv2d } from './ops/conv.js';
import type { BatchNormLayer } from './batch-norm.js';

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

/** Switch for A/B measurements and tests (the folded and unfolded paths must agree). */
export const folding = { enabled: true };

/** Whether `forward` may take the folded path: eval BN ('source') and no gradient tape recording. */
export function foldable(normMode: string): boolean {
  return folding.enabled && normMode === 'source' && !tf.engine().isTapeOn();
}
