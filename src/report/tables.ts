/**
 * Result tables in the paper layout: one row per method/config group, the corruptions in stream
 * order, their mean, and cache MB where recorded; cells are mean ± std over seeds. `--by KEY` turns
 * the values of one key into the columns instead (ablation layout). CSV carries every domain with
 * full precision for further processing.
 */
import { stableJson } from '../sweep/hash.js';
import { toKebab } from '../config/schema.js';
import { formatParam, labelFor, labelKeys, variedKeys, compareConfigs, type Group, type Grouped, type Stat } from './collect.js';

/** Column headers as in the CIFAR-10-C tables of the TTA papers. */
export const SHORT_NAMES: Record<string, string> = {
  gaussian_noise: 'gauss',
  shot_noise: 'shot',
  impulse_noise: 'impul',
  defocus_blur: 'defoc',
  glass_blur: 'glass',
  motion_blur: 'motn',
  zoom_blur: 'zoom',
  snow: 'snow',
  frost: 'frost',
  fog: 'fog',
  brightness: 'brit',
  contrast: 'contr',
  elastic_transform: 'elast',
  pixelate: 'pixel',
  jpeg_compression: 'jpeg',
  original: 'clean',
};

export const shortName = (d: string) => SHORT_NAMES[d] ?? d;

export function fmtStat(s: Stat | null | undefined, digits = 1): string {
  if (!s) return '–';
  return s.std === null ? s.mean.toFixed(digits) : `${s.mean.toFixed(digits)} ± ${s.std.toFixed(digits)}`;
}

function mdTable(head: string[], rows: string[][], alignLeft = 1): string {
  const sep = head.map((_, j) => (j < alignLeft ? '---' : '---:'));
  const line = (r: string[]) => `| ${r.join(' | ')} |`;
  return [line(head), line(sep), ...rows.map(line)].join('\n');
}

const hasCache = (groups: readonly Group[]) => groups.some((g) => g.maxCacheMb !== null);

/** Paper layout: rows = groups; columns = corruption domains, mean, cache MB, img/s, passes. */
export function markdownTable(g: Grouped): string {
  const corr = g.domains.filter((d) => d !== 'original');
  const cache = hasCache(g.groups);
  // Throughput and the passes per image (docs/protocol.md#passes): what a method costs beside its
  // error, as EATA and SAR tabulate it. Absent for runs written before the counts existed.
  const speed = g.groups.some((grp) => grp.imgPerS !== null);
  const passes = g.groups.some((grp) => grp.forwardsPerImage !== null);
  const head = [
    'method',
    'seeds',
    ...corr.map(shortName),
    'mean',
    ...(cache ? ['max MB', 'avg MB'] : []),
    ...(speed ? ['img/s'] : []),
    ...(passes ? ['fwd/img', 'bwd/img'] : []),
  ];
  const rows = g.groups.map((grp) => [
    grp.label,
    // --domain-orders: every order is a sample of the ± cells too
    grp.orders > 1 ? `${grp.seeds.length} × ${grp.orders} orders` : String(grp.seeds.length),
    ...corr.map((d) => fmtStat(grp.domains.find((x) => x.domain === d))),
    `**${fmtStat(grp.meanError)}**`,
    ...(cache ? [fmtStat(grp.maxCacheMb), fmtStat(grp.avgCacheMb)] : []),
    ...(speed ? [fmtStat(grp.imgPerS)] : []),
    ...(passes ? [fmtStat(grp.forwardsPerImage, 2), fmtStat(grp.backwardsPerImage, 2)] : []),
  ]);
  return mdTable(head, rows, 1);
}

export interface ByTable {
  key: string;
  values: unknown[];
  rows: { label: string; cells: (Group | null)[] }[];
}

/** Splits groups into rows (all varied keys but `key`) × columns (values of `key`). */
export function pivot(g: Grouped, key: string): ByTable {
  const values: unknown[] = [];
  for (const grp of g.groups) if (!values.some((v) => stableJson(v) === stableJson(grp.config[key]))) values.push(grp.config[key]);
  values.sort((a, b) => compareConfigs({ [key]: a }, { [key]: b }, [key]));
  const rowKey = (c: Record<string, unknown>) => {
    const o = { ...c };
    delete o[key];
    return stableJson(o);
  };
  const rowMap = new Map<string, (Group | null)[]>();
  const rowCfg = new Map<string, Record<string, unknown>>();
  for (const grp of g.groups) {
    const rk = rowKey(grp.config);
    if (!rowMap.has(rk)) {
      rowMap.set(rk, values.map(() => null));
      const c = { ...grp.config };
      delete c[key];
      rowCfg.set(rk, c);
    }
    rowMap.get(rk)![values.findIndex((v) => stableJson(v) === stableJson(grp.config[key]))] = grp;
  }
  const cfgs = [...rowCfg.values()];
  const others = variedKeys(cfgs).filter((k) => k !== key);
  let keys = labelKeys(cfgs, others);
  if (new Set(cfgs.map((c) => labelFor(c, keys))).size < cfgs.length) keys = others;
  const rows = [...rowMap.entries()].map(([rk, cells]) => ({ label: labelFor(rowCfg.get(rk)!, keys), cells }));
  return { key, values, rows };
}

/** Ablation layout: one table of mean error and, if recorded, one of max cache MB. */
export function markdownByTable(g: Grouped, key: string): string {
  const p = pivot(g, key);
  const k = toKebab(key);
  const head = ['method', ...p.values.map((v) => `${k}=${formatParam(v)}`)];
  const parts = [
    `mean error (%) over the corruptions, by ${k}:`,
    '',
    mdTable(head, p.rows.map((r) => [r.label, ...r.cells.map((c) => fmtStat(c?.meanError))])),
  ];
  if (hasCache(g.groups)) {
    parts.push('', `max cache (MB), by ${k}:`, '', mdTable(head, p.rows.map((r) => [r.label, ...r.cells.map((c) => fmtStat(c?.maxCacheMb))])));
  }
  return parts.join('\n');
}

function csvCell(v: string): string {
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

const num = (x: number | null | undefined) => (x === null || x === undefined ? '' : String(Number(x.toFixed(6))));

/** One row per group: varied keys, seeds, every domain's mean and std, the means, cache, run dirs. */
export function csvTable(g: Grouped): string {
  const head = [
    'label',
    ...g.varied.map(toKebab),
    'seeds',
    'n_seeds',
    ...g.domains.flatMap((d) => [d, `${d}_std`]),
    'mean_error',
    'mean_error_std',
    'mean_error_all',
    'max_cache_mb',
    'avg_cache_mb',
    'img_per_s',
    'forwards_per_image',
    'backwards_per_image',
    'runs',
  ];
  const rows = g.groups.map((grp) => {
    const dom = g.domains.flatMap((d) => {
      const s = grp.domains.find((x) => x.domain === d);
      return [num(s?.mean), num(s?.std)];
    });
    return [
      grp.label,
      ...g.varied.map((k) => formatParam(grp.config[k])),
      grp.seeds.join(' '),
      String(grp.seeds.length),
      ...dom,
      num(grp.meanError?.mean),
      num(grp.meanError?.std),
      num(grp.meanErrorAll?.mean),
      num(grp.maxCacheMb?.mean),
      num(grp.avgCacheMb?.mean),
      num(grp.imgPerS?.mean),
      num(grp.forwardsPerImage?.mean),
      num(grp.backwardsPerImage?.mean),
      grp.runs.map((r) => r.dir).join(' '),
    ];
  });
  return [head, ...rows].map((r) => r.map(csvCell).join(',')).join('\n') + '\n';
}
