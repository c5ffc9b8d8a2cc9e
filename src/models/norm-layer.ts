/**
 * The one BatchNorm2d replacement used by every model, covering the four `NormMode`s:
 *
 * - 'source'       eval BN with the running statistics (docs/methods.md#source);
 * - 'batch'        train-mode BN with batch statistics, running stats untouched (Norm, Tent, EATA;
 *                  docs/methods.md#norm);
 * - 'train-update' PyTorch train-mode BN that also updates the running stats
 *                  (docs/mecta-norm.md#standard-bn-mode);
 * - 'mecta'        MectaNorm2d in 'exp' mode (docs/mecta-norm.md#forward to #refill).
 *
 * Each forward is a single custom op with inputs (x, weight, bias) and a hand-written backward, so
 * the tape holds exactly what the backward needs (docs/mecta-norm.md#cache-stopping and
 * docs/mecta-norm.md#pruning for MECTA's memory semantics) and no tf.tile /
 * tf.moments gradient is ever built. The per-element passes (batch statistics, the affine output,
 * the input/affine gradients) are simd-kernels.ts: WebAssembly SIMD on the WASM backend, tf ops
 * elsewhere. The custom op's `save` is a no-op when no gradient tape is recording, so a plain
 * forward keeps nothing.
 *
 * Tensors are NHWC: the channel axis is last, so [C] vectors broadcast directly.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { DistMetric, MectaOptions, NormLayer, NormMode, NormRecord } from './types.js';
import { channelMean, customOp } from './layers.js';
import { bnBackward, channelAffine, channelAffineKeep, channelStats } from './simd-kernels.js';

/** Supplies the channels MECTA removes from the cache for one forward (docs/mecta-norm.md#pruning). */
export type RemovedChannelSource = (layer: string, channels: number, count: number) => Int32Array;

/** ε of the distance measures (docs/mecta-norm.md#distances): hard-coded 1e-3, not the BN ε. */
const DIST_EPS = 1e-3;
/** PyTorch BatchNorm2d momentum used by 'train-update' (docs/mecta-norm.md#standard-bn-mode). */
const TORCH_MOMENTUM = 0.1;

/**
 * Per-channel distance between batch (1) and accumulated (2) statistics, averaged over C
 * (docs/mecta-norm.md#distances).
 */
export function meanDistance(
  metric: DistMetric,
  mu1: ArrayLike<number>,
  var1: ArrayLike<number>,
  mu2: ArrayLike<number>,
  var2: ArrayLike<number>,
): number {
  const c = mu1.length;
  let total = 0;
  for (let i = 0; i < c; i++) {
    const v1 = var1[i] + DIST_EPS;
    const v2 = var2[i] + DIST_EPS;
    const d2 = (mu1[i] - mu2[i]) ** 2;
    let d: number;
    if (metric === 'simple') d = d2 / v2;
    else if (metric === 'kl') d = 0.5 * (Math.log(v2) - Math.log(v1)) + (v1 + d2) / (2 * v2) - 0.5;
    else d = 0.5 * ((v1 + d2) / v2 + (v2 + d2) / v1) - 1; // 'skl': both KL directions, logs cancel
    total += d;
  }
  return total / c;
}

/** Float64 per-channel vector → float32 tensor. */
function vec(values: ArrayLike<number>): tf.Tensor1D {
  return tf.tensor1d(Float32Array.from(values));
}

/**
 * The kept/removed channel split of one pruned forward (docs/mecta-norm.md#pruning). The kept
 * channels are gathered in the output's pass and read back through this list in the backward
 * (simd-kernels.ts); the earlier one-hot matMul formulation cost M·C·K multiply-adds and was a
 * large part of an EATA+MECTA step (docs/porting.md#channel-moves).
 */
class ChannelSplit {
  readonly kept: Int32Array;

  constructor(channels: number, removed: Int32Array) {
    const isRemoved = new Uint8Array(channels);
    for (const r of removed) {
      if (!Number.isInteger(r) || r < 0 || r >= channels || isRemoved[r]) {
        throw new CtaError(`MECTA pruning: invalid removed channel index ${r} for ${channels} channels`);
      }
      isRemoved[r] = 1;
    }
    if (removed.length >= channels) throw new CtaError(`MECTA pruning: all ${channels} channels removed`);
    this.kept = new Int32Array(channels - removed.length);
    let k = 0;
    for (let c = 0; c < channels; c++) if (!isRemoved[c]) this.kept[k++] = c;
  }

}

/** MECTA's no-grad batch statistics [mean; var] as one op (built on first use, see forwardMecta). */
let statsOp: ((x: tf.Tensor4D) => tf.Tensor1D) | null = null;

/** a = γ·rstd and c = β − μ·a, so that γ(x − μ)·rstd + β = x·a + c. */
function foldAffine(w: tf.Tensor, b: tf.Tensor, mean: tf.Tensor1D, rstd: tf.Tensor1D): [tf.Tensor1D, tf.Tensor1D] {
  const a = tf.mul(w, rstd) as tf.Tensor1D;
  return [a, tf.sub(b, tf.mul(mean, a)) as tf.Tensor1D];
}

export interface NormParams {
  weight: tf.Tensor1D;
  bias: tf.Tensor1D;
  runningMean: tf.Tensor1D;
  runningVar: tf.Tensor1D;
}

export class BatchNormLayer implements NormLayer {
  readonly kind = 'batch' as const;
  readonly name: string;
  readonly numFeatures: number;
  readonly eps: number;
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  readonly runningMean: tf.Variable;
  readonly runningVar: tf.Variable;

  private trainableFlag = true;
  private record: NormRecord | null = null;
  private normMode: NormMode = 'source';
  private mectaOpts: MectaOptions | null = null;
  /** MECTA's past_size: samples seen since the last reset (docs/mecta-norm.md#options). */
  pastSize = 0;
  /** MECTA's full_matched flag of the last forward (docs/mecta-norm.md#cache-stopping). */
  private fullMatched = false;
  private readonly removedSource: RemovedChannelSource;

  constructor(name: string, params: NormParams, removedSource: RemovedChannelSource, eps = 1e-5) {
    this.name = name;
    this.numFeatures = params.weight.shape[0];
    this.eps = eps;
    this.removedSource = removedSource;
    // Unnamed variables: tfjs registers variable names globally, and several models may coexist.
    this.weight = tf.variable(params.weight, true);
    this.bias = tf.variable(params.bias, true);
    this.runningMean = tf.variable(params.runningMean, false);
    this.runningVar = tf.variable(params.runningVar, false);
  }

  get trainable(): boolean {
    return this.trainableFlag;
  }

  set trainable(value: boolean) {
    this.trainableFlag = value;
    // Keep tf's own flag in step so tf.variableGrads() without a list also sees only these.
    this.weight.trainable = value;
    this.bias.trainable = value;
  }

  get last(): NormRecord | null {
    return this.record;
  }

  get mode(): NormMode {
    return this.normMode;
  }

  /** True when the last MECTA forward stopped caching (β ≤ beta_thre with the gate on). */
  get matched(): boolean {
    return this.fullMatched;
  }

  setMode(mode: NormMode, mecta?: MectaOptions): void {
    if (mode === 'mecta') {
      if (!mecta) throw new CtaError(`norm mode 'mecta' needs MECTA options`);
      if (!(mecta.pruneQ >= 0 && mecta.pruneQ < 1)) {
        throw new CtaError(`MECTA prune_q must be in [0, 1), got ${mecta.pruneQ}`);
      }
      this.mectaOpts = { ...mecta };
    }
    this.normMode = mode;
  }

  reset(): void {
    this.pastSize = 0;
    this.fullMatched = false;
    this.record = null;
  }

  /**
   * Takes over `other`'s non-tensor state (mode, MECTA options, past_size, matched flag, last
   * record, trainable flag), for a model copy (Classifier.clone) whose variables already hold
   * `other`'s values.
   */
  copyStateFrom(other: BatchNormLayer): void {
    this.normMode = other.normMode;
    this.mectaOpts = other.mectaOpts ? { ...other.mectaOpts } : null;
    this.pastSize = other.pastSize;
    this.fullMatched = other.fullMatched;
    this.record = other.record ? { ...other.record } : null;
    this.trainable = other.trainable;
  }

  dispose(): void {
    this.weight.dispose();
    this.bias.dispose();
    this.runningMean.dispose();
    this.runningVar.dispose();
  }

  /** Normalises NHWC `x` in the current mode. */
  apply(x: tf.Tensor4D): tf.Tensor4D {
    if (x.rank !== 4 || x.shape[3] !== this.numFeatures) {
      throw new CtaError(`${this.name}: expected NHWC input with ${this.numFeatures} channels, got [${x.shape.join(',')}]`);
    }
    // Decided outside the op: inside a custom op's forward the tape is always paused.
    const tapeOn = tf.engine().isTapeOn();
    switch (this.normMode) {
      case 'source':
        return this.forwardSource(x, tapeOn);
      case 'batch':
      case 'train-update':
        return this.forwardBatch(x, tapeOn, this.normMode === 'train-update');
      case 'mecta':
        return this.forwardMecta(x, tapeOn);
    }
  }

  /**
   * Eval BN as the per-channel affine y = a·x + c, a = γ/σ_r, c = β − μ_r·a
   * (docs/methods.md#source), for folding into the preceding conv (models/fused.ts, inference
   * without a tape in 'source' mode only).
   */
  sourceAffine(): [tf.Tensor1D, tf.Tensor1D] {
    if (this.normMode !== 'source') throw new CtaError(`${this.name}: sourceAffine() needs norm mode 'source', not '${this.normMode}'`);
    return tf.tidy(() => foldAffine(this.weight, this.bias, this.runningMean as tf.Tensor1D, tf.rsqrt(tf.add(this.runningVar, this.eps)) as tf.Tensor1D));
  }

  /** What sourceAffine() depends on: changes whenever a parameter or statistic is reassigned. */
  get stateIds(): object[] {
    return [this.weight.dataId, this.bias.dataId, this.runningMean.dataId, this.runningVar.dataId];
  }

  /** The record a 'source' forward of an NHWC input of this shape leaves (folded path). */
  noteSourceForward(shape: readonly number[]): void {
    this.setRecord(shape, this.numFeatures, null, false);
  }

  private setRecord(x: tf.Tensor4D | readonly number[], keptChannels: number, beta: number | null, cached: boolean): void {
    const [n, h, w] = x instanceof tf.Tensor ? x.shape : x;
    const forwardBytes = n * keptChannels * h * w * 4; // docs/memory.md#analytic
    this.record = { name: this.name, beta, cached, forwardBytes, backwardBytes: cached ? forwardBytes : 0 };
  }

  /**
   * Eval BN: y = γ(x − μ_r)/σ_r + β (docs/methods.md#source). Backward: dx = g·γ/σ_r,
   * dγ = Σ g·x̂_r, dβ = Σ g.
   */
  private forwardSource(x: tf.Tensor4D, tapeOn: boolean): tf.Tensor4D {
    this.setRecord(x, this.numFeatures, null, false);
    const eps = this.eps;
    const op = customOp<tf.Tensor4D>(([xi, w, b], save) => {
      const x4 = xi as tf.Tensor4D;
      const rm = this.runningMean as tf.Tensor1D;
      const rstd = tf.rsqrt(tf.add(this.runningVar, eps)) as tf.Tensor1D;
      const [a, c] = foldAffine(w, b, rm, rstd);
      if (tapeOn) save([x4, rm, rstd, a]);
      return {
        value: channelAffine(x4, a, c),
        gradFunc: (g, [xs, mean, r, scale]) => {
          const m = g.size / g.shape[3];
          const dw = tf.mul(tf.mul(channelMean(tf.mul(g, tf.sub(xs, mean))), r), m); // Σ g·x̂_r
          const db = tf.mul(channelMean(g), m);
          return [tf.mul(g, scale), dw, db];
        },
      };
    });
    return op(x, this.weight, this.bias);
  }

  /**
   * Train-mode BN with batch statistics (biased variance). With `update`, also PyTorch's running
   * update: r ← (1 − 0.1)·r + 0.1·batch, using the UNBIASED variance for running_var
   * (docs/mecta-norm.md#standard-bn-mode).
   * Backward (standard BN): dβ = Σg, dγ = Σ g·x̂, dx = (γ/σ_b)(g − mean g − x̂·mean(g·x̂)).
   * Saved: x (the input itself, no copy) and three [C] vectors.
   */
  private forwardBatch(x: tf.Tensor4D, tapeOn: boolean, update: boolean): tf.Tensor4D {
    this.setRecord(x, this.numFeatures, null, this.trainableFlag);
    const eps = this.eps;
    const op = customOp<tf.Tensor4D>(([xi, w, b], save) => {
      const x4 = xi as tf.Tensor4D;
      const { mean, variance } = channelStats(x4);
      const rstd = tf.rsqrt(tf.add(variance, eps)) as tf.Tensor1D;
      const [a, c] = foldAffine(w, b, mean, rstd);
      if (update) {
        const count = x4.size / x4.shape[3];
        const unbiased = count > 1 ? tf.mul(variance, count / (count - 1)) : variance;
        this.runningMean.assign(tf.add(tf.mul(this.runningMean, 1 - TORCH_MOMENTUM), tf.mul(mean, TORCH_MOMENTUM)));
        this.runningVar.assign(tf.add(tf.mul(this.runningVar, 1 - TORCH_MOMENTUM), tf.mul(unbiased, TORCH_MOMENTUM)));
      }
      if (tapeOn) save([x4, mean, rstd, a]);
      return {
        value: channelAffine(x4, a, c),
        gradFunc: (g, [xs, meanB, rstdB, s]) => {
          const { dx, S, sumG } = bnBackward(g as tf.Tensor4D, xs as tf.Tensor4D, meanB as tf.Tensor1D, rstdB as tf.Tensor1D, s as tf.Tensor1D, null);
          return [dx, S, sumG];
        },
      };
    });
    return op(x, this.weight, this.bias);
  }

  /** β for this forward (docs/mecta-norm.md#forward, step 3). */
  private chooseBeta(opts: MectaOptions, muB: Float32Array, varB: Float32Array, muR: Float32Array, varR: Float32Array): number {
    if (opts.forgetGate) {
      return 1 - Math.exp(-opts.distScale * meanDistance(opts.distMetric, muB, varB, muR, varR));
    }
    return this.pastSize > 0 ? opts.beta : (opts.initBeta ?? opts.beta);
  }

  /**
   * MectaNorm2d 'exp' forward (docs/mecta-norm.md#forward), in order: batch stats without grad; β
   * from the forget gate or the constant/init β; in-place update of the accumulated stats (copy
   * when β ≥ 1); cache decision (docs/mecta-norm.md#cache-stopping); output with the UPDATED stats;
   * past_size += N; then what to keep for backward:
   * - matched layer: nothing; backward passes g through unchanged, and γ/β are not inputs of its
   *   op, so they get no gradient (docs/mecta-norm.md#cache-stopping);
   * - caching layer: only the kept channels of x and their batch stats (docs/mecta-norm.md#pruning);
   *   backward = PreG (docs/mecta-norm.md#preg) for kept channels, the refill for removed ones.
   * The statistics update happens exactly once per forward, outside any gradient.
   */
  private forwardMecta(x: tf.Tensor4D, tapeOn: boolean): tf.Tensor4D {
    const opts = this.mectaOpts;
    if (!opts) throw new CtaError(`${this.name}: norm mode 'mecta' needs MECTA options`);
    const c = this.numFeatures;
    const n = x.shape[0];
    const q = opts.pruneQ;
    // The analytic count uses floor((1 − q)·C) channels, which may differ by one from the
    // C − floor(q·C) actually kept (docs/memory.md#analytic); both formulas are the reference code's.
    const accountedChannels = Math.floor((1 - q) * c);
    const eps = this.eps;

    // Steps 1–5 of docs/mecta-norm.md#forward, decided before the output op is built: batch
    // statistics (no grad), β, the accumulated-statistics update (in float64, stored as float32;
    // copy when β ≥ 1) and the cache decision. Knowing `matched` first lets a matched layer's op
    // leave γ/β out of its inputs, so the tape has no path through the network to layers below the
    // lowest caching one and the backward stops there instead of carrying g down to layers that
    // take no update.
    statsOp ??= customOp<tf.Tensor1D>(([xi]) => {
      const { mean, variance } = channelStats(xi as tf.Tensor4D);
      // never on a path to the loss (only read back below): the gradient is never asked for
      return { value: tf.concat([mean, variance]) as tf.Tensor1D, gradFunc: () => [tf.zerosLike(xi)] };
    });
    const statsT = statsOp(x);
    const sv = statsT.dataSync() as Float32Array;
    statsT.dispose();
    const muB = sv.subarray(0, c);
    const varB = sv.subarray(c);
    const muR = this.runningMean.dataSync() as Float32Array;
    const varR = this.runningVar.dataSync() as Float32Array;
    const beta = this.chooseBeta(opts, muB, varB, muR, varR);
    const newMu = new Float64Array(c);
    const newVar = new Float64Array(c);
    const rstdR = new Float64Array(c);
    for (let i = 0; i < c; i++) {
      newMu[i] = beta < 1 ? (1 - beta) * muR[i] + beta * muB[i] : muB[i];
      newVar[i] = beta < 1 ? (1 - beta) * varR[i] + beta * varB[i] : varB[i];
      rstdR[i] = 1 / Math.sqrt(newVar[i] + eps);
    }
    tf.tidy(() => {
      this.runningMean.assign(vec(newMu));
      this.runningVar.assign(vec(newVar));
    });
    // Cache stopping only with the gate (docs/mecta-norm.md#cache-stopping).
    const matched = opts.forgetGate && beta <= opts.betaThre;
    this.fullMatched = matched;
    this.pastSize += n;

    let y: tf.Tensor4D;
    if (matched) {
      // docs/mecta-norm.md#forward step 6 with the updated statistics; backward passes g through
      // unchanged and the affine parameters get nothing (docs/mecta-norm.md#cache-stopping).
      const op = customOp<tf.Tensor4D>(([xi]) => {
        const [s, shiftOut] = foldAffine(this.weight, this.bias, vec(newMu), vec(rstdR));
        return { value: channelAffine(xi as tf.Tensor4D, s, shiftOut), gradFunc: (g) => [g.clone()] };
      });
      y = op(x);
    } else {
      const op = customOp<tf.Tensor4D>(([xi, w, b], save) => {
        const x4 = xi as tf.Tensor4D;
        // Forward step 6: eval-style BN with the UPDATED statistics; s = γ/σ_r is also PreG's dx scale.
        const [s, shiftOut] = foldAffine(w, b, vec(newMu), vec(rstdR));

        // Channels removed from the cache are drawn for every caching forward, tape or not, so the
        // random stream does not depend on whether a backward follows.
        const nRemove = Math.floor(c * q);
        const sp = nRemove > 0 ? new ChannelSplit(c, this.removedSource(this.name, c, nRemove)) : null;
        // The output, and with a tape and pruning the kept channels to cache, from one pass over x.
        const [value, xKept] = tapeOn && sp ? channelAffineKeep(x4, s, shiftOut, sp.kept) : [channelAffine(x4, s, shiftOut), null];

        if (tapeOn) {
          // PreG coefficients (docs/mecta-norm.md#preg): dγ = Σ g·(x − μ_r)/σ_r
          // = ratio·Σ g·x̂_b + shift·Σ g with ratio = σ_b/σ_r and shift = (μ_b − μ_r)/σ_r (updated
          // μ_r, σ_r), computed without grad.
          const rstdB = new Float64Array(c);
          const ratio = new Float64Array(c);
          const shift = new Float64Array(c);
          for (let i = 0; i < c; i++) {
            rstdB[i] = 1 / Math.sqrt(varB[i] + eps);
            ratio[i] = rstdR[i] / rstdB[i];
            shift[i] = (muB[i] - newMu[i]) * rstdR[i];
          }
          if (sp && xKept) {
            // Removed channels get no weight gradient; only kept channels' x and stats are saved
            // (docs/mecta-norm.md#pruning).
            const kept = new Uint8Array(c);
            for (const k of sp.kept) kept[k] = 1;
            for (let i = 0; i < c; i++) if (!kept[i]) ratio[i] = shift[i] = 0;
            const pick = (v: ArrayLike<number>) => vec(Array.from(sp.kept, (k) => v[k]));
            save([xKept, pick(muB), vec(rstdB), s, vec(ratio), vec(shift)]);
          } else {
            save([x4, vec(muB), vec(rstdB), s, vec(ratio), vec(shift)]);
          }
        }
        return {
          value,
          gradFunc: (g, [xs, meanB, rstdB, scale, ratio, shift]) => {
            // With pruning xs and meanB hold only the kept channels; bnBackward gives the removed
            // ones the refill (docs/mecta-norm.md#refill).
            const { dx, S, sumG } = bnBackward(g as tf.Tensor4D, xs as tf.Tensor4D, meanB as tf.Tensor1D, rstdB as tf.Tensor1D, scale as tf.Tensor1D, sp ? sp.kept : null);
            // dγ = ratio·S + shift·Σg (docs/mecta-norm.md#preg); ratio and shift are 0 at removed
            // channels (docs/mecta-norm.md#refill).
            return [dx, tf.add(tf.mul(ratio, S), tf.mul(shift, sumG)), sumG];
          },
        };
      });
      y = op(x, this.weight, this.bias);
    }
    const cached = this.trainableFlag && !matched;
    this.setRecord(x, accountedChannels, beta, cached);
    return y;
  }
}
