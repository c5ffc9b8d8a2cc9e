/**
 * Tent (docs/methods.md#tent; Wang et al., ICLR 2021): minimise the mean softmax entropy of each
 * test batch with respect to the norm layers' affine parameters, one optimizer step per batch,
 * predicting from the forward before the update. With MECTA the step is skipped when no layer
 * caches (docs/mecta-norm.md#cache-stopping).
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec, StepResult } from './types.js';
import { GradientAdapter, useAdaptiveNorm } from './common.js';
import { softmaxEntropy } from './losses.js';

export const tent: AlgorithmSpec = {
  description: 'Tent: entropy minimisation on the norm-layer affine parameters (one step per batch)',
  usesGradients: true,
  async create(model, opts) {
    useAdaptiveNorm(model);
    const adapter = new GradientAdapter(model, opts, 'tent');
    const alg: Algorithm = {
      name: 'tent',
      step(x): StepResult {
        // episodic: reload model + optimizer before every batch (the reference's reset()).
        if (opts.episodic) adapter.restore();
        return adapter.step(x, (z) => tf.mean(softmaxEntropy(z)) as tf.Scalar);
      },
      reset() {
        adapter.resetAll();
      },
      saveState() {
        const out = new Map<string, tf.Tensor>();
        adapter.saveState(out);
        return out;
      },
      loadState(state) {
        adapter.loadState(state);
      },
      dispose() {
        adapter.dispose();
      },
    };
    return alg;
  },
};
