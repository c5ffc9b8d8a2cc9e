/**
 * Tent (docs/methods.md#tent; Wang et al., ICLR 2021): minimise the mean softmax entropy of each
 * test batch with respect to the norm layers' affine parameters, one optimizer step per batch,
 * predicting from the forward before the update. With MECTA the step is skipped when no layer
 * caches (docs/mecta-norm.md#cache-stopping).
 */
import { tf } from '../tf.js';
import type { AlgorithmSpec } from './types.js';
import { GradientAdapter } from './gradient-adapter.js';
import { adapterMethod } from './adapter-method.js';
import { GRADIENT_OPTIONS } from './options.js';
import { softmaxEntropy } from './losses.js';

export const tent = {
  description: 'Tent: entropy minimisation on the norm-layer affine parameters (one step per batch)',
  usesGradients: true,
  norm: 'adaptive', // test-batch statistics (docs/methods.md#configuration)
  options: GRADIENT_OPTIONS,
  async create(model, opts) {
    const adapter = new GradientAdapter(model, opts, 'tent');
    return adapterMethod('tent', adapter, (x) => {
      // episodic: reload model + optimizer before every batch (the reference's reset()).
      if (opts.episodic) adapter.restore();
      return adapter.step(x, (z) => tf.mean(softmaxEntropy(z)) as tf.Scalar);
    });
  },
} satisfies AlgorithmSpec;
