/**
 * Analytic backprop-cache accounting, identical to MECTA's `get_bn_cache_size`
 * (docs/memory.md#analytic): per norm layer the forward cache is its (channel-pruned) input in
 * float32, the backward cache the same for layers that cache in this batch; the batch figure is
 * max(largest forward, sum of backward), in MB = 1e6 bytes. Trainable conv / linear / embedding
 * layers add the input their weight gradient needs to the backward sum
 * (docs/memory.md#trainable-weights).
 */
import type { Classifier, NormRecord, ParamKind } from '../models/types.js';
import { lastWeightInput } from '../models/ops/weights.js';
import { moduleOf } from '../algorithms/param-select.js';

export const MB = 1e6;

export interface CacheAccount {
  maxForwardBytes: number;
  totalBackwardBytes: number;
  /** max(maxForward, totalBackward) / 1e6 */
  cacheMb: number;
}

/**
 * A trainable conv / linear / embedding layer's analytic backward cache: the input its weight
 * gradient needs, float32 (docs/memory.md#trainable-weights). `bytes` is 0 for a layer whose
 * input another layer already saved in the same forward (counted once, at the first).
 */
export interface WeightRecord {
  /** Module path, e.g. 'stage_1.0.conv_conv'. */
  name: string;
  kind: ParamKind;
  /** Input shape as the layer saw it (NHWC for a conv, [rows, in] for a linear). */
  shape: number[];
  bytes: number;
}

/**
 * The analytic records of the model's trainable non-norm layers after a forward, in forward
 * order (docs/memory.md#trainable-weights). Empty when only norm affines train, so norm-only
 * figures are unchanged. A parameter with no recorded input (a position embedding or class token,
 * whose gradient is a sum of dy; a bias next to its weight) adds nothing.
 */
export function weightRecords(model: Pick<Classifier, 'parameters'>): WeightRecord[] {
  if (typeof model.parameters !== 'function') return [];
  const found: (WeightRecord & { buffer: object; seq: number })[] = [];
  const seenModules = new Set<string>();
  for (const p of model.parameters()) {
    if (p.kind === 'norm' || !p.requiresGrad || !p.variable) continue;
    const rec = lastWeightInput(p.variable);
    const name = moduleOf(p.name);
    if (!rec || seenModules.has(name)) continue;
    seenModules.add(name);
    found.push({ name, kind: p.kind, shape: rec.shape, bytes: rec.bytes, buffer: rec.buffer, seq: rec.seq });
  }
  found.sort((a, b) => a.seq - b.seq);
  const buffers = new Set<object>();
  return found.map(({ buffer, seq: _seq, ...r }) => {
    const shared = buffers.has(buffer);
    buffers.add(buffer);
    return { ...r, bytes: shared ? 0 : r.bytes };
  });
}

/**
 * `weights` (trainable conv / linear / embedding inputs, `weightRecords`) add to the backward
 * sum only; the forward figure stays MECTA's largest norm-layer input.
 */
export function accountCache(records: readonly (NormRecord | null)[], weights: readonly WeightRecord[] = []): CacheAccount {
  let maxForwardBytes = 0;
  let totalBackwardBytes = 0;
  for (const r of records) {
    if (!r) continue;
    maxForwardBytes = Math.max(maxForwardBytes, r.forwardBytes);
    totalBackwardBytes += r.backwardBytes;
  }
  for (const w of weights) totalBackwardBytes += w.bytes;
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
