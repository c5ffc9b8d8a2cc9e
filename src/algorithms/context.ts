/**
 * The AlgorithmContext members every caller builds the same way: model copies of the run's model
 * (Classifier.clone) and CoTTA's augmentation drawing from the algorithm's own Rng, so the stream
 * a checkpoint saves as the algorithm's also covers the augmentation draws.
 */
import type { Classifier } from '../models/types.js';
import type { Rng } from '../util/rng.js';
import { cottaAugment } from './augment.js';
import type { AlgorithmContext } from './types.js';

export function copiesAndAugmentation(model: Classifier, rng: Rng): Required<Pick<AlgorithmContext, 'cloneModel' | 'augment'>> {
  return {
    cloneModel: () => model.clone(),
    augment: (x, opts) => cottaAugment(x, rng, opts),
  };
}
