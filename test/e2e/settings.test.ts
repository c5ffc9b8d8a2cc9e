/**
 * `cta-eval --setting` end to end (docs/protocol.md#settings): each setting on a tiny generated
 * CIFAR-10-C folder, its summary and batch-log layout, and resume equality for recurring.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';

const CORR = ['gaussian_noise', 'fog'];
const N = 20;
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N, CORR);
});

const read = (dir: string, f: string) => readFileSync(join(dir, f), 'utf8');
const json = (dir: string, f: string) => JSON.parse(read(dir, f));
const lines = (dir: string) => read(dir, 'batches.jsonl').trim().split('\n').map((l) => JSON.parse(l));
type Entry = { domain: string; severity: number | null; error: number; n: number; round?: number; reset?: boolean };

/** Runs cta-eval on the fixture folder; returns the run folder. */
async function run(args: string[], env: Record<string, string> = {}, expectCode = 0, data = dataDir): Promise<string> {
  const out = join(mkdtempSync(join(tmpdir(), 'cta-setting-')), 'run');
  const base = ['--data-dir', data, '--weights', FIXTURE_WEIGHTS, '--corruptions', CORR.join(','), '--batch-size', '8', '--backend', 'wasm', '--progress', 'none', '--out', out];
  const r = await runBin('cta-eval', [...base, ...args], env);
  if (expectCode === 0) expect(r.stderr).toBe('');
  expect(r.code).toBe(expectCode);
  return out;
}

describe('cta-eval --setting', () => {
  it('continual keeps its summary keys (no setting fields)', async () => {
    const out = await run(['--alg', 'source']);
    const s = json(out, 'summary.json');
    // Other features add their own keys (protocol, trainable parameters); no setting adds any here.
    expect(Object.keys(s)).toEqual(expect.arrayContaining(['complete', 'config', 'domains', 'mean_error', 'mean_error_all', 'protocol']));
    for (const k of ['setting', 'rounds', 'dirichlet_delta', 'mean_error_by_severity', 'mean_error_severity5', 'acc_matrix']) expect(s).not.toHaveProperty(k);
    expect(s.domains.map((d: Entry) => d.domain)).toEqual([...CORR, 'original']);
    expect(s.domains.some((d: Entry) => 'round' in d || 'reset' in d)).toBe(false);
    expect(lines(out).some((l) => 'round' in l)).toBe(false);
  });

  it('reset-each-shift: reset before every domain but the first', async () => {
    // MECTA's forget gate: a large β on a domain's first batch means its accumulated statistics
    // started afresh, which in the continual setting happens only on the very first batch.
    const args = ['--alg', 'tent', '--lr', '0.01', '--accum-bn', '--forget-gate'];
    const out = await run([...args, '--setting', 'reset-each-shift']);
    const s = json(out, 'summary.json');
    expect(s.setting).toBe('reset-each-shift');
    expect(s.domains.map((d: Entry) => [d.domain, d.reset ?? false])).toEqual([['gaussian_noise', false], ['fog', true], ['original', true]]);
    const firstBeta = (dir: string) =>
      lines(dir)
        .filter((l) => l.domain_batch === 0)
        .map((l) => (l.beta as number[]).reduce((a, v) => a + v, 0) / l.beta.length);
    const reset = firstBeta(out);
    const cont = firstBeta(await run(args));
    expect(reset[0]).toBe(cont[0]);
    for (const i of [1, 2]) {
      expect(reset[i]).toBeGreaterThan(0.3);
      expect(cont[i]).toBeLessThan(0.2);
    }
  });

  it('gradual: severities 1..5..1 per corruption, errors per (domain, severity), mean at severity 5', async () => {
    const out = await run(['--alg', 'norm', '--setting', 'gradual']);
    const s = json(out, 'summary.json');
    expect(s.complete).toBe(true);
    expect(s.domains).toHaveLength(2 * 9 + 1);
    expect(s.domains.slice(0, 9).map((d: Entry) => [d.domain, d.severity])).toEqual([1, 2, 3, 4, 5, 4, 3, 2, 1].map((v) => ['gaussian_noise', v]));
    expect(s.domains[18]).toMatchObject({ domain: 'original', severity: null });
    const sev5 = s.domains.filter((d: Entry) => d.severity === 5).map((d: Entry) => d.error);
    expect(sev5).toHaveLength(2);
    expect(s.mean_error_severity5).toBeCloseTo((sev5[0] + sev5[1]) / 2, 10);
    expect(Object.keys(s.mean_error_by_severity).sort()).toEqual(['1', '2', '3', '4', '5']);
    const ls = lines(out);
    expect(ls).toHaveLength(19 * 3); // 20 images at batch 8 → 3 batches per step
    expect(ls.slice(0, 3).every((l) => l.severity === 1)).toBe(true);
    expect(ls.at(-1).severity).toBe(null);
  });

  it('correlated: the same samples per domain in another order', async () => {
    const plain = await run(['--alg', 'source']);
    const corr = await run(['--alg', 'source', '--setting', 'correlated', '--dirichlet-delta', '0.5']);
    const byLabel = await run(['--alg', 'source', '--setting', 'correlated']);
    const [a, b, c] = [plain, corr, byLabel].map((d) => json(d, 'summary.json'));
    expect(b.setting).toBe('correlated');
    expect(b.dirichlet_delta).toBe(0.5);
    expect(c.dirichlet_delta).toBe(0);
    // The source model's predictions do not depend on the order: the same errors.
    for (const x of [b, c]) expect(x.domains.map((d: Entry) => d.error)).toEqual(a.domains.map((d: Entry) => d.error));
    const fp = (d: string) => json(d, 'manifest.json').stream_fingerprint;
    expect(new Set([fp(plain), fp(corr), fp(byLabel)]).size).toBe(3);
  });

  it('recurring: the sequence --rounds times, error per round', async () => {
    const out = await run(['--alg', 'tent', '--setting', 'recurring', '--rounds', '2']);
    const s = json(out, 'summary.json');
    expect(s.domains.map((d: Entry) => `${d.round}:${d.domain}`)).toEqual([1, 2].flatMap((r) => [...CORR, 'original'].map((n) => `${r}:${n}`)));
    expect(s.rounds.map((r: { round: number }) => r.round)).toEqual([1, 2]);
    const r2 = s.domains.slice(3, 5).map((d: Entry) => d.error);
    expect(s.rounds[1].mean_error).toBeCloseTo((r2[0] + r2[1]) / 2, 10);
    const ls = lines(out);
    expect(ls).toHaveLength(6 * 3);
    expect(ls.map((l) => l.round)).toEqual([...Array(9).fill(1), ...Array(9).fill(2)]);
  });

  it('recurring-correlated composes both', async () => {
    const out = await run(['--alg', 'norm', '--setting', 'recurring-correlated', '--rounds', '2', '--dirichlet-delta', '0.1']);
    const s = json(out, 'summary.json');
    expect(s.domains).toHaveLength(6);
    expect(s.rounds).toHaveLength(2);
    expect(s.dirichlet_delta).toBe(0.1);
  });

  it('resumed at a step boundary, recurring gives the same results as an uninterrupted run', async () => {
    const args = ['--alg', 'tent', '--lr', '0.01', '--setting', 'recurring-correlated', '--rounds', '2', '--dirichlet-delta', '1'];
    const whole = await run(args);
    const crash = {
      CTA_TEST_EXIT_AFTER_DOMAIN: '4',
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(ROOT, 'test/e2e/exit-after-domain.mjs')).href}`.trim(),
    };
    const cut = await run(args, crash, 99);
    expect(json(cut, 'summary.json').complete).toBe(false);
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'none']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect(resumed.stdout).toContain('resuming');
    const strip = (d: Record<string, unknown>) => ({ ...d, seconds: 0, img_per_s: 0, measured_max_peak_mb: 0 });
    const [a, b] = [whole, cut].map((d) => json(d, 'summary.json'));
    expect(b.domains.map(strip)).toEqual(a.domains.map(strip));
    expect(b.rounds).toEqual(a.rounds);
    const ls = (d: string) => lines(d).map((l) => ({ ...l, ms: 0, measured_peak_mb: 0 }));
    expect(ls(cut)).toEqual(ls(whole));
    expect(json(cut, 'manifest.json').stream_fingerprint).toBe(json(whole, 'manifest.json').stream_fingerprint);
  });

  it('mixed: batches mix the domains; errors per domain from where each sample came', async () => {
    // A clean set whose labels are all 0, so that its error differs from the corruptions' (random
    // images, labels i mod 10) and a sample scored under the wrong domain would show.
    const data = await makeCifarC(N, CORR, 2);
    const bin = join(data, '..', 'cifar-10-batches-bin', 'test_batch.bin');
    const rec = readFileSync(bin);
    for (let i = 0; i < N; i++) rec[i * 3073] = 0;
    writeFileSync(bin, rec);
    const plain = await run(['--alg', 'source'], {}, 0, data);
    const out = await run(['--alg', 'source', '--setting', 'mixed'], {}, 0, data);
    const [a, s] = [plain, out].map((d) => json(d, 'summary.json'));
    expect(new Set(a.domains.map((d: Entry) => d.error)).size).toBeGreaterThan(1);
    expect(s.setting).toBe('mixed');
    expect(s.domains).toHaveLength(1);
    expect(s.domains[0]).toMatchObject({ domain: 'mixed', n: 3 * N });
    const parts = s.domains[0].per_domain as Entry[];
    expect(parts.map((p) => [p.domain, p.n])).toEqual([...CORR, 'original'].map((d) => [d, N]));
    // The source model's predictions do not depend on the batch: the same per-domain errors.
    expect(parts.map((p) => p.error)).toEqual(a.domains.map((d: Entry) => d.error));
    expect(s.mean_error).toBe(a.mean_error);
    expect(s.mean_error_all).toBe(a.mean_error_all);
    expect(lines(out)).toHaveLength(Math.ceil((3 * N) / 8));
  });

  it('mixed-correlated: the pooled samples in a label-correlated order, the same per-domain errors for source', async () => {
    const mixed = json(await run(['--alg', 'source', '--setting', 'mixed']), 'summary.json');
    const out = await run(['--alg', 'source', '--setting', 'mixed-correlated', '--dirichlet-delta', '0.5']);
    const s = json(out, 'summary.json');
    expect(s.setting).toBe('mixed-correlated');
    expect(s.dirichlet_delta).toBe(0.5);
    expect(s.domains[0].per_domain).toEqual(mixed.domains[0].per_domain);
    expect(json(out, 'manifest.json').stream_fingerprint).not.toBe(undefined);
  });

  it('refuses options the setting does not use, and unknown settings, in one line (exit 2)', async () => {
    for (const args of [['--rounds', '2'], ['--setting', 'gradual', '--dirichlet-delta', '0.1'], ['--setting', 'mixed-gradual'], ['--setting', 'mixed', '--rounds', '2']]) {
      const r = await runBin('cta-eval', ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--backend', 'wasm', '--progress', 'none', ...args]);
      expect(r.code).toBe(2);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    }
  });
});
