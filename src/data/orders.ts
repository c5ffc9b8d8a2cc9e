/**
 * Domain orders (`--domain-orders FILE|k`, docs/protocol.md#domain-orders): the corruption sequence
 * run under several orders, each a full continual run from the source model, as CoTTA's evaluation
 * over 10 ImageNet-C orders (Wang et al. 2022, the `10orders` configs of its code): continual
 * methods depend on the order in which the domains arrive, so a single order is one sample of a
 * distribution. Orders come from a text file (docs/data-formats.md#domain-order-files) or are
 * drawn here, k seeded permutations of the configured corruptions.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import yaml from 'js-yaml';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { CLEAN_DOMAIN, CORRUPTIONS_15, EXTRA_CORRUPTIONS } from './stream.js';

/** Offset of the order generator's seed from --seed (shuffle: +0, Fisher: +1, method: +3, pruning: +7). */
export const ORDER_SEED_OFFSET = 11;
/** Most orders one run takes (each is a full pass over the stream). */
export const MAX_ORDERS = 1000;
const KNOWN: readonly string[] = [...CORRUPTIONS_15, ...EXTRA_CORRUPTIONS];

/** Where a run's orders came from. */
export interface DomainOrders {
  /** The corruption sequences, one per order (the clean domain is not part of them). */
  orders: string[][];
  /** 'generated' (k seeded permutations) or the file they were read from. */
  from: { kind: 'generated'; k: number; seed: number } | { kind: 'file'; path: string; sha256: string };
}

/** `--domain-orders` is a count when it is a plain positive integer, else a file path. */
export function ordersCount(value: string): number | null {
  if (!/^\d+$/.test(value.trim())) return null;
  const k = Number(value.trim());
  if (k < 1 || k > MAX_ORDERS) throw new CtaError(`--domain-orders: expected a count 1…${MAX_ORDERS} or an order file, got ${value}`);
  return k;
}

function factorialAtLeast(n: number, k: number): boolean {
  let f = 1;
  for (let i = 2; i <= n; i++) {
    f *= i;
    if (f >= k) return true;
  }
  return f >= k;
}

/**
 * k distinct seeded permutations of `corruptions` (Fisher–Yates on a generator seeded with
 * seed + ORDER_SEED_OFFSET; a permutation already drawn is drawn again). Depends only on the
 * seed, k and the corruption list, never on the data or the method.
 */
export function generateOrders(corruptions: readonly string[], k: number, seed: number): string[][] {
  if (!Number.isInteger(k) || k < 1) throw new CtaError(`--domain-orders: expected a positive count, got ${k}`);
  if (corruptions.length === 0) throw new CtaError('--domain-orders: the stream has no corruptions to order');
  if (!factorialAtLeast(corruptions.length, k)) {
    throw new CtaError(`--domain-orders ${k}: ${corruptions.length} corruptions have fewer than ${k} distinct orders`);
  }
  const rng = new Rng(seed + ORDER_SEED_OFFSET);
  const seen = new Set<string>();
  const out: string[][] = [];
  while (out.length < k) {
    const order = Array.from(rng.permutation(corruptions.length), (i) => corruptions[i]);
    const key = order.join(',');
    if (seen.has(key)) continue;
    seen.add(key);
    out.push(order);
  }
  return out;
}

/**
 * Parses an order file: one order per line, corruption names separated by commas (spaces around
 * them ignored); blank lines and `#` comments (whole lines or line ends) skipped. Every order must
 * name the same corruptions, each once; the clean domain is not written (--clean-last places it).
 * Problems are one CtaError line naming the file and line.
 */
export function parseOrders(text: string, file: string): string[][] {
  const orders: string[][] = [];
  let first: { line: number; set: string } | null = null;
  text.split(/\r?\n/).forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) return;
    const where = `--domain-orders ${file}:${i + 1}`;
    const names = line.split(',').map((s) => s.trim());
    if (names.some((n) => n === '')) throw new CtaError(`${where}: empty name (expected comma-separated corruption names)`);
    for (const n of names) {
      if (n === CLEAN_DOMAIN) throw new CtaError(`${where}: '${CLEAN_DOMAIN}' is not written in an order (--clean-last appends the clean domain to every order)`);
      if (!KNOWN.includes(n)) throw new CtaError(`${where}: unknown corruption ${JSON.stringify(n)} (known: ${KNOWN.join(', ')})`);
    }
    const dup = names.find((n, j) => names.indexOf(n) !== j);
    if (dup) throw new CtaError(`${where}: ${dup} listed twice`);
    const set = [...names].sort().join(',');
    if (first && set !== first.set) {
      throw new CtaError(`${where}: names other corruptions than line ${first.line} (every order must be a permutation of the same corruptions)`);
    }
    first ??= { line: i + 1, set };
    orders.push(names);
  });
  if (orders.length === 0) throw new CtaError(`--domain-orders ${file}: no orders in the file (expected one comma-separated order per line)`);
  if (orders.length > MAX_ORDERS) throw new CtaError(`--domain-orders ${file}: ${orders.length} orders, at most ${MAX_ORDERS}`);
  return orders;
}

/**
 * The YAML form of an order file (`.yaml` / `.yml`): a list of orders, each a list of names or one
 * comma-separated string, checked as the text form is (parseOrders) with `entry k` for the line.
 */
export function parseOrdersYaml(text: string, file: string): string[][] {
  let doc: unknown;
  try {
    doc = yaml.load(text);
  } catch (e) {
    throw new CtaError(`--domain-orders ${file}: not valid YAML (${(e instanceof Error ? e.message : String(e)).split('\n')[0]})`);
  }
  if (!Array.isArray(doc)) throw new CtaError(`--domain-orders ${file}: expected a YAML list of orders (each a list of corruption names)`);
  const lines = doc.map((o, k) => {
    const names = Array.isArray(o) ? o.map(String) : typeof o === 'string' ? o.split(',') : null;
    if (!names) throw new CtaError(`--domain-orders ${file}: entry ${k + 1}: expected a list of corruption names`);
    return names.map((n) => n.trim()).join(',');
  });
  // One text line per entry: parseOrders' checks, its messages naming `file:k` for entry k.
  return parseOrders(lines.join('\n'), file);
}

export function readOrdersFile(path: string): DomainOrders {
  if (!existsSync(path)) throw new CtaError(`--domain-orders ${path}: file not found (expected an order file or a count)`);
  const text = readFileSync(path, 'utf8');
  const orders = /\.ya?ml$/i.test(path) ? parseOrdersYaml(text, path) : parseOrders(text, path);
  return { orders, from: { kind: 'file', path, sha256: createHash('sha256').update(text).digest('hex') } };
}

/**
 * The orders of a run: null without --domain-orders. `corruptions`: the stream's corruptions
 * (what k generated orders permute; what a file's orders must be a permutation of, unless the
 * corruptions were left at their default, in which case the file decides).
 */
export function resolveDomainOrders(value: string | null, corruptions: readonly string[], seed: number, corruptionsIsDefault: boolean): DomainOrders | null {
  if (value === null) return null;
  const k = ordersCount(value);
  if (k !== null) return { orders: generateOrders(corruptions, k, seed), from: { kind: 'generated', k, seed } };
  const read = readOrdersFile(value);
  const want = [...corruptions].sort().join(',');
  if (!corruptionsIsDefault && [...read.orders[0]].sort().join(',') !== want) {
    throw new CtaError(`--domain-orders ${value}: its orders name other corruptions than --corruptions (${corruptions.join(', ')}); drop --corruptions or make them agree`);
  }
  return read;
}

/** An order file's text (the format parseOrders reads), with `#` header lines. */
export function formatOrders(orders: readonly (readonly string[])[], header: readonly string[] = []): string {
  return [...header.map((h) => `# ${h}`), ...orders.map((o) => o.join(','))].join('\n') + '\n';
}

/**
 * Mean and standard deviation over orders: `std` the sample standard deviation (ddof 1, as
 * cta-report's ± over seeds; null for one value), `std_population` ddof 0 (numpy's default, which
 * CoTTA's eval.py reports over its 10 orders).
 */
export function meanStd(xs: readonly number[]): { mean: number | null; std: number | null; std_population: number | null } {
  if (xs.length === 0) return { mean: null, std: null, std_population: null };
  const mean = xs.reduce((a, v) => a + v, 0) / xs.length;
  const ss = xs.reduce((a, v) => a + (v - mean) * (v - mean), 0);
  return { mean, std: xs.length > 1 ? Math.sqrt(ss / (xs.length - 1)) : null, std_population: Math.sqrt(ss / xs.length) };
}
