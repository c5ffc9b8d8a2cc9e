/**
 * Run identity. A run folder is named by a hash of its resolved config, so re-expanding the same
 * sweep (or another sweep that contains the same run) finds the same folder and can skip it.
 *
 * The hash covers every config key except those that cannot change the numbers: where the results
 * go (`out`), how progress is shown (`progress`), which TF.js backend computes them (`backend`:
 * backends agree to float rounding, and a sweep started on one machine may finish on another) and
 * on how many WASM threads (`threads`: bit-identical results, test/e2e/threads.test.ts; cta-sweep
 * --run sets it per worker).
 * Keys are hashed in sorted order, so field order in the schema does not matter; a key added to the
 * schema later changes every hash, which errs towards re-running rather than reusing a result that
 * was computed without it.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { ordersCount } from '../data/orders.js';
import type { CtaConfig } from '../config/schema.js';

export const NOT_HASHED: readonly string[] = ['out', 'progress', 'backend', 'threads'];

/** JSON with object keys sorted at every level (arrays keep their order). */
export function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).filter((k) => o[k] !== undefined).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

/**
 * The hashed part of a config. An order file of --domain-orders (src/data/orders.ts) is hashed by
 * its content as well as its path, so editing the file gives its runs new folders.
 */
export function hashedConfig(cfg: CtaConfig | Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(cfg)) if (!NOT_HASHED.includes(k)) out[k] = v;
  const orders = out.domainOrders;
  if (typeof orders === 'string' && ordersCount(orders) === null && existsSync(orders)) {
    out.domainOrders = { path: orders, sha256: createHash('sha256').update(readFileSync(orders)).digest('hex') };
  }
  return out;
}

/** 12 hex digits of sha256 (48 bits: collisions are not a concern for sweeps of any real size). */
export function configHash(cfg: CtaConfig | Record<string, unknown>): string {
  // The prefix versions the scheme: changing what is hashed must change every name.
  return createHash('sha256').update('cta-sweep/1\n' + stableJson(hashedConfig(cfg))).digest('hex').slice(0, 12);
}

/** Folder name: readable prefix + hash, e.g. `eata-mecta-3f9a1c0b2d4e`. */
export function runId(cfg: CtaConfig): string {
  return `${cfg.alg}${cfg.accumBn ? '-mecta' : ''}-${configHash(cfg)}`;
}
