/**
 * Random full-size state dicts for the benchmark (speed and memory depend only on the shapes):
 * every registry architecture at its published size, from src/memory/random-weights.ts.
 */
import { randomStateDict } from '../../dist/memory/random-weights.js';

/** A random state dict for `model`; throws when there is no template for it. */
export async function benchStateDict(model, seed) {
  return randomStateDict(model, { seed });
}
