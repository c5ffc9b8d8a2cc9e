import { describe, it, expect } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CtaError } from '../util/errors.js';
import { CORRUPTIONS_15 } from './stream.js';
import { formatOrders, generateOrders, meanStd, ordersCount, parseOrders, parseOrdersYaml, readOrdersFile, resolveDomainOrders } from './orders.js';

const C15 = [...CORRUPTIONS_15];
const sorted = (xs: readonly string[]) => [...xs].sort();

function ctaError(f: () => unknown): CtaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CtaError);
    expect((e as CtaError).exitCode).toBe(2);
    expect((e as CtaError).message).not.toContain('\n');
    return e as CtaError;
  }
  throw new Error('expected a CtaError');
}

describe('generateOrders', () => {
  it('gives k distinct permutations of the corruptions', () => {
    const orders = generateOrders(C15, 10, 2020);
    expect(orders).toHaveLength(10);
    for (const o of orders) expect(sorted(o)).toEqual(sorted(C15));
    expect(new Set(orders.map((o) => o.join(','))).size).toBe(10);
    // Not the standard order every time: at least one order moves the first corruption.
    expect(orders.some((o) => o[0] !== C15[0])).toBe(true);
  });

  it('is fixed by the seed, and another seed gives other orders', () => {
    expect(generateOrders(C15, 5, 7)).toEqual(generateOrders(C15, 5, 7));
    expect(generateOrders(C15, 5, 7)).not.toEqual(generateOrders(C15, 5, 8));
    // The first orders do not depend on how many are drawn.
    expect(generateOrders(C15, 3, 7)).toEqual(generateOrders(C15, 5, 7).slice(0, 3));
  });

  it('draws every order of a small set without repeating one, and refuses more than exist', () => {
    const all = generateOrders(['fog', 'snow', 'frost'], 6, 1);
    expect(new Set(all.map((o) => o.join(','))).size).toBe(6);
    expect(ctaError(() => generateOrders(['fog', 'snow', 'frost'], 7, 1)).message).toMatch(/fewer than 7 distinct orders/);
    expect(ctaError(() => generateOrders([], 2, 1)).message).toMatch(/no corruptions/);
  });
});

describe('order files', () => {
  it('parses one comma-separated order per line, skipping comments and blank lines', () => {
    const text = '# two orders\n\nfog, snow ,frost\nsnow,frost,fog  # trailing comment\r\n';
    expect(parseOrders(text, 'o.txt')).toEqual([
      ['fog', 'snow', 'frost'],
      ['snow', 'frost', 'fog'],
    ]);
  });

  it('round-trips through formatOrders', () => {
    const orders = generateOrders(C15, 4, 3);
    expect(parseOrders(formatOrders(orders, ['header line']), 'x')).toEqual(orders);
  });

  it('refuses a bad file with one line naming the file and line (exit 2)', () => {
    const cases: [string, RegExp][] = [
      ['fog,snow\nfog,smow\n', /o\.txt:2: unknown corruption "smow"/],
      ['fog,snow,fog\n', /o\.txt:1: fog listed twice/],
      ['fog,snow\nfog,frost\n', /o\.txt:2: names other corruptions than line 1/],
      ['fog,,snow\n', /o\.txt:1: empty name/],
      ['fog,original\n', /o\.txt:1: 'original' is not written/],
      ['# nothing\n\n', /no orders in the file/],
    ];
    for (const [text, re] of cases) expect(ctaError(() => parseOrders(text, 'o.txt')).message).toMatch(re);
    expect(ctaError(() => readOrdersFile('/nonexistent/orders.txt')).message).toMatch(/--domain-orders \/nonexistent\/orders.txt: file not found/);
  });

  it('reads the YAML form: a list of orders, each a list or a comma-separated string', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cta-orders-yaml-'));
    const f = join(dir, 'orders.yaml');
    writeFileSync(f, '# CoTTA-style lists\n- [fog, snow]\n- - snow\n  - fog\n- "fog, snow"\n');
    expect(readOrdersFile(f).orders).toEqual([
      ['fog', 'snow'],
      ['snow', 'fog'],
      ['fog', 'snow'],
    ]);
    expect(ctaError(() => parseOrdersYaml('orders: 1\n', 'o.yaml')).message).toMatch(/expected a YAML list of orders/);
    expect(ctaError(() => parseOrdersYaml('- [fog, snow]\n- [fog, smow]\n', 'o.yaml')).message).toMatch(/o\.yaml:2: unknown corruption "smow"/);
    expect(ctaError(() => parseOrdersYaml('- 3\n', 'o.yaml')).message).toMatch(/entry 1: expected a list/);
  });

  it('tells a count from a file, and refuses a count out of range', () => {
    expect(ordersCount('10')).toBe(10);
    expect(ordersCount('orders.txt')).toBeNull();
    expect(ordersCount('10.txt')).toBeNull();
    expect(ctaError(() => ordersCount('0')).message).toMatch(/expected a count/);
  });

  it('resolves a file against --corruptions: the file decides unless --corruptions was given', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cta-orders-'));
    const f = join(dir, 'o.txt');
    writeFileSync(f, 'fog,snow\nsnow,fog\n');
    const r = resolveDomainOrders(f, C15, 1, true)!;
    expect(r.orders).toEqual([
      ['fog', 'snow'],
      ['snow', 'fog'],
    ]);
    expect(r.from).toMatchObject({ kind: 'file', path: f });
    expect(resolveDomainOrders(f, ['snow', 'fog'], 1, false)!.orders).toHaveLength(2);
    expect(ctaError(() => resolveDomainOrders(f, ['snow', 'frost'], 1, false)).message).toMatch(/other corruptions than --corruptions/);
    expect(resolveDomainOrders('3', ['fog', 'snow', 'frost'], 1, false)!.from).toEqual({ kind: 'generated', k: 3, seed: 1 });
    expect(resolveDomainOrders(null, C15, 1, true)).toBeNull();
  });

  it('the shipped ImageNet-C order file is what its header command generates', () => {
    const path = join(import.meta.dirname, '..', '..', 'configs', 'orders', 'imagenetc-10-orders.txt');
    const text = readFileSync(path, 'utf8');
    const seed = Number(/--seed (\d+)/.exec(text)![1]);
    expect(parseOrders(text, path)).toEqual(generateOrders(C15, 10, seed));
  });
});

describe('meanStd', () => {
  it('gives the sample and the population standard deviation', () => {
    const s = meanStd([1, 2, 3, 4]);
    expect(s.mean).toBe(2.5);
    expect(s.std).toBeCloseTo(Math.sqrt(5 / 3), 12);
    expect(s.std_population).toBeCloseTo(Math.sqrt(5 / 4), 12);
    expect(meanStd([3])).toEqual({ mean: 3, std: null, std_population: 0 });
    expect(meanStd([])).toEqual({ mean: null, std: null, std_population: null });
  });
});
