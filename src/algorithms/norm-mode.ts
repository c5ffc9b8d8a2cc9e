/**
 * The one decision of how the norm layers normalise during a run (docs/methods.md#configuration).
 * A method declares the statistics it needs (`AlgorithmSpec.norm`); the run says whether MECTA
 * accumulates them (--accum-bn, docs/mecta-norm.md):
 * - 'source': the stored running statistics (eval mode), MECTA or not;
 * - 'adaptive': the current batch's statistics ('batch', running buffers unused), or MECTA's
 *   accumulated statistics ('mecta', "BN + MECTA norm"), which replace the buffers.
 * The runner applies it with the run's MECTA setting; the registry applies it again, keeping the
 * model's MECTA setting, before every `create()` (src/algorithms/registry.ts), so a method created
 * directly (tests, profilers) gets the same mode.
 */
import type { Classifier, MectaOptions, NormMode } from '../models/types.js';

export type NormNeed = 'source' | 'adaptive';

export function normModeFor(need: NormNeed, mecta: boolean): NormMode {
  if (need === 'source') return 'source';
  return mecta ? 'mecta' : 'batch';
}

/**
 * Sets the model's norm mode for a method: with MECTA when `mecta` holds its options, without when
 * null; undefined keeps the model's own MECTA setting (a caller that switched it to 'mecta').
 */
export function configureNorm(model: Classifier, need: NormNeed, mecta?: MectaOptions | null): void {
  if (mecta === undefined) {
    const keep = model.normMode === 'mecta';
    if (!(keep && need === 'adaptive')) model.setNormMode(normModeFor(need, keep));
    return;
  }
  const mode = normModeFor(need, mecta !== null);
  model.setNormMode(mode, mode === 'mecta' ? mecta! : undefined);
}
