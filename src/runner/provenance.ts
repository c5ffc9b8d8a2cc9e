/**
 * The protocol facts every result carries (docs/protocol.md#provenance): stream setting, images per
 * domain, severity, reset policy, batch size, metric, model (weights sha256, input normalisation,
 * checkpoint variant) and where the corrupted images came from. Built once when a run starts
 * (src/runner/prepare.ts), stored in manifest.json and summary.json as `protocol`, and printed by
 * the one formatter here under every table: cta-eval's end table, cta-report's tables, report.md
 * and report.csv's header, so a number is never shown without the protocol that produced it.
 */
import { ALGORITHMS } from '../algorithms/registry.js';
import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { CtaConfig } from '../config/schema.js';
import { SETTINGS, DEFAULT_ROUNDS, type SettingName } from '../data/settings.js';
import { CORRUPTION_SETS } from '../data/eval-modes.js';
import { resolveCifarCDir } from '../data/cifar-c.js';
import type { DomainResult } from './output.js';

export interface Protocol {
  setting: string;
  /** Images per domain: a count, a range 'a–b', or 'all'. */
  images_per_domain: string;
  severity: string;
  reset: string;
  batch_size: number;
  metric: string;
  model: string;
  /** The first 12 hex digits of the weights file's sha256 (full value in manifest.json). */
  weights_sha256: string | null;
  normalisation: string;
  /** What the weights are, as inferred from their keys and shapes (src/models/registry.ts describe). */
  checkpoint: string;
  corruption_source: string;
  /** Frost's texture: the photographs or the procedural stand-in; null without frost. */
  frost: string | null;
  /** --interleave-clean / --interleave-seen: what was evaluated between the steps. */
  forgetting_eval: string | null;
}

export const METRIC = 'top-1 error (%) of the prediction made before each batch’s update';
export const METRIC_AFTER = 'top-1 error (%) of the prediction made after each sample’s update (the method predicts after adapting)';

const fmtVec = (v: readonly number[]) => `(${v.map((x) => Number(x.toPrecision(4))).join(', ')})`;

/** The normalisation sentence of a model's `inputNormalisation`. */
export function normalisationText(norm: { mean: number[]; std: number[] } | null | undefined): string {
  if (norm === undefined) return 'unknown';
  if (norm === null) return 'none ([0, 1] input)';
  return `(x − ${fmtVec(norm.mean)}) / ${fmtVec(norm.std)} inside the model`;
}

function settingText(cfg: Pick<CtaConfig, 'setting' | 'rounds' | 'dirichletDelta'>): string {
  const spec = SETTINGS[cfg.setting as SettingName];
  if (!spec) return String(cfg.setting);
  const extra: string[] = [];
  if (spec.recurring) extra.push(`${cfg.rounds ?? DEFAULT_ROUNDS} rounds`);
  if (spec.correlated) extra.push(`Dirichlet δ ${cfg.dirichletDelta ?? 0}`);
  // --domain-orders, --eval-mode, --iters (docs/protocol.md#domain-orders, #eval-modes); absent in older runs.
  const o = cfg as Partial<Pick<CtaConfig, 'domainOrders' | 'evalMode' | 'supportBatch' | 'curBatch' | 'mergeBatches' | 'iters'>>;
  if (o.domainOrders != null) extra.push(/^\d+$/.test(o.domainOrders) ? `${o.domainOrders} seeded domain orders` : `domain orders from ${basename(o.domainOrders)}`);
  if (o.evalMode === 'group' || o.evalMode === 'pair') {
    extra.push(`MECTA ${o.evalMode} eval, support ${o.supportBatch}${o.evalMode === 'pair' ? `, cur ${o.curBatch ?? 1}` : ''}${o.mergeBatches ? ', merged' : ''}`);
  }
  if (o.iters != null) extra.push(`first ${o.iters + 1} batches per domain (--iters)`);
  return `${cfg.setting}${extra.length ? ` (${extra.join(', ')})` : ''}`;
}

function resetText(cfg: Pick<CtaConfig, 'setting'> & { episodic?: boolean; evalMode?: string; domainOrders?: string | null }): string {
  if (cfg.episodic) return 'every batch (episodic)';
  if (cfg.evalMode === 'group' || cfg.evalMode === 'pair') return `after every test batch (${cfg.evalMode})`;
  if (cfg.domainOrders != null) return SETTINGS[cfg.setting as SettingName]?.resetEachShift ? 'at every domain change and order' : 'at the start of every domain order';
  return SETTINGS[cfg.setting as SettingName]?.resetEachShift ? 'at every domain change' : 'never';
}

/** Where the corrupted images come from, and frost's texture. */
export function corruptionSource(cfg: Pick<CtaConfig, 'data' | 'dataDir' | 'source' | 'frostDir' | 'corruptions'>): { text: string; frost: string | null } {
  // --corruption-set, when given, decides the corruptions (src/data/eval-modes.ts)
  const set = (cfg as { corruptionSet?: string }).corruptionSet;
  const corruptions: readonly string[] = set && set !== 'custom' ? (CORRUPTION_SETS[set as keyof typeof CORRUPTION_SETS]?.corruptions ?? cfg.corruptions) : cfg.corruptions;
  const hasFrost = corruptions.includes('frost');
  if (cfg.data === 'synthetic-c') {
    return {
      text: `generated on the fly by cta-eval's corruption code (as cta-corrupt; noise seeded by --seed) from ${cfg.source ? basename(cfg.source) : '?'}`,
      frost: hasFrost ? (cfg.frostDir ? 'photographs from --frost-dir' : 'procedural (non-standard)') : null,
    };
  }
  if (cfg.data === 'imagenetc') return { text: 'ImageNet-C JPEG folders (published layout)', frost: hasFrost ? 'as in the files' : null };
  // A cta-corrupt folder says so in its severities.json; the published CIFAR-C has none.
  const meta = corruptMeta(cfg);
  if (meta && String(meta.tool ?? '').includes('cta-corrupt')) {
    return {
      text: `generated by cta-corrupt (seed ${meta.seed ?? '?'}, from ${meta.source ? basename(meta.source) : '?'})`,
      frost: hasFrost ? (meta.frost ?? 'unknown') : null,
    };
  }
  return { text: `${cfg.data === 'cifar100c' ? 'CIFAR-100-C' : 'CIFAR-10-C'} .npy files (no cta-corrupt severities.json: the published set)`, frost: hasFrost ? 'as in the files' : null };
}

/** The severities.json cta-corrupt writes beside its .npy files, or null. */
function corruptMeta(cfg: Pick<CtaConfig, 'data' | 'dataDir'>): { tool?: string; seed?: number; source?: string; frost?: string | null } | null {
  try {
    const dir = cfg.dataDir ? resolveCifarCDir(cfg.dataDir, { numClasses: cfg.data === 'cifar100c' ? 100 : 10 }) : null;
    const p = dir ? join(dir, 'severities.json') : null;
    return p && existsSync(p) ? (JSON.parse(readFileSync(p, 'utf8')) as { tool?: string }) : null;
  } catch {
    return null;
  }
}

export interface ProtocolInputs {
  weightsSha256: string | null;
  normalisation: string;
  checkpoint: string;
  /** Images per domain as opened; null when unknown. */
  imagesPerDomain: number | null;
}

export function buildProtocol(cfg: CtaConfig, x: ProtocolInputs): Protocol {
  const c = cfg as CtaConfig & { episodic?: boolean };
  const src = corruptionSource(cfg);
  const spec = SETTINGS[cfg.setting as SettingName];
  const k = cfg.cleanEvalN;
  const evalSets = [cfg.interleaveClean ? 'the clean set' : '', cfg.interleaveSeen ? 'every domain visited so far' : ''].filter(Boolean).join(' and ');
  return {
    setting: settingText(cfg),
    images_per_domain: x.imagesPerDomain !== null ? String(x.imagesPerDomain) : cfg.nExamples !== null ? `≤ ${cfg.nExamples}` : 'all',
    severity: spec?.gradual ? '1, 2, 3, 4, 5, 4, 3, 2, 1 per corruption (gradual)' : String(cfg.severity),
    reset: resetText(c),
    batch_size: cfg.batchSize,
    metric: (ALGORITHMS as Record<string, { predicts?: string }>)[cfg.alg]?.predicts === 'after-update' ? METRIC_AFTER : METRIC,
    model: cfg.model,
    weights_sha256: x.weightsSha256 ? x.weightsSha256.slice(0, 12) : null,
    normalisation: x.normalisation,
    checkpoint: x.checkpoint,
    corruption_source: src.text,
    frost: src.frost,
    forgetting_eval: evalSets ? `${evalSets}, ${k === null ? 'all images' : `${k} images each (seeded)`}, before the first step and after every step, without adapting` : null,
  };
}

/**
 * The protocol of a finished run folder: its summary's `protocol`, or for a run written before
 * that existed the part its config and manifest still tell.
 */
export function protocolOfRun(summary: { config: Record<string, unknown>; domains?: readonly DomainResult[]; protocol?: Protocol }, manifest?: Record<string, unknown> | null): Protocol {
  if (summary.protocol) return summary.protocol;
  const cfg = summary.config as unknown as CtaConfig & { episodic?: boolean };
  const ns = [...new Set((summary.domains ?? []).flatMap((d) => (d.per_domain ? d.per_domain.map((p) => p.n) : [d.n])))].sort((a, b) => a - b);
  const sha = typeof manifest?.weights_sha256 === 'string' ? manifest.weights_sha256 : null;
  const p = buildProtocol(
    { ...cfg, corruptions: cfg.corruptions ?? [], interleaveClean: cfg.interleaveClean ?? false, interleaveSeen: cfg.interleaveSeen ?? false, cleanEvalN: cfg.cleanEvalN ?? null, nExamples: cfg.nExamples ?? null, rounds: cfg.rounds ?? null, dirichletDelta: cfg.dirichletDelta ?? null, setting: cfg.setting ?? 'continual' },
    { weightsSha256: sha, normalisation: 'unknown (run written before the protocol record)', checkpoint: 'unknown (run written before the protocol record)', imagesPerDomain: null },
  );
  if (ns.length) p.images_per_domain = ns.length === 1 ? String(ns[0]) : `${ns[0]}–${ns[ns.length - 1]}`;
  return p;
}

/** The facts as label/value pairs, in the order they are printed. */
export function protocolEntries(p: Protocol): [string, string][] {
  const out: [string, string][] = [
    ['setting', p.setting],
    ['images per domain', p.images_per_domain],
    ['severity', p.severity],
    ['reset', p.reset],
    ['batch size', String(p.batch_size)],
    ['metric', p.metric],
    ['model', `${p.model}, weights sha256 ${p.weights_sha256 ?? 'unknown'}…, ${p.checkpoint}; normalisation ${p.normalisation}`],
    ['corruptions', `${p.corruption_source}${p.frost ? `; frost ${p.frost}` : ''}`],
  ];
  if (p.forgetting_eval) out.push(['forgetting', p.forgetting_eval]);
  return out;
}

/** One line: `protocol: setting …; images per domain …; …`. */
export function protocolLine(p: Protocol): string {
  return `protocol: ${protocolEntries(p).map(([k, v]) => `${k} ${v}`).join('; ')}`;
}

/**
 * The block printed under a table: one line when every column shares the protocol; otherwise a
 * line of the facts all share, then per distinct protocol the facts that differ and the columns
 * (labels) it applies to.
 */
export function protocolBlock(items: readonly { label: string; protocol: Protocol }[], prefix = ''): string[] {
  const distinct: { entries: [string, string][]; labels: string[]; key: string }[] = [];
  for (const it of items) {
    const entries = protocolEntries(it.protocol);
    const key = JSON.stringify(entries);
    const found = distinct.find((d) => d.key === key);
    if (found) found.labels.push(it.label);
    else distinct.push({ entries, labels: [it.label], key });
  }
  if (distinct.length <= 1) return distinct.map((d) => prefix + protocolLine(items[0].protocol));
  const names = [...new Set(distinct.flatMap((d) => d.entries.map(([k]) => k)))];
  const value = (d: (typeof distinct)[number], k: string) => d.entries.find(([n]) => n === k)?.[1] ?? 'none';
  const shared = names.filter((k) => distinct.every((d) => value(d, k) === value(distinct[0], k)));
  const differ = names.filter((k) => !shared.includes(k));
  const out = [`${prefix}protocol (all rows): ${shared.map((k) => `${k} ${value(distinct[0], k)}`).join('; ')}`];
  for (const d of distinct) out.push(`${prefix}protocol (${d.labels.join(', ')}): ${differ.map((k) => `${k} ${value(d, k)}`).join('; ')}`);
  return out;
}
