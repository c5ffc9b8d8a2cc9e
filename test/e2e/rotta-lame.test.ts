/**
 * End-to-end: `cta-eval --alg rotta` and `--alg lame` (built dist/) on a small CIFAR-10-C-layout
 * folder with the fixture ResNeXt weights: the runs complete, the methods' counters reach
 * batches.jsonl and summary.json, both refuse the MECTA norm layer with one line, exit 2, a RoTTA
 * run killed at a domain boundary resumes to the uninterrupted numbers (teacher, memory bank,
 * optimizer and augmentation stream in the checkpoint), and profile-mem measures both.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FIXTURE_WEIGHTS as WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';

const N = 8; // images per severity block
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N, ['gaussian_noise', 'fog']);
});

const common = () => ['--data', 'cifar10c', '--data-dir', dataDir, '--model', 'resnext29', '--weights', WEIGHTS, '--corruptions', 'gaussian_noise,fog', '--severity', '5', '--shuffle', 'false', '--batch-size', '4', '--backend', 'wasm', '--threads', '1', '--progress', 'none'];

function readRun(out: string) {
  const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
  const lines = readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  return { summary, lines };
}

describe('cta-eval --alg rotta / lame end to end', () => {
  it('rotta: two corruptions + clean, an update every batch', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
    const r = await runBin('cta-eval', [...common(), '--config', 'configs/cifar10/rotta.yaml', '--rotta-memory-size', '6', '--rotta-update-frequency', '4', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const { summary, lines } = readRun(out);
    expect(summary.complete).toBe(true);
    expect(summary.config).toMatchObject({ alg: 'rotta', optimizer: 'adam', lr: 0.001, batchSize: 4, rottaMemorySize: 6, rottaUpdateFrequency: 4 });
    expect(summary.domains.map((d: { domain: string }) => d.domain)).toEqual(['gaussian_noise', 'fog', 'original']);
    expect(lines).toHaveLength(3 * 2);
    for (const l of lines) {
      expect(l.updates).toBe(1);
      expect(l.bank).toBeGreaterThan(0);
      expect(l.bank).toBeLessThanOrEqual(6);
    }
    expect(summary.domains[0].model_updates).toBe(2);
    expect(summary.domains[0].updates).toBe(2); // the runner's batches that stepped
    expect(summary.domains[0].admitted).toBe(lines[0].admitted + lines[1].admitted);
  }, 180_000);

  it('lame: two corruptions + clean, nothing trained', async () => {
    const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
    const r = await runBin('cta-eval', [...common(), '--config', 'configs/cifar10/lame.yaml', '--batch-size', '4', '--lame-affinity', 'knn', '--lame-knn', '2', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const { summary, lines } = readRun(out);
    expect(summary.complete).toBe(true);
    expect(summary.config).toMatchObject({ alg: 'lame', lameAffinity: 'knn', lameKnn: 2 });
    expect(lines).toHaveLength(3 * 2);
    for (const l of lines) {
      expect(l.lameSteps).toBeGreaterThanOrEqual(3);
      expect(l.updated).toBe(false);
    }
    expect(summary.domains[0].lame_steps).toBe(lines[0].lameSteps + lines[1].lameSteps);
  }, 180_000);

  for (const alg of ['rotta', 'lame']) {
    it(`${alg} --accum-bn: one line, exit 2`, async () => {
      const out = join(mkdtempSync(join(tmpdir(), 'cta-out-')), 'run');
      const r = await runBin('cta-eval', [...common(), '--alg', alg, '--accum-bn', '--out', out]);
      expect(r.code).toBe(2);
      const errLines = r.stderr.trim().split('\n').filter((l) => !l.startsWith('notice:'));
      expect(errLines).toHaveLength(1);
      expect(errLines[0]).toMatch(/accum-bn/);
    }, 120_000);
  }

  it('rotta: a run killed after domain 2 and resumed gives the uninterrupted batch log', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'cta-resume-'));
    const args = [...common(), '--config', 'configs/cifar10/rotta.yaml', '--batch-size', '4', '--rotta-memory-size', '6', '--rotta-update-frequency', '3'];
    const whole = join(tmp, 'whole');
    const cut = join(tmp, 'cut');
    expect((await runBin('cta-eval', [...args, '--out', whole])).code).toBe(0);
    const killed = await runBin('cta-eval', [...args, '--out', cut], {
      CTA_TEST_EXIT_AFTER_DOMAIN: '2',
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(ROOT, 'test/e2e/exit-after-domain.mjs')).href}`.trim(),
    });
    expect(killed.code).toBe(99);
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'none']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    const lines = (dir: string) => readFileSync(join(dir, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => ({ ...JSON.parse(l), ms: 0, measured_peak_mb: 0 }));
    const cutLines = lines(cut);
    expect(cutLines).toHaveLength(6);
    expect(cutLines).toEqual(lines(whole));
  }, 180_000);

  it('profile-mem --alg rotta / lame: one row each, rotta taking its update', async () => {
    for (const alg of ['rotta', 'lame']) {
      const json = join(mkdtempSync(join(tmpdir(), 'cta-prof-')), 'p.json');
      const r = await runBin('profile-mem', ['--model', 'resnext29', '--weights', WEIGHTS, '--alg', alg, '--synthetic', '--batch-sizes', '4', '--rotta-update-frequency', '4', '--backend', 'wasm', '--json', json]);
      expect(r.code, r.stderr).toBe(0);
      const rows = JSON.parse(readFileSync(json, 'utf8')).rows;
      expect(rows).toHaveLength(1);
      expect(rows[0].error).toBeUndefined();
      expect(rows[0].updated).toBe(alg === 'rotta');
      if (alg === 'rotta') expect(rows[0].measured_backprop_mb).toBeGreaterThan(0);
      else expect(rows[0].measured_backprop_mb).toBe(0);
    }
  }, 180_000);
});
