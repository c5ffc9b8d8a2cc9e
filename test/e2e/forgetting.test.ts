/**
 * `cta-eval --interleave-clean` end to end (docs/protocol.md#forgetting): the accuracy matrix in
 * summary.json, evaluations that change nothing about the adapting run, resume equality, the
 * stream fingerprint, the protocol record in every output, and cta-report's forgetting figures.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';
import { forgettingMetrics } from '../../src/runner/forgetting.js';

const CORR = ['gaussian_noise', 'fog'];
const N = 24;
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N, CORR);
});

const json = (dir: string, f: string) => JSON.parse(readFileSync(join(dir, f), 'utf8'));
type Entry = { domain: string; error: number; n: number };

async function run(args: string[], env: Record<string, string> = {}, expectCode = 0): Promise<{ out: string; stdout: string }> {
  const out = join(mkdtempSync(join(tmpdir(), 'cta-forget-')), 'run');
  const base = ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', CORR.join(','), '--batch-size', '8', '--backend', 'wasm', '--progress', 'none', '--out', out];
  const r = await runBin('cta-eval', [...base, ...args], env);
  if (expectCode === 0) expect(r.stderr).toBe('');
  expect(r.code).toBe(expectCode);
  return { out, stdout: r.stdout };
}

const TENT = ['--alg', 'tent', '--lr', '0.01'];

describe('cta-eval --interleave-clean', () => {
  let plain = '';
  let inter = '';
  let interStdout = '';
  beforeAll(async () => {
    plain = (await run(TENT)).out;
    const r = await run([...TENT, '--interleave-clean', '--interleave-seen', '--clean-eval-n', '16']);
    inter = r.out;
    interStdout = r.stdout;
  });

  it('writes the accuracy matrix: clean before the first step and after every step, visited domains after theirs', () => {
    const s = json(inter, 'summary.json');
    const m = s.acc_matrix;
    expect(m.sets).toEqual(['original', 'gaussian_noise@5', 'fog@5']);
    expect(m.n).toEqual([16, 16, 16]);
    expect(m.points).toEqual(['start', '1:gaussian_noise', '2:fog', '3:original']);
    expect(m.after).toEqual([-1, 0, 1, 2]);
    const filled = m.values.map((row: (number | null)[]) => row.map((v) => v !== null));
    expect(filled).toEqual([
      [true, true, true, true],
      [false, true, true, true],
      [false, false, true, true],
    ]);
    // Accuracies of 16 images each: multiples of 100/16.
    for (const v of m.values.flat()) if (v !== null) expect(Math.abs((v * 16) / 100 - Math.round((v * 16) / 100))).toBeLessThan(1e-9);
    const f = forgettingMetrics(m.values);
    expect(s.avg_acc).toBe(f.avg_acc);
    expect(s.forgetting).toBe(f.forgetting);
    expect(s.bwt).toBe(f.bwt);
    expect(s.clean_accuracy.map((c: { acc: number }) => c.acc)).toEqual(m.values[0]);
  });

  it('evaluating changes nothing about the adapting run: the same errors, batch by batch', () => {
    const [a, b] = [plain, inter].map((d) => json(d, 'summary.json').domains.map((e: Entry) => [e.domain, e.n, e.error]));
    expect(b).toEqual(a);
    const lines = (d: string) => readFileSync(join(d, 'batches.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).correct);
    expect(lines(inter)).toEqual(lines(plain));
    // …while the fingerprint records what was evaluated.
    expect(json(inter, 'manifest.json').stream_fingerprint).not.toBe(json(plain, 'manifest.json').stream_fingerprint);
  });

  it('source does not adapt: every clean evaluation equals the source accuracy', async () => {
    const { out } = await run(['--alg', 'source', '--interleave-clean']);
    const s = json(out, 'summary.json');
    const clean = s.domains.find((d: Entry) => d.domain === 'original');
    expect(s.acc_matrix.sets).toEqual(['original']);
    expect(s.acc_matrix.n).toEqual([N]);
    for (const v of s.acc_matrix.values[0]) expect(v).toBeCloseTo(100 - clean.error, 10);
    expect(s.forgetting).toBeCloseTo(0, 10);
    expect(s.bwt).toBeCloseTo(0, 10);
    // --interleave-seen alone: no column before the first step (nothing visited yet).
    const seen = json((await run(['--alg', 'source', '--interleave-seen'])).out, 'summary.json').acc_matrix;
    expect(seen.points).toEqual(['1:gaussian_noise', '2:fog', '3:original']);
    expect(seen.sets).toEqual(['gaussian_noise@5', 'fog@5', 'original']);
    const errs = s.domains.map((d: Entry) => 100 - d.error);
    expect(seen.values.map((row: (number | null)[]) => row.at(-1))).toEqual(errs.map((e: number) => expect.closeTo(e, 10)));
  });

  it('states the protocol in the end table, summary.json and manifest.json', () => {
    const p = json(inter, 'summary.json').protocol;
    expect(p).toEqual(json(inter, 'manifest.json').protocol);
    expect(p).toMatchObject({ setting: 'continual', images_per_domain: String(N), severity: '5', reset: 'never', batch_size: 8, model: 'resnext29' });
    expect(p.weights_sha256).toMatch(/^[0-9a-f]{12}$/);
    expect(json(inter, 'manifest.json').weights_sha256.startsWith(p.weights_sha256)).toBe(true);
    expect(p.corruption_source).toContain('CIFAR-10-C .npy files');
    expect(p.forgetting_eval).toContain('16 images each');
    const line = interStdout.split('\n').find((l) => l.startsWith('protocol: '))!;
    for (const w of ['setting continual', `images per domain ${N}`, 'severity 5', 'reset never', 'batch size 8', 'top-1 error', `sha256 ${p.weights_sha256}`, 'normalisation', 'corruptions CIFAR-10-C']) expect(line).toContain(w);
    expect(interStdout).toMatch(/tent: avg acc [\d.]+% {2}forgetting -?[\d.]+ {2}BWT -?[\d.]+/);
  });

  it('resumed at a step boundary gives the same matrix as an uninterrupted run', async () => {
    const args = [...TENT, '--interleave-clean', '--clean-eval-n', '12'];
    const whole = (await run(args)).out;
    const crash = {
      CTA_TEST_EXIT_AFTER_DOMAIN: '1',
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(ROOT, 'test/e2e/exit-after-domain.mjs')).href}`.trim(),
    };
    const cut = (await run(args, crash, 99)).out;
    expect(json(cut, 'summary.json').acc_matrix.points).toHaveLength(2);
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'none']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    const [a, b] = [whole, cut].map((d) => json(d, 'summary.json'));
    expect(b.acc_matrix).toEqual(a.acc_matrix);
    expect(a.acc_matrix.points).toHaveLength(4);
    expect([b.avg_acc, b.forgetting, b.bwt]).toEqual([a.avg_acc, a.forgetting, a.bwt]);
    expect(json(cut, 'manifest.json').stream_fingerprint).toBe(json(whole, 'manifest.json').stream_fingerprint);
  });

  it('cta-report: forgetting table, heat map and clean curve, and the protocol in every output', async () => {
    const rep = join(mkdtempSync(join(tmpdir(), 'cta-forget-rep-')), 'r');
    const r = await runBin('cta-report', [inter, plain, '--out', rep]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('forgetting');
    // Two protocols (one run has the forgetting evaluation): the shared facts, then what differs.
    expect(r.stdout).toContain('protocol (all rows): setting continual; images per domain 24');
    expect(r.stdout).toContain('protocol (interleave-clean interleave-seen clean-eval-n=16): forgetting the clean set and every domain');
    for (const f of ['acc-matrix.svg', 'acc-matrix.png', 'clean-accuracy.svg', 'clean-accuracy.png']) expect(existsSync(join(rep, f)), f).toBe(true);
    const md = readFileSync(join(rep, 'report.md'), 'utf8');
    expect(md).toContain('## Forgetting');
    expect(md).toContain('## Protocol');
    expect(md).toContain(`images per domain ${N}`);
    const csv = readFileSync(join(rep, 'report.csv'), 'utf8').split('\n');
    expect(csv[0]).toMatch(/^# protocol \(all rows\): setting continual; images per domain 24; severity 5; reset never; batch size 8; metric top-1 error/);
    expect(csv.findIndex((l) => l.startsWith('label,'))).toBe(3);
    expect(readFileSync(join(rep, 'forgetting.csv'), 'utf8')).toContain('avg_acc');
    const svg = readFileSync(join(rep, 'acc-matrix.svg'), 'utf8');
    expect(svg).not.toMatch(/clip-path|rotate\(/);
  });

  it('refuses --clean-eval-n without an interleaved evaluation, and with --domain-orders (one line, exit 2)', async () => {
    for (const [args, flag] of [[['--clean-eval-n', '5'], '--clean-eval-n'], [['--interleave-clean', '--domain-orders', '2'], '--interleave-clean']] as const) {
      const r = await runBin('cta-eval', ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', CORR.join(','), '--backend', 'wasm', '--progress', 'none', ...args]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(flag);
    }
  });
});
