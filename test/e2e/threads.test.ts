/**
 * End-to-end: the threaded WASM build (`--threads 2`) starts under Node, the process exits when
 * the run ends (the Emscripten workers are unref'ed), and every number it writes is bit-identical
 * to the single-thread build's: EATA + MECTA (accumulated statistics, forget gate β per layer,
 * pruning, Fisher anchor) over a short stream.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_WEIGHTS, makeCifarC, runBin } from './helpers.js';

let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(8, ['gaussian_noise', 'fog']);
});

/** batches.jsonl without the wall-clock and process-history fields. */
function numbers(out: string): Record<string, unknown>[] {
  return readFileSync(join(out, 'batches.jsonl'), 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const { ms: _ms, measured_peak_mb: _peak, ...rest } = JSON.parse(l) as Record<string, unknown>;
      return rest;
    });
}

describe('--threads', () => {
  it('2 threads give the same numbers as 1', async () => {
    const outs: string[] = [];
    const manifests: Record<string, unknown>[] = [];
    for (const threads of ['1', '2']) {
      const out = join(mkdtempSync(join(tmpdir(), 'cta-threads-')), 'run');
      const r = await runBin('cta-eval', [
        '--data-dir', dataDir, '--corruptions', 'gaussian_noise,fog', '--weights', FIXTURE_WEIGHTS, '--backend', 'wasm',
        '--alg', 'eata', '--accum-bn', '--forget-gate', '--prune-q', '0.5', '--fisher-size', '8', '--batch-size', '4',
        '--severity', '3', '--threads', threads, '--out', out, '--progress', 'none',
      ]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      outs.push(out);
      manifests.push(JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')));
    }
    expect(manifests.map((m) => m.wasm_threads)).toEqual([1, 2]);
    const [a, b] = outs.map(numbers);
    expect(a.length).toBe(6); // 3 domains × 8 images at batch 4
    expect(b).toEqual(a);
    const sa = JSON.parse(readFileSync(join(outs[0], 'summary.json'), 'utf8'));
    const sb = JSON.parse(readFileSync(join(outs[1], 'summary.json'), 'utf8'));
    const errors = (s: { domains: { domain: string; error: number }[] }) => s.domains.map((d) => [d.domain, d.error]);
    expect(errors(sb)).toEqual(errors(sa));
  }, 120_000);

  it('rejects a thread count above the pre-created worker pool', async () => {
    const r = await runBin('cta-eval', ['--threads', '9', '--weights', FIXTURE_WEIGHTS, '--data-dir', dataDir]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/threads/);
  });
});
