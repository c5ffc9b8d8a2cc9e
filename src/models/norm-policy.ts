/**
 * Norm statistics as policies: which statistics a BatchNorm layer normalises with and what state a
 * forward updates (docs/mecta-norm.md#norm-policies). The layer (batch-norm.ts) owns the tensors
 * (γ, β, the running buffers) and the per-forward record; a policy owns everything else:
 *
 * - `SourcePolicy`  'source'       eval BN with the running statistics (docs/methods.md#source);
 * - `BatchPolicy`   'batch'        train-mode BN with batch statistics, buffers untouched
 *                   'train-update' the same plus PyTorch's running update
 *                                  (docs/mecta-norm.md#standard-bn-mode);
 * - `MixedPolicy`   'ema'          RoTTA's robust BN (Yuan et al., CVPR 2023): an EMA of the batch
 *                                  statistics, normalising with the updated EMA;
 *                   'alpha'        BN-α: a fixed mix of source and batch statistics (Schneider
 *                                  et al., NeurIPS 2020; You et al., 2021);
 * - `MectaPolicy`   'mecta'        MectaNorm2d 'exp' (docs/mecta-norm.md#forward to #refill), with
 *                                  MECTA's own state: past_size, the matched flag, the options and
 *                                  the pruning chooser.
 *
 * Every forward is a single custom op with inputs (x, weight, bias) and a hand-written backward
 * (see batch-norm.ts). `sideEffects: false` runs the same forward without touching any state: no
 * statistics update, no past_size / matched change, no pruning draw (the layer also keeps its
 * record), for teacher, augmented and SAM forwards (docs/mecta-norm.md#side-effect-free-forwards).
 * Its output equals the normal forward's from the same state.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { AlphaStatsOptions, DistMetric, EmaStatsOptions, MectaOptions, NormLayer, NormMode, NormModeOptions } from './types.js';
import { customOp } from './ops/custom-op.js';
import { withoutWeightRecords } from './ops/weights.js';
import type { CacheBudget } from './cache-budget.js';
import { bnBackward, channelAffine, channelAffineKeep, channelMean, channelStats } from './kernels.js';

/** Supplies the channels MECTA removes from the cache for one forward (docs/mecta-norm.md#pruning). */
export type RemovedChannelSource = (layer: string, channels: number, count: number) => Int32Array;

/** ε of the distance measures (docs/mecta-norm.md#distances): hard-coded 1e-3, not the BN ε. */
const DIST_EPS = 1e-3;
/** PyTorch BatchNorm2d momentum used by 'train-update' (docs/mecta-norm.md#standard-bn-mode). */
const TORCH_MOMENTUM = 0.1;
/** RoTTA's robust-BN momentum α = 0.05 (Yuan et al., CVPR 2023), the 'ema' default. */
export const EMA_MOMENTUM_DEFAULT = 0.05;

export type { AlphaStatsOptions, EmaStatsOptions, NormModeOptions } from './types.js';

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

/** No-grad batch statistics [mean; var] as one op (built on first use, see batchStatsNoGrad). */
let statsOp: ((x: tf.Tensor4D) => tf.Tensor1D) | null = null;

/** Biased per-channel batch mean and variance, read back, never on a gradient path. */
function batchStatsNoGrad(x: tf.Tensor4D): [Float32Array, Float32Array] {
  statsOp ??= customOp<tf.Tensor1D>(([xi]) => {
    const { mean, variance } = channelStats(xi as tf.Tensor4D);
    // never on a path to the loss (only read back below): the gradient is never asked for
    return { value: tf.concat([mean, variance]) as tf.Tensor1D, gradFunc: () => [tf.zerosLike(xi)] };
  });
  const statsT = statsOp(x);
  const sv = statsT.dataSync() as Float32Array;
  statsT.dispose();
  const c = x.shape[3];
  return [sv.subarray(0, c), sv.subarray(c)];
}

/** a = γ·rstd and c = β − μ·a, so that γ(x − μ)·rstd + β = x·a + c. */
export function foldAffine(w: tf.Tensor, b: tf.Tensor, mean: tf.Tensor1D, rstd: tf.Tensor1D): [tf.Tensor1D, tf.Tensor1D] {
  const a = tf.mul(w, rstd) as tf.Tensor1D;
  return [a, tf.sub(b, tf.mul(mean, a)) as tf.Tensor1D];
}

/** The tensors and flags of the BatchNorm layer a policy normalises for. */
export interface NormHost {
  readonly name: string;
  readonly numFeatures: number;
  readonly eps: number;
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  readonly runningMean: tf.Variable;
  readonly runningVar: tf.Variable;
  readonly trainable: boolean;
  /** The model's backprop-cache budget (cache-budget.ts), consulted by the 'mecta' policy; null: none. */
  readonly cacheBudget: CacheBudget | null;
}

/** One policy forward: the output and what the layer records (docs/memory.md#analytic). */
export interface PolicyForward {
  y: tf.Tensor4D;
  /** Channels the analytic accounting counts. */
  keptChannels: number;
  beta: number | null;
  cached: boolean;
  /** Kept fraction of the channels under a cache budget (0: not caching); absent without one. */
  keptRatio?: number;
}

export interface NormPolicy {
  readonly mode: NormMode;
  /**
   * Normalises NHWC `x` for `layer`. `tapeOn` is decided by the caller (inside a custom op's
   * forward the tape is always paused). With `sideEffects` false no state changes.
   */
  forward(layer: NormHost, x: tf.Tensor4D, tapeOn: boolean, sideEffects: boolean): PolicyForward;
}

/**
 * Eval BN: y = γ(x − μ_r)/σ_r + β (docs/methods.md#source). Backward: dx = g·γ/σ_r,
 * dγ = Σ g·x̂_r, dβ = Σ g. Stateless.
 */
export class SourcePolicy implements NormPolicy {
  readonly mode = 'source' as const;

  forward(layer: NormHost, x: tf.Tensor4D, tapeOn: boolean): PolicyForward {
    const eps = layer.eps;
    const op = customOp<tf.Tensor4D>(([xi, w, b], save) => {
      const x4 = xi as tf.Tensor4D;
      const rm = layer.runningMean as tf.Tensor1D;
      const rstd = tf.rsqrt(tf.add(layer.runningVar, eps)) as tf.Tensor1D;
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
    return { y: op(x, layer.weight, layer.bias), keptChannels: layer.numFeatures, beta: null, cached: false };
  }
}

/**
 * Train-mode BN with batch statistics (biased variance). With `update` ('train-update'), also
 * PyTorch's running update: r ← (1 − 0.1)·r + 0.1·batch, using the UNBIASED variance for
 * running_var (docs/mecta-norm.md#standard-bn-mode); skipped without side effects.
 * Backward (standard BN): dβ = Σg, dγ = Σ g·x̂, dx = (γ/σ_b)(g − mean g − x̂·mean(g·x̂)).
 * Saved: x (the input itself, no copy) and three [C] vectors.
 */
export class BatchPolicy implements NormPolicy {
  readonly mode: 'batch' | 'train-update';

  constructor(private readonly update: boolean) {
    this.mode = update ? 'train-update' : 'batch';
  }

  forward(layer: NormHost, x: tf.Tensor4D, tapeOn: boolean, sideEffects: boolean): PolicyForward {
    const eps = layer.eps;
    const update = this.update && sideEffects;
    const op = customOp<tf.Tensor4D>(([xi, w, b], save) => {
      const x4 = xi as tf.Tensor4D;
      const { mean, variance } = channelStats(x4);
      const rstd = tf.rsqrt(tf.add(variance, eps)) as tf.Tensor1D;
      const [a, c] = foldAffine(w, b, mean, rstd);
      if (update) {
        const count = x4.size / x4.shape[3];
        const unbiased = count > 1 ? tf.mul(variance, count / (count - 1)) : variance;
        layer.runningMean.assign(tf.add(tf.mul(layer.runningMean, 1 - TORCH_MOMENTUM), tf.mul(mean, TORCH_MOMENTUM)));
        layer.runningVar.assign(tf.add(tf.mul(layer.runningVar, 1 - TORCH_MOMENTUM), tf.mul(unbiased, TORCH_MOMENTUM)));
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
    return { y: op(x, layer.weight, layer.bias), keptChannels: layer.numFeatures, beta: null, cached: layer.trainable };
  }
}

/**
 * BN with a mix of reference and batch statistics (docs/mecta-norm.md#norm-policies), per channel
 * with the biased batch variance v_b and w the batch weight:
 *   μ = (1 − w)·μ_ref + w·μ_b,   v = (1 − w)·v_ref + w·v_b,   y = γ(x − μ)/sqrt(v + ε) + β.
 * - 'ema' (RoTTA's RobustBN2d): μ_ref, v_ref are the stored statistics (the running buffers, which
 *   start as the source statistics), w = momentum, and the mixed statistics are written back, so
 *   the buffers are an EMA of the batch statistics; the output uses the UPDATED statistics.
 * - 'alpha' (BN-α): μ_ref, v_ref are the source statistics, never updated, and w = 1 − α, i.e.
 *   stats = α·source + (1 − α)·batch (Schneider et al.'s prior strength: α = N/(N + n)).
 * The gradient flows through the batch part of the statistics, as in RoTTA's module (its mixed
 * mean is not detached): with r = 1/sqrt(v + ε), u = x − μ_b, t = x − μ, M = N·H·W,
 *   dx = γr·(g − w·mean g − w·r²·u·mean(g·t)),  dγ = r·Σ g·t,  dβ = Σ g.
 * w = 1 is train-mode BN ('batch'), w = 0 eval BN with the reference statistics.
 */
export class MixedPolicy implements NormPolicy {
  readonly mode: 'ema' | 'alpha';
  /** Weight of the batch statistics. */
  readonly batchWeight: number;
  /** 'alpha' only (AlphaStatsOptions): Bessel-corrected batch variance, constant statistics. */
  readonly unbiased: boolean = false;
  readonly detachStats: boolean = false;

  constructor(mode: 'ema' | 'alpha', options: NormModeOptions | undefined) {
    this.mode = mode;
    if (mode === 'ema') {
      const m = (options as Partial<EmaStatsOptions> | undefined)?.momentum ?? EMA_MOMENTUM_DEFAULT;
      if (!(m >= 0 && m <= 1)) throw new CtaError(`norm mode 'ema': momentum must be in [0, 1], got ${m}`);
      this.batchWeight = m;
    } else {
      const a = (options as Partial<AlphaStatsOptions> | undefined)?.alpha;
      if (a === undefined || !(a >= 0 && a <= 1)) throw new CtaError(`norm mode 'alpha' needs alpha in [0, 1], got ${a}`);
      this.batchWeight = 1 - a;
      this.unbiased = (options as Partial<AlphaStatsOptions>).unbiased === true;
      this.detachStats = (options as Partial<AlphaStatsOptions>).detachStats === true;
    }
  }

  /** The options this policy was made from (for model copies and `setNormMode` round trips). */
  get options(): EmaStatsOptions | AlphaStatsOptions {
    if (this.mode === 'ema') return { momentum: this.batchWeight };
    return { alpha: 1 - this.batchWeight, unbiased: this.unbiased, detachStats: this.detachStats };
  }

  forward(layer: NormHost, x: tf.Tensor4D, tapeOn: boolean, sideEffects: boolean): PolicyForward {
    const c = layer.numFeatures;
    const eps = layer.eps;
    const w = this.batchWeight;
    const [muB, varB] = batchStatsNoGrad(x);
    const muR = layer.runningMean.dataSync() as Float32Array;
    const varR = layer.runningVar.dataSync() as Float32Array;
    const mu = new Float64Array(c);
    const v = new Float64Array(c);
    const rstd = new Float64Array(c);
    const m = x.size / c;
    if (this.unbiased && m < 2) throw new CtaError(`norm mode 'alpha' with the unbiased batch variance needs more than 1 value per channel (layer ${layer.name})`);
    const bessel = this.unbiased ? m / (m - 1) : 1;
    // constant statistics: the backward of eval BN with μ, v (w = 0 there)
    const wGrad = this.detachStats ? 0 : w;
    for (let i = 0; i < c; i++) {
      mu[i] = (1 - w) * muR[i] + w * muB[i];
      v[i] = (1 - w) * varR[i] + w * varB[i] * bessel;
      rstd[i] = 1 / Math.sqrt(v[i] + eps);
    }
    if (this.mode === 'ema' && sideEffects) {
      tf.tidy(() => {
        layer.runningMean.assign(vec(mu));
        layer.runningVar.assign(vec(v));
      });
    }
    const op = customOp<tf.Tensor4D>(([xi, wt, b], save) => {
      const x4 = xi as tf.Tensor4D;
      const r = vec(rstd);
      const m = vec(mu);
      const [a, shiftOut] = foldAffine(wt, b, m, r);
      if (tapeOn) save([x4, vec(muB), m, r, a]);
      return {
        value: channelAffine(x4, a, shiftOut),
        gradFunc: (g, [xs, meanB, mean, rs, scale]) => {
          const count = g.size / g.shape[3];
          const t = tf.sub(xs, mean);
          const gMean = channelMean(g);
          const gtMean = channelMean(tf.mul(g, t));
          const k = tf.mul(tf.mul(tf.square(rs), gtMean), wGrad);
          const inner = tf.sub(tf.sub(g, tf.mul(gMean, wGrad)), tf.mul(tf.sub(xs, meanB), k));
          return [tf.mul(inner, scale), tf.mul(tf.mul(gtMean, rs), count), tf.mul(gMean, count)];
        },
      };
    });
    return { y: op(x, layer.weight, layer.bias), keptChannels: c, beta: null, cached: layer.trainable };
  }
}

/**
 * MectaNorm2d 'exp' (docs/mecta-norm.md#forward) and MECTA's per-layer state: the options,
 * past_size (samples seen since the last reset, checkpointed), the matched flag of the last
 * forward, and where the pruned channels come from. A layer keeps one MectaPolicy for its life, so
 * that state survives switches to other modes (EATA's Fisher pass runs 'train-update' in between).
 */
export class MectaPolicy implements NormPolicy {
  readonly mode = 'mecta' as const;
  private opts: MectaOptions | null = null;
  /** MECTA's past_size (docs/mecta-norm.md#options). */
  pastSize = 0;
  /** MECTA's full_matched flag of the last forward (docs/mecta-norm.md#cache-stopping). */
  private fullMatched = false;

  constructor(private readonly removedSource: RemovedChannelSource) {}

  get options(): MectaOptions | null {
    return this.opts;
  }

  /** True when the last MECTA forward stopped caching (β ≤ beta_thre with the gate on). */
  get matched(): boolean {
    return this.fullMatched;
  }

  configure(mecta: MectaOptions | undefined): void {
    if (!mecta) throw new CtaError(`norm mode 'mecta' needs MECTA options`);
    if (!(mecta.pruneQ >= 0 && mecta.pruneQ < 1)) {
      throw new CtaError(`MECTA prune_q must be in [0, 1), got ${mecta.pruneQ}`);
    }
    this.opts = { ...mecta };
  }

  /** Clears past_size and the matched flag; the statistics (the layer's buffers) are kept. */
  reset(): void {
    this.pastSize = 0;
    this.fullMatched = false;
  }

  /** Takes over `other`'s state (a model copy); the pruning source stays this layer's own. */
  copyStateFrom(other: MectaPolicy): void {
    this.opts = other.opts ? { ...other.opts } : null;
    this.pastSize = other.pastSize;
    this.fullMatched = other.fullMatched;
  }

  /** β for this forward (docs/mecta-norm.md#forward, step 3). */
  private chooseBeta(opts: MectaOptions, muB: Float32Array, varB: Float32Array, muR: Float32Array, varR: Float32Array): number {
    if (opts.forgetGate) {
      return 1 - Math.exp(-opts.distScale * meanDistance(opts.distMetric, muB, varB, muR, varR));
    }
    return this.pastSize > 0 ? opts.beta : (opts.initBeta ?? opts.beta);
  }

  /**
   * In order: batch stats without grad; β from the forget gate or the constant/init β; in-place
   * update of the accumulated stats (copy when β ≥ 1); cache decision
   * (docs/mecta-norm.md#cache-stopping); output with the UPDATED stats; past_size += N; then what
   * to keep for backward:
   * - matched layer: nothing; backward passes g through unchanged, and γ/β are not inputs of its
   *   op, so they get no gradient (docs/mecta-norm.md#cache-stopping);
   * - caching layer: only the kept channels of x and their batch stats (docs/mecta-norm.md#pruning);
   *   backward = PreG (docs/mecta-norm.md#preg) for kept channels, the refill for removed ones.
   * The statistics update happens exactly once per forward, outside any gradient. Without side
   * effects the updated statistics are computed but not stored, past_size and the matched flag stay,
   * and no channels are drawn: a backward then sees every channel (no pruning).
   */
  forward(layer: NormHost, x: tf.Tensor4D, tapeOn: boolean, sideEffects: boolean): PolicyForward {
    const opts = this.opts;
    if (!opts) throw new CtaError(`${layer.name}: norm mode 'mecta' needs MECTA options`);
    const c = layer.numFeatures;
    const n = x.shape[0];
    const q = opts.pruneQ;
    // The analytic count uses floor((1 − q)·C) channels, which may differ by one from the
    // C − floor(q·C) actually kept (docs/memory.md#analytic); both formulas are the reference code's.
    let accountedChannels = Math.floor((1 - q) * c);
    const eps = layer.eps;
    // Under a cache budget (docs/memory.md#cache-budget) the plan, not beta_thre / prune_q, says
    // whether this layer caches and how many channels; a side-effect-free forward follows the
    // plan of the last side-effect forward and its channel choice (no new plan, no draw).
    const budget = layer.cacheBudget;
    budget?.see(layer.name, c, x.shape[1] * x.shape[2]);
    const alloc = budget ? (sideEffects ? budget.allocation(layer.name, n) : budget.current(layer.name)) : null;
    if (alloc) accountedChannels = alloc.kept > 0 ? alloc.kept : alloc.forwardChannels;

    // Steps 1–5 of docs/mecta-norm.md#forward, decided before the output op is built: batch
    // statistics (no grad), β, the accumulated-statistics update (in float64, stored as float32;
    // copy when β ≥ 1) and the cache decision. Knowing `matched` first lets a matched layer's op
    // leave γ/β out of its inputs, so the tape has no path through the network to layers below the
    // lowest caching one and the backward stops there instead of carrying g down to layers that
    // take no update.
    const [muB, varB] = batchStatsNoGrad(x);
    const muR = layer.runningMean.dataSync() as Float32Array;
    const varR = layer.runningVar.dataSync() as Float32Array;
    const beta = this.chooseBeta(opts, muB, varB, muR, varR);
    const newMu = new Float64Array(c);
    const newVar = new Float64Array(c);
    const rstdR = new Float64Array(c);
    for (let i = 0; i < c; i++) {
      newMu[i] = beta < 1 ? (1 - beta) * muR[i] + beta * muB[i] : muB[i];
      newVar[i] = beta < 1 ? (1 - beta) * varR[i] + beta * varB[i] : varB[i];
      rstdR[i] = 1 / Math.sqrt(newVar[i] + eps);
    }
    // Cache stopping only with the gate (docs/mecta-norm.md#cache-stopping).
    const matched = alloc ? alloc.kept === 0 : opts.forgetGate && beta <= opts.betaThre;
    if (sideEffects) budget?.noteBeta(layer.name, beta);
    if (sideEffects) {
      tf.tidy(() => {
        layer.runningMean.assign(vec(newMu));
        layer.runningVar.assign(vec(newVar));
      });
      this.fullMatched = matched;
      this.pastSize += n;
    }

    let y: tf.Tensor4D;
    if (matched) {
      // docs/mecta-norm.md#forward step 6 with the updated statistics; backward passes g through
      // unchanged and the affine parameters get nothing (docs/mecta-norm.md#cache-stopping).
      const op = customOp<tf.Tensor4D>(([xi]) => {
        const [s, shiftOut] = foldAffine(layer.weight, layer.bias, vec(newMu), vec(rstdR));
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
        let sp: ChannelSplit | null;
        if (alloc && budget) {
          const removed = sideEffects ? (alloc.kept < c ? this.removedSource(layer.name, c, c - alloc.kept) : null) : budget.removedOf(layer.name);
          if (sideEffects) budget.noteRemoved(layer.name, removed);
          sp = removed && removed.length > 0 ? new ChannelSplit(c, removed) : null;
        } else {
          const nRemove = sideEffects ? Math.floor(c * q) : 0;
          sp = nRemove > 0 ? new ChannelSplit(c, this.removedSource(layer.name, c, nRemove)) : null;
        }
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
      y = op(x, layer.weight, layer.bias);
    }
    const keptRatio = alloc ? alloc.kept / c : undefined;
    return { y, keptChannels: accountedChannels, beta, cached: layer.trainable && !matched, ...(alloc ? { keptRatio } : {}) };
  }
}

/**
 * Runs `fn` with every norm layer of `model` side-effect free (see the file comment): for teacher,
 * augmented and SAM forwards that must not move the statistics, MECTA's past_size / matched flag,
 * the pruning stream or the per-layer records (norm layers' and trainable weights'). Restores the previous flags afterwards, also on a
 * throw; nests. `fn` must be synchronous (a forward is).
 */
export function withoutSideEffects<T>(model: { readonly normLayers: readonly NormLayer[] }, fn: () => T): T {
  const layers = model.normLayers;
  const before = layers.map((l) => l.sideEffects);
  for (const l of layers) l.sideEffects = false;
  try {
    // the trainable layers' analytic input records stay those of the last forward with effects
    return withoutWeightRecords(fn);
  } finally {
    layers.forEach((l, i) => (l.sideEffects = before[i]));
  }
}
