/**
 * Finds run folders (summary.json) under the given directories and groups them by configuration:
 * runs that differ only in the seed (and in keys that cannot change the numbers: output folder,
 * progress display, backend, WASM threads) form one group, reported as mean ± std over its seeds.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { CtaError } from '../util/errors.js';
import { FIELDS, toKebab } from '../config/schema.js';
import type { DomainResult, Summary } from '../runner/output.js';
import { NOT_HASHED, stableJson } from '../sweep/hash.js';
import { protocolBlock, protocolOfRun } from '../runner/provenance.js';

export interface RunRecord {
  dir: string;
  summary: Summary;
}

export interface Collected {
  runs: RunRecord[];
  incomplete: string[];
  unreadable: string[];
}

const SKIP_DIRS = new Set(['node_modules', '.git']);

/** Folders holding a summary.json, searched recursively (a given folder may itself be a run). */
export function findRunDirs(roots: readonly string[], maxDepth = 8): string[] {
  const found: string[] = [];
  const walk = (dir: string, depth: number) => {
    if (existsSync(join(dir, 'summary.json'))) {
      found.push(dir);
      return; // a run folder holds no further runs
    }
    if (depth >= maxDepth) return;
    let entries: string[];
    try {
      entries = readdirSync(dir);
    } catch {
      return;
    }
    for (const e of entries.sort()) {
      if (SKIP_DIRS.has(e) || e.startsWith('.')) continue;
      const p = join(dir, e);
      try {
        if (statSync(p).isDirectory()) walk(p, depth + 1);
      } catch {
        // vanished or unreadable entries are not runs
      }
    }
  };
  for (const r of roots) {
    const abs = resolve(r);
    if (!existsSync(abs) || !statSync(abs).isDirectory()) throw new CtaError(`${r}: not a folder`);
    walk(abs, 0);
  }
  return [...new Set(found)];
}

export function collectRuns(roots: readonly string[], opts: { includePartial?: boolean } = {}): Collected {
  const out: Collected = { runs: [], incomplete: [], unreadable: [] };
  for (const dir of findRunDirs(roots)) {
    let s: Summary;
    try {
      s = JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')) as Summary;
      if (!s || typeof s.config !== 'object' || !Array.isArray(s.domains)) throw new Error('not a summary');
    } catch {
      out.unreadable.push(dir);
      continue;
    }
    if (s.complete !== true && !opts.includePartial) {
      out.incomplete.push(dir);
      continue;
    }
    out.runs.push({ dir, summary: s });
  }
  return out;
}

/** Keys that never separate groups: the seed (averaged over) and the keys the run hash ignores. */
export const NOT_GROUPED: readonly string[] = ['seed', ...NOT_HASHED];

export interface DomainStat {
  domain: string;
  mean: number;
  std: number | null; // sample std over seeds; null with one seed
  n: number; // seeds with this domain
}

export interface Stat {
  mean: number;
  std: number | null;
  n: number;
}

export interface Group {
  /** Config shared by the group's runs (from the first run, without the NOT_GROUPED keys). */
  config: Record<string, unknown>;
  label: string;
  runs: RunRecord[];
  seeds: number[];
  domains: DomainStat[];
  meanError: Stat | null;
  meanErrorAll: Stat | null;
  maxCacheMb: Stat | null;
  avgCacheMb: Stat | null;
  /** Test images per second of wall time over the whole stream (per run, then over seeds). */
  imgPerS: Stat | null;
  /**
   * Forwards / backwards per test image over the stream (src/runner/pass-count.ts,
   * docs/protocol.md#passes); null for runs written before the counts existed.
   */
  forwardsPerImage: Stat | null;
  backwardsPerImage: Stat | null;
  /** Orders per run (--domain-orders; 1 without): each order is one sample of the ± cells, as a seed is. */
  orders: number;
}

/**
 * A run's samples of a mean: one per order of a --domain-orders run (summary.orders,
 * src/runner/plan.ts), else the run's own value.
 */
export function orderSamples(s: Summary, key: 'mean_error' | 'mean_error_all'): (number | null)[] {
  const orders = (s as unknown as { orders?: { mean_error: number | null; mean_error_all: number | null }[] }).orders;
  return Array.isArray(orders) ? orders.map((o) => o[key]) : [s[key]];
}

/** Σ top / Σ bottom over a run's domains; null when a domain lacks either or the bottom is 0. */
/** Σ top / Σ bottom over a run's domains (img/s: images over seconds); null if a domain lacks either. */
export function perRun(domains: readonly DomainResult[], top: (d: DomainResult) => number | undefined, bottom: (d: DomainResult) => number | undefined): number | null {
  let t = 0;
  let b = 0;
  for (const d of domains) {
    const x = top(d);
    const y = bottom(d);
    if (typeof x !== 'number' || typeof y !== 'number') return null;
    t += x;
    b += y;
  }
  return b > 0 ? t / b : null;
}

export function stat(xs: readonly number[]): Stat | null {
  if (xs.length === 0) return null;
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length === 1) return { mean, std: null, n: 1 };
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
  return { mean, std: Math.sqrt(v), n: xs.length };
}

function groupKey(config: Record<string, unknown>): string {
  const c: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(config)) if (!NOT_GROUPED.includes(k)) c[k] = v;
  return stableJson(c);
}

/** A run's peak cache (max over domains) and batch-weighted mean cache, where recorded. */
/**
 * A per-domain figure over a run: the max of the domains' maxima, and the batch-weighted mean of
 * their means (the cache MB of batches.jsonl, the measured backprop MB); domains without the
 * figure are left out.
 */
export function maxAndMean(
  domains: readonly DomainResult[],
  maxOf: (d: DomainResult) => unknown,
  avgOf: (d: DomainResult) => unknown,
): { max: number | null; avg: number | null } {
  const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
  const maxima = domains.map(maxOf).filter(num);
  const withAvg = domains.filter((d) => num(avgOf(d)));
  const weight = withAvg.reduce((a, d) => a + (d.batches || 1), 0);
  return {
    max: maxima.length ? Math.max(...maxima) : null,
    avg: withAvg.length ? withAvg.reduce((a, d) => a + (avgOf(d) as number) * (d.batches || 1), 0) / weight : null,
  };
}

function runCache(domains: readonly DomainResult[]): { max: number | null; avg: number | null } {
  return maxAndMean(domains, (d) => d.max_cache_mb, (d) => d.avg_cache_mb);
}

/** Config keys whose value differs between groups, in schema order. */
export function variedKeys(configs: readonly Record<string, unknown>[]): string[] {
  const keys = Object.keys(FIELDS).filter((k) => !NOT_GROUPED.includes(k));
  return keys.filter((k) => new Set(configs.map((c) => stableJson(c[k]))).size > 1);
}

function compareValues(a: unknown, b: unknown, key: string): number {
  const f = (FIELDS as Record<string, { type: string; choices?: readonly string[] }>)[key];
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'boolean' && typeof b === 'boolean') return Number(a) - Number(b);
  // a key missing from an older summary (added to the schema since) sorts like null
  if (a == null || b == null) return a == null ? (b == null ? 0 : -1) : 1;
  if (f?.choices && typeof a === 'string' && typeof b === 'string') return f.choices.indexOf(a) - f.choices.indexOf(b);
  return stableJson(a).localeCompare(stableJson(b));
}

/** Sorts configs by the varied keys in schema order (numbers ascending, enums in schema order). */
export function compareConfigs(a: Record<string, unknown>, b: Record<string, unknown>, keys: readonly string[]): number {
  for (const k of keys) {
    const c = compareValues(a[k], b[k], k);
    if (c !== 0) return c;
  }
  return 0;
}

export function formatParam(v: unknown): string {
  // undefined: a summary written before the key existed
  return Array.isArray(v) ? v.join(',') : v === null ? 'none' : v === undefined ? 'unset' : String(v);
}

/** Keys set only by the MECTA norm layer: when `accumBn` varies they are summed up as "+ MECTA". */
const MECTA_KEYS = Object.entries(FIELDS)
  .filter(([k, f]) => f.group === 'mecta' && k !== 'accumBn')
  .map(([k]) => k);

const fieldDefault = (k: string): unknown => (FIELDS as Record<string, { default?: unknown }>)[k]?.default ?? null;

/**
 * Short human labels from the varied keys: `alg` shows its value, accum-bn shows as "+ MECTA" (and
 * MECTA-only keys that do not vary among the MECTA runs are then left out), booleans as the key or
 * no-key, everything else key=value.
 */
export function labelKeys(configs: readonly Record<string, unknown>[], varied: readonly string[]): string[] {
  let keys = [...varied];
  if (keys.includes('alg')) {
    // A sweep over methods, each with its own config (sweep runs:): method options that take one
    // value per method (its lr, optimizer, …) say nothing the method's name does not. Protocol
    // keys (data, model) stay: a setting that differs between methods must be read.
    const method = (c: Record<string, unknown>) => `${String(c.alg)}|${c.accumBn === true}`;
    keys = keys.filter((k) => {
      if (k === 'alg' || k === 'accumBn') return true;
      if ((FIELDS as Record<string, { group?: string }>)[k]?.group !== 'algorithm') return true;
      const seen = new Map<string, string>();
      for (const c of configs) {
        const m = method(c);
        const v = stableJson(c[k]);
        if (seen.has(m) && seen.get(m) !== v) return true;
        seen.set(m, v);
      }
      return false;
    });
  }
  if (!keys.includes('accumBn')) return keys;
  // a memory knob stays when it varies within either side (MECTA runs, or plain ones such as
  // gradient checkpointing's --grad-checkpoint-segments)
  const varies = (side: readonly Record<string, unknown>[], k: string) => new Set(side.map((c) => stableJson(c[k]))).size > 1;
  const mecta = configs.filter((c) => c.accumBn === true);
  const plain = configs.filter((c) => c.accumBn !== true);
  return keys.filter((k) => !MECTA_KEYS.includes(k) || varies(mecta, k) || varies(plain, k));
}

export function labelFor(config: Record<string, unknown>, keys: readonly string[]): string {
  const parts: string[] = [];
  const hasAlg = config.alg !== undefined; // absent when a --by alg pivot took it out
  // "+ MECTA" reads as a modifier of the method, so the method is named even when it is shared.
  if (hasAlg && (keys.length === 0 || (keys.includes('accumBn') && !keys.includes('alg')))) parts.push(String(config.alg));
  if (keys.length === 0 && config.accumBn === true) parts.push('+ MECTA');
  for (const k of keys) {
    const v = config[k];
    // A numeric memory knob at its default says nothing ("tent beta-thre=0 prune-q=0" is plain tent);
    // groupRuns falls back to every varied key if the labels then collide.
    if (typeof v !== 'boolean' && MECTA_KEYS.includes(k) && stableJson(v) === stableJson(fieldDefault(k))) continue;
    if (k === 'alg') parts.push(String(v));
    else if (k === 'accumBn') parts.push(v === true ? (parts.length ? '+ MECTA' : 'MECTA') : parts.length ? '' : 'no MECTA');
    else if (typeof v === 'boolean') parts.push(v ? toKebab(k) : `no-${toKebab(k)}`);
    else parts.push(`${toKebab(k)}=${formatParam(v)}`);
  }
  return parts.filter(Boolean).join(' ') || 'all runs';
}

export interface Grouped {
  groups: Group[];
  /** Keys that differ between groups (schema order). */
  varied: string[];
  /** Domains in stream order (union over runs). */
  domains: string[];
}

export function groupRuns(runs: readonly RunRecord[]): Grouped {
  const byKey = new Map<string, RunRecord[]>();
  for (const r of runs) {
    const k = groupKey(r.summary.config);
    const list = byKey.get(k) ?? [];
    list.push(r);
    byKey.set(k, list);
  }
  const domains: string[] = [];
  for (const r of runs) for (const d of r.summary.domains) if (!domains.includes(d.domain)) domains.push(d.domain);

  const configs = [...byKey.values()].map((rs) => {
    const c = { ...rs[0].summary.config };
    for (const k of NOT_GROUPED) delete c[k];
    return c;
  });
  const varied = variedKeys(configs);
  // Shortened labels must still tell the groups apart; otherwise spell out every varied key.
  let labelled = labelKeys(configs, varied);
  if (new Set(configs.map((c) => labelFor(c, labelled))).size < configs.length) labelled = varied;
  const groups: Group[] = [...byKey.values()].map((rs, i) => {
    rs.sort((a, b) => Number(a.summary.config.seed ?? 0) - Number(b.summary.config.seed ?? 0) || a.dir.localeCompare(b.dir));
    const domainStats: DomainStat[] = [];
    for (const name of domains) {
      const xs = rs.flatMap((r) => r.summary.domains.filter((d) => d.domain === name).map((d) => d.error));
      const s = stat(xs);
      if (s) domainStats.push({ domain: name, ...s });
    }
    const num = (xs: (number | null | undefined)[]) => stat(xs.filter((x): x is number => typeof x === 'number'));
    const caches = rs.map((r) => runCache(r.summary.domains));
    return {
      config: configs[i],
      label: labelFor(configs[i], labelled),
      runs: rs,
      seeds: rs.map((r) => Number(r.summary.config.seed)),
      domains: domainStats,
      meanError: num(rs.flatMap((r) => orderSamples(r.summary, 'mean_error'))),
      meanErrorAll: num(rs.flatMap((r) => orderSamples(r.summary, 'mean_error_all'))),
      orders: Math.max(...rs.map((r) => orderSamples(r.summary, 'mean_error').length)),
      maxCacheMb: num(caches.map((c) => c.max)),
      avgCacheMb: num(caches.map((c) => c.avg)),
      imgPerS: num(rs.map((r) => perRun(r.summary.domains, (d) => d.n, (d) => d.seconds))),
      forwardsPerImage: num(rs.map((r) => perRun(r.summary.domains, (d) => d.forwards, (d) => d.n))),
      backwardsPerImage: num(rs.map((r) => perRun(r.summary.domains, (d) => d.backwards, (d) => d.n))),
    };
  });
  groups.sort((a, b) => compareConfigs(a.config, b.config, varied));
  return { groups, varied, domains };
}

/** The protocol lines of a report (src/runner/provenance.ts): one when all groups share it, else one per distinct protocol. */
export function groupProtocolBlock(g: Grouped): string[] {
  return protocolBlock(
    g.groups.map((grp) => {
      const r = grp.runs[0];
      let manifest: Record<string, unknown> | null = null;
      try {
        manifest = JSON.parse(readFileSync(join(r.dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
      } catch {
        manifest = null;
      }
      return { label: grp.label, protocol: protocolOfRun(r.summary, manifest) };
    }),
  );
}
