/**
 * `cta-eval --domain-orders`, `--eval-mode group|pair`, `--corruption-set`, `--iters` and composed
 * `--config` end to end (docs/protocol.md#domain-orders, #eval-modes) on a tiny generated
 * CIFAR-10-C folder: summaries, the identities that pin their semantics, resume equality, and
 * one-line refusals.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';
import { generateOrders, parseOrders } from '../../src/data/orders.js';

const ARM = ['impulse_noise', 'motion_blur', 'fog', 'elastic_transform'];
const CORR = ARM.slice(0, 3);
const N = 20;
let dataDir = '';
beforeAll(async () => {
  dataDir = await makeCifarC(N, ARM);
});

const read = (dir: string, f: string) => readFileSync(join(dir, f), 'utf8');
const json = (dir: string, f: string) => JSON.parse(read(dir, f));
const lines = (dir: string) => read(dir, 'batches.jsonl').trim().split('\n').map((l) => JSON.parse(l));
type Entry = { domain: string; error: number; n: number; order?: number; previous?: string; reset?: boolean; support?: { batches: number; n: number } };
const base = () => ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--batch-size', '8', '--backend', 'wasm', '--progress', 'none'];

/** Runs cta-eval on the fixture folder; returns the run folder and stdout. */
async function run(args: string[], env: Record<string, string> = {}, expectCode = 0): Promise<{ out: string; stdout: string }> {
  const out = join(mkdtempSync(join(tmpdir(), 'cta-modes-')), 'run');
  const r = await runBin('cta-eval', [...base(), '--out', out, ...args], env);
  if (expectCode === 0) expect(r.stderr).toBe('');
  expect(r.code).toBe(expectCode);
  return { out, stdout: r.stdout };
}

async function refused(args: string[]): Promise<string> {
  const r = await runBin('cta-eval', [...base(), ...args]);
  expect(r.code).toBe(2);
  const errLines = r.stderr.trim().split('\n');
  expect(errLines).toHaveLength(1);
  return errLines[0];
}

/** Shared between tests to save runs: the two-order tent run, and the source model's error per domain. */
const ORDERS_ARGS = ['--alg', 'tent', '--lr', '0.01', '--seed', '5', '--domain-orders', '2'];
let ordersRun = '';
const sourceError: Record<string, number> = {};

describe('cta-eval --domain-orders', () => {
  it('k seeded orders: each a full run from the source model, per-order errors and mean ± std', async () => {
    const { out, stdout } = await run(['--corruptions', CORR.join(','), ...ORDERS_ARGS]);
    ordersRun = out;
    const s = json(out, 'summary.json');
    const orders = generateOrders(CORR, 2, 5);
    expect(s.orders.map((o: { corruptions: string[] }) => o.corruptions)).toEqual(orders);
    expect(s.domain_orders).toEqual({ kind: 'generated', k: 2, seed: 5, count: 2 });
    expect(s.domains.map((d: Entry) => `${d.order}:${d.domain}`)).toEqual(orders.flatMap((o, k) => [...o, 'original'].map((n) => `${k + 1}:${n}`)));
    expect(s.domains[4].reset).toBe(true);
    // Order 2 is exactly the run a separate --corruptions <order 2> gives (method reset, generators restarted).
    const alone = json((await run(['--alg', 'tent', '--lr', '0.01', '--seed', '5', '--corruptions', orders[1].join(',')])).out, 'summary.json');
    expect(s.domains.slice(4).map((d: Entry) => d.error)).toEqual(alone.domains.map((d: Entry) => d.error));
    expect(s.orders[1].mean_error).toBe(alone.mean_error);
    const m = s.orders.map((o: { mean_error: number }) => o.mean_error);
    expect(s.over_orders.orders).toBe(2);
    expect(s.over_orders.mean_error.mean).toBeCloseTo((m[0] + m[1]) / 2, 10);
    expect(s.over_orders.mean_error.std).toBeCloseTo(Math.abs(m[0] - m[1]) / Math.SQRT2, 10);
    expect(s.over_orders.mean_error.std_population).toBeCloseTo(Math.abs(m[0] - m[1]) / 2, 10);
    expect(s.mean_error).toBeCloseTo(s.over_orders.mean_error.mean, 10);
    expect(stdout).toMatch(/tent err%\s+o1\s+o2\s+mean ± std/);
    expect(stdout).toMatch(/mean \(corruptions\)\s+[\d.]+\s+[\d.]+\s+[\d.]+ ± [\d.]+/);
    expect(json(out, 'manifest.json').domain_orders.orders).toEqual(orders);
  });

  it('an order file, and --write-orders writes what it reads back; a bad file is one line, exit 2', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cta-orders-'));
    const file = join(dir, 'orders.txt');
    writeFileSync(file, '# two orders\nfog,impulse_noise\nimpulse_noise,fog\n');
    const { out } = await run(['--alg', 'source', '--no-clean-last', '--domain-orders', file]);
    const s = json(out, 'summary.json');
    expect(s.domains.map((d: Entry) => d.domain)).toEqual(['fog', 'impulse_noise', 'impulse_noise', 'fog']);
    expect(s.domain_orders).toMatchObject({ kind: 'file', path: file, count: 2 });
    // The source model does not adapt: a domain's error is the same in every order, std 0.
    expect(s.over_orders.domains.map((d: { std: number }) => d.std)).toEqual([0, 0]);
    for (const d of s.domains as Entry[]) sourceError[d.domain] = d.error;

    const written = join(dir, 'gen.txt');
    const w = await runBin('cta-eval', ['--domain-orders', '4', '--corruption-set', 'arm', '--seed', '3', '--write-orders', written]);
    expect(w.code).toBe(0);
    expect(w.stdout).toContain(`wrote 4 orders to ${written}`);
    expect(parseOrders(read(dir, 'gen.txt'), written)).toEqual(generateOrders(ARM, 4, 3));

    writeFileSync(file, 'fog,impulse_noise\nfog,snow\n');
    expect(await refused(['--domain-orders', file])).toBe(`cta-eval: error: --domain-orders ${file}:2: names other corruptions than line 1 (every order must be a permutation of the same corruptions)`);
  });

  it('resumed at an order boundary, gives the results of an uninterrupted run', async () => {
    // The first test's run (run here when that test was filtered out).
    const whole = ordersRun || (await run(['--corruptions', CORR.join(','), ...ORDERS_ARGS])).out;
    const crash = {
      CTA_TEST_EXIT_AFTER_DOMAIN: '4',
      NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --import=${pathToFileURL(join(ROOT, 'test/e2e/exit-after-domain.mjs')).href}`.trim(),
    };
    const cut = (await run(['--corruptions', CORR.join(','), ...ORDERS_ARGS], crash, 99)).out;
    expect(json(cut, 'summary.json').complete).toBe(false);
    const resumed = await runBin('cta-eval', ['--resume', cut, '--progress', 'none']);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    const strip = (d: Record<string, unknown>) => ({ ...d, seconds: 0, img_per_s: 0, measured_max_peak_mb: 0 });
    const [a, b] = [whole, cut].map((d) => json(d, 'summary.json'));
    expect(b.domains.map(strip)).toEqual(a.domains.map(strip));
    expect(b.over_orders).toEqual(a.over_orders);
    expect(json(cut, 'manifest.json').stream_fingerprint).toBe(json(whole, 'manifest.json').stream_fingerprint);
  });
});

describe('cta-eval --eval-mode (MECTA group / pair)', () => {
  it('group with --support-batch 1 is the fresh model on every batch: tent then predicts as norm does', async () => {
    const g = json((await run(['--alg', 'tent', '--lr', '0.01', '--corruption-set', 'arm', '--eval-mode', 'group', '--support-batch', '1'])).out, 'summary.json');
    const norm = json((await run(['--alg', 'norm', '--corruption-set', 'arm'])).out, 'summary.json');
    expect(g.domains.map((d: Entry) => d.domain)).toEqual(ARM);
    expect(g.domains.map((d: Entry) => d.error)).toEqual(norm.domains.map((d: Entry) => d.error));
    expect(g.eval_mode).toBe('group');
    const accs = norm.domains.map((d: Entry) => 100 - d.error);
    expect(g.avg_acc).toBeCloseTo(accs.reduce((a: number, v: number) => a + v, 0) / accs.length, 10);
    expect(g.worst_acc).toBe(Math.min(...accs));
  });

  it('group: support batches are adapted on, not scored; merge runs them with the test batch as one step', async () => {
    const args = ['--alg', 'tent', '--lr', '0.05', '--corruptions', 'fog', '--no-clean-last', '--eval-mode', 'group', '--support-batch', '3', '--iters', '1'];
    const { out, stdout } = await run(args);
    const s = json(out, 'summary.json');
    // --iters 1: batches 0 and 1 (MECTA's `i >= stop_at_step` after the batch).
    expect(s.domains[0]).toMatchObject({ domain: 'fog', n: 16, batches: 2, support: { batches: 4, n: 32 } });
    expect(s.iters).toBe(1);
    const ls = lines(out);
    expect(ls.map((l) => [l.support_batches, l.support_n, l.forwards])).toEqual([
      [2, 16, 24],
      [2, 16, 24],
    ]);
    expect(stdout).toMatch(/tent \(group\): avg acc [\d.]+% \| worst acc [\d.]+% \(fog\)/);
    const merged = lines((await run([...args, '--merge-batches'])).out);
    expect(merged.map((l) => [l.support_n, l.forwards])).toEqual([
      [16, 24],
      [16, 24],
    ]);
  });

  it('pair: every ordered pair; with no adaptation each pair scores the domain as continual does', async () => {
    const two = ['fog', 'impulse_noise'];
    const { out, stdout } = await run(['--alg', 'source', '--corruptions', two.join(','), '--eval-mode', 'pair', '--support-batch', '3', '--cur-batch', '2']);
    const s = json(out, 'summary.json');
    const names = [...two, 'original'];
    expect(s.domains.map((d: Entry) => `${d.previous}>${d.domain}`)).toEqual(names.flatMap((c) => names.filter((p) => p !== c).map((p) => `${p}>${c}`)));
    // The source model's error on a domain does not depend on the batches around it (the order-file
    // run above; run here when that test was filtered out).
    if (!(two[0] in sourceError)) {
      for (const d of json((await run(['--alg', 'source', '--corruptions', two.join(','), '--no-clean-last'])).out, 'summary.json').domains as Entry[]) sourceError[d.domain] = d.error;
    }
    for (const c of two) expect(s.pairs.find((p: { domain: string }) => p.domain === c).avg_acc).toBe(100 - sourceError[c]);
    expect(s.cur_batch).toBe(2);
    // support 3, cur 2: one batch of the previous domain and one of the current per test case.
    expect(lines(out)[0]).toMatchObject({ previous: 'impulse_noise', domain: 'fog', support_batches: 2 });
    expect(stdout).toMatch(/source \(pair\): avg acc/);
    expect(stdout).toMatch(/fog\s+[\d.]+\s+[\d.]+\s+(impulse_noise|original)/);
  });

  it('refuses options a mode does not use, in one line (exit 2)', async () => {
    expect(await refused(['--support-batch', '2'])).toMatch(/--support-batch: only for --eval-mode group or pair/);
    expect(await refused(['--corruption-set', 'arm', '--corruptions', 'fog'])).toMatch(/--corruption-set arm sets the domains itself/);
    expect(await refused(['--eval-mode', 'triple'])).toMatch(/--eval-mode: expected one of continual, group, pair/);
  });
});

describe('cta-eval --config a.yaml b.yaml', () => {
  it('merges left to right and names the run folder after the files', async () => {
    const cwd = mkdtempSync(join(tmpdir(), 'cta-compose-'));
    writeFileSync(join(cwd, 'method.yaml'), `alg: tent\nlr: 0.01\nbatch-size: 4\nweights: ${FIXTURE_WEIGHTS}\n`);
    writeFileSync(join(cwd, 'small.yaml'), `data-dir: ${dataDir}\ncorruptions: fog\nbatch-size: 10\nbackend: wasm\nprogress: none\n`);
    const r = await runBin('cta-eval', ['--config', 'method.yaml', 'small.yaml'], {}, cwd);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const runs = readdirSync(join(cwd, 'runs'));
    expect(runs).toHaveLength(1);
    expect(runs[0]).toMatch(/^\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-method\+small$/);
    const dir = join(cwd, 'runs', runs[0]);
    expect(existsSync(join(dir, 'summary.json'))).toBe(true);
    expect(json(dir, 'manifest.json').config).toMatchObject({ alg: 'tent', lr: 0.01, batchSize: 10, corruptions: ['fog'] });
    expect(json(dir, 'summary.json').domains[0].batches).toBe(2);
  });
});
