/**
 * End-to-end: profile-mem's complete report (docs/memory.md#the-profile-mem-command): the
 * operation counts, process RSS and WASM heap columns, the method-state table, and gradient
 * checkpointing's columns and measured drop; cta-eval writing the method state to batches.jsonl;
 * and the refusals of a bad --grad-checkpoint-segments, each one line with exit 2.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, makeCifarC, runBin } from './helpers.js';

let dataDir = '';
let work = '';
beforeAll(async () => {
  dataDir = await makeCifarC(4, ['gaussian_noise']);
  work = mkdtempSync(join(tmpdir(), 'cta-profile-mem-'));
});
afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

interface Row {
  batch_size: number;
  measured_backprop_mb: number;
  gflops_forward: number;
  gflops_backward: number;
  rss_peak_mb: number;
  wasm_heap_mb: number;
  state_mb: Record<string, number>;
  checkpoint_segments?: number;
  checkpoint_inputs_mb?: number;
  recompute_max_mb?: number;
}

const BASE = ['--synthetic', '--batch-sizes', '2', '--weights', FIXTURE_WEIGHTS, '--backend', 'wasm'];

describe('profile-mem: operation counts, process memory, method state, checkpointing', () => {
  it('tent with and without --grad-checkpoint-segments 2', async () => {
    const rows: Row[] = [];
    for (const s of ['1', '2']) {
      const json = join(work, `tent-${s}.json`);
      const r = await runBin('profile-mem', [...BASE, '--alg', 'tent', '--grad-checkpoint-segments', s, '--json', json]);
      expect(r.code, r.stderr).toBe(0);
      for (const col of ['GFLOPs fwd', 'GFLOPs bwd', 'RSS peak MB', 'WASM heap MB', 'optimizer MB', 'reset snapshot MB']) expect(r.stdout).toContain(col);
      expect(r.stdout.includes('recompute max MB')).toBe(s === '2');
      rows.push((JSON.parse(readFileSync(json, 'utf8')) as { rows: Row[] }).rows[0]);
    }
    const [plain, ckpt] = rows;
    // the fixture ResNeXt at batch 2: test/fixtures/flops/flops.json's PyTorch counts
    const ref = (JSON.parse(readFileSync('test/fixtures/flops/flops.json', 'utf8')) as { models: Record<string, Record<string, number>> }).models.resnext_small;
    expect(plain.gflops_forward * 1e9).toBeCloseTo(ref.forward_train, 0);
    expect(plain.gflops_backward * 1e9).toBeCloseTo(ref.backward_norm, 0);
    expect(plain.rss_peak_mb).toBeGreaterThan(plain.wasm_heap_mb / 4);
    expect(plain.state_mb.optimizer).toBeGreaterThan(0);
    expect(plain.checkpoint_segments).toBeUndefined();
    // two blocks per stage: block 0 of each of the 3 stages is a checkpointed segment
    expect(ckpt.checkpoint_segments).toBe(3);
    expect(ckpt.checkpoint_inputs_mb).toBeGreaterThan(0);
    expect(ckpt.recompute_max_mb).toBeGreaterThan(0);
    expect(ckpt.measured_backprop_mb).toBeLessThan(plain.measured_backprop_mb);
    expect(ckpt.gflops_forward).toBeCloseTo(plain.gflops_forward, 12);
    expect(ckpt.gflops_backward).toBeGreaterThan(plain.gflops_backward); // the recomputed forwards
  });

  it('refuses a bad segment count and MECTA pruning with checkpointing, one line each', async () => {
    const zero = await runBin('profile-mem', [...BASE, '--alg', 'tent', '--grad-checkpoint-segments', '0']);
    expect(zero.code).toBe(2);
    expect(zero.stderr.trim().split('\n')).toHaveLength(1);
    expect(zero.stderr).toMatch(/--grad-checkpoint-segments/);
    const pruned = await runBin('profile-mem', [...BASE, '--alg', 'tent', '--accum-bn', '--prune-q', '0.5', '--grad-checkpoint-segments', '2']);
    expect(pruned.code).toBe(2);
    expect(pruned.stderr).toMatch(/--grad-checkpoint-segments > 1 does not combine with MECTA channel pruning \(--prune-q > 0\)/);
    expect(pruned.stderr).not.toMatch(/\n\s+at /);
    const scope = await runBin('profile-mem', [...BASE, '--alg', 'tent', '--grad-checkpoint-scope', 'model']);
    expect(scope.code).toBe(2);
    expect(scope.stderr.trim().split('\n')).toHaveLength(1);
    expect(scope.stderr).toMatch(/--grad-checkpoint-scope only takes effect with --grad-checkpoint-segments > 1/);
  });
});

describe('cta-eval: method state per batch', () => {
  it('batches.jsonl carries state_<kind>_mb for EATA', async () => {
    const out = join(work, 'run');
    const r = await runBin('cta-eval', ['--alg', 'eata', '--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', 'gaussian_noise', '--no-clean-last', '--n-examples', '4', '--batch-size', '2', '--fisher-size', '2', '--grad-checkpoint-segments', '2', '--backend', 'wasm', '--progress', 'none', '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(2);
    for (const l of lines) {
      expect(l.state_anchor_mb).toBeGreaterThan(0); // θ*
      expect(l.state_other_mb).toBeGreaterThan(0); // the Fisher diagonal
      expect(l.state_snapshot_mb).toBeGreaterThan(0);
      expect(typeof l.state_optimizer_mb).toBe('number');
    }
  });
});
