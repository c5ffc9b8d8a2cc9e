/**
 * A closed stdout/stderr (`cta-eval … | head -2`) drops the output and nothing else: the run
 * finishes its folder and the bin exits as it would have; list commands exit 0 without a trace.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC } from './helpers.js';

const CORR = ['gaussian_noise', 'fog', 'contrast'];
let dataDir = '';
let work = '';

beforeAll(async () => {
  dataDir = await makeCifarC(8, CORR);
  work = mkdtempSync(join(tmpdir(), 'cta-stdio-'));
});

afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

/**
 * Runs bin/<name>.js with its stdout (and with `closeStderr` its stderr) read by a reader that
 * goes away: after the first chunk (like `head -1`), or at once (`closeAt: 'spawn'`).
 */
function runClosing(
  name: string,
  args: string[],
  opts: { closeAt: 'first-chunk' | 'spawn'; closeStderr?: boolean },
): Promise<{ code: number | null; signal: NodeJS.Signals | null; firstChunk: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', `${name}.js`), ...args], { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
    let firstChunk = '';
    let stderr = '';
    if (opts.closeAt === 'spawn') {
      child.stdout.destroy();
      if (opts.closeStderr) child.stderr.destroy();
    } else {
      child.stdout.once('data', (d: Buffer) => {
        firstChunk = d.toString();
        child.stdout.destroy();
        if (opts.closeStderr) child.stderr.destroy();
      });
    }
    if (!(opts.closeAt === 'spawn' && opts.closeStderr)) child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, firstChunk, stderr }));
  });
}

describe('closed stdout/stderr', () => {
  it('cta-eval | head -1: the run goes on, writes its whole folder and exits 0', async () => {
    const out = join(work, 'run');
    const r = await runClosing(
      'cta-eval',
      ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', CORR.join(','), '--batch-size', '4', '--backend', 'wasm', '--progress', 'plain', '--out', out],
      { closeAt: 'first-chunk' },
    );
    expect(r.firstChunk).toContain('cta-eval:');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const summary = JSON.parse(readFileSync(join(out, 'summary.json'), 'utf8'));
    expect(summary.complete).toBe(true);
    expect(summary.domains.map((d: { domain: string }) => d.domain)).toEqual([...CORR, 'original']);
    const manifest = JSON.parse(readFileSync(join(out, 'manifest.json'), 'utf8'));
    expect(manifest.finished).toBeTypeOf('string');
    expect(manifest.stream_fingerprint).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(join(out, 'batches.jsonl'), 'utf8').trim().split('\n')).toHaveLength(4 * 2);
  });

  it('cta-sweep --list into a closed pipe exits 0 without a stack trace', async () => {
    const r = await runClosing('cta-sweep', [join(ROOT, 'sweeps', 'cifar10-main.yaml'), '--list'], { closeAt: 'spawn' });
    expect(r.stderr).toBe('');
    expect(r.signal).toBe(null);
    expect(r.code).toBe(0);
  });

  it('cta-corrupt with stdout and stderr both closed still writes every file', async () => {
    const out = join(work, 'corrupt');
    const clean = join(dirname(dataDir), 'cifar-10-batches-bin', 'test_batch.bin');
    const r = await runClosing('cta-corrupt', ['--input', clean, '--corruptions', 'fog,contrast', '--out', out], { closeAt: 'spawn', closeStderr: true });
    expect(r.code).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['clean', 'contrast.npy', 'fog.npy', 'labels.npy', 'severities.json']);
    expect(existsSync(join(out, 'clean', 'test_batch.bin'))).toBe(true);
  });
});
