/**
 * Forgetting (docs/protocol.md#forgetting): with `--interleave-clean` the clean set (and with
 * `--interleave-seen` every domain visited so far) is evaluated before the first step and after
 * every step of the stream, with the adapting model as it stands but without adapting: the
 * forwards run side-effect free (withoutSideEffects, src/models/norm-policy.ts), so no
 * statistics, MECTA state, pruning draw or optimizer slot moves. The results form an accuracy
 * matrix in the layout of L2P's `acc_matrix` (Wang et al., CVPR 2022): one row per evaluated set,
 * one column per evaluation point; from it come the average accuracy, forgetting and backward
 * transfer.
 */
import { tf } from '../tf.js';
import { Rng } from '../util/rng.js';
import { CtaError } from '../util/errors.js';
import { withoutSideEffects } from '../models/norm-policy.js';
import { CLEAN_DOMAIN, openDomain, type DomainStream } from '../data/stream.js';
import type { StreamStep } from '../data/settings.js';
import type { Classifier } from '../models/types.js';
import type { PreparedRun } from './prepare.js';

/** summary.json `acc_matrix`: accuracies (%) of `sets` (rows) at `points` (columns); null = not evaluated. */
export interface AccMatrix {
  /** Row keys: 'original' (the clean set) and `<domain>@<severity>` of the visited domains. */
  sets: string[];
  /** Images evaluated per row. */
  n: number[];
  /** Column labels: 'start' (before the first step), then `<step>:<domain>[@severity][#round]`. */
  points: string[];
  /** Index of the stream step each column follows (−1: before the first). */
  after: number[];
  values: (number | null)[][];
}

export interface ForgettingMetrics {
  /** Mean over the rows evaluated at the last point of their accuracy there. */
  avg_acc: number | null;
  /** Mean over the rows with an earlier value of (best earlier accuracy − last accuracy). */
  forgetting: number | null;
  /** Mean over the same rows of (last accuracy − accuracy at the row's first evaluation). */
  bwt: number | null;
  /** Per row: first, best earlier and last accuracy (null where the row has no earlier value). */
  per_set: { set: string; first: number | null; best_earlier: number | null; last: number | null; forgetting: number | null; bwt: number | null }[];
}

/**
 * The metrics of an accuracy matrix at its last column T (docs/protocol.md#forgetting). For a row r
 * with first evaluated column d_r (its "diagonal": the clean set before any adaptation, a domain
 * right after it was first adapted on): F_r = max_{d_r ≤ t < T} A[r][t] − A[r][T] and
 * B_r = A[r][T] − A[r][d_r], both over the rows with d_r < T (L2P averages its forgetting and
 * backward transfer over the tasks before the current one); the average accuracy is the mean of
 * A[r][T] over every row evaluated at T (L2P's `avg_acc`).
 */
export function forgettingMetrics(values: readonly (readonly (number | null)[])[]): ForgettingMetrics {
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, v) => a + v, 0) / xs.length : null);
  const per_set: ForgettingMetrics['per_set'] = [];
  const lasts: number[] = [];
  const fs: number[] = [];
  const bs: number[] = [];
  for (const row of values) {
    const T = row.length - 1;
    const last = T >= 0 ? row[T] : null;
    const d = row.findIndex((v) => v !== null);
    const first = d >= 0 ? row[d] : null;
    let best: number | null = null;
    for (let t = Math.max(d, 0); t < T; t++) {
      const v = row[t];
      if (v !== null && (best === null || v > best)) best = v;
    }
    const ok = last !== null && best !== null && first !== null;
    const f = ok ? best! - last! : null;
    const b = ok ? last! - first! : null;
    if (last !== null) lasts.push(last);
    if (f !== null) fs.push(f);
    if (b !== null) bs.push(b);
    per_set.push({ set: '', first, best_earlier: best, last, forgetting: f, bwt: b });
  }
  return { avg_acc: mean(lasts), forgetting: mean(fs), bwt: mean(bs), per_set };
}

/** Row key of a domain at a severity ('original' has none). */
export function setKey(domain: string, severity: number | null): string {
  return domain === CLEAN_DOMAIN || severity === null ? domain : `${domain}@${severity}`;
}

/** Column label of the point after `step` (1-based index `i`). */
export function pointLabel(i: number, step: StreamStep): string {
  return `${i}:${step.domain}${step.severity !== null ? `@${step.severity}` : ''}${step.round !== null ? `#${step.round}` : ''}`;
}

/** FNV-1a of a string: the per-set seed offset, so a set's subset does not depend on the stream. */
function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** A set's evaluation subset: the first k of a permutation seeded by (seed, key), or all in file order. */
export function evalOrder(n: number, k: number | null, seed: number, key: string): Int32Array {
  if (k === null || k >= n) return Int32Array.from({ length: n }, (_, i) => i);
  return new Rng((seed + 13) ^ fnv(key)).permutation(n).slice(0, k);
}

/** Floats of evaluation batches kept between points, all sets together (256 MB); sets beyond it are re-read at every point. */
const CACHE_FLOATS = 64 * 1024 * 1024;

interface EvalSet {
  key: string;
  open: () => Promise<DomainStream>;
  order: Int32Array | null;
  cached: { x: Float32Array; y: Int32Array; shape: [number, number, number, number] }[] | null;
}

/** The sets the matrix rows name, opened lazily, each with its fixed subset. */
export class InterleavedEval {
  private readonly sets = new Map<string, EvalSet>();
  private cachedFloats = 0;

  constructor(private readonly run: PreparedRun) {}

  /** The method's prediction without adapting: the model's forward with every norm layer side-effect free. */
  static predict(model: Classifier, x: tf.Tensor4D): Int32Array {
    return tf.tidy(() => tf.argMax(withoutSideEffects(model, () => model.forward(x)), 1).dataSync() as Int32Array);
  }

  /** Rows due at the point after step `di` (−1: before the first): the clean set, then the visited domains. */
  private dueKeys(di: number): { key: string; domain: string; severity: number | null }[] {
    const { cfg, steps } = this.run;
    const out: { key: string; domain: string; severity: number | null }[] = [];
    if (cfg.interleaveClean) out.push({ key: CLEAN_DOMAIN, domain: CLEAN_DOMAIN, severity: null });
    if (cfg.interleaveSeen) {
      for (const s of steps.slice(0, di + 1)) {
        const parts = s.parts ? s.parts.map((p) => ({ domain: p, severity: p === CLEAN_DOMAIN ? null : cfg.severity })) : [{ domain: s.domain, severity: s.domain === CLEAN_DOMAIN ? null : (s.severity ?? cfg.severity) }];
        for (const p of parts) {
          const key = setKey(p.domain, p.severity);
          if (!out.some((o) => o.key === key)) out.push({ key, ...p });
        }
      }
    }
    return out;
  }

  private setFor(key: string, domain: string, severity: number | null): EvalSet {
    let s = this.sets.get(key);
    if (!s) {
      const src = this.run.sourceAt(domain === CLEAN_DOMAIN ? null : severity === this.run.cfg.severity ? null : severity);
      s = { key, open: () => openDomain(src, domain), order: null, cached: null };
      this.sets.set(key, s);
    }
    return s;
  }

  /** Accuracy (%) and size of one set under the current model state. */
  private async evalSet(s: EvalSet): Promise<{ acc: number; n: number }> {
    const { cfg, alg } = this.run;
    const model = alg.evaluator?.() ?? this.run.model;
    let batches = s.cached;
    if (!batches) {
      const d = await s.open();
      s.order ??= evalOrder(d.n, cfg.cleanEvalN, cfg.seed, s.key);
      const got: NonNullable<EvalSet['cached']> = [];
      for await (const b of d.batches(s.order, cfg.batchSize)) got.push({ x: b.x, y: b.y, shape: b.shape });
      const floats = s.order.length * d.height * d.width * d.channels;
      if (this.cachedFloats + floats <= CACHE_FLOATS) {
        s.cached = got;
        this.cachedFloats += floats;
      }
      batches = got;
    }
    let correct = 0;
    let n = 0;
    for (const b of batches) {
      const x = tf.tensor4d(b.x, b.shape);
      try {
        const pred = InterleavedEval.predict(model, x);
        for (let i = 0; i < b.y.length; i++) if (pred[i] === b.y[i]) correct++;
      } finally {
        x.dispose();
      }
      n += b.y.length;
    }
    if (n === 0) throw new CtaError(`--interleave-clean: the evaluated set ${s.key} has no images`);
    return { acc: (100 * correct) / n, n };
  }

  /**
   * Evaluates the rows due after step `di` (−1: before the first) and adds the column to the run's
   * summary (acc_matrix, the metrics, the clean curve) and the fingerprint entries to run.orders.
   */
  async evaluate(di: number): Promise<{ key: string; acc: number }[]> {
    const { run } = this;
    const due = this.dueKeys(di);
    // --interleave-seen alone has nothing to evaluate before the first step: no empty column.
    if (due.length === 0) return [];
    const m: AccMatrix = (run.summary.acc_matrix as AccMatrix | undefined) ?? { sets: [], n: [], points: [], after: [], values: [] };
    const col = m.points.length;
    m.points.push(di < 0 ? 'start' : pointLabel(di + 1, run.steps[di]));
    m.after.push(di);
    for (const row of m.values) row.push(null);
    const got: { key: string; acc: number }[] = [];
    for (const d of due) {
      const s = this.setFor(d.key, d.domain, d.severity);
      const { acc, n } = await this.evalSet(s);
      let r = m.sets.indexOf(d.key);
      if (r < 0) {
        r = m.sets.length;
        m.sets.push(d.key);
        m.n.push(n);
        m.values.push(new Array<number | null>(col + 1).fill(null));
        // The stream fingerprint names each set's evaluated samples once (src/data/stream.ts).
        run.orders.push({ name: `eval:${d.key}`, severity: d.severity, order: s.order!, tag: 'interleave=set' });
      }
      m.values[r][col] = acc;
      got.push({ key: d.key, acc });
    }
    run.orders.push({ name: 'eval', order: new Int32Array(0), tag: `interleave;after=${di};sets=${got.map((g) => g.key).join(',')}` });
    const metrics = forgettingMetrics(m.values);
    metrics.per_set.forEach((p, i) => (p.set = m.sets[i]));
    const clean = m.sets.indexOf(CLEAN_DOMAIN);
    Object.assign(run.summary, {
      acc_matrix: m,
      avg_acc: metrics.avg_acc,
      forgetting: metrics.forgetting,
      bwt: metrics.bwt,
      forgetting_per_set: metrics.per_set,
      ...(clean >= 0 ? { clean_accuracy: m.values[clean].map((v, i) => ({ point: m.points[i], after: m.after[i], acc: v })) } : {}),
    });
    return got;
  }
}
