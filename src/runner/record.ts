/**
 * What a run writes (src/runner/output.ts): one batches.jsonl line per batch, one summary.json
 * entry per domain, the domain-boundary checkpoint, and the final summary and manifest. A
 * method's own counters (AlgorithmSpec.metrics) go into the lines as it returns them and are
 * summed per domain under their summary keys.
 */
import { CLEAN_DOMAIN, streamFingerprint } from '../data/stream.js';
import { meanBy } from '../data/settings.js';
import type { NormRecord } from '../models/types.js';
import { STATE_BYTES_KINDS, type Algorithm, type StepResult } from '../algorithms/types.js';
import type { MeasuredBatchFields, MeasuredDomain } from '../memory/probe.js';
import { accountCache, MB, weightRecords } from './accounting.js';
import { saveCheckpoint } from './checkpoint.js';
import { meanErrors, type DomainResult } from './output.js';
import { checkpointWritten } from './events.js';
import type { PreparedRun } from './prepare.js';
import { planSummary } from './plan.js';
import type { PassCounts } from './pass-count.js';

/** One domain's running totals, filled batch by batch. */
export class DomainTally {
  correct = 0;
  seen = 0;
  updates = 0;
  batches = 0;
  /** Images through forwards / differentiated forwards (src/runner/pass-count.ts). */
  forwards = 0;
  backwards = 0;
  /** Per metric name: its sum over the domain's batches. */
  readonly metrics: Record<string, number> = {};
  readonly caches: number[] = [];
  readonly betas: number[] = [];
  readonly started = performance.now();
  /** Fields the stream setting adds to every batch line (gradual: severity; recurring: round). */
  extra: Record<string, unknown> = {};
  /** mixed: the running counts per pooled domain. */
  parts: { domain: string; severity: number | null; n: number; correct: number }[] | null = null;
  /** --eval-mode group / pair: the support batches adapted on (src/runner/group-eval.ts). */
  support: { batches: number; n: number; correct: number } | null = null;

  constructor(
    readonly name: string,
    readonly severity: number | null,
    readonly measured: MeasuredDomain,
    metricNames: readonly string[],
  ) {
    for (const m of metricNames) this.metrics[m] = 0;
  }
}

/**
 * Adds one batch to the tally and appends its batches.jsonl line. `correct`: its correct
 * predictions; `mem`: the measured fields of its step; `ms`: its wall time.
 */
export function recordBatch(
  run: PreparedRun,
  tally: DomainTally,
  n: number,
  correct: number,
  res: StepResult,
  mem: MeasuredBatchFields,
  started: number,
  passes?: PassCounts,
): void {
  tally.correct += correct;
  if (passes) {
    tally.forwards += passes.forwards;
    tally.backwards += passes.backwards;
  }
  tally.seen += n;
  tally.batches++;
  if (res.updated) tally.updates++;
  for (const [k, v] of Object.entries(res.metrics ?? {})) tally.metrics[k] = (tally.metrics[k] ?? 0) + v;
  const records: (NormRecord | null)[] = run.model.normLayers.map((l) => l.last);
  const layerBetas = records.map((r) => r?.beta ?? null);
  const acc = run.trackCache ? accountCache(records, weightRecords(run.model)) : null;
  if (acc) tally.caches.push(acc.cacheMb);
  const finite = layerBetas.filter((v): v is number => v !== null);
  if (finite.length) tally.betas.push(finite.reduce((a, v) => a + v, 0) / finite.length);
  const ms = performance.now() - started;
  run.writer.appendBatch({
    batch: run.batchIndex++,
    domain: tally.name,
    ...tally.extra,
    domain_batch: tally.batches - 1,
    n,
    correct,
    error: (100 * (n - correct)) / n,
    updated: res.updated,
    ...(passes ? { forwards: passes.forwards, backwards: passes.backwards } : {}),
    ...(res.metrics ?? {}),
    ...(acc
      ? {
          cache_mb: acc.cacheMb,
          max_forward_mb: acc.maxForwardBytes / MB,
          total_backward_mb: acc.totalBackwardBytes / MB,
        }
      : {}),
    ...mem,
    ...stateBytesFields(run.alg),
    ...(run.cfg.accumBn ? { beta: layerBetas, cached: records.map((r) => r?.cached ?? false) } : {}),
    // docs/memory.md#cache-budget: the kept-channel fraction per layer (0 = not caching)
    ...(run.cfg.cacheBudgetMb !== null ? { kept_ratio: records.map((r) => r?.keptRatio ?? 1) } : {}),
    ms: Math.round(ms * 10) / 10,
  });
}

/**
 * Algorithm.stateBytes() as batches.jsonl fields `state_<kind>_mb` (MB = 1e6 bytes; none when the
 * method keeps no such state, docs/memory.md#method-state).
 */
export function stateBytesFields(alg: Pick<Algorithm, 'stateBytes'>): Record<string, number> {
  const out: Record<string, number> = {};
  const b = alg.stateBytes?.() ?? {};
  for (const k of STATE_BYTES_KINDS) if (b[k] !== undefined) out[`state_${snakeCase(k)}_mb`] = b[k]! / MB;
  return out;
}

const snakeCase = (k: string) => k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** The domain's summary.json entry. */
export function domainResult(run: PreparedRun, t: DomainTally): DomainResult {
  const seconds = (performance.now() - t.started) / 1000;
  const metrics = Object.entries(run.spec.metrics ?? {}).map(([k, m]) => [m.summary, t.metrics[k]] as const);
  return {
    domain: t.name,
    severity: t.severity,
    n: t.seen,
    error: t.seen ? (100 * (t.seen - t.correct)) / t.seen : NaN,
    correct: t.correct,
    batches: t.batches,
    seconds: Math.round(seconds * 100) / 100,
    img_per_s: Math.round((t.seen / seconds) * 10) / 10,
    updates: t.updates,
    forwards: t.forwards,
    backwards: t.backwards,
    ...(t.support ? { support: { ...t.support, error: t.support.n ? (100 * (t.support.n - t.support.correct)) / t.support.n : null } } : {}),
    ...(t.parts ? { per_domain: t.parts.map((p) => ({ ...p, error: p.n ? (100 * (p.n - p.correct)) / p.n : NaN })) } : {}),
    ...Object.fromEntries(metrics),
    ...(run.trackCache
      ? {
          max_cache_mb: t.caches.length ? Math.max(...t.caches) : null,
          avg_cache_mb: t.caches.length ? t.caches.reduce((a, v) => a + v, 0) / t.caches.length : null,
        }
      : {}),
    ...t.measured.summary(),
    ...(t.betas.length ? { mean_beta: t.betas.reduce((a, v) => a + v, 0) / t.betas.length } : {}),
  };
}

/** The end-of-domain line's extras: the method's per-domain sums and the cache accounting. */
export function domainExtras(run: PreparedRun, result: DomainResult): string {
  const r = result as unknown as Record<string, unknown>;
  const metrics = Object.values(run.spec.metrics ?? {}).map((m) => ` ${m.summary} ${String(r[m.summary])}`);
  const cache = result.max_cache_mb != null ? ` cache max ${result.max_cache_mb.toFixed(1)} MB avg ${result.avg_cache_mb!.toFixed(1)} MB` : '';
  return metrics.join('') + cache;
}

/**
 * Adds a finished domain to summary.json and, unless it was the last, writes the checkpoint that
 * `--resume` continues from (src/runner/checkpoint.ts) and tells its observers (src/runner/events.ts).
 */
export async function recordDomain(run: PreparedRun, di: number, result: DomainResult): Promise<void> {
  const { summary } = run;
  summary.domains.push(result);
  Object.assign(summary, meanErrors(summary.domains), settingSummary(run, summary.domains));
  run.writer.writeJson('summary.json', summary);
  if (di + 1 >= run.steps.length) return;
  await saveCheckpoint(
    run.dir,
    {
      version: 1,
      nextDomain: di + 1,
      batchIndex: run.batchIndex,
      rngs: Object.fromEntries(Object.entries(run.rngs).map(([k, r]) => [k, r.state()])),
      pastSizes: run.model.normLayers.map((l) => l.pastSize),
      ...budgetBetas(run),
      summary,
      orders: run.orders.map((o) => ({ name: o.name, severity: o.severity ?? null, order: Array.from(o.order), ...(o.tag !== undefined ? { tag: o.tag } : {}) })),
    },
    run.model,
    run.alg,
  );
  checkpointWritten(run.dir, di + 1);
}

/**
 * The summary fields a stream setting adds (docs/protocol.md#settings); none for continual, whose
 * summary keeps its keys. mean_error / mean_error_all stay the means over every step's entry.
 * gradual: the mean over the corruption steps per severity and at severity 5; recurring: the
 * means per round.
 */
export function settingSummary(run: PreparedRun, domains: readonly DomainResult[]): Record<string, unknown> {
  const { cfg, setting } = run;
  // --domain-orders and --eval-mode (src/runner/plan.ts): nothing when neither is used.
  const plan = planSummary(cfg, run.domainOrders, domains, run.steps.length);
  if (cfg.setting === 'continual') return plan;
  const out: Record<string, unknown> = { setting: cfg.setting };
  if (setting.mixed) {
    // The means are over the domains the pooled samples came from, as in the other settings.
    const parts = domains.flatMap((d) => d.per_domain ?? []);
    Object.assign(out, meanErrors(parts.map((p) => ({ ...p, batches: 0, seconds: 0, img_per_s: 0 }))));
  }
  if (setting.correlated) out.dirichlet_delta = cfg.dirichletDelta ?? 0;
  if (setting.gradual) {
    const corrupted = domains.filter((d) => d.domain !== CLEAN_DOMAIN);
    const bySev = meanBy(corrupted, (d) => d.severity, (d) => d.error);
    out.mean_error_by_severity = bySev;
    out.mean_error_severity5 = bySev['5'] ?? null;
  }
  if (setting.recurring) {
    const rounds = [...new Set(domains.map((d) => d.round ?? 1))];
    out.rounds = rounds.map((r) => ({ round: r, ...meanErrors(domains.filter((d) => (d.round ?? 1) === r)) }));
  }
  return { ...out, ...plan };
}

/** Marks the run complete: final summary, and the manifest with the stream fingerprint. */
export function recordFinish(run: PreparedRun): void {
  run.summary.complete = true;
  run.writer.writeJson('summary.json', run.summary);
  run.manifest.stream_fingerprint = streamFingerprint(run.orders);
  run.manifest.finished = new Date().toISOString();
  run.manifest.config = { ...run.cfg };
  run.writer.writeJson('manifest.json', run.manifest);
}

/** The cache budget's β memory for a checkpoint (docs/memory.md#cache-budget); nothing without a budget. */
function budgetBetas(run: PreparedRun): { budgetBetas?: Record<string, number | null> } {
  const budget = run.model.normLayers.find((l) => l.cacheBudget)?.cacheBudget;
  return budget ? { budgetBetas: budget.betas() } : {};
}
