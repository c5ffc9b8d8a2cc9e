/** The report's forgetting table and figures (src/report/forgetting.ts) from hand-made summaries. */
import { describe, it, expect } from 'vitest';
import sharp from 'sharp';
import { groupRuns, type RunRecord } from './collect.js';
import { accMatrixSvg, cleanCurveSvg, forgettingCsv, forgettingMarkdown, groupMatrix, heatColor } from './forgetting.js';
import { svgToPng } from './plots.js';

function runOf(dir: string, config: Record<string, unknown>, values: (number | null)[][], sets: string[]): RunRecord {
  const points = ['start', ...values[0].slice(1).map((_, i) => `${i + 1}:${['gaussian_noise', 'fog', 'original'][i] ?? 'snow'}`)];
  return {
    dir,
    summary: {
      config: { alg: 'tent', accumBn: false, seed: 1, setting: 'continual', ...config },
      domains: [{ domain: 'fog', severity: 5, n: 10, error: 20, correct: 8, batches: 1, seconds: 1, img_per_s: 1 }],
      mean_error: 20,
      mean_error_all: 20,
      complete: true,
      acc_matrix: { sets, n: sets.map(() => 10), points, after: points.map((_, i) => i - 1), values },
    },
  };
}

const A = [
  [90, 80, 70, 60],
  [null, 50, 40, 45],
];
const B = [
  [90, 84, 76, 70],
  [null, 40, 40, 35],
];

describe('forgetting in the report', () => {
  const g = groupRuns([
    runOf('/r/tent-1', { seed: 1 }, A, ['original', 'gaussian_noise@5']),
    runOf('/r/tent-2', { seed: 2 }, B, ['original', 'gaussian_noise@5']),
    runOf('/r/eata', { alg: 'eata', setting: 'gradual' }, [[88, 87]], ['original']),
  ]);

  it('averages the matrices over seeds cell by cell', () => {
    const m = groupMatrix(g.groups.find((x) => x.config.alg === 'tent')!)!;
    expect(m.seeds).toBe(2);
    expect(m.values).toEqual([
      [90, 82, 73, 65],
      [null, 45, 40, 40],
    ]);
  });

  it('table: avg acc, forgetting and BWT as mean ± std over seeds', () => {
    const md = forgettingMarkdown(g)!;
    // seed 1: avg (60 + 45)/2 = 52.5, F ((90−60) + (50−45))/2 = 17.5, B ((60−90) + (45−50))/2 = −17.5
    // seed 2: avg (70 + 35)/2 = 52.5, F ((90−70) + (40−35))/2 = 12.5, B ((70−90) + (35−40))/2 = −12.5
    const row = md.split('\n').find((l) => l.includes(' tent |'))!;
    expect(row).toContain('| 52.50 ± 0.00 | 15.00 ± 3.54 | -15.00 ± 3.54 | 2 × 4 |');
    expect(md.split('\n').find((l) => l.includes(' eata |'))).toContain('| 87.00 | 1.00 | -1.00 | 1 × 2 |');
  });

  it('forgetting.csv: the figures and the clean row per group', () => {
    const rows = forgettingCsv(g)!.trim().split('\n').map((l) => l.split(','));
    expect(rows[0]).toEqual(['label', 'n_seeds', 'avg_acc', 'avg_acc_std', 'forgetting', 'forgetting_std', 'bwt', 'bwt_std', 'sets', 'points', 'clean_accuracy']);
    const tent = rows.find((r) => r[0].endsWith(' tent'))!;
    expect(tent.slice(1, 5)).toEqual(['2', '52.5', '0', '15']);
    expect(tent[10]).toBe('90 82 73 65');
  });

  it('heat map: one cell per evaluated (set, point), blank where not evaluated, a colour bar; plain SVG only', () => {
    const svg = accMatrixSvg(g)!;
    expect(svg).not.toMatch(/clip-path|<clipPath|<mask|filter=|<style|rotate\(|matrix\(/);
    const cells = [...svg.matchAll(/<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="(12|16|22)" fill="(#[0-9a-f]{6})"/g)].map((m) => m[2]);
    // tent 2 × 4 cells + eata 1 × 2 cells
    expect(cells).toHaveLength(10);
    expect(cells.filter((c) => c === '#f4f4f4')).toHaveLength(1);
    expect(cells).toContain(heatColor(90));
    expect(svg).toContain('>clean</text>');
    expect(svg).toContain('>gauss s5</text>');
    expect(svg).toContain('acc (%)');
    expect(heatColor(0)).toBe('#440154');
    expect(heatColor(100)).toBe('#fde725');
    expect(heatColor(-5)).toBe(heatColor(0));
  });

  it('heat map and clean curve render to PNG', async () => {
    for (const svg of [accMatrixSvg(g)!, cleanCurveSvg(g)!]) {
      const png = await svgToPng(svg, 1);
      const meta = await sharp(png).metadata();
      expect(meta.width).toBe(1000);
      expect(meta.height).toBeGreaterThan(150);
    }
  });

  it('clean curve: a panel per setting, a line per method', () => {
    const svg = cleanCurveSvg(g)!;
    expect(svg).toContain('clean accuracy (%), continual');
    expect(svg).toContain('clean accuracy (%), gradual');
    expect(svg).toContain('steps done (% of the stream)');
  });

  it('nothing to draw without matrices', () => {
    const none = groupRuns([{ ...runOf('/r/x', {}, A, ['original', 'fog@5']), summary: { config: { alg: 'tent' }, domains: [], mean_error: 1, mean_error_all: 1, complete: true } }]);
    expect(accMatrixSvg(none)).toBe(null);
    expect(cleanCurveSvg(none)).toBe(null);
    expect(forgettingMarkdown(none)).toBe(null);
  });
});
