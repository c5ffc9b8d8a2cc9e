/**
 * The one decision of how the norm layers normalise during a run (docs/methods.md#configuration).
 * A method declares the statistics it needs (`AlgorithmSpec.norm`); the run says whether MECTA
 * accumulates them (--accum-bn, docs/mecta-norm.md):
 * - 'source': the stored running statistics (eval mode), MECTA or not;
 * - 'adaptive': the current batch's statistics ('batch', running buffers unused), or MECTA's
 *   accumulated statistics ('mecta', "BN + MECTA norm"), which replace the buffers. Without MECTA a
 *   method (`AlgorithmSpec.normStats`) or a caller may pick other statistics (`NormStats`): RoTTA's
 *   robust-BN EMA ('ema') or BN-α ('alpha'), docs/mecta-norm.md#norm-policies.
 * The runner applies it with the run's MECTA setting; the registry applies it again, keeping the
 * model's MECTA setting, before every `create()` (src/algorithms/registry.ts), so a method created
 * directly (tests, profilers) gets the same mode.
 */
import { CtaError } from '../util/errors.js';
import type { Classifier, MectaOptions, NormMode } from '../models/types.js';

export type NormNeed = 'source' | 'adaptive';

/**
 * The adaptive statistics without MECTA (docs/mecta-norm.md#norm-policies): the batch's own
 * ('batch'), an EMA of them (RoTTA's robust BN; momentum default 0.05) or α·source + (1 − α)·batch
 * (BN-α).
 */
export type NormStats =
  | { kind: 'batch' }
  | { kind: 'ema'; momentum?: number }
  | { kind: 'alpha'; alpha: number; unbiased?: boolean; detachStats?: boolean };

/** The adaptive modes a caller may have set and `configureNorm` keeps (they carry options). */
const KEPT_ADAPTIVE: readonly NormMode[] = ['mecta', 'ema', 'alpha'];

export function normModeFor(need: NormNeed, mecta: boolean, stats?: NormStats): NormMode {
  if (need === 'source') return 'source';
  if (mecta) return 'mecta';
  return stats?.kind ?? 'batch';
}

function setStats(model: Classifier, stats: NormStats | undefined): void {
  if (stats?.kind === 'ema') model.setNormMode('ema', stats.momentum === undefined ? undefined : { momentum: stats.momentum });
  else if (stats?.kind === 'alpha') model.setNormMode('alpha', { alpha: stats.alpha, unbiased: stats.unbiased, detachStats: stats.detachStats });
  else model.setNormMode('batch');
}

/**
 * Sets the model's norm mode for a method: with MECTA when `mecta` holds its options, without when
 * null; undefined keeps the model's own adaptive setting (a caller that switched it to 'mecta',
 * 'ema' or 'alpha') unless `stats` names one. `stats` other than batch cannot be combined with
 * MECTA, whose accumulated statistics replace them.
 */
export function configureNorm(model: Classifier, need: NormNeed, mecta?: MectaOptions | null, stats?: NormStats): void {
  const other = stats !== undefined && stats.kind !== 'batch';
  if (need === 'source') {
    model.setNormMode('source');
    return;
  }
  if (mecta === undefined) {
    const current = model.normMode;
    if (other && current === 'mecta') {
      throw new CtaError(`norm statistics '${stats!.kind}' cannot be combined with --accum-bn (MECTA's accumulated statistics)`);
    }
    if (stats === undefined && KEPT_ADAPTIVE.includes(current)) return;
    setStats(model, stats);
    return;
  }
  if (mecta !== null) {
    if (other) throw new CtaError(`norm statistics '${stats!.kind}' cannot be combined with --accum-bn (MECTA's accumulated statistics)`);
    model.setNormMode('mecta', mecta);
    return;
  }
  setStats(model, stats);
}
