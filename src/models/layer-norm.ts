/**
 * LayerNorm over the last axis (PyTorch nn.LayerNorm(D)), the norm layer of the Vision Transformer.
 *
 * It fits the NormLayer contract as far as a LayerNorm can: the affine weight/bias are the adapted
 * parameters (Tent / ETA / EATA on a ViT adapt the LayerNorms' affine parameters,
 * docs/data-formats.md#vit-b16: ViT-B/16 has 25 LayerNorms, 38,400 affine parameters), `kind` is
 * 'layer', and there are no running statistics (`runningMean`/`runningVar` are null): a LayerNorm
 * always normalises each token with that token's own mean and variance, in training and in
 * evaluation alike, so the BN modes 'source' and 'batch' behave identically here and MECTA's
 * statistic modes do not apply (the model refuses them).
 *
 * Like the BN layer, the forward is one custom op with a hand-written backward that keeps only
 * what the backward needs: the normalised input x̂ and the per-token 1/σ.
 *   y = x̂·γ + β,  x̂ = (x − μ)/σ,  σ = sqrt(var + ε)  (biased variance over the last axis)
 *   dβ = Σ_rows g,  dγ = Σ_rows g·x̂,  dx = (1/σ)·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)),  ĝ = g·γ
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { NormLayer, NormRecord } from './types.js';
import { customOp } from './ops/custom-op.js';
import { channelMean } from './kernels.js';

export interface LayerNormParams {
  weight: tf.Tensor1D;
  bias: tf.Tensor1D;
}

export class LayerNormLayer implements NormLayer {
  readonly kind = 'layer' as const;
  readonly name: string;
  readonly numFeatures: number;
  readonly eps: number;
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  readonly runningMean = null;
  readonly runningVar = null;
  /** MECTA's past_size has no meaning for a LayerNorm; kept at 0 for the checkpoint format. */
  pastSize = 0;
  /** False inside `withoutSideEffects` (norm-policy.ts): the forward leaves the record alone. */
  sideEffects = true;

  private trainableFlag = true;
  private record: NormRecord | null = null;
  private readonly op: (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => tf.Tensor;

  /** `eps` defaults to timm's ViT value (partial(nn.LayerNorm, eps=1e-6)); PyTorch's own is 1e-5. */
  constructor(name: string, params: LayerNormParams, eps = 1e-6) {
    this.name = name;
    this.numFeatures = params.weight.shape[0];
    if (params.bias.shape[0] !== this.numFeatures) {
      throw new CtaError(`${name}: LayerNorm weight has ${this.numFeatures} entries but bias ${params.bias.shape[0]}`);
    }
    this.eps = eps;
    // Unnamed variables: tfjs registers variable names globally, and several models may coexist.
    this.weight = tf.variable(params.weight, true);
    this.bias = tf.variable(params.bias, true);
    this.op = customOp<tf.Tensor>(([x, w, b], save) => {
      const mean = tf.mean(x, -1, true);
      const centred = tf.sub(x, mean);
      const rstd = tf.rsqrt(tf.add(tf.mean(tf.square(centred), -1, true), this.eps));
      const xhat = tf.mul(centred, rstd);
      save([xhat, rstd, w]); // a no-op unless a gradient tape is recording
      return {
        value: tf.add(tf.mul(xhat, w), b),
        gradFunc: (g, [xh, r, gamma]) => {
          const rows = g.size / this.numFeatures;
          const gg = tf.mul(g, gamma);
          const dx = tf.mul(
            r,
            tf.sub(tf.sub(gg, tf.mean(gg, -1, true)), tf.mul(xh, tf.mean(tf.mul(gg, xh), -1, true))),
          );
          // Sums over every row (token) as one average pool (kernel-reference.ts channelMean) times the count.
          const dw = tf.mul(channelMean(tf.mul(g, xh)), rows);
          const db = tf.mul(channelMean(g), rows);
          return [dx, dw, db];
        },
      };
    });
  }

  get trainable(): boolean {
    return this.trainableFlag;
  }

  set trainable(value: boolean) {
    this.trainableFlag = value;
    this.weight.trainable = value;
    this.bias.trainable = value;
  }

  get last(): NormRecord | null {
    return this.record;
  }

  reset(): void {
    this.pastSize = 0;
    this.record = null;
  }

  /** Takes over `other`'s non-tensor state (trainable flag, past_size, last record) for a model copy. */
  copyStateFrom(other: LayerNormLayer): void {
    this.pastSize = other.pastSize;
    this.record = other.record ? { ...other.record } : null;
    this.trainable = other.trainable;
  }

  /** Normalises over the last axis of `x` (any rank ≥ 1 whose last dimension is numFeatures). */
  apply<T extends tf.Tensor>(x: T): T {
    if (x.rank < 1 || x.shape[x.rank - 1] !== this.numFeatures) {
      throw new CtaError(`${this.name}: expected ${this.numFeatures} features on the last axis, got [${x.shape.join(',')}]`);
    }
    // What a backward would need (x̂, the size of the input) is what the analytic accounting
    // (docs/memory.md#analytic) counts for BN: report it the same way, cached while the affine
    // parameters adapt.
    const bytes = x.size * 4;
    if (this.sideEffects) this.record = { name: this.name, beta: null, cached: this.trainableFlag, forwardBytes: bytes, backwardBytes: this.trainableFlag ? bytes : 0 };
    return this.op(x, this.weight, this.bias) as T;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
  }
}
