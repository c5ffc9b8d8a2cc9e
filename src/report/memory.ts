/**
 * Error against memory (docs/memory.md#cache-budget, docs/memory.md#measured): per group of runs,
 * the mean error over the corruptions, the measured bytes held for backprop (max and mean over the
 * stream's batches), the step peak, the analytic cache and the throughput, as a markdown table and
 * as a scatter of mean error against the measured max backprop MB (one series per method, its
 * variants joined in order of memory).
 */
import type { DomainResult } from '../runner/output.js';
import { maxAndMean, perRun, stat, type Grouped, type Stat } from './collect.js';
import { fmtStat } from './tables.js';
import { fmtTick, panelRange, renderChart, seriesStyle, type Series } from './svg.js';

/** How a configuration saves memory: the series of the scatter within a method. */
export type MemoryFamily = 'plain' | 'MECTA' | 'budget' | 'checkpointing';
const FAMILIES: readonly MemoryFamily[] = ['plain', 'MECTA', 'budget', 'checkpointing'];
const FAMILY_DASH: Record<MemoryFamily, string> = { plain: '', MECTA: '7 4', budget: '2 3', checkpointing: '10 3 2 3' };

/** --cache-budget-mb before --accum-bn (the budget implies the layer), then checkpointing. */
function familyOf(config: Record<string, unknown>): MemoryFamily {
  if (typeof config.cacheBudgetMb === 'number') return 'budget';
  if (config.accumBn === true) return 'MECTA';
  if (typeof config.gradCheckpointSegments === 'number' && config.gradCheckpointSegments > 1) return 'checkpointing';
  return 'plain';
}

export interface MemoryRow {
  label: string;
  alg: string;
  family: MemoryFamily;
  meanError: Stat | null;
  /** Max over the run's domains of measured_max_backprop_mb, then mean over seeds. */
  maxBackpropMb: Stat | null;
  /** Batch-weighted mean of measured_avg_backprop_mb over the domains. */
  avgBackpropMb: Stat | null;
  stepPeakMb: Stat | null;
  maxCacheMb: Stat | null;
  /** Images over seconds, summed over domains. */
  imgPerS: Stat | null;
  /** Parameters the run trained (summary.trainable_params) and what they were (--adapt-params). */
  trainableParams: Stat | null;
  adaptParams: string | null;
}

function runMemory(domains: readonly DomainResult[]) {
  const backprop = maxAndMean(domains, (d) => d.measured_max_backprop_mb, (d) => d.measured_avg_backprop_mb);
  return {
    maxBackprop: backprop.max,
    avgBackprop: backprop.avg,
    peak: maxAndMean(domains, (d) => d.measured_max_peak_mb, () => undefined).max,
    imgPerS: perRun(domains, (d) => d.n, (d) => d.seconds),
  };
}

/** The memory rows of the groups that recorded a measured backprop figure (others are left out). */
export function memoryRows(g: Grouped): MemoryRow[] {
  const rows: MemoryRow[] = [];
  for (const grp of g.groups) {
    const per = grp.runs.map((r) => runMemory(r.summary.domains));
    const s = (xs: (number | null)[]) => stat(xs.filter((x): x is number => x !== null));
    const maxBackpropMb = s(per.map((p) => p.maxBackprop));
    if (!maxBackpropMb) continue;
    rows.push({
      label: grp.label,
      alg: String(grp.config.alg ?? ''),
      family: familyOf(grp.config),
      meanError: grp.meanError,
      maxBackpropMb,
      avgBackpropMb: s(per.map((p) => p.avgBackprop)),
      stepPeakMb: s(per.map((p) => p.peak)),
      maxCacheMb: grp.maxCacheMb,
      imgPerS: s(per.map((p) => p.imgPerS)),
      trainableParams: s(grp.runs.map((r) => (typeof r.summary.trainable_params === 'number' ? r.summary.trainable_params : null))),
      adaptParams: typeof grp.config.adaptParams === 'string' ? grp.config.adaptParams : null,
    });
  }
  return rows;
}

/** The memory table (markdown), or null when no run measured its backprop bytes. */
export function memoryMarkdown(g: Grouped): string | null {
  const rows = memoryRows(g);
  if (rows.length === 0) return null;
  // KAdaptation's headline is accuracy against trainable parameters: shown where runs recorded them.
  const params = rows.some((r) => r.trainableParams !== null);
  const head = `| run | mean error (%) |${params ? ' trainable params |' : ''} measured backprop max MB | measured backprop mean MB | step peak MB | analytic cache max MB | img/s |`;
  const lines = [head, `|---|---:|${params ? '---:|' : ''}---:|---:|---:|---:|---:|`];
  for (const r of rows) {
    const p = params ? ` ${r.trainableParams ? String(Math.round(r.trainableParams.mean)) : '–'} |` : '';
    lines.push(`| ${r.label} | ${fmtStat(r.meanError, 2)} |${p} ${fmtStat(r.maxBackpropMb, 2)} | ${fmtStat(r.avgBackpropMb, 2)} | ${fmtStat(r.stepPeakMb, 1)} | ${fmtStat(r.maxCacheMb, 2)} | ${fmtStat(r.imgPerS, 0)} |`);
  }
  return lines.join('\n');
}

/** The scatter of mean error against measured max backprop MB; null with fewer than two measured groups. */
export function errorVsMemorySvg(g: Grouped): string | null {
  const rows = memoryRows(g).filter((r) => r.meanError);
  if (rows.length < 2) return null;
  // colour = method, dash = how it saves memory; a family's points (e.g. budgets) joined by memory
  const algs = [...new Set(rows.map((r) => r.alg))];
  const series: Series[] = algs.flatMap((alg, i) =>
    FAMILIES.flatMap((fam) => {
      const pts = rows.filter((r) => r.alg === alg && r.family === fam);
      if (pts.length === 0) return [];
      return [
        {
          label: fam === 'plain' ? alg : `${alg} + ${fam}`,
          color: seriesStyle(i).color,
          dash: FAMILY_DASH[fam],
          markers: true,
          points: pts.map((r) => ({ x: r.maxBackpropMb!.mean, y: r.meanError!.mean, err: r.meanError!.std })).sort((a, b) => a.x - b.x),
        },
      ];
    }),
  );
  const xs = rows.map((r) => r.maxBackpropMb!.mean);
  const xMax = Math.max(...xs);
  const xMin = Math.min(...xs);
  // Methods an order of magnitude apart (RoTTA's memory bank against a MECTA budget): log scale,
  // or the small configurations crowd into a corner.
  const log = xMin > 0 && xMax / xMin > 8;
  const panel = { yLabel: 'mean error over the corruptions (%)', series, includeZero: false, height: 380 };
  const errMin = panelRange(panel).yMin;
  return renderChart({
    title: 'Error against backprop memory',
    subtitle:
      'one point per configuration: x = the most bytes the engine held for backprop in any batch of the stream (measured), y = mean error over the corruptions; colour = method, line style = plain / + MECTA (fixed beta-thre, prune-q) / + cache budget / + checkpointing, points of one style joined in order of memory',
    warning: errMin > 0 ? `Note: the error axis starts at ${fmtTick(errMin)} %, not at 0 (zoomed in on the differences)` : undefined,
    x: log
      ? { label: 'measured max backprop memory (MB = 1e6 bytes, log scale)', min: xMin / 1.15, max: xMax * 1.15, log: true }
      : { label: 'measured max backprop memory (MB = 1e6 bytes)', min: 0, max: xMax * 1.08 || 1 },
    panels: [panel],
  });
}


/**
 * Mean error against the trainable-parameter count (docs/adapters.md; KAdaptation's accuracy vs
 * parameters), one point per configuration, each its own legend entry; null unless at least two
 * groups recorded different counts. The same groups' memory is error-vs-memory.svg.
 */
export function errorVsParamsSvg(g: Grouped): string | null {
  const rows = memoryRows(g).filter((r) => r.meanError && r.trainableParams);
  if (new Set(rows.map((r) => r.trainableParams!.mean)).size < 2) return null;
  const series: Series[] = rows.map((r, i) => ({
    // the MB first: a long configuration label is cut at the legend's width
    label: `${fmtTick(r.maxBackpropMb!.mean)} MB: ${r.label}`,
    color: seriesStyle(i).color,
    markers: true,
    points: [{ x: r.trainableParams!.mean, y: r.meanError!.mean, err: r.meanError!.std }],
  }));
  const xMax = Math.max(...rows.map((r) => r.trainableParams!.mean));
  const panel = { yLabel: 'mean error over the corruptions (%)', series, includeZero: false, height: 380 };
  const errMin = panelRange(panel).yMin;
  return renderChart({
    title: 'Error against trainable parameters',
    subtitle: 'one point per configuration: x = parameters the method trained (--adapt-params), y = mean error over the corruptions; the legend gives each configuration its measured max backprop MB',
    warning: errMin > 0 ? `Note: the error axis starts at ${fmtTick(errMin)} %, not at 0 (zoomed in on the differences)` : undefined,
    x: { label: 'trainable parameters', min: 0, max: xMax * 1.08 || 1 },
    panels: [panel],
  });
}
