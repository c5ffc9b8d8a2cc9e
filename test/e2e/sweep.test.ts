/**
 * End-to-end: cta-sweep and cta-report (built dist/) on a tiny sweep — norm and tent on two
 * corruptions + clean, 4 images each, the small fixture weights, a CIFAR-10-C-layout folder made
 * here. Checks the acceptance path: emit sh + bash, --run -j 2, reruns skip, Ctrl-C keeps finished
 * runs, cta-report prints the table and writes the SVGs.
 */
import { describe, it, expect, beforeAll } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeNpy } from '../../src/io/npy.js';
import { Rng } from '../../src/util/rng.js';
import { FIXTURE_WEIGHTS as WEIGHTS, ROOT, runBin, runCommand } from './helpers.js';

const N = 4; // images per severity block
const CORR = ['gaussian_noise', 'fog'];

let work = '';
let dataDir = '';
let sweep = '';

const bin = (name: string, args: string[], opts: { cwd?: string } = {}) => runBin(name, args, {}, opts.cwd ?? work);

const inputs = ['--data-dir', '', '--weights', WEIGHTS];

function complete(dir: string): boolean {
  try {
    return JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8')).complete === true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'cta-sweep-e2e-'));
  dataDir = join(work, 'data');
  const c = join(dataDir, 'CIFAR-10-C');
  mkdirSync(c, { recursive: true });
  const rng = new Rng(3);
  await writeNpy(join(c, 'labels.npy'), 'uint8', [5 * N], new Uint8Array(5 * N).map((_, i) => i % 10));
  for (const name of CORR) {
    await writeNpy(join(c, `${name}.npy`), 'uint8', [5 * N, 32, 32, 3], new Uint8Array(5 * N * 3072).map(() => rng.int(256)));
  }
  mkdirSync(join(dataDir, 'cifar-10-batches-bin'));
  const rec = new Uint8Array(N * 3073);
  for (let i = 0; i < N; i++) {
    rec[i * 3073] = i % 10;
    for (let k = 1; k < 3073; k++) rec[i * 3073 + k] = rng.int(256);
  }
  writeFileSync(join(dataDir, 'cifar-10-batches-bin', 'test_batch.bin'), rec);
  inputs[1] = dataDir;
  // extends the shipped Tent config, as the shipped sweeps do
  sweep = join(work, 'tiny.yaml');
  writeFileSync(
    sweep,
    `extends: ${join(ROOT, 'configs/cifar10/tent.yaml')}\nn-examples: ${N}\ncorruptions: [${CORR.join(', ')}]\nbatch-size: 2\nbackend: wasm\nprogress: none\ngrid:\n  alg: [norm, tent]\n`,
  );
});

describe('cta-sweep / cta-report end to end', () => {
  it('--list shows the runs and what inputs are missing', async () => {
    const r = await bin('cta-sweep.js', [sweep]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/2 runs in .*runs\/sweeps\/tiny/);
    expect(r.stdout).toMatch(/norm-[0-9a-f]{12}\s+new\s+norm/);
    expect(r.stdout).toContain('add --weights');
    const e = await bin('cta-sweep.js', [sweep, '--emit', 'sh']);
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/^cta-sweep: error: .*tiny\.yaml: run 0 needs --weights/);
  });

  it('emit sh + bash runs every run; a second bash run skips them', async () => {
    const e = await bin('cta-sweep.js', [sweep, '--emit', 'sh', '--runs-dir', 'sh-runs', ...inputs]);
    expect(e.stderr).toBe('');
    writeFileSync(join(work, 'run.sh'), e.stdout);
    const first = await runCommand('bash', ['run.sh'], { cwd: work });
    expect(first.code).toBe(0);
    const dirs = readdirSync(join(work, 'sh-runs')).sort();
    expect(dirs).toHaveLength(2);
    expect(dirs[0]).toMatch(/^norm-[0-9a-f]{12}$/);
    expect(dirs[1]).toMatch(/^tent-[0-9a-f]{12}$/);
    for (const d of dirs) expect(complete(join(work, 'sh-runs', d))).toBe(true);
    const second = await runCommand('bash', ['run.sh'], { cwd: work });
    expect(second.code).toBe(0);
    expect(second.stdout.match(/skip \(complete\)/g)).toHaveLength(2);
  });

  it('--run -j 2 runs every run; a second invocation skips everything', async () => {
    const r = await bin('cta-sweep.js', [sweep, '--run', '-j', '2', '--runs-dir', 'local-runs', ...inputs]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('2 ran, 0 skipped');
    const dirs = readdirSync(join(work, 'local-runs')).map((d) => join(work, 'local-runs', d));
    expect(dirs.every(complete)).toBe(true);
    // same configs → same folder names as the shell script's
    expect(readdirSync(join(work, 'local-runs')).sort()).toEqual(readdirSync(join(work, 'sh-runs')).sort());
    const mtimes = dirs.map((d) => statSync(join(d, 'summary.json')).mtimeMs);
    const again = await bin('cta-sweep.js', [sweep, '--run', '-j', '2', '--runs-dir', 'local-runs', ...inputs]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('0 ran, 2 skipped');
    expect(dirs.map((d) => statSync(join(d, 'summary.json')).mtimeMs)).toEqual(mtimes);
  });

  it('Ctrl-C stops the workers; finished runs stay complete, the rest run next time', async () => {
    const args = [join(ROOT, 'bin', 'cta-sweep.js'), sweep, '--run', '-j', '1', '--runs-dir', 'int-runs', ...inputs];
    const child = spawn(process.execPath, args, { cwd: work });
    let out = '';
    const code = await new Promise<number | null>((done) => {
      child.stdout.on('data', (b: Buffer) => {
        out += b.toString();
        // interrupt while the second run is going
        if (/done .*\n[^]*start /.test(out) && !child.killed) child.kill('SIGINT');
      });
      child.on('close', (c) => done(c));
    });
    expect(code).toBe(130);
    expect(out).toContain('1 ran, 0 skipped (complete), 0 failed, 1 interrupted');
    const dirs = readdirSync(join(work, 'int-runs')).map((d) => join(work, 'int-runs', d));
    expect(dirs.filter(complete)).toHaveLength(1);
    const again = await bin('cta-sweep.js', [sweep, '--run', '--runs-dir', 'int-runs', ...inputs]);
    expect(again.code).toBe(0);
    expect(again.stdout).toContain('1 ran, 1 skipped');
  });

  it('cta-report prints the table and writes markdown, CSV and SVGs', async () => {
    const r = await bin('cta-report.js', ['sh-runs', 'local-runs', '--out', 'report']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('4 runs in 2 groups (varying: alg)');
    expect(r.stdout).toContain('| method | seeds | gauss | fog | mean | max MB | avg MB |');
    expect(r.stdout).toMatch(/\| norm \| 2 \| \d+\.\d ± 0\.0 \|/);
    expect(r.stdout).toMatch(/\| tent \| 2 \| /);
    for (const f of ['report.md', 'report.csv', 'error-by-domain.svg', 'stream.svg']) {
      expect(existsSync(join(work, 'report', f)), f).toBe(true);
    }
    expect(readFileSync(join(work, 'report', 'stream.svg'), 'utf8')).toContain('cache (MB)');
    const by = await bin('cta-report.js', ['local-runs', '--by', 'alg', '--out', 'report-by']);
    expect(by.code).toBe(0);
    expect(by.stdout).toContain('| method | alg=norm | alg=tent |');
    expect(existsSync(join(work, 'report-by', 'by-alg.svg'))).toBe(true);
    const bad = await bin('cta-report.js', ['local-runs', '--by', 'lr']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^cta-report: error: --by lr: the runs do not differ in lr/);
  });
});
