/** Plain-text result tables for the terminal (one row per domain, then the means). */
import type { DomainResult } from './output.js';

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
