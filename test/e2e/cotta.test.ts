/**
 * End-to-end: `cta-eval --alg cotta` and `--alg cotta_bn` (built dist/) on a small CIFAR-10-C-layout
 * folder with the fixture ResNeXt weights, with few augmentations to keep it short: the run
 * completes, and CoTTA's counters reach batches.jsonl and summary.json.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_WEIGHTS as WEIGHTS, makeCifarC, runBin } from './helpers.js';

const N = 8; // images per severity block
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N, ['gaussian_noise', 'fog']);
});

describe('cta-eval --alg cotta / cotta_bn end to end', () => {
  for (const alg of ['cotta', 'cotta_bn'] as const) {
    it(`${alg}: two corruptions + clean`, async () => {
      const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
      // anchor threshold 1: every batch takes the augmentation-averaged teacher
      const r = await runBin('cta-eval', ['--data', 'cifar10c', '--data-dir', dataDir, '--model', 'resnext29', '--weights', WEIGHTS, '--alg', alg, '--optimizer', 'adam', '--lr', '0.001', '--cotta-augmentations', '2', '--cotta-anchor-threshold', '1', '--corruptions', 'gaussian_noise,fog', '--severity', '5', '--shuffle', 'false', '--batch-size', '4', '--out', out, '--backend', 'wasm', '--progress', 'none']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
      expect(summary.complete).toBe(true);
      expect(summary.config.alg).toBe(alg);
      expect(summary.domains.map((d: { domain: string }) => d.domain)).toEqual(['gaussian_noise', 'fog', 'original']);
      const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(lines).toHaveLength(3 * 2);
      const text = JSON.stringify(lines[0]);
      expect(text).toContain('augmented');
      expect(text).toContain('restored');
      expect(JSON.stringify(summary.domains[0])).toContain('augmented');
      // Passes (src/runner/pass-count.ts): the student's forward is the one differentiated; the
      // teacher, the anchor and the 2 augmented teacher copies add forwards only.
      expect(lines[0].backwards).toBe(4);
      expect(lines[0].forwards).toBeGreaterThanOrEqual(4 * 4);
      expect(summary.domains[0].forwards).toBe(lines[0].forwards + lines[1].forwards);
    }, 180_000);
  }
});
