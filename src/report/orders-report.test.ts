/** cta-report on --domain-orders runs: every order is one sample of the ± cells (src/report/collect.ts). */
import { describe, it, expect } from 'vitest';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectRuns, groupRuns } from './collect.js';
import { markdownTable } from './tables.js';

/** A hand-made two-order run: order k's errors per domain. */
function writeOrdersRun(root: string, name: string, seed: number, perOrder: Record<string, number>[]): void {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  const domains = perOrder.flatMap((errors, k) =>
    Object.entries(errors).map(([domain, error]) => ({ domain, severity: domain === 'original' ? null : 5, order: k + 1, n: 4, error, correct: 0, batches: 2, seconds: 1, img_per_s: 4 })),
  );
  const mean = (xs: number[]) => xs.reduce((a, v) => a + v, 0) / xs.length;
  const orders = perOrder.map((errors, k) => ({
    order: k + 1,
    corruptions: Object.keys(errors).filter((d) => d !== 'original'),
    mean_error: mean(Object.entries(errors).filter(([d]) => d !== 'original').map(([, e]) => e)),
    mean_error_all: mean(Object.values(errors)),
  }));
  const summary = {
    config: { alg: 'tent', accumBn: false, seed, domainOrders: '2', backend: 'wasm' },
    domains,
    mean_error: mean(orders.map((o) => o.mean_error)),
    mean_error_all: mean(orders.map((o) => o.mean_error_all)),
    complete: true,
    orders,
  };
  writeFileSync(join(dir, 'summary.json'), JSON.stringify(summary));
}

describe('report of domain-order runs', () => {
  it('mean ± std over every order of every seed', () => {
    const root = mkdtempSync(join(tmpdir(), 'report-orders-'));
    writeOrdersRun(root, 's1', 1, [
      { fog: 10, snow: 20, original: 5 },
      { snow: 30, fog: 20, original: 5 },
    ]);
    writeOrdersRun(root, 's2', 2, [
      { fog: 30, snow: 40, original: 5 },
      { snow: 40, fog: 30, original: 5 },
    ]);
    const g = groupRuns(collectRuns([root]).runs);
    expect(g.groups).toHaveLength(1);
    const grp = g.groups[0];
    expect(grp.orders).toBe(2);
    // order means: 15, 25, 35, 35 → mean 27.5, sample std 9.574
    expect(grp.meanError!.n).toBe(4);
    expect(grp.meanError!.mean).toBeCloseTo(27.5, 10);
    expect(grp.meanError!.std).toBeCloseTo(Math.sqrt((12.5 ** 2 + 2.5 ** 2 + 7.5 ** 2 * 2) / 3), 10);
    expect(grp.domains.find((d) => d.domain === 'fog')).toMatchObject({ n: 4, mean: 22.5 });
    const md = markdownTable(g);
    expect(md).toContain('| 2 × 2 orders |');
    expect(md).toContain('**27.5 ± 9.6**');
  });
});
