/**
 * `cta-eval --resume`: a run killed at a domain boundary and resumed gives the same numbers as an
 * uninterrupted one (model + MECTA statistics, optimizer and EATA state, every rng, stream order).
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';

const CORR = ['gaussian_noise', 'fog', 'contrast'];
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(12, CORR);
});

const read = (dir: string, f: string) => readFileSync(join(dir, f), 'utf8');
/** Preloaded into a run to exit (code 99) after a domain's checkpoint, as a crash there would. */
const crashAfterDomain = (domain: number) => ({
  CTA_TEST_EXIT_AFTER_DOMAIN: String(domain),
  NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(ROOT, 'test/e2e/exit-after-domain.mjs')).href}`.trim(),
});

describe.each([
  ['tent + MECTA (forget gate, beta-thre, prune-q)', ['--alg', 'tent', '--accum-bn', '--forget-gate', '--beta-thre', '0.01', '--prune-q', '0.5', '--lr', '0.01']],
  ['eata', ['--alg', 'eata', '--fisher-size', '8', '--e-margin', '2.2', '--lr', '0.01']],
  // the budget's plan is ordered by the last forward's β, which the checkpoint keeps (docs/memory.md#cache-budget)
  ['tent + MECTA + cache budget', ['--alg', 'tent', '--accum-bn', '--forget-gate', '--cache-budget-mb', '0.3', '--lr', '0.01']],
])('resume: %s', (_label, algArgs) => {
  it('gives the same summary and batch log as an uninterrupted run', async () => {
    const base = ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', CORR.join(','), '--batch-size', '4', '--backend', 'wasm', '--progress', 'none', ...algArgs];
    const tmp = mkdtempSync(join(tmpdir(), 'cta-resume-'));
    const whole = join(tmp, 'whole');
    const cut = join(tmp, 'cut');
    expect((await runBin('cta-eval', [...base, '--out', whole])).code).toBe(0);
    const killed = await runBin('cta-eval', [...base, '--out', cut], crashAfterDomain(2));
    expect(killed.code).toBe(99);
    expect(JSON.parse(read(cut, 'summary.json')).complete).toBe(false);
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'none']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('resuming');
    const a = JSON.parse(read(whole, 'summary.json'));
    const b = JSON.parse(read(cut, 'summary.json'));
    expect(b.complete).toBe(true);
    // Wall time and the engine's step peak depend on the process's history (e.g. when flipped conv
    // filters are first built), not on the run's state; everything else must be identical.
    const strip = (d: Record<string, unknown>) => ({ ...d, seconds: 0, img_per_s: 0, measured_max_peak_mb: 0 });
    expect(b.domains.map(strip)).toEqual(a.domains.map(strip));
    expect(b.mean_error).toBe(a.mean_error);
    const lines = (dir: string) => read(dir, 'batches.jsonl').trim().split('\n').map((l) => ({ ...JSON.parse(l), ms: 0, measured_peak_mb: 0 }));
    expect(lines(cut)).toEqual(lines(whole));
    expect(JSON.parse(read(cut, 'manifest.json')).stream_fingerprint).toBe(JSON.parse(read(whole, 'manifest.json')).stream_fingerprint);
  });
});

describe('resume errors', () => {
  it('refuses extra options and folders without a checkpoint', async () => {
    const r1 = await runBin('cta-eval', ['--resume', '/nonexistent', '--alg', 'tent']);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toContain('--resume takes no other options');
    const r2 = await runBin('cta-eval', ['--resume', '/nonexistent']);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toContain('no manifest.json');
  });
});
