/**
 * End-to-end: `cta-eval --alg sar` and `--alg deyo` (built dist/) on a small CIFAR-10-C-layout
 * folder with the fixture ResNeXt weights: the run completes, and the methods' counters reach
 * batches.jsonl and summary.json.
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

describe('cta-eval --alg sar / deyo end to end', () => {
  for (const [alg, extra] of [
    ['sar', ['--sar-margin-e0', '1.3', '--sam-rho', '0.05']],
    ['deyo', ['--deyo-margin', '1.3', '--plpd-threshold', '0.05', '--patch-len', '4']],
  ] as const) {
    it(`${alg}: two corruptions + clean`, async () => {
      const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
      const r = await runBin('cta-eval', ['--data', 'cifar10c', '--data-dir', dataDir, '--model', 'resnext29', '--weights', WEIGHTS, '--alg', alg, ...extra, '--corruptions', 'gaussian_noise,fog', '--lr', '0.01', '--severity', '5', '--shuffle', 'false', '--batch-size', '4', '--out', out, '--backend', 'wasm', '--progress', 'none']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
      expect(summary.complete).toBe(true);
      expect(summary.config.alg).toBe(alg);
      expect(summary.domains.map((d: { domain: string }) => d.domain)).toEqual(['gaussian_noise', 'fog', 'original']);
      const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      expect(lines).toHaveLength(3 * 2);
      expect(JSON.stringify(lines[0])).toContain('reliable');
      // Passes (src/runner/pass-count.ts): SAR's SAM differentiates two forwards; DeYO forwards x and
      // its patch-shuffled copy and differentiates the forward of the samples it keeps.
      for (const l of lines) expect(l.forwards).toBeGreaterThanOrEqual(alg === 'sar' ? 4 : 8);
      expect(summary.domains[0].backwards).toBe(lines[0].backwards + lines[1].backwards);
    }, 120_000);
  }
});
