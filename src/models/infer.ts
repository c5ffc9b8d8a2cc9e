/**
 * Reading an architecture off a state_dict's key names and shapes. Dimensions that cannot be
 * read (their source keys are missing) become UNKNOWN; the registry then reports those keys as
 * missing instead of failing on an unrelated shape.
 */
import type { StateDict } from '../io/types.js';

export const UNKNOWN = -1;

/** Axis `axis` of the first present key in `keys`, else UNKNOWN. */
export function dimOf(sd: StateDict, keys: readonly string[], axis: number): number {
  for (const k of keys) {
    const t = sd.get(k);
    if (t && t.shape.length > axis) return t.shape[axis];
  }
  return UNKNOWN;
}

/**
 * Number of numbered children under `prefix` (e.g. 'stage_1.' → indices from 'stage_1.<i>.'):
 * max index + 1, so a gap shows up as missing keys. At least 1, so an absent stage is reported.
 */
export function childCount(sd: StateDict, prefix: string): number {
  let max = -1;
  for (const key of sd.keys()) {
    if (!key.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(key.slice(prefix.length));
    if (m) max = Math.max(max, Number(m[1]));
  }
  return Math.max(1, max + 1);
}

/** Shapes of a BatchNorm2d's four tensors. */
export function bnKeys(out: Map<string, number[]>, prefix: string, c: number): void {
  for (const s of ['weight', 'bias', 'running_mean', 'running_var']) out.set(`${prefix}.${s}`, [c]);
}

/** Integer division that keeps UNKNOWN unknown. */
export function divDim(a: number, b: number): number {
  return a === UNKNOWN || b === UNKNOWN || b === 0 ? UNKNOWN : a / b;
}
