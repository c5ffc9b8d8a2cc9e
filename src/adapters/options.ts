/**
 * Config fields shared by several --adapt-params kinds (declared once: the schema merges the
 * kinds' fields by key, src/config/schema.ts), and the site selection they drive.
 */
import type { FieldSpec } from '../config/schema.js';
import { CtaError } from '../util/errors.js';
import type { AdapterSite } from '../models/injection.js';
import type { AdapterConfig } from './types.js';

export const ADAPTER_TARGETS = {
  adaptTargets: { type: 'string', nullable: true, default: null, defaultText: 'per kind (docs/adapters.md): lora/kadaptation q,v; vida qkv,proj; adapter/compacter attn,mlp; CNNs all 1×1 convs', group: 'adapters', description: 'where the modules go (comma-separated): ViT linears q, k, v, qkv, proj, fc1, fc2 (lora, kadaptation, vida) or sub-layer outputs attn, mlp (adapter, compacter); CNN 1×1 convs reduce, expand, shortcut' },
  adaptBlocks: { type: 'string', nullable: true, default: null, defaultText: 'all', group: 'adapters', description: "which blocks get modules: indices and ranges, e.g. '0-3,11' (ViT blocks; CNN residual blocks in forward order)" },
} as const satisfies Record<string, FieldSpec>;

export const RANK = {
  rank: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'lora 8, kadaptation 1', group: 'adapters', description: 'rank r of the low-rank factors (LoRA B·A; KAdaptation fast weights u·vᵀ)' },
} as const satisfies Record<string, FieldSpec>;

export const KRON_FACTORS = {
  kronFactors: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'kadaptation 32, compacter 4', group: 'adapters', description: 'n Kronecker terms Σ_i A_i ⊗ B_i with A_i ∈ R^{n×n} (must divide the factored dimensions)' },
} as const satisfies Record<string, FieldSpec>;

export const ADAPTER_DIM = {
  adapterDim: { type: 'int', min: 1, nullable: true, default: null, defaultText: 'adapter 64, compacter width/32 (≥ n)', group: 'adapters', description: 'bottleneck width of the adapter / compacter down-projection' },
} as const satisfies Record<string, FieldSpec>;

/** The largest m ≤ n dividing every width (1 always does): the --kron-factors to suggest when n does not divide them. */
export function commonFactor(n: number, widths: readonly number[]): number {
  for (let m = n; m > 1; m--) if (widths.every((w) => w % m === 0)) return m;
  return 1;
}

/** The resolved value of a shared nullable int option (its per-kind default when unset). */
export function intOption(cfg: AdapterConfig, key: string, fallback: number): number {
  const v = cfg[key];
  if (v === null || v === undefined) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1) throw new CtaError(`--${flag(key)}: expected a positive integer, got ${String(v)}`);
  return v;
}

export function flag(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

/** `--adapt-targets` parsed against the kind's allowed names; the kind's default when unset. */
export function parseTargets(cfg: AdapterConfig, allowed: readonly string[], fallback: readonly string[], kind: string): Set<string> {
  const raw = cfg.adaptTargets;
  if (raw === null || raw === undefined) return new Set(fallback);
  const items = String(raw)
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  const bad = items.filter((s) => !allowed.includes(s));
  if (items.length === 0 || bad.length > 0) {
    throw new CtaError(`--adapt-targets: ${bad.length ? `'${bad.join(',')}' is` : 'nothing is'} not a target of --adapt-params ${kind} on this model (expected a comma-separated subset of ${allowed.join(', ')})`);
  }
  return new Set(items);
}

/** `--adapt-blocks` ('0-3,11') as a predicate on block indices, checked against the model's count. */
export function parseBlocks(cfg: AdapterConfig, count: number): (block: number) => boolean {
  const raw = cfg.adaptBlocks;
  if (raw === null || raw === undefined) return () => true;
  const chosen = new Set<number>();
  for (const part of String(raw).split(',').map((s) => s.trim())) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    const lo = m ? Number(m[1]) : NaN;
    const hi = m ? Number(m[2] ?? m[1]) : NaN;
    if (!m || hi < lo || hi >= count) {
      throw new CtaError(`--adapt-blocks: '${part}' is not a block index or range within 0-${count - 1} (e.g. '0-3,${count - 1}')`);
    }
    for (let b = lo; b <= hi; b++) chosen.add(b);
  }
  return (b) => chosen.has(b);
}

/** Number of blocks of the model (max site block index + 1). */
export function blockCount(sites: readonly AdapterSite[]): number {
  return sites.reduce((m, s) => Math.max(m, s.block + 1), 0);
}
