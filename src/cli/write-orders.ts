/**
 * `cta-eval --domain-orders FILE|k --write-orders OUT`: writes the run's orders as an order file
 * (docs/data-formats.md#domain-order-files) and runs nothing, so a set of seeded orders can be
 * generated once, committed and reused (configs/orders/). The header records the command and seed.
 */
import { writeFileSync } from 'node:fs';
import type { CtaConfig } from '../config/schema.js';
import { CtaError } from '../util/errors.js';
import { formatOrders, resolveDomainOrders } from '../data/orders.js';
import { isDefaultCorruptions, streamCorruptions } from '../data/eval-modes.js';

/** Writes the orders; returns the line to print. */
export function writeOrdersFile(cfg: CtaConfig, path: string, argv: readonly string[]): string {
  if (cfg.domainOrders === null) throw new CtaError('--write-orders: needs --domain-orders (a count k or an order file)');
  const stream = streamCorruptions(cfg);
  const orders = resolveDomainOrders(cfg.domainOrders, stream.corruptions, cfg.seed, cfg.corruptionSet === 'custom' && isDefaultCorruptions(cfg.corruptions))!;
  const from = orders.from.kind === 'generated' ? `${orders.from.k} seeded random orders (seed ${orders.from.seed}) of ${stream.corruptions.length} corruptions` : `read from ${orders.from.path}`;
  const header = [
    `cta-eval domain orders: ${from}; one order per line (docs/data-formats.md#domain-order-files).`,
    `Made by: cta-eval ${argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(' ')}`,
  ];
  try {
    writeFileSync(path, formatOrders(orders.orders, header));
  } catch (e) {
    throw new CtaError(`--write-orders ${path}: cannot write (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return `cta-eval: wrote ${orders.orders.length} order${orders.orders.length === 1 ? '' : 's'} to ${path}`;
}
