/**
 * Algorithm contract. An algorithm never sees data streams, logging or timing: the runner hands it
 * one batch at a time and it returns the prediction (the forward *before* its update, as in Tent,
 * EATA and MECTA) plus counters. A method file is tent-sized: options type, configure, params,
 * one step, reset.
 */
import type { tf } from '../tf.js';
import type { Classifier } from '../models/types.js';
import type { Rng } from '../util/rng.js';

export const OPTIMIZERS = ['sgd', 'adam'] as const;
export type OptimizerName = (typeof OPTIMIZERS)[number];

/** Options shared by the gradient-based methods (names = config keys). */
export interface AdaptOptions {
  lr: number;
  momentum: number; // SGD momentum (PyTorch semantics, no dampening, no nesterov)
  optimizer: OptimizerName;
  episodic: boolean; // reset model + optimizer before each batch
  /** EATA/ETA */
  eMargin: number; // entropy threshold E0 (absolute, already resolved from 0.4·ln C)
  dMargin: number; // cosine redundancy threshold ε_d
  fisherAlpha: number;
  fisherSize: number;
  /**
   * What a fully matched MECTA layer's parameters do in a step (algorithms.md A.6):
   * 'momentum' = PyTorch 1.12 (zero grad, momentum still moves them), 'skip' = PyTorch ≥ 2.0.
   */
  matchedUpdate: 'momentum' | 'skip';
}

export interface StepResult {
  /** Logits of the pre-update forward; the caller disposes them. */
  logits: tf.Tensor2D;
  /** True when backward + optimizer step ran for this batch. */
  updated: boolean;
  /** EATA/ETA: samples passing the reliability filter, and those used in the loss. */
  reliable?: number;
  used?: number;
}

export interface AlgorithmContext {
  rng: Rng;
  /**
   * Clean batches for EATA's Fisher estimation (fisherSize samples, batched at the run's batch
   * size, already shuffled by the runner). Only called by algorithms that need it.
   */
  fisherData?: () => AsyncIterable<tf.Tensor4D>;
}

export interface Algorithm {
  readonly name: string;
  /** Predicts and adapts on one batch (NHWC in [0,1]). Must not leak tensors. */
  step(x: tf.Tensor4D): StepResult;
  /** Restores the model and optimizer state captured at configure time. */
  reset(): void;
  /** Serialisable state beyond the model (optimizer slots, EATA moving average) for checkpoints. */
  saveState(): Map<string, tf.Tensor>;
  loadState(state: Map<string, tf.Tensor>): void;
  dispose(): void;
}

export interface AlgorithmSpec {
  /** Human description for --help. */
  readonly description: string;
  /** Whether the method optimises norm-layer affine parameters (needs gradients). */
  readonly usesGradients: boolean;
  create(model: Classifier, opts: AdaptOptions, ctx: AlgorithmContext): Promise<Algorithm>;
}
