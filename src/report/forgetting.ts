/**
 * The report's forgetting figures and table (docs/protocol.md#forgetting), from the runs'
 * summary.json `acc_matrix` (--interleave-clean / --interleave-seen):
 * - a heat map of each configuration's accuracy matrix (evaluated sets × evaluation points, mean
 *   over seeds), one block per configuration, with a colour bar;
 * - the clean-set accuracy over the stream, one panel per stream setting;
 * - a table of average accuracy, forgetting and backward transfer.
 * The SVG keeps to the rules of svg.ts: plain rects, paths and horizontal text, no clip-path.
 */
import type { AccMatrix } from '../runner/forgetting.js';
import { forgettingMetrics } from '../runner/forgetting.js';
import { labelFor, labelKeys, stat, type Group, type Grouped, type Stat } from './collect.js';
import { fmtStat, shortName } from './tables.js';
import { esc, fmtTick, panelRange, renderChart, seriesStyle, textWidth, wrap, type Panel, type Series } from './svg.js';

/** A group's matrix: the cell-wise mean over its seeds (runs whose matrices have the same layout). */
export interface GroupMatrix {
  label: string;
  sets: string[];
  points: string[];
  values: (number | null)[][];
  seeds: number;
}

const sameLayout = (a: AccMatrix, b: AccMatrix) => JSON.stringify([a.sets, a.points]) === JSON.stringify([b.sets, b.points]);

export function groupMatrix(grp: Group): GroupMatrix | null {
  const ms = grp.runs.map((r) => r.summary.acc_matrix).filter((m): m is AccMatrix => !!m && Array.isArray(m.values));
  if (ms.length === 0) return null;
  const ref = ms[0];
  const same = ms.filter((m) => sameLayout(m, ref));
  const values = ref.values.map((row, r) =>
    row.map((_, t) => {
      const xs = same.map((m) => m.values[r][t]).filter((v): v is number => typeof v === 'number');
      return xs.length ? xs.reduce((a, v) => a + v, 0) / xs.length : null;
    }),
  );
  return { label: grp.label, sets: ref.sets, points: ref.points, values, seeds: same.length };
}

/** Per group: mean ± std over seeds of the run's average accuracy, forgetting and BWT. */
export function forgettingStats(grp: Group): { avgAcc: Stat | null; forgetting: Stat | null; bwt: Stat | null } | null {
  const ms = grp.runs.map((r) => r.summary).filter((s) => s.acc_matrix);
  if (ms.length === 0) return null;
  // Recomputed from the matrix, so a summary from an older writer gives the same definitions.
  const m = ms.map((s) => forgettingMetrics(s.acc_matrix!.values));
  const pick = (k: 'avg_acc' | 'forgetting' | 'bwt') => stat(m.map((x) => x[k]).filter((v): v is number => typeof v === 'number'));
  return { avgAcc: pick('avg_acc'), forgetting: pick('forgetting'), bwt: pick('bwt') };
}

/** Markdown table of the forgetting figures, or null when no run has a matrix. */
export function forgettingMarkdown(g: Grouped): string | null {
  const rows = g.groups.map((grp) => ({ grp, s: forgettingStats(grp) })).filter((x) => x.s);
  if (rows.length === 0) return null;
  const head = ['method', 'seeds', 'mean error', 'avg acc', 'forgetting', 'BWT', 'evaluated sets × points'];
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  const body = rows.map(({ grp, s }) => {
    const m = groupMatrix(grp)!;
    return line([grp.label, String(grp.seeds.length), fmtStat(grp.meanError, 2), fmtStat(s!.avgAcc, 2), fmtStat(s!.forgetting, 2), fmtStat(s!.bwt, 2), `${m.sets.length} × ${m.points.length}`]);
  });
  return [line(head), line(head.map((_, j) => (j === 0 ? '---' : '---:'))), ...body].join('\n');
}

/** forgetting.csv: one row per group with the three figures (mean and std over seeds) and the clean row at every point. */
export function forgettingCsv(g: Grouped): string | null {
  const rows = g.groups.map((grp) => ({ grp, s: forgettingStats(grp), m: groupMatrix(grp) })).filter((x) => x.s && x.m);
  if (rows.length === 0) return null;
  const num = (x: number | null | undefined) => (x === null || x === undefined ? '' : String(Number(x.toFixed(6))));
  const cell = (v: string) => (/[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v);
  const head = ['label', 'n_seeds', 'avg_acc', 'avg_acc_std', 'forgetting', 'forgetting_std', 'bwt', 'bwt_std', 'sets', 'points', 'clean_accuracy'];
  const body = rows.map(({ grp, s, m }) => {
    const clean = m!.sets.indexOf('original');
    return [
      grp.label,
      String(grp.seeds.length),
      num(s!.avgAcc?.mean),
      num(s!.avgAcc?.std),
      num(s!.forgetting?.mean),
      num(s!.forgetting?.std),
      num(s!.bwt?.mean),
      num(s!.bwt?.std),
      String(m!.sets.length),
      String(m!.points.length),
      clean >= 0 ? m!.values[clean].map((v) => num(v)).join(' ') : '',
    ];
  });
  return [head, ...body].map((r) => r.map(cell).join(',')).join('\n') + '\n';
}

// Sequential colour scale (viridis, 9 stops): dark = low accuracy, yellow = high; readable in grey.
const VIRIDIS = ['#440154', '#472d7b', '#3b528b', '#2c728e', '#21918c', '#28ae80', '#5ec962', '#addc30', '#fde725'];

function hex(c: string): [number, number, number] {
  return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)) as [number, number, number];
}

/** Colour of accuracy `v` on [lo, hi] (viridis, linear between the stops). */
export function heatColor(v: number, lo = 0, hi = 100): string {
  const t = Math.min(1, Math.max(0, (v - lo) / (hi - lo || 1))) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t));
  const a = hex(VIRIDIS[i]);
  const b = hex(VIRIDIS[i + 1]);
  const f = t - i;
  return '#' + a.map((x, k) => Math.round(x + (b[k] - x) * f).toString(16).padStart(2, '0')).join('');
}

/** Text colour readable on a cell of colour `bg`. */
function inkOn(bg: string): string {
  const [r, g, b] = hex(bg);
  return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? '#000' : '#fff';
}

/** Row label: the short domain name, severity after it. */
function setLabel(key: string): string {
  const [d, sev] = key.split('@');
  return `${d === 'original' ? 'clean' : shortName(d)}${sev ? ` s${sev}` : ''}`;
}

/** Column label: 'start', or the step's short domain name. */
function pointLabel(p: string): string {
  if (p === 'start') return 'start';
  const m = /^(\d+):([^@#]+)(?:@(\d))?(?:#(\d+))?$/.exec(p);
  if (!m) return p;
  return `${shortName(m[2])}${m[3] ? ` ${m[3]}` : ''}${m[4] ? ` r${m[4]}` : ''}`;
}

/**
 * The accuracy-matrix heat map: one block per configuration (rows = evaluated sets, columns =
 * evaluation points, cell = accuracy % mean over seeds, blank = not evaluated), a shared colour bar.
 * Cells carry their value as text where they are wide enough. Null when no run has a matrix.
 */
export function accMatrixSvg(g: Grouped): string | null {
  const mats = g.groups.map(groupMatrix).filter((m): m is GroupMatrix => m !== null);
  if (mats.length === 0) return null;
  const W = 1000;
  const left = Math.max(70, ...mats.flatMap((m) => m.sets.map((s) => textWidth(setLabel(s), 12) + 16)));
  const right = 90; // colour bar
  const plotW = W - left - right;
  const out: string[] = [];
  let y = 34;
  out.push(`<text x="16" y="${y}" font-size="18" font-weight="bold">Accuracy matrix (evaluated set × evaluation point)</text>`);
  const seeds = Math.max(...mats.map((m) => m.seeds));
  const sub = `accuracy (%) of each evaluated set, without adapting, before the first step ("start") and after every step; ${seeds > 1 ? 'mean over seeds; ' : ''}blank = not yet evaluated; colour 0–100 %`;
  for (const line of wrap(sub, Math.floor((W - 32) / (13 * 0.6)))) {
    y += 19;
    out.push(`<text x="16" y="${y}" font-size="13" fill="#444">${esc(line)}</text>`);
  }
  y += 16;
  let barTop: number | null = null;
  for (const m of mats) {
    const cols = m.points.length;
    const cw = plotW / cols;
    const ch = m.sets.length > 24 ? 12 : m.sets.length > 10 ? 16 : 22;
    // The block's name, wrapped to the plot's width (the colour bar keeps the right-hand column).
    const maxChars = Math.floor((left + plotW - 16) / (14 * 0.62));
    // A word longer than a line (a comma-joined list) is cut, so no text runs under the colour bar.
    const words = m.label.split(/\s+/).flatMap((w) => (w.length <= maxChars ? [w] : (w.match(new RegExp(`.{1,${maxChars}}`, 'g')) ?? [w])));
    for (const line of wrap(words.join(' '), maxChars)) {
      y += 18;
      out.push(`<text x="16" y="${y}" font-size="14" font-weight="bold">${esc(line)}</text>`);
    }
    y += 8;
    const top = y;
    barTop ??= top + 18;
    m.values.forEach((row, r) => {
      const cy = top + r * ch;
      out.push(`<text x="${left - 8}" y="${(cy + ch / 2 + 4).toFixed(1)}" font-size="12" text-anchor="end">${esc(setLabel(m.sets[r]))}</text>`);
      row.forEach((v, t) => {
        const cx = left + t * cw;
        const fill = v === null ? '#f4f4f4' : heatColor(v);
        out.push(`<rect x="${cx.toFixed(2)}" y="${cy}" width="${(cw + 0.05).toFixed(2)}" height="${ch}" fill="${fill}" stroke="none"/>`);
        const txt = v === null ? '' : v.toFixed(0);
        if (v !== null && cw >= textWidth(txt, 10) + 4 && ch >= 12) {
          out.push(`<text x="${(cx + cw / 2).toFixed(1)}" y="${(cy + ch / 2 + 3.5).toFixed(1)}" font-size="10" text-anchor="middle" fill="${inkOn(fill)}">${txt}</text>`);
        }
      });
    });
    const h = m.sets.length * ch;
    out.push(`<rect x="${left}" y="${top}" width="${plotW}" height="${h}" fill="none" stroke="#333" stroke-width="1"/>`);
    // Column labels: as many as fit side by side, evenly spaced (always the first and last).
    const labW = Math.max(...m.points.map((p) => textWidth(pointLabel(p), 11))) + 8;
    const every = Math.max(1, Math.ceil(labW / cw));
    for (let t = 0; t < cols; t++) {
      if (t % every !== 0 && t !== cols - 1) continue;
      if (t === cols - 1 && t % every !== 0 && (t % every) * cw < labW) continue;
      const cx = left + (t + 0.5) * cw;
      out.push(`<line x1="${cx.toFixed(1)}" x2="${cx.toFixed(1)}" y1="${top + h}" y2="${top + h + 4}" stroke="#333"/>`);
      out.push(`<text x="${cx.toFixed(1)}" y="${top + h + 16}" font-size="11" text-anchor="middle">${esc(pointLabel(m.points[t]))}</text>`);
    }
    y = top + h + 24;
  }
  y += 8;
  out.push(`<text x="${(left + plotW / 2).toFixed(1)}" y="${y + 8}" font-size="14" text-anchor="middle">evaluation point (after the step named; stream order)</text>`);
  // Colour bar, right of the first block.
  barTop ??= y;
  const bx = left + plotW + 24;
  const bh = 160;
  for (let i = 0; i < 50; i++) {
    const v0 = 100 - (i * 100) / 50;
    out.push(`<rect x="${bx}" y="${(barTop + (i * bh) / 50).toFixed(2)}" width="16" height="${(bh / 50 + 0.05).toFixed(2)}" fill="${heatColor(v0 - 1)}" stroke="none"/>`);
  }
  out.push(`<rect x="${bx}" y="${barTop}" width="16" height="${bh}" fill="none" stroke="#333"/>`);
  for (const v of [0, 25, 50, 75, 100]) {
    const ty = barTop + bh - (v / 100) * bh;
    out.push(`<line x1="${bx + 16}" x2="${bx + 20}" y1="${ty}" y2="${ty}" stroke="#333"/>`);
    out.push(`<text x="${bx + 23}" y="${ty + 4}" font-size="11">${v}</text>`);
  }
  out.push(`<text x="${bx - 6}" y="${barTop - 8}" font-size="12">acc (%)</text>`);
  const H = Math.ceil(Math.max(y + 24, barTop + bh + 20));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="'DejaVu Sans', Arial, Helvetica, sans-serif" stroke="none">`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#fff" stroke="none"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}

/** Keys that belong to the stream setting, which the panels already name. */
const SETTING_KEYS = ['setting', 'rounds', 'dirichletDelta'];

/**
 * Clean-set accuracy over the stream, one panel per stream setting (x: share of the stream's steps
 * done, so settings of different lengths line up), one line per method. Null without clean rows.
 */
export function cleanCurveSvg(g: Grouped): string | null {
  const curves = g.groups
    .map((grp) => ({ grp, m: groupMatrix(grp) }))
    .filter((x): x is { grp: Group; m: GroupMatrix } => !!x.m && x.m.sets.includes('original'));
  if (curves.length === 0) return null;
  const settingOf = (grp: Group) => String(grp.config.setting ?? 'continual');
  const settings = [...new Set(curves.map((c) => settingOf(c.grp)))];
  // Series are named without the setting (the panel says it), so a method keeps its colour.
  const others = g.varied.filter((k) => !SETTING_KEYS.includes(k));
  const cfgs = curves.map((c) => c.grp.config);
  const keys = labelKeys(cfgs, others);
  const names = [...new Set(curves.map((c) => labelFor(c.grp.config, keys)))];
  const panels: Panel[] = settings.map((st) => {
    const series: Series[] = curves
      .filter((c) => settingOf(c.grp) === st)
      .map((c) => {
        const name = labelFor(c.grp.config, keys);
        const row = c.m.values[c.m.sets.indexOf('original')];
        const last = Math.max(1, row.length - 1);
        return { label: name, ...seriesStyle(names.indexOf(name)), markers: row.length <= 40, points: row.flatMap((v, t) => (v === null ? [] : [{ x: (100 * t) / last, y: v }])) };
      });
    return { yLabel: `clean accuracy (%), ${st}`, series, includeZero: false, height: settings.length > 2 ? 170 : 260 };
  });
  // A zoomed axis makes small drops look large: say so in words as well as with the break mark.
  const lows = [...new Set(panels.map((p) => panelRange(p).yMin).filter((v) => v > 0))];
  return renderChart({
    title: 'Clean accuracy over the stream',
    warning: lows.length ? `Note: the accuracy axes start above 0 (at ${lows.map((v) => fmtTick(v)).join(', ')} %), zoomed in on the differences` : undefined,
    subtitle: 'the clean set evaluated without adapting before the first step (0 %) and after every step; x = share of the stream’s steps done; mean over seeds',
    x: { label: 'steps done (% of the stream)', min: 0, max: 100 },
    panels,
  });
}
