/**
 * Ctrl-C / SIGTERM during `cta-eval`: it stops at the next batch, prints one line (what finished,
 * the exact `cta-eval --resume DIR`), exits 130 / 143 and leaves no temporary folder; the resumed
 * run ends with the results of an uninterrupted one. `--resume` on a finished run re-runs nothing,
 * and a checkpoint `.tmp` left by a failed write is removed with a notice.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';

const CORR = ['gaussian_noise', 'fog', 'contrast'];
const DOMAINS = CORR.length + 1; // + original
let dataDir = '';
let work = '';
/** The children's TMPDIR: whatever a run leaves in os.tmpdir() shows up here. */
let childTmp = '';

beforeAll(async () => {
  dataDir = await makeCifarC(24, CORR);
  work = mkdtempSync(join(tmpdir(), 'cta-interrupt-'));
  childTmp = join(work, 'tmp');
  mkdirSync(childTmp);
});

afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) rmSync(work, { recursive: true, force: true });
});

const base = (out: string, extra: string[] = []) => [
  '--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', CORR.join(','), '--batch-size', '4', '--backend', 'wasm',
  '--progress', 'plain', '--alg', 'tent', '--accum-bn', '--forget-gate', '--beta-thre', '0.01', '--lr', '0.01', ...extra, '--out', out,
];
const env = () => ({ TMPDIR: childTmp });
const read = (dir: string, f: string) => readFileSync(join(dir, f), 'utf8');

/** Runs cta-eval and sends `signal` once its stdout matches `when`. */
function runAndSignal(args: string[], when: RegExp, signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'bin', 'cta-eval.js'), ...args], { cwd: work, env: { ...process.env, ...env() }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let sent = false;
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (!sent && when.test(stdout)) {
        sent = true;
        child.kill(signal);
      }
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code, sig) => resolve({ code, signal: sig, stdout, stderr }));
  });
}

/** Same numbers, ignoring wall time and the process-history-dependent engine peak (resume.test.ts). */
function expectSameResults(dir: string, reference: string) {
  const strip = (d: Record<string, unknown>) => ({ ...d, seconds: 0, img_per_s: 0, measured_max_peak_mb: 0 });
  const a = JSON.parse(read(reference, 'summary.json'));
  const b = JSON.parse(read(dir, 'summary.json'));
  expect(b.complete).toBe(true);
  expect(b.domains.map(strip)).toEqual(a.domains.map(strip));
  expect(b.mean_error).toBe(a.mean_error);
  const lines = (d: string) => read(d, 'batches.jsonl').trim().split('\n').map((l) => ({ ...JSON.parse(l), ms: 0, measured_peak_mb: 0 }));
  expect(lines(dir)).toEqual(lines(reference));
  expect(JSON.parse(read(dir, 'manifest.json')).stream_fingerprint).toBe(JSON.parse(read(reference, 'manifest.json')).stream_fingerprint);
}

describe('cta-eval interrupts and --resume', () => {
  const whole = () => join(work, 'whole');

  it('an uninterrupted reference run', async () => {
    const r = await runBin('cta-eval', base(whole()), env());
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('SIGTERM after the first domain: one line with the resume command, exit 143; --resume ends as the uninterrupted run', async () => {
    const cut = join(work, 'cut');
    const r = await runAndSignal(base(cut), new RegExp(`\\[1/${DOMAINS}\\] ${CORR[0]} error`), 'SIGTERM');
    expect(r.signal).toBe(null);
    expect(r.code).toBe(143);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^cta-eval: interrupted \(SIGTERM\)/);
    expect(lines[0]).toMatch(new RegExp(`[1-3] of ${DOMAINS} domains finished`));
    expect(lines[0]).toContain(`cta-eval --resume ${cut}`);
    expect(JSON.parse(read(cut, 'summary.json')).complete).toBe(false);
    expect(readdirSync(childTmp)).toEqual([]);

    // A checkpoint write that failed half-way leaves its .tmp: the resume removes it and says so.
    writeFileSync(join(cut, 'checkpoint.safetensors.tmp'), 'half a file');
    writeFileSync(join(cut, 'checkpoint.json.tmp'), '{"version": 1, "nextDo');
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'plain'], env());
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('resuming');
    expect(resumed.stdout).toMatch(/notice: removed .*checkpoint\.safetensors\.tmp/);
    expect(existsSync(join(cut, 'checkpoint.safetensors.tmp'))).toBe(false);
    expect(existsSync(join(cut, 'checkpoint.json.tmp'))).toBe(false);
    expectSameResults(cut, whole());
    expect(readdirSync(childTmp)).toEqual([]);
  });

  it('SIGINT while the run starts (backend, weights): one line, exit 130, no temporary folder left', async () => {
    const cut = join(work, 'early');
    const r = await runAndSignal([...base(cut), '--threads', '2'], /^cta-eval: tent\+mecta/m, 'SIGINT');
    expect(r.signal).toBe(null);
    expect(r.code).toBe(130);
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^cta-eval: interrupted \(SIGINT\)/);
    expect(readdirSync(childTmp)).toEqual([]);
  });

  it('--resume on a complete run says so, exits 0 and runs no domain', async () => {
    const before = read(whole(), 'batches.jsonl');
    const summary = read(whole(), 'summary.json');
    const r = await runBin('cta-eval', ['--resume', whole(), '--progress', 'plain'], env());
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/already complete/);
    expect(r.stdout).not.toMatch(/\[\d+\/\d+\] \S+ error/);
    expect(read(whole(), 'batches.jsonl')).toBe(before);
    expect(read(whole(), 'summary.json')).toBe(summary);
  });

  it('SIGTERM during the --compare-with run: --resume finishes the comparison only', async () => {
    const ref = join(work, 'cmp-whole');
    expect((await runBin('cta-eval', base(ref, ['--compare-with', 'norm']), env())).code).toBe(0);
    const cut = join(work, 'cmp-cut');
    const r = await runAndSignal(base(cut, ['--compare-with', 'norm']), new RegExp(`norm \\[1/${DOMAINS}\\] ${CORR[0]} error`), 'SIGTERM');
    expect(r.code).toBe(143);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain(`cta-eval --resume ${cut}`);
    expect(JSON.parse(read(cut, 'summary.json')).complete).toBe(true);
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'plain'], env());
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    // the main run is not run again
    expect(resumed.stdout).not.toMatch(/tent\+mecta \[\d+\/\d+\] \S+ error/);
    expectSameResults(cut, ref);
    expectSameResults(join(cut, 'compare-norm'), join(ref, 'compare-norm'));
    expect(resumed.stdout).toContain('mean (corruptions)');
  });
});
