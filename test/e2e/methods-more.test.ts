/**
 * End-to-end: `cta-eval --alg roid | rdumb | bn_alpha | memo` (built dist/) on a small
 * CIFAR-10-C-layout folder with the fixture ResNeXt weights: each run completes, the methods'
 * counters reach batches.jsonl and summary.json, and the runner's pass counts show the extra
 * forwards (ROID's augmented copies, MEMO's views and post-update prediction); `memo` and `bn_alpha`
 * refuse --accum-bn with one line and exit 2.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_WEIGHTS as WEIGHTS, makeCifarC, runBin } from './helpers.js';

const N = 4; // images per severity block
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N, ['gaussian_noise', 'fog']);
});

const common = () => ['--data', 'cifar10c', '--data-dir', dataDir, '--model', 'resnext29', '--weights', WEIGHTS, '--corruptions', 'gaussian_noise,fog', '--severity', '5', '--shuffle', 'false', '--batch-size', '2', '--backend', 'wasm', '--threads', '1', '--progress', 'none'];

type Line = Record<string, number>;

describe('cta-eval --alg roid / rdumb / bn_alpha / memo end to end', () => {
  const cases: [string, string[], (lines: Line[], summary: Record<string, unknown>) => void][] = [
    ['roid', ['--lr', '0.001', '--optimizer', 'adam'], (lines) => {
      // the batch, then one augmented copy of each kept sample
      for (const l of lines) expect(l.forwards).toBe(2 + l.augmented);
      expect(lines.some((l) => l.kept > 0)).toBe(true);
    }],
    ['rdumb', ['--rdumb-base', 'eta', '--rdumb-steps', '2', '--e-margin', '2.3', '--lr', '0.001'], (lines, summary) => {
      expect(lines.map((l) => l.rdumbResets)).toEqual([0, 1, 0, 1, 0, 1]);
      const d = (summary.domains as Record<string, number>[])[0];
      expect(d.rdumb_resets).toBe(1);
    }],
    ['bn_alpha', ['--bn-alpha', '0.1'], (lines) => {
      for (const l of lines) expect(l.backwards).toBe(0);
    }],
    ['memo', ['--memo-augmentations', '3', '--lr', '0.005', '--nesterov'], (lines) => {
      // per sample: 3 views (differentiated) and the post-update prediction
      for (const l of lines) {
        expect(l.views).toBe(6);
        expect(l.forwards).toBe(2 * (3 + 1));
        expect(l.backwards).toBe(6);
      }
    }],
  ];
  for (const [alg, extra, check] of cases) {
    it(`${alg}: two corruptions + clean`, async () => {
      const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
      const r = await runBin('cta-eval', [...common(), '--alg', alg, ...extra, '--out', out]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
      expect(summary.complete).toBe(true);
      expect(summary.config.alg).toBe(alg);
      expect(summary.domains.map((d: { domain: string }) => d.domain)).toEqual(['gaussian_noise', 'fog', 'original']);
      const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Line);
      expect(lines).toHaveLength(3 * 2);
      check(lines, summary);
    }, 120_000);
  }

  for (const alg of ['memo', 'bn_alpha']) {
    it(`${alg} refuses --accum-bn with one line`, async () => {
      const r = await runBin('cta-eval', [...common(), '--alg', alg, '--accum-bn', '--out', join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run')]);
      expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/accum-bn/);
    }, 60_000);
  }
});
