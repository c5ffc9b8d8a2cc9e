/**
 * Norm / BN statistics adaptation (docs/methods.md#norm): no parameter is optimised; the norm layers
 * normalise with the current batch's statistics ('batch'), or — when the runner configured MECTA
 * (--accum-bn) before `create()` — with MECTA's accumulated statistics ('mecta', "BN + MECTA norm").
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec } from './types.js';

export const norm = {
  description: 'Norm: test-batch statistics in the norm layers (MECTA accumulation with --accum-bn), no gradients',
  usesGradients: false,
  norm: 'adaptive', // the current batch's statistics, or MECTA's accumulated ones
  options: {},
  async create(model) {
    // BN parameters frozen. Note: the reference leaves requires_grad on under MECTA's forget gate
    // and so reports a non-zero backward cache for `bn`; here it is zero (docs/methods.md#norm).
    model.setTrainable(false);
    // Only 'mecta' mode changes state (the accumulated statistics); reset() returns to this.
    let initial = model.stateDict();
    const alg: Algorithm = {
      name: 'norm',
      step(x) {
        return { logits: tf.tidy(() => model.forward(x)), updated: false };
      },
      reset() {
        model.loadStateDict(initial);
        for (const l of model.normLayers) l.reset();
      },
      saveState() {
        return new Map();
      },
      loadState() {
        /* the statistics live in the model's state dict, which the runner checkpoints */
      },
      dispose() {
        for (const t of initial.values()) t.dispose();
        initial = new Map();
      },
    };
    return alg;
  },
} satisfies AlgorithmSpec;
