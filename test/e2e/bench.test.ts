/**
 * `npm run bench` end to end on tiny batches (the real sizes take minutes): the JSON lines, the
 * table, the target lines and the convolution ceiling. The PyTorch side is left out
 * (--no-compare-torch): the tests must not need Python.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { ROOT, runCommand } from './helpers.js';


describe('bench', () => {
  it('measures each mode in its own process and prints the table, targets and ceiling', async () => {
    const args = ['--models', 'resnext29', '--batches', '2', '--modes', 'inference,eata,eata+mecta', '--reps', '1', '--warmup', '0', '--threads', '1'];
    const r = await runCommand(process.execPath, [join(ROOT, 'scripts/bench.mjs'), ...args, '--no-jpeg', '--no-compare-torch']);
    expect(r.code).toBe(0);
    const rows = r.stdout
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    const measured = rows.filter((x) => x.mode);
    expect(measured.map((x) => x.mode)).toEqual(['inference', 'eata', 'eata+mecta']);
    for (const x of measured) {
      expect(x).toMatchObject({ status: 'ok', backend: 'wasm', threads: 1, batch: 2, leakedTensors: 0 });
      expect(x.imgPerSecMed).toBeGreaterThan(0);
    }
    expect(measured[2].cachedLayersMean).toBe(31); // every MECTA layer cached on the first steps
    expect(measured[2].stepPeakBytes).toBeLessThan(measured[1].stepPeakBytes); // MECTA caches less
    // The convolution ceiling child records every Conv2D call of the ResNeXt-29 forward: stem + 9
    // blocks × (reduce, grouped 3×3 as 4 per-group calls, expand) + 3 projections.
    const ceiling = rows.find((x) => x.kind === 'conv-ceiling');
    expect(ceiling).toMatchObject({ status: 'ok', threads: 1, batch: 2, convCalls: 1 + 9 * 6 + 3 });
    const grouped = ceiling.shapes.find((s: { x: number[]; filter: number[] }) => s.x[3] === 32 && s.filter[0] === 3 && s.filter[3] === 32);
    expect(grouped).toMatchObject({ x: [2, 32, 32, 32], stride: 1, pad: 1, calls: 12 });
    expect(ceiling.shapes.filter((s: { stride: number }) => s.stride === 2).length).toBeGreaterThan(0);
    const gflop = ceiling.shapes.reduce((a: number, s: { gflop: number; calls: number }) => a + s.gflop * s.calls, 0);
    expect(ceiling.convGflop).toBeCloseTo(gflop, 2);
    expect(ceiling.convGflop).toBeGreaterThan(2 * 2.0); // ≈ 1.07 G multiply-adds per 32×32 image
    expect(ceiling.convMs).toBeGreaterThan(0);
    expect(ceiling.gemm.gflopPerS).toBeGreaterThan(0);
    expect(r.stdout).toContain('| wasm 1 thr | resnext29 | 2 | eata+mecta |');
    expect(r.stdout).toMatch(/target: wasm 1 thr: EATA\+MECTA faster than EATA, resnext29 b2: wall /);
    expect(r.stdout).toMatch(/\| TF\.js wasm \| 1 \| 58 \| \d+ \|/);
    expect(r.stderr).toContain('--reps 1 < 5');
  }, 300_000);
});
