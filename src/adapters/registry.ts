/**
 * The --adapt-params kinds (docs/adapters.md). 'norm' (the default) is no module: the methods'
 * own parameter choice (the norm-layer affines). Every other key builds a module set on the
 * model's injection point (src/models/injection.ts) whose parameters are then the only ones that
 * train. Each kind's file declares its options; the schema merges them (src/config/schema.ts).
 */
import type { FieldSpec } from '../config/schema.js';
import { adapter } from './adapter.js';
import { compacter } from './compacter.js';
import { kadaptation } from './kadaptation.js';
import { lora } from './lora.js';
import { prompt } from './prompt.js';
import type { AdapterSpec } from './types.js';
import { vida } from './vida.js';

export const ADAPTERS = {
  lora,
  kadaptation,
  adapter,
  compacter,
  vida,
  prompt,
} satisfies Record<string, AdapterSpec>;

export type AdapterKind = keyof typeof ADAPTERS;

/** --adapt-params choices: 'norm' then the registry's kinds. */
export const ADAPT_PARAMS = ['norm', ...(Object.keys(ADAPTERS) as AdapterKind[])] as const;

type UnionToIntersection<U> = (U extends unknown ? (u: U) => void : never) extends (i: infer I) => void ? I : never;
type AdapterFields = UnionToIntersection<(typeof ADAPTERS)[AdapterKind]['options']>;

/** Every kind's option fields by key (a key shared by two kinds must be the same field object). */
export function adapterFields(): AdapterFields {
  const out: Record<string, FieldSpec> = {};
  for (const [kind, spec] of Object.entries(ADAPTERS)) {
    for (const [key, field] of Object.entries(spec.options as Readonly<Record<string, FieldSpec>>)) {
      if (key in out && out[key] !== field) throw new Error(`adapter ${kind}: option ${key} is declared differently by another kind`);
      out[key] = field;
    }
  }
  return out as AdapterFields;
}
