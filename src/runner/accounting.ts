/**
 * Analytic backprop-cache accounting, identical to MECTA's `get_bn_cache_size`
 * (docs/memory.md#analytic): per norm layer the forward cache is its (channel-pruned) input in
 * float32, the backward cache the same for layers that cache in this batch; the batch figure is
 * max(largest forward, sum of backward), in MB = 1e6 bytes.
 */
import type { NormRecord } from '../models/types.js';

export const MB = 1e6;

export interface CacheAccount {
  maxForwardBytes: number;
  totalBackwardBytes: number;
  /** max(maxForward, totalBackward) / 1e6 */
  cacheMb: number;
}

export function accountCache(records: readonly (NormRecord | null)[]): CacheAccount {
  let maxForwardBytes = 0;
  let totalBackwardBytes = 0;
  for (const r of records) {
    if (!r) continue;
    maxForwardBytes = Math.max(maxForwardBytes, r.forwardBytes);
    totalBackwardBytes += r.backwardBytes;
  }
  return { maxForwardBytes, totalBackwardBytes, cacheMb: Math.max(maxForwardBytes, totalBackwardBytes) / MB };
}

/**
 * Analytic cache for a layer list described by its input shapes (NHWC) — used by profile-mem and
 * by tests to check the published figures without running a model.
 */
export function analyticCache(
  shapes: readonly { n: number; h: number; w: number; c: number; caches: boolean }[],
  pruneQ: number,
): CacheAccount {
  return accountCache(
    shapes.map((s, i) => {
      const bytes = s.n * Math.floor((1 - pruneQ) * s.c) * s.h * s.w * 4;
      return { name: String(i), beta: null, cached: s.caches, forwardBytes: bytes, backwardBytes: s.caches ? bytes : 0 };
    }),
  );
}
