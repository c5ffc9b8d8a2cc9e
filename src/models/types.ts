/**
 * Contracts between models, the norm layer, algorithms and the runner. Models are NHWC internally
 * and take images in [0, 1]; a model that needs input normalisation (RobustBench AugMix ResNeXt's
 * mu/sigma buffers, ImageNet mean/std) owns it.
 */
import type { tf } from '../tf.js';
import type { BudgetMode, CacheBudget } from './cache-budget.js';

/**
 * How every norm layer normalises (docs/mecta-norm.md#norm-modes):
 * - 'source': eval-mode BN with the stored running statistics.
 * - 'batch': train-mode BN with the current batch's statistics (Norm, Tent, EATA without MECTA);
 *   running statistics are neither used nor updated.
 * - 'mecta': MectaNorm2d 'exp' mode (accumulated statistics, forget gate, beta_thre, prune_q).
 * - 'train-update': PyTorch train-mode BN that also updates the running buffers with momentum 0.1
 *   and the unbiased variance (MECTA's standard_bn_cxt, used only for EATA's Fisher with accum-bn).
 * - 'ema': RoTTA's robust BN, an EMA of the batch statistics kept in the running buffers and used
 *   to normalise (docs/mecta-norm.md#norm-policies).
 * - 'alpha': BN-α, α·source + (1 − α)·batch statistics, buffers untouched.
 * Each mode is a policy in norm-policy.ts.
 */
export type NormMode = 'source' | 'batch' | 'mecta' | 'train-update' | 'ema' | 'alpha';

/** Options of norm mode 'ema': stats ← (1 − momentum)·stats + momentum·batch (RoTTA: 0.05). */
export interface EmaStatsOptions {
  momentum: number;
}

/** Options of norm mode 'alpha': stats = α·source + (1 − α)·batch. */
export interface AlphaStatsOptions {
  alpha: number;
  /**
   * The batch variance with Bessel's correction (M/(M − 1), M = N·H·W), as the official
   * AlphaBatchNorm takes it from a momentum-1 BatchNorm's running_var; default false (biased).
   */
  unbiased?: boolean;
  /**
   * No gradient through the batch statistics (the official AlphaBatchNorm mixes buffers, which
   * autograd treats as constants); default false (the gradient flows, as in RoTTA's module).
   */
  detachStats?: boolean;
}

/** What `setNormMode` takes besides the mode: MECTA's options for 'mecta', the above for 'ema' / 'alpha'. */
export type NormModeOptions = MectaOptions | EmaStatsOptions | AlphaStatsOptions;

export const DIST_METRICS = ['skl', 'kl', 'simple'] as const;
export type DistMetric = (typeof DIST_METRICS)[number];

/** MectaNorm2d options (docs/mecta-norm.md#options). */
export interface MectaOptions {
  beta: number; // constant accumulation rate when the gate is off (default 0.1)
  initBeta: number | null; // β of the first batch when the gate is off (null → beta)
  forgetGate: boolean;
  distMetric: DistMetric; // default 'skl'
  distScale: number; // s in β = 1 − exp(−s·mean d), default 1
  betaThre: number; // cache-stopping threshold on β (only with the gate), default 0
  pruneQ: number; // fraction of channels not cached per batch, default 0
}

/** What one norm layer did in its last forward (logging, accounting: docs/memory.md#analytic). */
export interface NormRecord {
  name: string;
  beta: number | null; // β used (mecta mode), null otherwise
  cached: boolean; // kept anything for backprop (false: fully matched layer, or not trainable)
  /** Analytic forward cache bytes: N·floor((1−q)·C)·H·W·4 (docs/memory.md#analytic). */
  forwardBytes: number;
  /** Analytic backward cache bytes: forwardBytes when the layer caches, else 0 (docs/memory.md). */
  backwardBytes: number;
  /** Kept-channel fraction chosen by the cache budget (0: not caching); absent without a budget (docs/memory.md#cache-budget). */
  keptRatio?: number;
}

export interface NormLayer {
  /** PyTorch module path, e.g. 'stage_1.0.bn_reduce' (the state_dict prefix). */
  readonly name: string;
  /**
   * 'batch': BatchNorm2d (running statistics, every NormMode); 'layer': LayerNorm (per-token
   * statistics only: no running buffers, so only the affine parameters can adapt, and the modes
   * that touch statistics, 'mecta' / 'train-update', do not apply).
   */
  readonly kind: 'batch' | 'layer';
  readonly numFeatures: number;
  readonly eps: number;
  readonly weight: tf.Variable;
  readonly bias: tf.Variable;
  /** Running statistics; null for a LayerNorm, which has none. */
  readonly runningMean: tf.Variable | null;
  readonly runningVar: tf.Variable | null;
  /** Whether the affine parameters are being adapted (set by the algorithm via the model). */
  trainable: boolean;
  /** Record of the most recent forward, null before the first. */
  readonly last: NormRecord | null;
  /**
   * MECTA's past_size: samples seen since the last reset (decides init_beta vs beta,
   * docs/mecta-norm.md#forward). The state lives in the layer's MECTA policy (norm-policy.ts); this
   * is its checkpoint view (the `pastSizes` checkpoint field), 0 where the layer has no MECTA.
   */
  pastSize: number;
  /**
   * False while forwards must leave every state alone (statistics, MECTA state, pruning stream,
   * the record): set through `withoutSideEffects` (norm-policy.ts).
   */
  sideEffects: boolean;
  /** The model's backprop-cache budget (docs/memory.md#cache-budget), shared by its BatchNorm layers; absent or null: none. */
  readonly cacheBudget?: CacheBudget | null;
  /** Clears MECTA per-run state (past_size, matched flag, last record); statistics are kept. */
  reset(): void;
}

/**
 * What a model parameter belongs to: a norm layer's affine weight/bias, a conv filter, a linear
 * layer's weight/bias, an embedding (ViT patch/position/class tokens), or an adapter.
 */
export type ParamKind = 'norm' | 'conv' | 'linear' | 'embed' | 'adapter';

/** One entry of `Classifier.parameters()` (PyTorch `named_parameters()`). */
export interface ModelParameter {
  /** The state_dict key, e.g. 'stage_1.0.conv_conv.weight'. */
  readonly name: string;
  readonly kind: ParamKind;
  /** Whether the parameter currently trains (PyTorch `requires_grad`). */
  readonly requiresGrad: boolean;
  /**
   * The variable an optimizer updates; null while a conv/linear/embedding weight is frozen (a
   * frozen weight is a constant, docs/memory.md). Norm affines are always variables. Its layout
   * may differ from PyTorch's (HWIO convs, [in, out] linear weights): see `toTorch`.
   */
  readonly variable: tf.Variable | null;
  /** The PyTorch shape. */
  readonly shape: readonly number[];
  /** A tensor in the variable's layout (value or gradient) → PyTorch layout (a new tensor). */
  toTorch(t: tf.Tensor): tf.Tensor;
}

/** Chooses parameters for `Classifier.requiresGrad` (by PyTorch name and kind). */
export type ParamFilter = (p: { name: string; kind: ParamKind }) => boolean;

/** `Classifier.forwardFeatures`: penultimate features [N, D] and logits [N, K]. */
export interface ClassifierOutput {
  features: tf.Tensor2D;
  logits: tf.Tensor2D;
}

export interface Classifier {
  /** Registry key of the architecture ('resnext29', 'wrn28_10', ...). */
  readonly arch: string;
  readonly numClasses: number;
  /** Expected input [H, W, C] (NHWC). */
  readonly inputShape: readonly [number, number, number];
  /** Logits for a batch of NHWC images in [0, 1]. Runs the norm layers in the current mode. */
  forward(x: tf.Tensor4D): tf.Tensor2D;
  /**
   * One forward returning the logits and the penultimate features they are computed from (the
   * input of the final linear layer: the pooled map of a CNN, a ViT's class token after its final
   * LayerNorm), which LAME's affinity needs (Boudiaf et al., CVPR 2022). Same norm-mode effects as
   * `forward`, whose logits it equals; the caller disposes both tensors.
   */
  forwardFeatures(x: tf.Tensor4D): ClassifierOutput;
  /** Norm layers in module (state_dict) order. */
  readonly normLayers: readonly NormLayer[];
  /**
   * Switches every norm layer; `options` are required for 'mecta' (MectaOptions) and 'alpha', and
   * optional for 'ema' (momentum 0.05).
   */
  setNormMode(mode: NormMode, options?: NormModeOptions): void;
  readonly normMode: NormMode;
  /** The MECTA options last given to setNormMode (null if never in 'mecta' mode). */
  readonly mectaOptions: MectaOptions | null;
  /** The input normalisation (x − mean)/std the model applies itself, null for none (the run's provenance). */
  readonly inputNormalisation?: { mean: number[]; std: number[] } | null;
  /**
   * Overrides the random channel choice of MECTA pruning (tests): returns the indices of the
   * removed channels for a layer of C channels. Null restores the seeded random choice.
   */
  setPruneChooser(chooser: ((layer: string, channels: number) => Int32Array) | null): void;
  /**
   * Installs a backprop-cache budget of `bytes` on the MECTA layers (docs/memory.md#cache-budget;
   * the model must be in norm mode 'mecta': a shape pass on one blank image registers the layers);
   * null removes it. Returns the budget state. Absent on models without BatchNorm.
   */
  setCacheBudget?(bytes: number | null, mode?: BudgetMode): CacheBudget | null;
  /** Affine weight/bias variables of the trainable norm layers, in module order. */
  trainableParams(): tf.Variable[];
  /** Marks which norm layers adapt their affine parameters (all by default). */
  setTrainable(trainable: boolean, filter?: (layer: NormLayer) => boolean): void;
  /** Every parameter in state_dict order (buffers excluded), with what currently trains. */
  parameters(): readonly ModelParameter[];
  /**
   * PyTorch's `requires_grad_` per parameter: exactly the parameters `filter` selects train,
   * all others are frozen. A layer's weight and bias switch together (one flag per layer): the
   * layer trains when the filter selects either of them.
   */
  requiresGrad(filter: ParamFilter): void;
  /** Current values of all parameters and buffers under their PyTorch key names (copies). */
  stateDict(): Map<string, tf.Tensor>;
  /** Loads values (same keys/shapes as stateDict) into the variables. */
  loadStateDict(sd: Map<string, tf.Tensor>): void;
  /**
   * A deep copy in the current state (the teacher and anchor of CoTTA, Wang et al., CVPR 2022; the
   * EMA model of RoTTA, Yuan et al., CVPR 2023): its own variable for every parameter and buffer, and
   * its own norm mode, MECTA options and per-layer state, and trainable flags, so updating either
   * model leaves the other as it was. The copy draws MECTA's pruned channels from the same seeded
   * generator as the original (the run's pruning stream, which checkpoints save and restore).
   * Dispose the copy on its own; it frees everything it holds.
   */
  clone(): Classifier;
  /**
   * Gradient checkpointing per stage (src/models/grad-checkpoint.ts,
   * docs/memory.md#gradient-checkpointing); absent on a model without stages of blocks. A copy
   * (`clone`) starts with it off.
   */
  readonly gradCheckpoint?: GradCheckpointControl;
  /**
   * Told of a forward the model runs inside its own forward, on `images` images, that is a pass of
   * its own (L2P's query: the pretrained model's features without the prompts). The runner's pass
   * counter sets it (src/runner/pass-count.ts); a copy (`clone`) starts without one.
   */
  innerPassObserver?: ((images: number) => void) | null;
  /** Frees every tensor the model holds (idempotent). */
  dispose(): void;
}

export const CHECKPOINT_SCOPES = ['stage', 'model'] as const;
export type CheckpointScope = (typeof CHECKPOINT_SCOPES)[number];

/** A model's gradient-checkpointing switch (MECTA's --layer_grad_chkpt_segment). */
export interface GradCheckpointControl {
  /** Blocks per stage, in forward order (ViT: its blocks as one stage). */
  readonly stageBlocks: readonly number[];
  /** Segments per stage S (1 = off; a stage of B < S blocks uses B). */
  segments: number;
  /**
   * What is cut into segments: 'stage' = each stage's blocks (MECTA's layout), 'model' = all
   * blocks as one sequence (checkpoint_sequential over the whole body; a model with one block
   * per stage has nothing to checkpoint per stage).
   */
  scope: CheckpointScope;
  /** The checkpointed segments' input bytes (float32) and count in the last taped forward. */
  readonly lastInputBytes: number;
  readonly lastSegments: number;
}
