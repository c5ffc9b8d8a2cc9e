/**
 * What --domain-orders and --eval-mode make of a run (docs/protocol.md#domain-orders,
 * docs/protocol.md#eval-modes): the steps (every order's stream one after another, or the pairs of
 * pair mode), what each step adds to the stream fingerprint, and the summary fields they add.
 * Without either option nothing here changes a run: the steps are the setting's, no tag, no field.
 */
import { CLEAN_DOMAIN, domainOrder } from '../data/stream.js';
import { streamSteps, type SettingOptions, type StreamStep } from '../data/settings.js';
import { evalModeSteps, evalModeSummary, type EvalMode } from '../data/eval-modes.js';
import { meanStd, type DomainOrders } from '../data/orders.js';
import { meanErrors, type DomainResult } from './output.js';

export interface PlanOptions extends SettingOptions {
  evalMode: EvalMode;
  iters: number | null;
  supportBatch: number | null;
  mergeBatches: boolean;
  curBatch: number | null;
}

/**
 * The run's steps. With orders: each order's sequence (its corruptions, then the clean domain when
 * `cleanLast`) under the setting, one order after another; the first step of every order but the
 * first restarts the run (method reset, generators back to their configure-time state), so each
 * order is the run a separate `--corruptions <order>` would be.
 */
export function planSteps(names: readonly string[], o: PlanOptions, orders: DomainOrders | null, cleanLast: boolean): StreamStep[] {
  if (orders) {
    return orders.orders.flatMap((order, k) =>
      streamSteps(domainOrder(order, cleanLast), o).map((s, i) => ({ ...s, order: k + 1, ...(k > 0 && i === 0 ? { reset: true, restart: true } : {}) })),
    );
  }
  return evalModeSteps(names, o.evalMode, streamSteps(names, o));
}

/**
 * The fingerprint tag parts of the new options for one step (appended to the setting's tag): the
 * order, the eval mode with its support sizes and previous domain, and --iters. Empty when none
 * is in use, so the fingerprints of runs without them are unchanged.
 */
export function planTagParts(o: PlanOptions, step: StreamStep): string[] {
  const parts: string[] = [];
  if (step.order !== undefined) parts.push(`order=${step.order}`, `restart=${step.restart ? 1 : 0}`);
  if (o.evalMode !== 'continual') {
    parts.push(`mode=${o.evalMode}`, `support=${o.supportBatch}`, `merge=${o.mergeBatches ? 1 : 0}`);
    if (o.evalMode === 'pair') parts.push(`cur=${o.curBatch ?? 1}`, `previous=${step.previous ?? ''}`);
  }
  if (o.iters !== null) parts.push(`iters=${o.iters}`);
  return parts;
}

/** What a step adds to its summary entry: its order, its previous domain (pair). */
export function planStepFields(step: StreamStep): { order?: number; previous?: string } {
  return { ...(step.order !== undefined ? { order: step.order } : {}), ...(step.previous !== undefined ? { previous: step.previous } : {}) };
}

/**
 * Summary fields of the new options: per order its sequence and means, then the mean ± std of the
 * orders' means and of every domain's error over the orders (src/data/orders.ts meanStd);
 * the eval mode's avg / worst accuracy. `{}` when neither is in use.
 */
export function planSummary(o: PlanOptions, orders: DomainOrders | null, domains: readonly DomainResult[], totalSteps: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (o.evalMode !== 'continual') {
    Object.assign(out, {
      eval_mode: o.evalMode,
      support_batch: o.supportBatch,
      merge_batches: o.mergeBatches,
      ...(o.evalMode === 'pair' ? { cur_batch: o.curBatch ?? 1 } : {}),
      ...evalModeSummary(o.evalMode, domains),
    });
  }
  if (o.iters !== null) out.iters = o.iters;
  if (orders) {
    // Every order has the same number of steps; the statistics are over the finished orders.
    const perOrder = totalSteps / orders.orders.length;
    const per = orders.orders.map((seq, k) => {
      const entries = domains.filter((d) => d.order === k + 1);
      return { order: k + 1, corruptions: seq, complete: entries.length === perOrder, ...meanErrors(entries) };
    });
    const done = per.filter((p) => p.complete);
    const doneDomains = domains.filter((d) => done.some((p) => p.order === d.order));
    const names = [...new Set(doneDomains.map((d) => d.domain))];
    out.domain_orders = { ...orders.from, count: orders.orders.length };
    out.orders = per.map(({ complete: _c, ...p }) => p);
    out.over_orders = {
      orders: done.length,
      mean_error: meanStd(done.map((p) => p.mean_error).filter((v): v is number => v !== null)),
      mean_error_all: meanStd(done.map((p) => p.mean_error_all).filter((v): v is number => v !== null)),
      domains: names.map((name) => ({ domain: name, ...meanStd(doneDomains.filter((d) => d.domain === name).map((d) => d.error)) })),
    };
  }
  return out;
}

/** Puts the run's generators back to their configure-time states (the start of an order). */
export function restartRngs(run: { rngs: object; freshRngs: Record<string, number[]> }): void {
  for (const [k, r] of Object.entries(run.rngs) as [string, { setState(s: readonly number[]): void }][]) r.setState(run.freshRngs[k]);
}
