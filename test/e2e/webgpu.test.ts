/**
 * End-to-end on the webgpu backend (src/webgpu.ts): one short `cta-eval` Tent run on the fixture
 * weights. The run names its adapter in one notice line, records GPU bytes per batch, and its
 * per-batch numbers equal a WASM run's (to float32 round-off for the real-valued fields). Off a
 * GPU the adapter is Dawn's OpenGL ES backend on Mesa's software rasteriser. Skipped, saying
 * why, only where no WebGPU adapter (or the optional `webgpu` package) exists.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, makeCifarC, runBin } from './helpers.js';

/** initBackend's errors for "nothing to run on" (src/webgpu.ts, `unavailable: true`). */
const NO_ADAPTER = /--backend webgpu: (no WebGPU adapter found|only a software adapter|the optional npm package 'webgpu'|no Vulkan loader|@tensorflow\/tfjs-backend-webgpu failed to load)/;
/** Dawn's own start-up warnings (native stderr) and their source locations, not the program's. */
const DAWN_LINE = /^Warning: |^\s+at .*\.(cpp|h):\d+\)\s*$/;

let dataDir = '';
let work = '';
beforeAll(async () => {
  dataDir = await makeCifarC(8, ['gaussian_noise']);
  work = mkdtempSync(join(tmpdir(), 'cta-webgpu-'));
});
afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

type Line = Record<string, unknown>;
const lines = (out: string): Line[] =>
  readFileSync(join(out, 'batches.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Line);

/**
 * Fields that depend on the machine or the backend's kernels, not on the numbers computed (the
 * tape differs: WASM's ReLU saves a 1-bit mask where webgpu's saves its float output).
 */
const BACKEND_DEPENDENT = new Set(['ms', 'measured_peak_mb', 'measured_gpu_peak_mb', 'measured_backprop_mb']);

describe('cta-eval --backend webgpu', () => {
  it('runs Tent, names the adapter, records GPU bytes and matches the WASM run', async (ctx) => {
    const args = (backend: string, out: string) => [
      '--data-dir', dataDir, '--corruptions', 'gaussian_noise', '--weights', FIXTURE_WEIGHTS, '--alg', 'tent',
      '--batch-size', '4', '--severity', '2', '--backend', backend, '--out', out, '--progress', 'none',
    ];
    const gpuOut = join(work, 'webgpu');
    const r = await runBin('cta-eval', args('webgpu', gpuOut));
    const own = r.stderr.split('\n').filter((l) => l.trim() && !DAWN_LINE.test(l));
    if (r.code === 2 && NO_ADAPTER.test(own.join(' '))) {
      console.warn(`webgpu e2e: skipped: ${own.join(' ')}`);
      ctx.skip();
    }
    expect(r.code, r.stderr).toBe(0);
    expect(own, r.stderr).toEqual([]);
    const notices = r.stdout.split('\n').filter((l) => l.startsWith('notice:'));
    expect(notices).toHaveLength(1);
    expect(notices[0]).toMatch(/^notice: webgpu adapter: vendor .*, architecture .*\(Dawn/);
    const manifest = JSON.parse(readFileSync(join(gpuOut, 'manifest.json'), 'utf8'));
    expect(manifest.backend).toBe('webgpu');

    const wasmOut = join(work, 'wasm');
    const w = await runBin('cta-eval', [...args('wasm', wasmOut), '--threads', '1']);
    expect(w.code, w.stderr).toBe(0);
    const [g, c] = [lines(gpuOut), lines(wasmOut)];
    expect(g.length).toBe(4); // 2 domains (gaussian_noise, original) × 8 images at batch 4
    expect(c.length).toBe(g.length);
    g.forEach((row, i) => {
      expect(row.measured_gpu_peak_mb).toBeGreaterThan(0);
      for (const [k, v] of Object.entries(c[i])) {
        if (BACKEND_DEPENDENT.has(k)) continue;
        if (typeof v === 'number' && !Number.isInteger(v)) expect(row[k] as number, `batch ${i} ${k}`).toBeCloseTo(v, 4);
        else expect(row[k], `batch ${i} ${k}`).toEqual(v);
      }
    });
    const errors = (dir: string) => JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')).domains.map((d: { error: number }) => d.error);
    expect(errors(gpuOut)).toEqual(errors(wasmOut));
  }, 120_000);
});
