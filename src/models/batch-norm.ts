/**
 * The one BatchNorm2d replacement used by every model. It owns γ, β and the running buffers and
 * the record of the last forward; which statistics normalise and what a forward updates is its
 * `NormPolicy` (norm-policy.ts, one per `NormMode`):
 *
 * - 'source'       eval BN with the running statistics (docs/methods.md#source);
 * - 'batch'        train-mode BN with batch statistics, running stats untouched (Norm, Tent, EATA;
 *                  docs/methods.md#norm);
 * - 'train-update' PyTorch train-mode BN that also updates the running stats
 *                  (docs/mecta-norm.md#standard-bn-mode);
 * - 'ema'          RoTTA's robust BN, 'alpha' BN-α (docs/mecta-norm.md#norm-policies);
 * - 'mecta'        MectaNorm2d in 'exp' mode (docs/mecta-norm.md#forward to #refill).
 *
 * Each forward is a single custom op with inputs (x, weight, bias) and a hand-written backward, so
 * the tape holds exactly what the backward needs (docs/mecta-norm.md#cache-stopping and
 * docs/mecta-norm.md#pruning for MECTA's memory semantics) and no tf.tile /
 * tf.moments gradient is ever built. The per-element passes (batch statistics, the affine output,
 * the input/affine gradients) are kernels.ts: WebAssembly SIMD on the WASM backend, tf ops
 * elsewhere. The custom op's `save` is a no-op when no gradient tape is recording, so a plain
 * forward keeps nothing.
 *
 * Tensors are NHWC: the channel axis is last, so [C] vectors broadcast directly.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { MectaOptions, NormLayer, NormMode, NormRecord } from './types.js';
import { BatchPolicy, foldAffine, MectaPolicy, MixedPolicy, SourcePolicy } from './norm-policy.js';
import type { NormModeOptions, NormPolicy, RemovedChannelSource } from './norm-policy.js';
import type { CacheBudget } from './cache-budget.js';

export { meanDistance, type RemovedChannelSource } from './norm-policy.js';

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
  private policy: NormPolicy = SOURCE;
  /** The layer's one MECTA policy, kept across mode switches with its state (norm-policy.ts). */
  private readonly mecta: MectaPolicy;
  /** False inside `withoutSideEffects` (norm-policy.ts): forwards change no state or record. */
  sideEffects = true;
  /** The model's backprop-cache budget, shared by its layers (cache-budget.ts); null: none. */
  cacheBudget: CacheBudget | null = null;
  /** The last 'ema' / 'alpha' policy (immutable), reused when the mode is set again by name. */
  private mixed: MixedPolicy | null = null;

  constructor(name: string, params: NormParams, removedSource: RemovedChannelSource, eps = 1e-5) {
    this.name = name;
    this.numFeatures = params.weight.shape[0];
    this.eps = eps;
    this.mecta = new MectaPolicy(removedSource);
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
    return this.policy.mode;
  }

  /** The active statistics policy (norm-policy.ts). */
  get normPolicy(): NormPolicy {
    return this.policy;
  }

  /** True when the last MECTA forward stopped caching (β ≤ beta_thre with the gate on). */
  get matched(): boolean {
    return this.mecta.matched;
  }

  /** MECTA's past_size (kept by the MECTA policy; read and restored by checkpoints). */
  get pastSize(): number {
    return this.mecta.pastSize;
  }

  set pastSize(value: number) {
    this.mecta.pastSize = value;
  }

  /**
   * Switches the statistics policy: `options` are MECTA's for 'mecta' (required), the momentum for
   * 'ema' (default 0.05) and α for 'alpha' (required); other modes take none. Without options,
   * 'ema' and 'alpha' keep the options they last had, so a temporary switch (EATA's Fisher
   * pass, src/algorithms/fisher.ts) can restore the mode by name.
   */
  setMode(mode: NormMode, options?: NormModeOptions): void {
    if (!options && (mode === 'ema' || mode === 'alpha') && this.mixed?.mode === mode) {
      this.policy = this.mixed;
      return;
    }
    this.policy = policyFor(mode, options, this.mecta);
    if (this.policy instanceof MixedPolicy) this.mixed = this.policy;
  }

  reset(): void {
    this.mecta.reset();
    this.record = null;
    this.cacheBudget?.reset();
  }

  /**
   * Takes over `other`'s non-tensor state (policy, MECTA options, past_size, matched flag, last
   * record, trainable flag), for a model copy (Classifier.clone) whose variables already hold
   * `other`'s values. The copy keeps its own pruning source.
   */
  copyStateFrom(other: BatchNormLayer): void {
    this.mecta.copyStateFrom(other.mecta);
    // Source, batch and mixed policies hold no mutable state and can be shared.
    this.policy = other.policy === other.mecta ? this.mecta : other.policy;
    this.mixed = other.mixed;
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
    const r = this.policy.forward(this, x, tapeOn, this.sideEffects);
    if (this.sideEffects) this.setRecord(x, r.keptChannels, r.beta, r.cached, r.keptRatio);
    return r.y;
  }

  /**
   * Eval BN as the per-channel affine y = a·x + c, a = γ/σ_r, c = β − μ_r·a
   * (docs/methods.md#source), for folding into the preceding conv (models/fold.ts, inference
   * without a tape in 'source' mode only).
   */
  sourceAffine(): [tf.Tensor1D, tf.Tensor1D] {
    if (this.mode !== 'source') throw new CtaError(`${this.name}: sourceAffine() needs norm mode 'source', not '${this.mode}'`);
    return tf.tidy(() => foldAffine(this.weight, this.bias, this.runningMean as tf.Tensor1D, tf.rsqrt(tf.add(this.runningVar, this.eps)) as tf.Tensor1D));
  }

  /** What sourceAffine() depends on: changes whenever a parameter or statistic is reassigned. */
  get stateIds(): object[] {
    return [this.weight.dataId, this.bias.dataId, this.runningMean.dataId, this.runningVar.dataId];
  }

  /** The record a 'source' forward of an NHWC input of this shape leaves (folded path). */
  noteSourceForward(shape: readonly number[]): void {
    if (this.sideEffects) this.setRecord(shape, this.numFeatures, null, false);
  }

  private setRecord(x: tf.Tensor4D | readonly number[], keptChannels: number, beta: number | null, cached: boolean, keptRatio?: number): void {
    const [n, h, w] = x instanceof tf.Tensor ? x.shape : x;
    const forwardBytes = n * keptChannels * h * w * 4; // docs/memory.md#analytic
    this.record = { name: this.name, beta, cached, forwardBytes, backwardBytes: cached ? forwardBytes : 0, ...(keptRatio !== undefined ? { keptRatio } : {}) };
  }
}

/** The stateless policies, shared by every layer. */
const SOURCE = new SourcePolicy();
const BATCH = new BatchPolicy(false);
const TRAIN_UPDATE = new BatchPolicy(true);

/** The policy of `mode` for a layer whose MECTA policy is `mecta` (configured in place). */
function policyFor(mode: NormMode, options: NormModeOptions | undefined, mecta: MectaPolicy): NormPolicy {
  switch (mode) {
    case 'source':
      return SOURCE;
    case 'batch':
      return BATCH;
    case 'train-update':
      return TRAIN_UPDATE;
    case 'ema':
    case 'alpha':
      return new MixedPolicy(mode, options);
    case 'mecta':
      mecta.configure(options as MectaOptions | undefined);
      return mecta;
  }
}
