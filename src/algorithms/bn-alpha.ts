/**
 * BN-α (docs/methods.md#bn-alpha; Schneider et al., NeurIPS 2020, "Improving robustness against
 * common corruptions by covariate shift adaptation"; the `bnalpha` method of
 * github:mariodoebler/test-time-adaptation, classification/methods/bn.py AlphaBatchNorm): no
 * parameter is optimised; every BatchNorm layer normalises with a fixed mix of the source
 * statistics and the statistics of the current test batch,
 *   μ = (1 − α)·μ_source + α·μ_batch,   σ² = (1 − α)·σ²_source + α·σ²_batch,
 * with α = `--bn-alpha` the weight of the TEST statistics (the official BN.ALPHA, default 0.1;
 * Schneider et al.'s prior strength N over batch size n is 1 − α = N/(N + n)). As in the official
 * module, σ²_batch is the Bessel-corrected variance (it is read from a momentum-1 BatchNorm's
 * running_var) and the mixed statistics are constants for autograd (norm mode 'alpha' with
 * `unbiased` and `detachStats`, docs/mecta-norm.md#norm-policies). Nothing is adapted, so the
 * statistics never drift. MECTA's accumulated statistics would replace the mix: --accum-bn is
 * refused (configureNorm).
 */
import { predictOnly } from './source.js';
import type { AlgorithmSpec } from './types.js';
import type { FieldSpec } from '../config/schema.js';
import { configureNorm } from './norm-mode.js';
import type { Classifier } from '../models/types.js';

/** BN-α's option (mariodoebler conf.py BN.ALPHA; MEMO reads the same field). */
export const BN_ALPHA_OPTIONS = {
  bnAlpha: { type: 'number', min: 0, max: 1, default: 0.1, group: 'algorithm', description: 'BN-α (bn_alpha, memo): weight α of the test-batch statistics, (1 − α)·source + α·batch (BN.ALPHA)' },
} as const satisfies Record<string, FieldSpec>;

export interface BnAlphaValues {
  bnAlpha?: number;
}

/** Sets `model` to the official AlphaBatchNorm statistics with test weight `bnAlpha`. */
export function configureAlphaBn(model: Classifier, bnAlpha: number): void {
  // A LayerNorm-only model (ViT) has no statistics to mix: the official code swaps only BatchNorm
  // layers, so its LayerNorms keep normalising each token by its own statistics.
  if (!model.normLayers.some((l) => l.kind === 'batch')) return;
  // the project's 'alpha' is the SOURCE weight (docs/mecta-norm.md#norm-policies)
  configureNorm(model, 'adaptive', undefined, { kind: 'alpha', alpha: 1 - bnAlpha, unbiased: true, detachStats: true });
}

export const bnAlpha = {
  description: 'BN-α: norm layers use (1 − α)·source + α·test-batch statistics (α = --bn-alpha), no gradients',
  usesGradients: false,
  norm: 'adaptive',
  options: BN_ALPHA_OPTIONS,
  async create(model, opts) {
    const a = (opts as typeof opts & BnAlphaValues).bnAlpha ?? BN_ALPHA_OPTIONS.bnAlpha.default;
    configureAlphaBn(model, a);
    model.setTrainable(false);
    return predictOnly('bn_alpha', model);
  },
} satisfies AlgorithmSpec;
