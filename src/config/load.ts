/**
 * Builds a CtaConfig from a YAML file and command-line values (YAML < flags). Every problem is one
 * CtaError line naming the file or flag, the key, and what was expected.
 */
import { readFileSync, existsSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import yaml from 'js-yaml';
import { CtaError } from '../util/errors.js';
import { FIELDS, type CtaConfig, type FieldKey, type FieldSpec, defaultConfig, toCamel, toKebab } from './schema.js';
import { BOOL_EXPECTED, KEY_ALIASES, aliasNotice, parseBool, valueAlias, valueAliasNote } from './aliases.js';

/** Where a value came from, used to word the error: a YAML file or a flag. */
export type Origin = { kind: 'file'; path: string } | { kind: 'flag' };

function label(origin: Origin, key: string): string {
  return origin.kind === 'flag' ? `--${toKebab(key)}` : `${origin.path}: ${toKebab(key)}`;
}

function describe(f: FieldSpec): string {
  switch (f.type) {
    case 'bool':
      return BOOL_EXPECTED;
    case 'enum':
      return `one of ${f.choices.join(', ')}`;
    case 'list':
      return `a comma-separated list of ${f.choices.join(', ')}`;
    case 'string':
      return 'a string';
    case 'number':
    case 'int': {
      const kind = f.type === 'int' ? 'an integer' : 'a number';
      const lo = f.min === undefined ? '' : `${f.exclusiveMin ? '>' : '≥'} ${f.min}`;
      const hi = f.max === undefined ? '' : `≤ ${f.max}`;
      const range = [lo, hi].filter(Boolean).join(' and ');
      return `${kind}${range ? ' ' + range : ''}${f.nullable ? ' (or null)' : ''}`;
    }
  }
}

/**
 * Resolves a user-written key (kebab, snake or camel case, or a MECTA name from KEY_ALIASES) to a
 * field key, or null.
 */
export function fieldKey(raw: string): FieldKey | null {
  const k = toCamel(raw);
  if (Object.prototype.hasOwnProperty.call(FIELDS, k)) return k as FieldKey;
  return Object.prototype.hasOwnProperty.call(KEY_ALIASES, k) ? KEY_ALIASES[k] : null;
}

/** Like fieldKey, printing the alias notice when `raw` is a MECTA name (`where`: file and section). */
export function configKey(raw: string, where: string): FieldKey | null {
  const key = fieldKey(raw);
  if (key && key !== toCamel(raw)) aliasNotice(`${where}: ${raw} is MECTA's name; using ${toKebab(key)}`);
  return key;
}

/** Converts and validates one value. Strings (from flags) are parsed; YAML values may be typed. */
export function coerce(key: FieldKey, raw: unknown, origin: Origin): unknown {
  const f: FieldSpec = FIELDS[key];
  const bad = (): never => {
    const shown = typeof raw === 'string' ? JSON.stringify(raw) : String(raw);
    throw new CtaError(`${label(origin, key)}: expected ${describe(f)}, got ${shown}`);
  };
  const isNull = raw === null || raw === 'null' || raw === '~';
  switch (f.type) {
    case 'bool': {
      const b = parseBool(raw);
      return b === null ? bad() : b;
    }
    case 'enum': {
      if (typeof raw === 'string' && f.choices.includes(raw)) return raw;
      const alias = valueAlias(key, raw);
      if (alias === null) return bad();
      const flag = `--${toKebab(key)}`;
      const note = valueAliasNote(key, raw);
      aliasNotice(
        (origin.kind === 'flag' ? `${flag} ${String(raw)} is MECTA's name; using ${flag} ${alias}` : `${label(origin, key)}: ${String(raw)} is MECTA's name; using ${alias}`) +
          (note ? ` (${note})` : ''),
      );
      return alias;
    }
    case 'list': {
      const items = Array.isArray(raw)
        ? raw.map(String)
        : typeof raw === 'string'
          ? raw.split(',').map((s) => s.trim()).filter(Boolean)
          : bad();
      const unknown = items.filter((s) => !f.choices.includes(s));
      if (unknown.length > 0 || items.length === 0) {
        throw new CtaError(
          `${label(origin, key)}: ${unknown.length ? `unknown value ${JSON.stringify(unknown[0])}` : 'empty list'}; expected ${describe(f)}`,
        );
      }
      return items;
    }
    case 'string': {
      if (isNull && f.nullable) return null;
      if (typeof raw === 'string' && raw.length > 0) return raw;
      if (typeof raw === 'number') return String(raw);
      return bad();
    }
    case 'number':
    case 'int': {
      if (isNull && f.nullable) return null;
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (!Number.isFinite(n)) return bad();
      if (f.type === 'int' && !Number.isInteger(n)) return bad();
      if (f.min !== undefined && (f.exclusiveMin ? n <= f.min : n < f.min)) return bad();
      if (f.max !== undefined && n > f.max) return bad();
      return n;
    }
  }
}

/** Reads a YAML config (following `extends:` chains, relative to the including file). */
export function readYamlConfig(path: string, seen: Set<string> = new Set()): Partial<CtaConfig> {
  const abs = resolve(path);
  if (!existsSync(abs)) throw new CtaError(`--config ${path}: file not found`);
  if (seen.has(abs)) throw new CtaError(`${path}: 'extends' loops back to itself`);
  seen.add(abs);
  let doc: unknown;
  const text = readFileSync(abs, 'utf8');
  try {
    doc = yaml.load(text);
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new CtaError(`${path}: not valid YAML (${msg})`);
  }
  if (doc === undefined || doc === null) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new CtaError(`${path}: expected a mapping of option: value`);
  let out: Record<string, unknown> = {};
  const entries = Object.entries(doc as Record<string, unknown>);
  const ext = entries.find(([k]) => k === 'extends');
  if (ext) {
    if (typeof ext[1] !== 'string') throw new CtaError(`${path}: extends: expected a path to another config`);
    const target = resolve(dirname(abs), ext[1]);
    if (!existsSync(target)) {
      // The including file is at fault, not --config: name it and the line to fix.
      const line = text.split(/\r?\n/).findIndex((l) => /^extends\s*:/.test(l));
      throw new CtaError(`${path}${line >= 0 ? `:${line + 1}` : ''}: extends: ${ext[1]}: file not found (looked for ${target}; relative to ${path})`);
    }
    out = { ...readYamlConfig(target, seen) };
  }
  const origin: Origin = { kind: 'file', path };
  for (const [rawKey, value] of entries) {
    if (rawKey === 'extends') continue;
    const key = configKey(rawKey, path);
    if (!key) throw new CtaError(`${path}: unknown key '${rawKey}' (known keys: ${Object.keys(FIELDS).map(toKebab).join(', ')})`);
    out[key] = coerce(key, value, origin);
  }
  return out as Partial<CtaConfig>;
}

/** Checks that hold across fields (options that would otherwise be silently ignored). */
export function validateConfig(cfg: CtaConfig): CtaConfig {
  const mectaOnly: FieldKey[] = ['forgetGate', 'betaThre', 'pruneQ', 'initBeta', 'cacheBudgetMb'];
  if (!cfg.accumBn) {
    for (const k of mectaOnly) {
      const v = cfg[k];
      if (v !== null && v !== false && v !== 0) {
        throw new CtaError(`--${toKebab(k)} only takes effect with --accum-bn (the MECTA norm layer); add --accum-bn or drop it`);
      }
    }
  }
  if (cfg.accumBn && cfg.alg === 'lame') {
    throw new CtaError("--accum-bn (MECTA) does not apply to --alg lame: LAME only post-processes the source model's outputs and adapts no norm layer; drop --accum-bn");
  }
  if (cfg.betaThre > 0 && !cfg.forgetGate) {
    throw new CtaError('--beta-thre only takes effect with --forget-gate (β is constant otherwise); add --forget-gate or drop it');
  }
  if (cfg.cacheBudgetMb === null && cfg.cacheBudgetMode !== 'greedy') {
    throw new CtaError('--cache-budget-mode only takes effect with --cache-budget-mb; add a budget or drop it');
  }
  if (cfg.gradCheckpointScope !== 'stage' && cfg.gradCheckpointSegments === 1) {
    throw new CtaError('--grad-checkpoint-scope only takes effect with --grad-checkpoint-segments > 1; add segments or drop it');
  }
  if (cfg.gradCheckpointSegments > 1 && cfg.accumBn && cfg.pruneQ > 0) {
    // src/models/grad-checkpoint.ts: the pruned channels are drawn once per forward
    throw new CtaError('--grad-checkpoint-segments > 1 does not combine with MECTA channel pruning (--prune-q > 0): a recomputed segment cannot replay the channels drawn in its first forward; use --prune-q 0 or drop checkpointing');
  }
  if (cfg.cacheBudgetMb !== null && cfg.gradCheckpointSegments > 1) {
    // the budget's estimate (docs/memory.md#cache-budget) does not count the checkpointed segment inputs
    throw new CtaError('--cache-budget-mb does not combine with --grad-checkpoint-segments > 1 (the budget does not count the segment inputs checkpointing keeps); drop one of them');
  }
  if (cfg.cacheBudgetMb !== null && (cfg.pruneQ > 0 || cfg.betaThre > 0)) {
    // docs/memory.md#cache-budget: the budget chooses per layer what the two global knobs fix
    throw new CtaError(`--cache-budget-mb replaces --${cfg.pruneQ > 0 ? 'prune-q' : 'beta-thre'} (it chooses each layer's caching and kept channels itself); drop one of them`);
  }
  if (cfg.pruneQ >= 1) throw new CtaError('--prune-q: expected a number ≥ 0 and < 1 (1 would cache no channel)');
  // torch.optim's constructor checks, and SGD-only options that Adam would silently ignore
  for (const k of ['adamBeta1', 'adamBeta2'] as const) {
    if (cfg[k] >= 1) throw new CtaError(`--${toKebab(k)}: expected a number ≥ 0 and < 1`);
  }
  if (cfg.optimizer !== 'sgd' && (cfg.nesterov || cfg.dampening !== 0)) {
    throw new CtaError(`--${cfg.nesterov ? 'nesterov' : 'dampening'} only takes effect with --optimizer sgd; drop it or use sgd`);
  }
  if (cfg.nesterov && (cfg.momentum === 0 || cfg.dampening !== 0)) {
    throw new CtaError('--nesterov needs --momentum > 0 and --dampening 0 (as torch.optim.SGD)');
  }
  return cfg;
}

/**
 * Merges defaults < YAML (`configPath`: one file, or several merged left to right, a later file's
 * keys replacing an earlier one's; each follows its own `extends:`) < flags. `flags` holds raw
 * values keyed by field key (as parsed by the CLI: strings, booleans or arrays).
 */
export function resolveConfig(configPath: string | readonly string[] | null, flags: Partial<Record<FieldKey, unknown>>): CtaConfig {
  const cfg: Record<string, unknown> = defaultConfig();
  const files = configPath === null ? [] : typeof configPath === 'string' ? [configPath] : configPath;
  const given = new Set<string>();
  for (const file of files) {
    const part = readYamlConfig(file);
    for (const k of Object.keys(part)) given.add(k);
    Object.assign(cfg, part);
  }
  for (const [k, v] of Object.entries(flags)) {
    if (v === undefined) continue;
    cfg[k] = coerce(k as FieldKey, v, { kind: 'flag' });
    given.add(k);
  }
  // A cache budget is a budget for the MECTA layer's cache, guided by its forget gate's β
  // (docs/memory.md#cache-budget): it switches both on unless the config says otherwise.
  if (cfg.cacheBudgetMb !== null) {
    if (!given.has('accumBn')) cfg.accumBn = true;
    if (cfg.accumBn && !given.has('forgetGate')) cfg.forgetGate = true;
  }
  return validateConfig(cfg as CtaConfig);
}

/**
 * The run name of a composed config (`--config a.yaml b.yaml c.yaml`): the files' stems joined by
 * '+' (`a+b+c`), a stem being the file name without its directory and `.yaml` / `.yml`; null for
 * fewer than two files (the run is then named by its method, as before).
 */
export function configsRunName(files: readonly string[]): string | null {
  if (files.length < 2) return null;
  return files.map((f) => basename(f).replace(/\.ya?ml$/i, '').replace(/[^\w.+-]+/g, '_')).join('+');
}
