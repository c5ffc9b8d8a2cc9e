/** Steps and fingerprint tags of --domain-orders and --eval-mode (src/runner/plan.ts). */
import { describe, it, expect } from 'vitest';
import { planSteps, planSummary, planTagParts, type PlanOptions } from './plan.js';
import type { DomainOrders } from '../data/orders.js';
import type { DomainResult } from './output.js';

const base: PlanOptions = { setting: 'continual', rounds: null, dirichletDelta: null, evalMode: 'continual', iters: null, supportBatch: null, mergeBatches: false, curBatch: null };
const orders: DomainOrders = {
  orders: [
    ['fog', 'snow'],
    ['snow', 'fog'],
  ],
  from: { kind: 'generated', k: 2, seed: 1 },
};

describe('planSteps', () => {
  it('without the new options: the setting\'s steps, untagged', () => {
    const steps = planSteps(['fog', 'snow', 'original'], base, null, true);
    expect(steps.map((s) => s.domain)).toEqual(['fog', 'snow', 'original']);
    expect(steps.every((s) => s.order === undefined && !s.restart)).toBe(true);
    expect(steps.flatMap((s) => planTagParts(base, s))).toEqual([]);
  });

  it('orders: every order in turn, the clean domain after each, a restart at every order but the first', () => {
    const steps = planSteps(['fog', 'snow', 'original'], base, orders, true);
    expect(steps.map((s) => `${s.order}:${s.domain}:${s.reset ? 'R' : ''}${s.restart ? 'S' : ''}`)).toEqual(['1:fog:', '1:snow:', '1:original:', '2:snow:RS', '2:fog:', '2:original:']);
    expect(planTagParts(base, steps[3])).toEqual(['order=2', 'restart=1']);
    // Under reset-each-shift the orders keep the setting's own resets.
    const res = planSteps([], { ...base, setting: 'reset-each-shift' }, orders, false);
    expect(res.map((s) => `${s.order}:${s.domain}:${s.reset ? 'R' : ''}`)).toEqual(['1:fog:', '1:snow:R', '2:snow:R', '2:fog:R']);
  });

  it('pair: one step per ordered pair, tagged with the mode, sizes and previous domain', () => {
    const o: PlanOptions = { ...base, evalMode: 'pair', supportBatch: 3, curBatch: 2, mergeBatches: true, iters: 4 };
    const steps = planSteps(['fog', 'snow'], o, null, false);
    expect(steps.map((s) => `${s.previous}>${s.domain}`)).toEqual(['snow>fog', 'fog>snow']);
    expect(planTagParts(o, steps[0])).toEqual(['mode=pair', 'support=3', 'merge=1', 'cur=2', 'previous=snow', 'iters=4']);
  });
});

describe('planSummary', () => {
  const entry = (domain: string, order: number, error: number): DomainResult => ({ domain, order, error, severity: 5, n: 1, correct: 0, batches: 1, seconds: 0, img_per_s: 0 });

  it('per order means and the mean ± std over the finished orders only', () => {
    const partial = planSummary(base, orders, [entry('fog', 1, 10), entry('snow', 1, 30), entry('snow', 2, 50)], 4);
    expect((partial.over_orders as { orders: number }).orders).toBe(1);
    const done = planSummary(base, orders, [entry('fog', 1, 10), entry('snow', 1, 30), entry('snow', 2, 50), entry('fog', 2, 30)], 4) as {
      orders: { mean_error: number }[];
      over_orders: { mean_error: { mean: number; std: number; std_population: number }; domains: { domain: string; mean: number }[] };
    };
    expect(done.orders.map((o) => o.mean_error)).toEqual([20, 40]);
    expect(done.over_orders.mean_error).toEqual({ mean: 30, std: Math.SQRT2 * 10, std_population: 10 });
    expect(done.over_orders.domains).toEqual([
      { domain: 'fog', mean: 20, std: Math.SQRT2 * 10, std_population: 10 },
      { domain: 'snow', mean: 40, std: Math.SQRT2 * 10, std_population: 10 },
    ]);
    expect(planSummary(base, null, [], 0)).toEqual({});
  });
});
