/**
 * End-to-end: the real `cta-eval` bin (built dist/) on a CIFAR-10-C-layout folder written here,
 * with the small RobustBench-architecture fixture weights.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CORRUPTIONS_15 } from '../../src/data/stream.js';
import { FIXTURE_WEIGHTS as WEIGHTS, makeCifarC, runBin } from './helpers.js';

const N = 6; // images per severity block
const cli = (args: string[]) => runBin('cta-eval', args);


let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N);
});

describe('cta-eval end to end', () => {
  it('runs norm over the 15 corruptions + clean and writes the run folder', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
    const r = await cli(['--data', 'cifar10c', '--data-dir', dataDir, '--model', 'resnext29', '--weights', WEIGHTS, '--alg', 'norm', '--severity', '1', '--n-examples', '100', '--shuffle', 'false', '--batch-size', '4', '--out', out, '--backend', 'wasm']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary.complete).toBe(true);
    expect(summary.config.alg).toBe('norm');
    expect(summary.domains).toHaveLength(16);
    expect(summary.domains.map((d: { domain: string }) => d.domain)).toEqual([...CORRUPTIONS_15, 'original']);
    for (const d of summary.domains) {
      expect(d.n).toBe(N);
      expect(d.error).toBeGreaterThanOrEqual(0);
      expect(d.error).toBeLessThanOrEqual(100);
      expect(d.severity).toBe(d.domain === 'original' ? null : 1);
    }
    const corr = summary.domains.slice(0, 15).map((d: { error: number }) => d.error);
    expect(summary.mean_error).toBeCloseTo(corr.reduce((a: number, b: number) => a + b, 0) / 15, 10);
    const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n');
    expect(lines).toHaveLength(16 * 2); // 6 images at batch 4 → 2 batches per domain
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    expect(manifest.backend).toBe('wasm');
    expect(manifest.weights_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(manifest.stream_fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(manifest.data_files.length).toBe(17);
    expect(r.stdout).toContain('mean (corruptions)');
  });

  it('bad flags give one error line and exit code 2', async () => {
    for (const args of [['--alg', 'tnet'], ['--batch-sise', '4'], ['--severity', '9'], ['--prune-q', '0.7']]) {
      const r = await cli([...args, '--weights', WEIGHTS, '--data-dir', dataDir]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^cta-eval: error: /);
    }
  });

  it('missing files name the file', async () => {
    const r1 = await cli(['--weights', '/nonexistent/w.safetensors', '--data-dir', dataDir, '--backend', 'wasm']);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toContain('/nonexistent/w.safetensors');
    const r2 = await cli(['--weights', WEIGHTS, '--data-dir', '/nonexistent/dir', '--backend', 'wasm']);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toContain('/nonexistent/dir');
    expect(r2.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('a wrong architecture for the weights lists the key mismatch', async () => {
    const r = await cli(['--model', 'wrn28_10', '--weights', WEIGHTS, '--data-dir', dataDir, '--backend', 'wasm']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/missing|unexpected/);
    expect(existsSync(WEIGHTS)).toBe(true);
  });
});
