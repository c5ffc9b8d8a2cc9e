/**
 * End-to-end: --cache-budget-mb (docs/memory.md#cache-budget). Bad values and combinations end with
 * one error line naming the flag and exit 2, before any batch runs; a valid budget runs and logs
 * the per-layer kept fractions in batches.jsonl.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, makeCifarC, runBin } from './helpers.js';

let dataDir = '';
let work = '';
beforeAll(async () => {
  dataDir = await makeCifarC(8, ['gaussian_noise']);
  work = mkdtempSync(join(tmpdir(), 'cta-budget-'));
});
afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

const common = () => ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', 'gaussian_noise', '--no-clean-last', '--n-examples', '8', '--batch-size', '4', '--backend', 'wasm', '--threads', '1', '--progress', 'none'];

/** One `cta-eval: error: …` line on stderr, exit 2. */
function expectOneErrorLine(r: { code: number | null; stderr: string }, bin: string, pattern: RegExp): void {
  expect(r.code, r.stderr).toBe(2);
  const lines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('notice: '));
  expect(lines).toHaveLength(1);
  expect(lines[0].startsWith(`${bin}: error: `)).toBe(true);
  expect(lines[0]).toMatch(pattern);
}

describe('--cache-budget-mb', () => {
  it('refuses a non-positive or non-numeric budget', async () => {
    for (const v of ['0', 'lots']) {
      const r = await runBin('cta-eval', ['--alg', 'tent', '--accum-bn', '--cache-budget-mb', v, ...common(), '--out', join(work, `bad-${v}`)]);
      expectOneErrorLine(r, 'cta-eval', /--cache-budget-mb/);
    }
  });

  it('needs the MECTA norm layer, replaces --prune-q / --beta-thre, and --cache-budget-mode needs a budget', async () => {
    // the budget switches the layer on by itself; turning it off explicitly is refused
    let r = await runBin('cta-eval', ['--alg', 'eata', '--no-accum-bn', '--cache-budget-mb', '5', ...common(), '--out', join(work, 'no-mecta')]);
    expectOneErrorLine(r, 'cta-eval', /--cache-budget-mb only takes effect with --accum-bn/);
    r = await runBin('cta-eval', ['--alg', 'eata', '--accum-bn', '--prune-q', '0.7', '--cache-budget-mb', '5', ...common(), '--out', join(work, 'with-q')]);
    expectOneErrorLine(r, 'cta-eval', /--cache-budget-mb replaces --prune-q/);
    r = await runBin('cta-eval', ['--alg', 'eata', '--accum-bn', '--grad-checkpoint-segments', '2', '--cache-budget-mb', '5', ...common(), '--out', join(work, 'with-ckpt')]);
    expectOneErrorLine(r, 'cta-eval', /--cache-budget-mb does not combine with --grad-checkpoint-segments/);
    r = await runBin('cta-eval', ['--alg', 'eata', '--accum-bn', '--cache-budget-mode', 'spread', ...common(), '--out', join(work, 'mode-only')]);
    expectOneErrorLine(r, 'cta-eval', /--cache-budget-mode only takes effect with --cache-budget-mb/);
  });

  it('refuses a budget below the smallest achievable cache, saying the minimum (cta-eval and profile-mem)', async () => {
    const r = await runBin('cta-eval', ['--alg', 'tent', '--accum-bn', '--forget-gate', '--cache-budget-mb', '0.001', ...common(), '--out', join(work, 'tiny')]);
    expectOneErrorLine(r, 'cta-eval', /--cache-budget-mb: 0\.001 MB is below the smallest achievable cache, \d+\.\d{3} MB at batch size 4 /);
    const p = await runBin('profile-mem', ['--alg', 'tent', '--accum-bn', '--cache-budget-mb', '0.01', '--weights', FIXTURE_WEIGHTS, '--synthetic', '--batch-sizes', '2,8', '--backend', 'wasm', '--threads', '1']);
    expectOneErrorLine(p, 'profile-mem', /below the smallest achievable cache, \d+\.\d{3} MB at batch size (2|8) /);
  });

  it('a valid budget runs and logs the kept fraction per layer in batches.jsonl', async () => {
    const out = join(work, 'ok');
    // --accum-bn --forget-gate implied by the budget (src/config/load.ts)
    const r = await runBin('cta-eval', ['--alg', 'tent', '--cache-budget-mb', '0.3', ...common(), '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8')).config).toMatchObject({ accumBn: true, forgetGate: true, cacheBudgetMb: 0.3 });
    const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(2);
    for (const b of lines) {
      const kept = b.kept_ratio as number[];
      const cached = b.cached as boolean[];
      expect(kept).toHaveLength(cached.length);
      kept.forEach((k, i) => expect(k > 0).toBe(cached[i]));
      expect(b.cache_mb as number).toBeLessThanOrEqual(0.3);
      expect(b.measured_backprop_mb as number).toBeLessThanOrEqual(0.33);
    }
  });
});
