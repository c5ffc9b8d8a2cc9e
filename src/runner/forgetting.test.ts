/**
 * The forgetting metrics (docs/protocol.md#forgetting) on hand-computed accuracy matrices, the
 * per-set evaluation subsets, and the side-effect-free evaluation forward.
 */
import { beforeAll, describe, it, expect } from 'vitest';
import { join } from 'node:path';
import { initBackend, tf } from '../tf.js';
import { readSafetensors } from '../io/safetensors.js';
import type { StateDict } from '../io/types.js';
import { buildModel } from '../models/registry.js';
import { Rng } from '../util/rng.js';
import { resolveConfig } from '../config/load.js';
import { configHash } from '../sweep/hash.js';
import { evalOrder, forgettingMetrics, InterleavedEval, pointLabel, setKey } from './forgetting.js';

describe('forgettingMetrics', () => {
  it('a clean row and two domain rows, computed by hand', () => {
    // columns: start, after d1, after d2, after d3 (the last, T = 3)
    const A = [
      [90, 88, 80, 70], // clean: first 90 (start), best earlier 90, last 70 → F 20, B −20
      [null, 60, 65, 50], // d1: first 60, best earlier max(60, 65) = 65, last 50 → F 15, B −10
      [null, null, 40, 45], // d2: first 40, best earlier 40, last 45 → F −5, B 5
      [null, null, null, 30], // d3: first evaluated at T: in avg acc only
    ];
    const m = forgettingMetrics(A);
    expect(m.avg_acc).toBeCloseTo((70 + 50 + 45 + 30) / 4, 12);
    expect(m.forgetting).toBeCloseTo((20 + 15 - 5) / 3, 12);
    expect(m.bwt).toBeCloseTo((-20 - 10 + 5) / 3, 12);
    expect(m.per_set.map((p) => [p.first, p.best_earlier, p.last, p.forgetting, p.bwt])).toEqual([
      [90, 90, 70, 20, -20],
      [60, 65, 50, 15, -10],
      [40, 40, 45, -5, 5],
      [30, null, 30, null, null],
    ]);
  });

  it('a gap (a row not evaluated at some point) is skipped in the best earlier value', () => {
    const m = forgettingMetrics([[50, null, 80, 60]]);
    expect(m.forgetting).toBe(20);
    expect(m.bwt).toBe(10);
  });

  it('one column: average accuracy only; empty: all null', () => {
    expect(forgettingMetrics([[88]])).toMatchObject({ avg_acc: 88, forgetting: null, bwt: null });
    expect(forgettingMetrics([])).toMatchObject({ avg_acc: null, forgetting: null, bwt: null });
  });

  it('the L2P relation: with a full lower triangle, BWT = mean(last − diagonal)', () => {
    // L2P's acc_matrix[i, t] (row = task, column = after task t), here transposed into rows.
    const L = [
      [95, 90, 85],
      [null, 80, 70],
      [null, null, 60],
    ];
    const m = forgettingMetrics(L);
    expect(m.bwt).toBeCloseTo((85 - 95 + (70 - 80)) / 2, 12);
    expect(m.forgetting).toBeCloseTo((95 - 85 + (80 - 70)) / 2, 12);
    expect(m.avg_acc).toBeCloseTo((85 + 70 + 60) / 3, 12);
  });
});

describe('evaluation sets', () => {
  it('subsets are seeded per set, independent of the stream, and all images without --clean-eval-n', () => {
    const a = evalOrder(100, 10, 2020, 'original');
    expect(Array.from(a)).toEqual(Array.from(evalOrder(100, 10, 2020, 'original')));
    expect(Array.from(a)).not.toEqual(Array.from(evalOrder(100, 10, 2020, 'fog@5')));
    expect(Array.from(a)).not.toEqual(Array.from(evalOrder(100, 10, 2021, 'original')));
    expect(new Set(a).size).toBe(10);
    expect(Array.from(evalOrder(5, null, 1, 'x'))).toEqual([0, 1, 2, 3, 4]);
    expect(Array.from(evalOrder(5, 9, 1, 'x'))).toEqual([0, 1, 2, 3, 4]);
  });

  it('the sweep hash covers the interleaved evaluation (another folder, never a reused result)', () => {
    const base = configHash(resolveConfig(null, { alg: 'tent' }));
    const h = [{ interleaveClean: true }, { interleaveClean: true, cleanEvalN: 100 }, { interleaveSeen: true }].map((o) => configHash(resolveConfig(null, { alg: 'tent', ...o })));
    expect(new Set([base, ...h]).size).toBe(4);
  });

  it('row keys and column labels', () => {
    expect(setKey('original', null)).toBe('original');
    expect(setKey('fog', 3)).toBe('fog@3');
    expect(pointLabel(4, { domain: 'fog', severity: 2, round: null, reset: false })).toBe('4:fog@2');
    expect(pointLabel(7, { domain: 'snow', severity: null, round: 2, reset: false })).toBe('7:snow#2');
  });
});

describe('InterleavedEval.predict', () => {
  let sd: StateDict;
  beforeAll(async () => {
    await initBackend('wasm');
    sd = await readSafetensors(join(process.cwd(), 'test', 'fixtures', 'models', 'resnext_small.safetensors'));
  });

  it('leaves the statistics, MECTA state and pruning stream alone and leaks no tensor', () => {
    const model = buildModel('resnext29', sd, { rng: new Rng(7) });
    model.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0.00125, pruneQ: 0.7 });
    const x = tf.randomUniform([4, 32, 32, 3], 0, 1, 'float32', 3) as tf.Tensor4D;
    tf.tidy(() => model.forward(x)); // one adapting forward: the state now differs from the source
    const snap = () => model.normLayers.map((l) => [Array.from(l.runningMean!.dataSync()), Array.from(l.runningVar!.dataSync()), l.pastSize]);
    const before = snap();
    const n = tf.memory().numTensors;
    const p1 = InterleavedEval.predict(model, x);
    const p2 = InterleavedEval.predict(model, x);
    expect(tf.memory().numTensors).toBe(n);
    expect(snap()).toEqual(before);
    expect(Array.from(p2)).toEqual(Array.from(p1));
    // The next adapting forward is what it would have been without the evaluations.
    const ref = buildModel('resnext29', sd, { rng: new Rng(7) });
    ref.setNormMode('mecta', { beta: 0.1, initBeta: null, forgetGate: true, distMetric: 'skl', distScale: 1, betaThre: 0.00125, pruneQ: 0.7 });
    tf.tidy(() => ref.forward(x));
    const a = tf.tidy(() => Array.from(model.forward(x).dataSync()));
    const b = tf.tidy(() => Array.from(ref.forward(x).dataSync()));
    expect(a).toEqual(b);
    x.dispose();
    model.dispose();
    ref.dispose();
  });
});
