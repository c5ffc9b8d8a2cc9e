/** Plain-text result tables for the terminal (one row per domain, then the means). */
import type { DomainResult } from './output.js';
import { CLEAN_DOMAIN, CORRUPTIONS_15, EXTRA_CORRUPTIONS } from '../data/stream.js';

const fmt = (x: number | null | undefined, digits = 2) => (x === null || x === undefined ? '-' : x.toFixed(digits));

export function resultTable(
  columns: { title: string; domains: readonly DomainResult[]; mean: number | null; meanAll: number | null }[],
): string {
  const names = columns[0]?.domains.map((d) => d.domain) ?? [];
  const width = Math.max(18, ...names.map((n) => n.length + 2));
  const colW = Math.max(10, ...columns.map((c) => c.title.length + 2));
  const extra = columns.length === 1 && columns[0].domains.some((d) => d.max_cache_mb != null);
  const header =
    'domain'.padEnd(width) +
    columns.map((c) => `${c.title} err%`.padStart(colW + 5)).join('') +
    (extra ? 'max MB'.padStart(10) + 'avg MB'.padStart(10) : '');
  const lines = [header, '-'.repeat(header.length)];
  names.forEach((name, i) => {
    let line = name.padEnd(width) + columns.map((c) => fmt(c.domains[i]?.error).padStart(colW + 5)).join('');
    if (extra) {
      const d = columns[0].domains[i];
      line += fmt(d.max_cache_mb, 1).padStart(10) + fmt(d.avg_cache_mb, 1).padStart(10);
    }
    lines.push(line);
  });
  lines.push('-'.repeat(header.length));
  lines.push('mean (corruptions)'.padEnd(width) + columns.map((c) => fmt(c.mean).padStart(colW + 5)).join(''));
  lines.push('mean (all domains)'.padEnd(width) + columns.map((c) => fmt(c.meanAll).padStart(colW + 5)).join(''));
  return lines.join('\n');
}

const STANDARD: readonly string[] = [...CORRUPTIONS_15, ...EXTRA_CORRUPTIONS];
type Stat = { mean: number | null; std: number | null };
const pm = (s: Stat | undefined) => (!s || s.mean === null ? '-' : s.std === null ? s.mean.toFixed(2) : `${s.mean.toFixed(2)} ± ${s.std.toFixed(2)}`);

/**
 * --domain-orders (src/runner/plan.ts): one row per domain, one column per order, then the mean ±
 * std over the orders; the last rows are every order's means and their mean ± std.
 */
export function ordersTable(title: string, summary: { domains: readonly DomainResult[]; orders?: unknown; over_orders?: unknown }): string {
  const orders = (summary.orders ?? []) as { order: number; mean_error: number | null; mean_error_all: number | null }[];
  const over = (summary.over_orders ?? {}) as { mean_error?: Stat; mean_error_all?: Stat; domains?: ({ domain: string } & Stat)[] };
  // Rows in the standard corruption order (every order has its own), the clean domain last.
  const rank = (n: string) => (n === CLEAN_DOMAIN ? 1e9 : STANDARD.indexOf(n) < 0 ? 1e8 : STANDARD.indexOf(n));
  const names = [...new Set(summary.domains.map((d) => d.domain))].sort((a, b) => rank(a) - rank(b));
  const width = Math.max(20, ...names.map((n) => n.length + 2));
  const colW = 8;
  const header = `${title} err%`.padEnd(width) + orders.map((o) => `o${o.order}`.padStart(colW)).join('') + 'mean ± std'.padStart(16);
  const lines = [header, '-'.repeat(header.length)];
  for (const name of names) {
    const cells = orders.map((o) => fmt(summary.domains.find((d) => d.domain === name && d.order === o.order)?.error).padStart(colW));
    lines.push(name.padEnd(width) + cells.join('') + pm(over.domains?.find((d) => d.domain === name)).padStart(16));
  }
  lines.push('-'.repeat(header.length));
  lines.push('mean (corruptions)'.padEnd(width) + orders.map((o) => fmt(o.mean_error).padStart(colW)).join('') + pm(over.mean_error).padStart(16));
  lines.push('mean (all domains)'.padEnd(width) + orders.map((o) => fmt(o.mean_error_all).padStart(colW)).join('') + pm(over.mean_error_all).padStart(16));
  return lines.join('\n');
}

/**
 * --eval-mode pair: one row per current domain with its mean and worst accuracy over the previous
 * domains (and which one was worst).
 */
export function pairTable(title: string, summary: object): string {
  const pairs = ((summary as { pairs?: unknown }).pairs ?? []) as { domain: string; avg_acc: number; worst_acc: number; worst_previous: string }[];
  const width = Math.max(20, ...pairs.map((p) => p.domain.length + 2));
  const header = `${title}: domain`.padEnd(width) + 'avg acc%'.padStart(10) + 'worst acc%'.padStart(12) + '  worst previous';
  const lines = [header, '-'.repeat(header.length)];
  for (const p of pairs) lines.push(p.domain.padEnd(width) + fmt(p.avg_acc).padStart(10) + fmt(p.worst_acc).padStart(12) + `  ${p.worst_previous}`);
  return lines.join('\n');
}

/** MECTA's closing line of group / pair: "avg acc" and "worst acc" over the domains. */
export function evalModeLine(title: string, summary: { eval_mode?: unknown; avg_acc?: unknown; worst_acc?: unknown; worst_domain?: unknown }): string | null {
  if (summary.eval_mode !== 'group' && summary.eval_mode !== 'pair') return null;
  return `${title} (${summary.eval_mode}): avg acc ${fmt(summary.avg_acc as number | null)}% | worst acc ${fmt(summary.worst_acc as number | null)}% (${String(summary.worst_domain)})`;
}

/**
 * The end-of-run tables of cta-eval: the per-domain table, or per run its orders table
 * (--domain-orders) or pair table (--eval-mode pair); then the group / pair avg / worst lines.
 */
export function runTables(columns: Parameters<typeof resultTable>[0], runs: readonly { label: string; summary: object }[]): string {
  const s = (r: { summary: object }) => r.summary as { domains: DomainResult[]; orders?: unknown; eval_mode?: unknown };
  const special = runs.some((r) => s(r).orders !== undefined || s(r).eval_mode === 'pair');
  const out = special
    ? runs.map((r) => (s(r).orders !== undefined ? ordersTable(r.label, s(r)) : s(r).eval_mode === 'pair' ? pairTable(r.label, s(r)) : resultTable(columns.filter((c) => c.title === r.label)))).join('\n\n')
    : resultTable(columns);
  const lines = runs.map((r) => evalModeLine(r.label, s(r))).filter((l): l is string => l !== null);
  return [out, ...lines].join('\n');
}
