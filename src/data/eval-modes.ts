/**
 * MECTA's evaluation modes and corruption sets (docs/protocol.md#eval-modes), as its `cta_eval.py`
 * and `utils/eval.py` define them:
 *
 * - `continual`: the stream of docs/protocol.md#stream.
 * - `group`: per domain, every test batch is one test case: the method adapts on
 *   `support − 1` batches drawn afresh from the same domain, then predicts (and adapts on) the test
 *   batch, whose accuracy alone counts; the method is reset after every test case.
 * - `pair`: the same for every ordered pair (previous domain p, current domain c), p ≠ c: the
 *   support is `support − cur` batches of p then `cur − 1` batches of c. A domain's accuracy is
 *   the mean over its previous domains; the worst previous domain is reported with it.
 *
 * Both end with MECTA's "avg acc" (mean of the per-domain accuracies) and "worst acc" (their
 * minimum). `--merge-batches` concatenates a test case's support batches and test batch into one
 * batch (one step; the prediction is that of the test batch's rows).
 */
import { CtaError } from '../util/errors.js';
import { CORRUPTIONS_15 } from './stream.js';
import type { StreamStep } from './settings.js';

export const EVAL_MODES = ['continual', 'group', 'pair'] as const;
export type EvalMode = (typeof EVAL_MODES)[number];

/** MECTA's `--test_corrupt` lists (its `main`); `original` is the clean set. */
export const CORRUPTION_SETS = {
  std: { corruptions: [...CORRUPTIONS_15], cleanLast: true },
  arm: { corruptions: ['impulse_noise', 'motion_blur', 'fog', 'elastic_transform'], cleanLast: false },
  org: { corruptions: [] as string[], cleanLast: true },
} as const satisfies Record<string, { corruptions: readonly string[]; cleanLast: boolean }>;
export const CORRUPTION_SET_NAMES = ['custom', ...Object.keys(CORRUPTION_SETS)] as readonly ['custom', ...(keyof typeof CORRUPTION_SETS)[]];

/** MECTA's `--cur_batch` default. */
export const DEFAULT_CUR_BATCH = 1;

interface DomainFields {
  corruptions: string[];
  cleanLast: boolean;
  corruptionSet: string;
}

/** The stream's corruptions and clean flag: --corruption-set when given, else --corruptions / --clean-last. */
export function streamCorruptions(cfg: DomainFields): { corruptions: string[]; cleanLast: boolean } {
  if (cfg.corruptionSet === 'custom') return { corruptions: cfg.corruptions, cleanLast: cfg.cleanLast };
  const set = CORRUPTION_SETS[cfg.corruptionSet as keyof typeof CORRUPTION_SETS];
  return { corruptions: [...set.corruptions], cleanLast: set.cleanLast };
}

/** Whether the corruptions are the schema default (the 15 in the standard order). */
export function isDefaultCorruptions(corruptions: readonly string[]): boolean {
  return corruptions.length === CORRUPTIONS_15.length && corruptions.every((c, i) => c === CORRUPTIONS_15[i]);
}

export interface EvalModeOptions {
  evalMode: EvalMode;
  supportBatch: number | null;
  mergeBatches: boolean;
  curBatch: number | null;
  setting: string;
  domainOrders: string | null;
  corruptions: string[];
  cleanLast: boolean;
  corruptionSet: string;
  interleaveClean?: boolean;
  interleaveSeen?: boolean;
}

/** Refuses option combinations that would be ignored or that MECTA's code refuses (one line, exit 2). */
export function checkEvalModeOptions(o: EvalModeOptions): void {
  if (o.corruptionSet !== 'custom' && (!isDefaultCorruptions(o.corruptions) || !o.cleanLast)) {
    throw new CtaError(`--corruption-set ${o.corruptionSet} sets the domains itself: drop --corruptions / --clean-last, or use --corruption-set custom`);
  }
  const mode = o.evalMode;
  // One accuracy matrix over every order's steps would mix runs that restart from the source model.
  if (o.domainOrders !== null && mode === 'continual' && (o.interleaveClean || o.interleaveSeen)) {
    throw new CtaError(`--interleave-${o.interleaveClean ? 'clean' : 'seen'}: not with --domain-orders (each order is its own run; run the orders one by one with --corruptions)`);
  }
  if (mode === 'continual') {
    if (o.supportBatch !== null) throw new CtaError('--support-batch: only for --eval-mode group or pair');
    if (o.mergeBatches) throw new CtaError('--merge-batches: only for --eval-mode group or pair');
    if (o.curBatch !== null) throw new CtaError('--cur-batch: only for --eval-mode pair');
    return;
  }
  if (o.supportBatch === null) throw new CtaError(`--eval-mode ${mode}: needs --support-batch (batches per test case, the predicted one included)`);
  if (o.setting !== 'continual') throw new CtaError(`--eval-mode ${mode}: resets after every test batch, so --setting ${o.setting} has no meaning with it (use --setting continual)`);
  if (o.domainOrders !== null) throw new CtaError(`--domain-orders: the order of the domains does not matter under --eval-mode ${mode} (the method is reset after every test batch)`);
  // The forgetting evaluation measures the adapted state after each step; here it is the reset one.
  if (o.interleaveClean || o.interleaveSeen) throw new CtaError(`--interleave-${o.interleaveClean ? 'clean' : 'seen'}: no adapted state to evaluate under --eval-mode ${mode} (the method is reset after every test batch)`);
  if (mode === 'group' && o.curBatch !== null) throw new CtaError('--cur-batch: only for --eval-mode pair');
  if (mode === 'pair') {
    const cur = o.curBatch ?? DEFAULT_CUR_BATCH;
    // MECTA's get_args: assert cur_batch < support_batch.
    if (cur >= o.supportBatch) throw new CtaError(`--cur-batch ${cur}: must be less than --support-batch ${o.supportBatch} (pair mode needs at least one batch of the previous domain)`);
  }
}

/** One source of support batches of a test case: a domain and how many batches of it. */
export interface SupportPart {
  domain: string;
  batches: number;
}

/** The support of one test case of a step (MECTA's `adapt_batches`), in the order they are adapted on. */
export function supportParts(step: Pick<StreamStep, 'domain' | 'previous'>, o: Pick<EvalModeOptions, 'evalMode' | 'supportBatch' | 'curBatch'>): SupportPart[] {
  const s = o.supportBatch ?? 1;
  if (o.evalMode === 'group') return [{ domain: step.domain, batches: s - 1 }];
  if (o.evalMode === 'pair') {
    const cur = o.curBatch ?? DEFAULT_CUR_BATCH;
    return [
      { domain: step.previous!, batches: s - cur },
      { domain: step.domain, batches: cur - 1 },
    ];
  }
  return [];
}

/**
 * The steps of an eval mode over the stream's domains: group keeps one step per domain; pair has
 * one per ordered pair (current c, previous p ≠ c), c in stream order, p in stream order.
 */
export function evalModeSteps(names: readonly string[], mode: EvalMode, base: StreamStep[]): StreamStep[] {
  if (mode !== 'pair') return base;
  if (names.length < 2) throw new CtaError(`--eval-mode pair: needs at least two domains (the stream has ${names.join(', ') || 'none'})`);
  return names.flatMap((c) => names.filter((p) => p !== c).map((p): StreamStep => ({ domain: c, severity: null, round: null, reset: false, previous: p })));
}

/** Summary fields of an eval mode from its step entries (accuracy = 100 − error, as MECTA reports). */
export function evalModeSummary(
  mode: EvalMode,
  entries: readonly { domain: string; error: number; previous?: string }[],
): Record<string, unknown> {
  if (mode === 'continual') return {};
  const acc = (e: { error: number }) => 100 - e.error;
  if (mode === 'group') {
    const accs = entries.map(acc);
    const worst = argMin(accs);
    return {
      avg_acc: accs.length ? accs.reduce((a, v) => a + v, 0) / accs.length : null,
      worst_acc: worst < 0 ? null : accs[worst],
      worst_domain: worst < 0 ? null : entries[worst].domain,
    };
  }
  // pair: per current domain the mean and minimum over its previous domains (MECTA's nanmean /
  // nanmin), then avg acc / worst acc over the current domains' means.
  const byDomain = new Map<string, { previous: string; acc: number }[]>();
  for (const e of entries) {
    const list = byDomain.get(e.domain) ?? [];
    list.push({ previous: e.previous ?? '', acc: acc(e) });
    byDomain.set(e.domain, list);
  }
  const pairs = [...byDomain].map(([domain, list]) => {
    const w = argMin(list.map((l) => l.acc));
    return {
      domain,
      avg_acc: list.reduce((a, l) => a + l.acc, 0) / list.length,
      worst_acc: list[w].acc,
      worst_previous: list[w].previous,
      acc_by_previous: Object.fromEntries(list.map((l) => [l.previous, l.acc])),
    };
  });
  const means = pairs.map((p) => p.avg_acc);
  const worst = argMin(means);
  return {
    pairs,
    avg_acc: means.length ? means.reduce((a, v) => a + v, 0) / means.length : null,
    worst_acc: worst < 0 ? null : means[worst],
    worst_domain: worst < 0 ? null : pairs[worst].domain,
  };
}

/** Index of the first minimum (numpy's argmin), −1 for none. */
function argMin(xs: readonly number[]): number {
  let k = -1;
  for (let i = 0; i < xs.length; i++) if (k < 0 || xs[i] < xs[k]) k = i;
  return k;
}
