/**
 * What cta-eval prints under its result table: the forgetting figures of runs with
 * --interleave-clean / --interleave-seen (docs/protocol.md#forgetting) and the protocol block
 * (src/runner/provenance.ts), so the table never appears without the facts behind it.
 */
import type { Summary } from './output.js';
import { protocolBlock, protocolOfRun } from './provenance.js';

const f2 = (x: number | null | undefined) => (x === null || x === undefined ? '-' : x.toFixed(2));

/** Lines under the table for the runs shown in its columns (label: the column title). */
export function endNotes(runs: readonly { label: string; summary: Summary }[]): string[] {
  const out: string[] = [];
  for (const { label, summary: s } of runs) {
    if (s.trainable_params !== undefined) out.push(`${label}: ${s.trainable_params} trainable parameters (${s.adapt_params && s.adapt_params !== 'norm' ? `--adapt-params ${s.adapt_params}` : "the method's own choice"})`);
  }
  for (const { label, summary: s } of runs) {
    const m = s.acc_matrix;
    if (!m) continue;
    const clean = m.sets.indexOf('original');
    const curve = clean >= 0 ? m.values[clean].map((v) => (v === null ? '-' : v.toFixed(1))).join(' ') : null;
    out.push(
      `${label}: avg acc ${f2(s.avg_acc)}%  forgetting ${f2(s.forgetting)}  BWT ${f2(s.bwt)}  (${m.sets.length} evaluated set${m.sets.length === 1 ? '' : 's'} × ${m.points.length} points)` +
        (curve ? `; clean accuracy start→end: ${curve}` : ''),
    );
  }
  return [...out, ...protocolBlock(runs.map((r) => ({ label: r.label, protocol: protocolOfRun(r.summary) })))];
}
