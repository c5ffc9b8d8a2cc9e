/**
 * End-to-end: the real `cta-corrupt` bin (built dist/) on the shipped Fashion-MNIST test set, then
 * `cta-eval` on the folder it wrote and on the same data via `--data synthetic-c`. The fixture
 * weights are a small random-ish 10-class ResNeXt, so only the plumbing is checked, not accuracy.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readNpy, readNpyRows } from '../../src/io/npy.js';
import { loadClean } from '../../src/data/idx.js';
import { syntheticCSource } from '../../src/data/synthetic-c.js';
import { FIXTURE_WEIGHTS as WEIGHTS, ROOT, runBin } from './helpers.js';

const SOURCE = join(ROOT, 'assets/fashion-mnist/t10k-images-idx3-ubyte.gz');
const CORR = ['gaussian_noise', 'fog', 'jpeg_compression'];
const N = 8;

const EVAL_ARGS = ['--weights', WEIGHTS, '--alg', 'norm', '--n-examples', String(N), '--batch-size', '4', '--corruptions', CORR.join(','), '--backend', 'wasm', '--progress', 'none'];

interface SummaryDomain {
  domain: string;
  n: number;
  error: number;
  severity: number | null;
}

let out = '';
let corruptRun: ReturnType<typeof run>;
beforeAll(async () => {
  out = join(mkdtempSync(join(tmpdir(), 'cta-corrupt-')), 'FMNIST-C');
  corruptRun = await runBin('cta-corrupt', ['--input', SOURCE, '--out', out, '--n', String(N), '--corruptions', CORR.join(',')]);
});

describe('cta-corrupt end to end', () => {
  it('writes a CIFAR-10-C-layout folder and the clean batch', async () => {
    expect(corruptRun.code).toBe(0);
    const clean = join(out, 'clean', 'test_batch.bin');
    expect(corruptRun.stdout).toContain(`--data cifar10c --data-dir ${out} --clean-path ${clean}`);
    // One progress line per corruption on stderr.
    expect(corruptRun.stderr.trim().split('\n').map((l) => l.replace(/ in .*/, ''))).toEqual(
      CORR.map((c, i) => `cta-corrupt: [${i + 1}/3] ${c}: 5×${N} images`),
    );
    const labels = await readNpy(join(out, 'labels.npy'));
    expect(labels.header.descr).toBe('|u1');
    expect(labels.shape).toEqual([5 * N]);
    const cleanSet = await loadClean(SOURCE, { nExamples: N });
    expect(Array.from(labels.data as Uint8Array)).toEqual([0, 1, 2, 3, 4].flatMap(() => Array.from(cleanSet.labels)));
    for (const c of CORR) {
      const a = await readNpy(join(out, `${c}.npy`));
      expect(a.header.descr).toBe('|u1');
      expect(a.shape).toEqual([5 * N, 32, 32, 3]);
    }
    expect(statSync(clean).size).toBe(N * 3073);
    const fromBin = await loadClean(clean);
    expect(Buffer.from(fromBin.images).equals(Buffer.from(cleanSet.images))).toBe(true);
    expect(Array.from(fromBin.labels)).toEqual(Array.from(cleanSet.labels));
    const meta = JSON.parse(readFileSync(join(out, 'severities.json'), 'utf8'));
    expect(meta).toMatchObject({ severities: [1, 2, 3, 4, 5], n: N, seed: 2020, corruptions: CORR, frost: null });
  });

  it('severity block s holds what synthetic-c streams at severity s (same seed)', async () => {
    for (const s of [1, 5]) {
      const src = syntheticCSource({ source: SOURCE, severity: s, corruptions: CORR, nExamples: N, seed: 2020 });
      for (const c of CORR) {
        const block = await readNpyRows(join(out, `${c}.npy`), (s - 1) * N, N);
        const d = await src.load(c);
        expect(Buffer.from(block.data as Uint8Array).equals(Buffer.from(d.images)), `${c} severity ${s}`).toBe(true);
      }
    }
  });

  it('cta-eval streams the folder (cifar10c) and the same data on the fly (synthetic-c) identically', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'cta-corrupt-run-'));
    const a = await runBin('cta-eval', ['--data', 'cifar10c', '--data-dir', out, '--clean-path', join(out, 'clean', 'test_batch.bin'), ...EVAL_ARGS, '--out', join(tmp, 'a')]);
    expect(a.stderr).toBe('');
    expect(a.code).toBe(0);
    const b = await runBin('cta-eval', ['--data', 'synthetic-c', '--source', 'assets/fashion-mnist/t10k-images-idx3-ubyte.gz', ...EVAL_ARGS, '--out', join(tmp, 'b')]);
    expect(b.stderr).toBe('');
    expect(b.code).toBe(0);
    const sa = JSON.parse(readFileSync(join(tmp, 'a', 'summary.json'), 'utf8'));
    const sb = JSON.parse(readFileSync(join(tmp, 'b', 'summary.json'), 'utf8'));
    for (const s of [sa, sb]) {
      expect(s.complete).toBe(true);
      expect(s.domains).toHaveLength(4);
      expect(s.domains.map((d: SummaryDomain) => d.domain)).toEqual([...CORR, 'original']);
      for (const d of s.domains as SummaryDomain[]) {
        expect(d.n).toBe(N);
        expect(d.severity).toBe(d.domain === 'original' ? null : 5);
      }
    }
    expect(sb.config.data).toBe('synthetic-c');
    // Same images, same shuffle, same model: same per-domain errors and the same stream.
    expect(sb.domains.map((d: SummaryDomain) => d.error)).toEqual(sa.domains.map((d: SummaryDomain) => d.error));
    const ma = JSON.parse(readFileSync(join(tmp, 'a', 'manifest.json'), 'utf8'));
    const mb = JSON.parse(readFileSync(join(tmp, 'b', 'manifest.json'), 'utf8'));
    expect(mb.stream_fingerprint).toBe(ma.stream_fingerprint);
    expect(mb.data_files.map((f: { path: string }) => f.path)).toEqual([
      'assets/fashion-mnist/t10k-images-idx3-ubyte.gz',
      'assets/fashion-mnist/t10k-labels-idx1-ubyte.gz',
    ]);
  });

  it('--severities writes only the listed blocks and records them', async () => {
    const sub = join(mkdtempSync(join(tmpdir(), 'cta-corrupt-sub-')), 'out');
    const r = await runBin('cta-corrupt', ['--input', SOURCE, '--out', sub, '--n', '4', '--corruptions', 'fog', '--severities', '3,1', '--seed', '9']);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('writing severities 1,3 only');
    expect(JSON.parse(readFileSync(join(sub, 'severities.json'), 'utf8'))).toMatchObject({ severities: [1, 3], n: 4, seed: 9 });
    const a = await readNpy(join(sub, 'fog.npy'));
    expect(a.shape).toEqual([8, 32, 32, 3]);
    const d = await syntheticCSource({ source: SOURCE, severity: 3, corruptions: ['fog'], nExamples: 4, seed: 9 }).load('fog');
    expect(Buffer.from((a.data as Uint8Array).subarray(4 * 3072)).equals(Buffer.from(d.images))).toBe(true);
  });

  it('bad input gives one error line and exit code 2', async () => {
    const cases: [string[], RegExp][] = [
      [['--out', out], /--input: required/],
      [['--input', '/nonexistent/a-images-idx3-ubyte.gz', '--out', out], /\/nonexistent\/a-images-idx3-ubyte\.gz: file not found/],
      [['--input', SOURCE, '--out', out, '--corruptions', 'fog,rain'], /--corruptions: unknown corruption "rain"/],
      [['--input', SOURCE, '--out', out, '--severities', '0-2'], /--severities: 0-2 is not within 1…5/],
      [['--input', SOURCE, '--out', out, '--n', '0'], /--n: expected an integer ≥ 1/],
      [['--input', SOURCE, '--out', out, '--sevrities', '1'], /Unknown argument: sevrities/],
    ];
    for (const [args, re] of cases) {
      const r = await runBin('cta-corrupt', args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(/^cta-corrupt: error: /);
      expect(r.stderr).toMatch(re);
    }
    const e = await runBin('cta-eval', ['--data', 'synthetic-c', '--weights', WEIGHTS, '--backend', 'wasm']);
    expect(e.code).toBe(2);
    expect(e.stderr.trim()).toMatch(/^cta-eval: error: --source: required for --data synthetic-c/);
  });
});
