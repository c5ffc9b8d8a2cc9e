/**
 * Algorithm contract. An algorithm never sees data streams, logging or timing: the runner hands it
 * one batch at a time and it returns the prediction (the forward *before* its update, as in Tent,
 * EATA and MECTA) plus counters. A method file is tent-sized: options type, configure, params,
 * one step, reset.
 */
import type { tf } from '../tf.js';
import type { Classifier } from '../models/types.js';
import type { FieldSpec } from '../config/schema.js';
import type { NormNeed, NormStats } from './norm-mode.js';
import type { Rng } from '../util/rng.js';
import type { CottaAugmentOptions } from './augment.js';

export const OPTIMIZERS = ['sgd', 'adam', 'adamw'] as const;
export type OptimizerName = (typeof OPTIMIZERS)[number];

/**
 * Options shared by the gradient-based methods (names = config keys; fields in
 * src/algorithms/options.ts). A method's own options are its file's (e.g. EataOptions).
 */
export interface AdaptOptions {
  lr: number;
  momentum: number; // SGD momentum (PyTorch semantics)
  optimizer: OptimizerName;
  /**
   * The remaining torch.optim hyper-parameters (src/algorithms/optim.ts); unset = PyTorch's
   * defaults (dampening 0, nesterov false, weight decay 0, betas (0.9, 0.999), eps 1e-8).
   */
  dampening?: number; // SGD
  nesterov?: boolean; // SGD
  weightDecay?: number; // SGD, Adam: L2 on the gradient; AdamW: decoupled
  adamBeta1?: number; // Adam, AdamW
  adamBeta2?: number;
  adamEps?: number;
  episodic: boolean; // reset model + optimizer before each batch
  /**
   * What a fully matched MECTA layer's parameters do in a step (docs/mecta-norm.md#matched-updates):
   * 'momentum' = PyTorch 1.12 (zero grad, momentum still moves them), 'skip' = PyTorch ≥ 2.0.
   */
  matchedUpdate: 'momentum' | 'skip';
  /**
   * MECTA's `--n_layer` (`filter=N`): train the affines of the last N BatchNorm layers
   * (src/algorithms/param-select.ts); null/absent = what the model selects (all norm layers).
   */
  nLayer?: number | null;
}

export interface StepResult {
  /** Logits of the pre-update forward; the caller disposes them. */
  logits: tf.Tensor2D;
  /** True when backward + optimizer step ran for this batch. */
  updated: boolean;
  /**
   * Per-batch counters the method declares in `AlgorithmSpec.metrics` (EATA/ETA: reliable, used);
   * the runner writes them to batches.jsonl and sums them per domain.
   */
  metrics?: Record<string, number>;
}

/** A per-batch counter of a method, summed per domain into summary.json as `summary`. */
export interface MetricSpec {
  readonly summary: string;
  readonly description: string;
}

export interface AlgorithmContext {
  rng: Rng;
  /**
   * Clean batches for EATA's Fisher estimation (fisherSize samples, batched at the run's batch
   * size, already shuffled by the runner). Only called by algorithms that need it.
   */
  fisherData?: () => AsyncIterable<tf.Tensor4D>;
  /**
   * A deep copy of the model the algorithm was created with, in its current state
   * (Classifier.clone: CoTTA's teacher and anchor, RoTTA's EMA model); the caller disposes it.
   * Only called by algorithms that need it.
   */
  cloneModel?: () => Classifier;
  /**
   * One CoTTA augmentation of a batch (src/algorithms/augment.ts), drawing its parameters and noise
   * from `rng`; a new tensor the caller disposes. Only called by algorithms that need it.
   */
  augment?: (x: tf.Tensor4D, opts?: CottaAugmentOptions) => tf.Tensor4D;
}

export interface Algorithm {
  readonly name: string;
  /** Predicts and adapts on one batch (NHWC in [0,1]). Must not leak tensors. */
  step(x: tf.Tensor4D): StepResult;
  /**
   * The network whose forward is the method's prediction, for evaluations without adapting
   * (--interleave-clean, src/runner/forgetting.ts); absent: the adapted model. CoTTA: its teacher.
   */
  evaluator?(): Classifier;
  /** Restores the model and optimizer state captured at configure time. */
  reset(): void;
  /** Serialisable state beyond the model (optimizer slots, EATA moving average) for checkpoints. */
  saveState(): Map<string, tf.Tensor>;
  loadState(state: Map<string, tf.Tensor>): void;
  /**
   * Bytes the method holds beyond the model's own weights, by kind (docs/memory.md#method-state):
   * 'teacher', 'anchor' (model copies, source parameters), 'memoryBank' (stored samples),
   * 'optimizer' (slots), 'snapshot' (the configure-time state reset() / episodic reload, the
   * reference's copy_model_and_optimizer), 'other'. profile-mem and batches.jsonl report them as
   * separate columns; absent = none.
   */
  stateBytes?(): Partial<Record<StateBytesKind, number>>;
  dispose(): void;
}

export const STATE_BYTES_KINDS = ['teacher', 'anchor', 'memoryBank', 'optimizer', 'snapshot', 'other'] as const;
export type StateBytesKind = (typeof STATE_BYTES_KINDS)[number];

export interface AlgorithmSpec {
  /** Human description for --help. */
  readonly description: string;
  /** Whether the method optimises norm-layer affine parameters (needs gradients). */
  readonly usesGradients: boolean;
  /** The normalisation statistics the method needs (src/algorithms/norm-mode.ts). */
  readonly norm: NormNeed;
  /**
   * Which statistics an 'adaptive' method normalises with when MECTA is off: batch (default),
   * robust-BN EMA or BN-α (src/algorithms/norm-mode.ts, docs/mecta-norm.md#norm-policies).
   */
  readonly normStats?: NormStats;
  /**
   * The config fields the method reads (flags, YAML, --help, README come from them: the schema
   * merges every method's fields, src/config/schema.ts). Methods sharing an option share its
   * field object (src/algorithms/options.ts).
   */
  readonly options: Readonly<Record<string, FieldSpec>>;
  /** The counters `step` returns in `StepResult.metrics`, by name. */
  readonly metrics?: Readonly<Record<string, MetricSpec>>;
  /**
   * Which forward a batch is scored on: 'before-update' (default; Tent, EATA, MECTA: the forward
   * that the step then adapts on) or 'after-update' (MEMO adapts on a sample, then predicts it).
   * The protocol line of every table says which (src/runner/provenance.ts).
   */
  readonly predicts?: 'before-update' | 'after-update';
  /** Configures `model` (its norm mode already set from `norm`) and returns the method. */
  create(model: Classifier, opts: AdaptOptions, ctx: AlgorithmContext): Promise<Algorithm>;
}
