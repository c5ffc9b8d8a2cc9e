/**
 * End-to-end: a command line written for the MECTA reference implementation, pasted as typed
 * (snake_case, --flag=True, its data / model names), runs the built cta-eval with the same meaning,
 * and each MECTA alias prints one notice naming our spelling.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, makeCifarC, runBin } from './helpers.js';

const MECTA_LINE = '--data=cifar10 --alg=eata --model=rb_ResNeXt29_32x4d --batch_size=16 --lr=0.0025 --accum_bn=True --forget_gate=True --beta_thre=0.005 --prune_q=0.7';

let dataDir = '';
let work = '';
beforeAll(async () => {
  dataDir = await makeCifarC(4, ['gaussian_noise']);
  work = mkdtempSync(join(tmpdir(), 'cta-mecta-cli-'));
});
afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("MECTA's command line", () => {
  it('runs as typed: the resolved config is EATA + MECTA on cifar10c with resnext29', async () => {
    const out = join(work, 'run');
    const extra = ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', 'gaussian_noise', '--n-examples', '4', '--fisher-size', '4', '--backend', 'wasm', '--threads', '1', '--progress', 'none', '--out', out];
    const r = await runBin('cta-eval', [...MECTA_LINE.split(' '), ...extra]);
    expect(r.code, r.stderr).toBe(0);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as { config: Record<string, unknown> };
    expect(manifest.config).toMatchObject({
      data: 'cifar10c',
      alg: 'eata',
      model: 'resnext29',
      batchSize: 16,
      lr: 0.0025,
      accumBn: true,
      forgetGate: true,
      betaThre: 0.005,
      pruneQ: 0.7,
    });
    // One notice per alias, each with our spelling; snake_case itself is just another spelling.
    const notices = r.stderr.split('\n').filter((l) => l.startsWith('notice: '));
    expect(notices).toEqual([
      "notice: --data cifar10 is MECTA's name; using --data cifar10c",
      "notice: --model rb_ResNeXt29_32x4d is MECTA's name; using --model resnext29",
    ]);
  });

  it('--level and --alg src|bn are MECTA names too', async () => {
    const out = join(work, 'run-bn');
    const r = await runBin('cta-eval', ['--alg', 'bn', '--level=3', '--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', 'gaussian_noise', '--no-clean-last', '--n-examples', '4', '--batch_size', '4', '--backend', 'wasm', '--threads', '1', '--progress', 'none', '--out', out]);
    expect(r.code, r.stderr).toBe(0);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8')) as { config: Record<string, unknown> };
    expect(manifest.config).toMatchObject({ alg: 'norm', severity: 3, batchSize: 4, cleanLast: false });
    expect(r.stderr).toContain("notice: --alg bn is MECTA's name; using --alg norm\n");
    expect(r.stderr).toContain("notice: --level is MECTA's name; using --severity\n");
  });

  it('a boolean value that is not true/false/1/0/yes/no is one error line, exit 2', async () => {
    const r = await runBin('cta-eval', ['--accum_bn=Ture', '--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('cta-eval: error: --accum-bn: expected true or false (also 1/0, yes/no), got "Ture"\n');
  });
});
