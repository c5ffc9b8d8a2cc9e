/**
 * Source (docs/methods.md#source): the pre-trained model as is — eval-mode BN with the stored running
 * statistics, nothing adapted, prediction only.
 */
import { tf } from '../tf.js';
import type { Algorithm, AlgorithmSpec } from './types.js';
import type { Classifier } from '../models/types.js';

export const source = {
  description: 'Source: no adaptation (eval-mode norm layers with the training statistics)',
  usesGradients: false,
  norm: 'source', // eval mode: the stored running statistics
  options: {},
  async create(model) {
    // No parameter is adapted; also keeps the analytic backward cache at zero
    // (docs/memory.md#analytic).
    model.setTrainable(false);
    return predictOnly('source', model);
  },
} satisfies AlgorithmSpec;

/**
 * A method that only predicts (source, BN-α): the forward in the norm mode configured before, no
 * state of its own to reset, save or free.
 */
export function predictOnly(name: string, model: Classifier): Algorithm {
  return {
    name,
    step(x) {
      return { logits: tf.tidy(() => model.forward(x)), updated: false };
    },
    reset() {
      /* stateless: nothing is updated */
    },
    saveState() {
      return new Map();
    },
    loadState() {
      /* stateless */
    },
    dispose() {
      /* nothing owned */
    },
  };
}
