/**
 * Sweep files: a base run config plus the values to vary.
 *
 *   extends: ../configs/cifar10/eata.yaml   # optional, relative to the sweep file (like --config)
 *   accum-bn: true                          # base keys: any config key, same meaning as in a config
 *   grid:                                   # cartesian product, first key varies slowest
 *     beta-thre: [0.0001, 0.00125, 0.04]
 *     seed: [2020, 2021]
 *   zip:                                    # groups whose lists advance together (one axis each)
 *     - { accum-bn: [false, true], prune-q: [0, 0.7] }
 *   runs:                                   # whole run configs (e.g. one per method), varies slowest
 *     - extends: ../configs/cifar10/tent.yaml   # the method's config, below the base keys above
 *     - { extends: ../configs/cifar10/eata.yaml, accum-bn: true }
 *   runs-dir: runs/beta-thre                # where run folders go (default runs/sweeps/<name>)
 *   name: beta-thre                         # default: the file name without .yaml
 *
 * Every value goes through the same `coerce` as config files and flags, so a bad value is reported
 * as `<sweep file>: <section>: <key>: expected …`, and every expanded run is checked with
 * `validateConfig` before anything is written or started.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, extname, isAbsolute, resolve } from 'node:path';
import yaml from 'js-yaml';
import { CtaError } from '../util/errors.js';
import { FIELDS, defaultConfig, toKebab, type CtaConfig, type FieldKey } from '../config/schema.js';
import { coerce, configKey, readYamlConfig, validateConfig } from '../config/load.js';
import { runId } from './hash.js';

/** One axis of the product: a single grid key, a zip group (several keys, same length) or runs:. */
export interface Axis {
  keys: FieldKey[];
  /** rows[i][j] = value of keys[j] at position i; UNSET where a runs: entry does not set the key. */
  rows: unknown[][];
  kind: 'grid' | 'zip' | 'runs';
  /**
   * runs: only — per row, the values of the entry's `extends:` config. They sit below the sweep
   * file's own base keys (the protocol: data, weights, batch size), which sit below the entry's
   * own keys, so one sweep can run every method with its published hyper-parameters under one
   * protocol.
   */
  layers?: Partial<CtaConfig>[];
}

/** Marks a key a runs: entry leaves unset. */
export const UNSET: unique symbol = Symbol('unset');

export interface SweepSpec {
  file: string;
  name: string;
  runsDir: string | null;
  /** extends chain + the sweep file's own base keys (validated values). */
  base: Partial<CtaConfig>;
  /** Keys set in the sweep file itself (not inherited); a grid may not also set them. */
  ownBase: FieldKey[];
  axes: Axis[];
}

export interface PlannedRun {
  index: number;
  /** Folder name: `<alg>[-mecta]-<hash of the resolved config>`. */
  id: string;
  dir: string;
  /** The values this run takes on the swept keys, in axis order. */
  params: [FieldKey, unknown][];
  config: CtaConfig;
}

export interface SweepPlan {
  file: string;
  name: string;
  runsDir: string;
  runs: PlannedRun[];
  /** Swept keys in axis order (the columns of --list). */
  sweptKeys: FieldKey[];
  /** Grid points that resolved to a run already in the plan (listed, never run twice). */
  duplicates: { index: number; of: string }[];
}

const RESERVED = new Set(['extends', 'grid', 'zip', 'runs', 'name', 'runs-dir', 'runs_dir', 'runsDir']);
/**
 * Config keys holding file or folder paths (every string-typed field is one, as the README flag
 * table also assumes): made absolute so commands work from any directory.
 */
export const PATH_KEYS = (Object.keys(FIELDS) as FieldKey[]).filter((k) => FIELDS[k].type === 'string' && k !== 'out');

function isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function keyOf(file: string, section: string, raw: string): FieldKey {
  const key = configKey(raw, `${file}${section ? `: ${section.replace(/: $/, '')}` : ''}`);
  if (!key) {
    throw new CtaError(`${file}: ${section}${raw}: unknown key (known keys: ${Object.keys(FIELDS).map(toKebab).join(', ')})`);
  }
  if (key === 'out') {
    throw new CtaError(`${file}: ${section}out: each run's folder is chosen by cta-sweep (<runs-dir>/<run id>); set runs-dir instead`);
  }
  return key;
}

function valuesList(file: string, section: string, raw: string, v: unknown): unknown[] {
  if (!Array.isArray(v) || v.length === 0) {
    throw new CtaError(`${file}: ${section}${raw}: expected a non-empty list of values, e.g. [a, b]`);
  }
  return v;
}

/** Parses and validates a sweep file (no expansion yet). */
export function readSweep(file: string): SweepSpec {
  const abs = resolve(file);
  if (!existsSync(abs)) throw new CtaError(`${file}: sweep file not found`);
  let doc: unknown;
  try {
    doc = yaml.load(readFileSync(abs, 'utf8'));
  } catch (e) {
    const msg = e instanceof Error ? e.message.split('\n')[0] : String(e);
    throw new CtaError(`${file}: not valid YAML (${msg})`);
  }
  if (!isMapping(doc)) throw new CtaError(`${file}: expected a mapping (base config keys, grid:, zip:)`);

  let base: Record<string, unknown> = {};
  if (doc.extends !== undefined) {
    if (typeof doc.extends !== 'string') throw new CtaError(`${file}: extends: expected a path to a config file`);
    const target = resolve(dirname(abs), doc.extends);
    if (!existsSync(target)) throw new CtaError(`${file}: extends: ${doc.extends} not found (paths are relative to the sweep file)`);
    base = { ...readYamlConfig(target) };
  }
  const origin = { kind: 'file' as const, path: file };
  const ownBase: FieldKey[] = [];
  for (const [raw, v] of Object.entries(doc)) {
    if (RESERVED.has(raw)) continue;
    const key = keyOf(file, '', raw);
    base[key] = coerce(key, v, origin);
    ownBase.push(key);
  }

  const axes: Axis[] = [];
  const seen = new Map<FieldKey, string>();
  const claim = (key: FieldKey, where: string) => {
    if (ownBase.includes(key)) throw new CtaError(`${file}: ${where}${toKebab(key)}: also set as a base key; keep one`);
    const prev = seen.get(key);
    if (prev) throw new CtaError(`${file}: ${where}${toKebab(key)}: already varied in ${prev}`);
    seen.set(key, where.replace(/: $/, ''));
  };

  if (doc.grid !== undefined) {
    if (!isMapping(doc.grid)) throw new CtaError(`${file}: grid: expected a mapping of key: [values]`);
    for (const [raw, v] of Object.entries(doc.grid)) {
      const key = keyOf(file, 'grid: ', raw);
      claim(key, 'grid: ');
      const values = valuesList(file, 'grid: ', raw, v).map((x) => coerce(key, x, { kind: 'file', path: `${file}: grid` }));
      axes.push({ keys: [key], rows: values.map((x) => [x]), kind: 'grid' });
    }
  }

  if (doc.zip !== undefined) {
    const groups = Array.isArray(doc.zip) ? doc.zip : [doc.zip];
    groups.forEach((g, gi) => {
      const where = `zip[${gi}]: `;
      if (!isMapping(g) || Object.keys(g).length === 0) throw new CtaError(`${file}: ${where.slice(0, -2)}: expected a mapping of key: [values]`);
      const keys: FieldKey[] = [];
      const cols: unknown[][] = [];
      for (const [raw, v] of Object.entries(g)) {
        const key = keyOf(file, where, raw);
        claim(key, where);
        keys.push(key);
        cols.push(valuesList(file, where, raw, v).map((x) => coerce(key, x, { kind: 'file', path: `${file}: ${where.slice(0, -2)}` })));
      }
      const n = cols[0].length;
      const bad = cols.findIndex((c) => c.length !== n);
      if (bad >= 0) {
        throw new CtaError(
          `${file}: ${where}values advance together, so every list needs the same length: ${keys.map((k, i) => `${toKebab(k)} has ${cols[i].length}`).join(', ')}`,
        );
      }
      axes.push({ keys, rows: Array.from({ length: n }, (_, i) => cols.map((c) => c[i])), kind: 'zip' });
    });
  }

  if (doc.runs !== undefined) {
    if (!Array.isArray(doc.runs) || doc.runs.length === 0) throw new CtaError(`${file}: runs: expected a non-empty list of mappings (extends: <config>, key: value, …)`);
    const entries = doc.runs.map((entry, ri) => {
      const where = `runs[${ri}]: `;
      if (!isMapping(entry)) throw new CtaError(`${file}: ${where.slice(0, -2)}: expected a mapping (extends: <config>, key: value, …)`);
      let layer: Partial<CtaConfig> = {};
      if (entry.extends !== undefined) {
        if (typeof entry.extends !== 'string') throw new CtaError(`${file}: ${where}extends: expected a path to a config file`);
        const target = resolve(dirname(abs), entry.extends);
        if (!existsSync(target)) throw new CtaError(`${file}: ${where}extends: ${entry.extends} not found (paths are relative to the sweep file)`);
        layer = readYamlConfig(target);
      }
      const own = new Map<FieldKey, unknown>();
      for (const [raw, v] of Object.entries(entry)) {
        if (raw === 'extends') continue;
        const key = keyOf(file, where, raw);
        if (ownBase.includes(key)) throw new CtaError(`${file}: ${where}${toKebab(key)}: also set as a base key; keep one`);
        own.set(key, coerce(key, v, { kind: 'file', path: `${file}: ${where.slice(0, -2)}` }));
      }
      // The method is what a runs: entry is about: list it even when only its config names it.
      if (!own.has('alg') && layer.alg !== undefined) own.set('alg', layer.alg);
      return { layer, own };
    });
    const keys = [...new Set(entries.flatMap((e) => [...e.own.keys()]))];
    for (const k of keys) claim(k, 'runs: ');
    // The outermost loop: a sweep over methods lists each method's runs together.
    axes.unshift({
      keys,
      rows: entries.map((e) => keys.map((k) => (e.own.has(k) ? e.own.get(k) : UNSET))),
      kind: 'runs',
      layers: entries.map((e) => e.layer),
    });
  }

  const rawName = doc.name;
  if (rawName !== undefined && (typeof rawName !== 'string' || !/^[A-Za-z0-9._-]+$/.test(rawName))) {
    throw new CtaError(`${file}: name: expected letters, digits, '.', '_' or '-'`);
  }
  const name = typeof rawName === 'string' ? rawName : basename(file, extname(file));
  const rd = doc['runs-dir'] ?? doc.runs_dir ?? doc.runsDir;
  if (rd !== undefined && (typeof rd !== 'string' || rd === '')) throw new CtaError(`${file}: runs-dir: expected a folder path`);
  return { file, name, runsDir: (rd as string | undefined) ?? null, base: base as Partial<CtaConfig>, ownBase, axes };
}

interface Point {
  params: [FieldKey, unknown][];
  /** runs: entries' extends: configs met on the way (below the sweep's own base keys). */
  layers: Partial<CtaConfig>[];
}

function expandPoints(axes: readonly Axis[]): Point[] {
  let points: Point[] = [{ params: [], layers: [] }];
  for (const axis of axes) {
    const next: Point[] = [];
    for (const p of points) {
      axis.rows.forEach((row, i) => {
        const set = axis.keys.map((k, j) => [k, row[j]] as [FieldKey, unknown]).filter(([, v]) => v !== UNSET);
        next.push({ params: [...p.params, ...set], layers: axis.layers ? [...p.layers, axis.layers[i]] : p.layers });
      });
    }
    points = next;
  }
  return points;
}

/** Cartesian product of the axes; the first axis varies slowest (nested loops in file order). */
export function expandAxes(axes: readonly Axis[]): [FieldKey, unknown][][] {
  return expandPoints(axes).map((p) => p.params);
}

export function describeParams(params: readonly [FieldKey, unknown][]): string {
  return params.map(([k, v]) => `${toKebab(k)}=${formatValue(v)}`).join(', ');
}

export function formatValue(v: unknown): string {
  return Array.isArray(v) ? v.join(',') : String(v);
}

export interface PlanOptions {
  /** Values from cta-sweep's own config flags (already coerced, keyed by field): apply to every run. */
  overrides?: Partial<Record<FieldKey, unknown>>;
  /** --runs-dir; beats the sweep file's runs-dir. */
  runsDir?: string | null;
  /** Base for relative paths (default process.cwd()). */
  cwd?: string;
}

/**
 * Expands a sweep into runs: defaults < extends < runs: entries' extends < base keys < grid / zip /
 * runs: values < cta-sweep flags.
 * Paths become absolute (relative to the current directory, as in config files) so the hash and the
 * emitted commands do not depend on where they are run from.
 */
export function planSweep(spec: SweepSpec, opts: PlanOptions = {}): SweepPlan {
  const cwd = opts.cwd ?? process.cwd();
  const overrides = opts.overrides ?? {};
  const sweptKeys = spec.axes.flatMap((a) => a.keys);
  for (const k of Object.keys(overrides) as FieldKey[]) {
    if (k === 'out') throw new CtaError(`--out: each run's folder is chosen by cta-sweep; use --runs-dir`);
    if (sweptKeys.includes(k)) throw new CtaError(`--${toKebab(k)}: ${spec.file} varies this key; remove the flag or the sweep entry`);
  }
  const runsDir = resolve(cwd, opts.runsDir ?? spec.runsDir ?? `runs/sweeps/${spec.name}`);
  const runs: PlannedRun[] = [];
  const duplicates: { index: number; of: string }[] = [];
  const byId = new Map<string, PlannedRun>();
  const own = Object.fromEntries(spec.ownBase.map((k) => [k, spec.base[k]]));
  expandPoints(spec.axes).forEach(({ params, layers }, index) => {
    const cfg = { ...defaultConfig(), ...spec.base, ...Object.assign({}, ...layers), ...own } as Record<string, unknown>;
    for (const [k, v] of params) cfg[k] = v;
    Object.assign(cfg, overrides);
    for (const k of PATH_KEYS) {
      const v = cfg[k];
      if (typeof v === 'string' && !isAbsolute(v)) cfg[k] = resolve(cwd, v);
    }
    cfg.out = null;
    try {
      validateConfig(cfg as CtaConfig);
    } catch (e) {
      if (!(e instanceof CtaError)) throw e;
      throw new CtaError(`${spec.file}: run ${index}${params.length ? ` (${describeParams(params)})` : ''}: ${e.message}`);
    }
    const id = runId(cfg as CtaConfig);
    const prev = byId.get(id);
    if (prev) {
      duplicates.push({ index, of: prev.id });
      return;
    }
    const run: PlannedRun = { index: runs.length, id, dir: resolve(runsDir, id), params, config: cfg as CtaConfig };
    byId.set(id, run);
    runs.push(run);
  });
  return { file: spec.file, name: spec.name, runsDir, runs, sweptKeys, duplicates };
}

/**
 * Inputs a run cannot start without. Checked before emitting or running, so a sweep fails once with
 * a hint instead of N times inside cta-eval.
 */
export function missingInputs(cfg: CtaConfig): string[] {
  const out: string[] = [];
  if (!cfg.weights) out.push('--weights FILE (.safetensors or PyTorch .pt state_dict)');
  if (cfg.data === 'synthetic-c') {
    if (!cfg.source) out.push('--source FILE (clean images for --data synthetic-c)');
  } else if (!cfg.dataDir) {
    out.push(`--data-dir DIR (the data folder for --data ${cfg.data}, see cta-eval --help)`);
  }
  return out;
}
