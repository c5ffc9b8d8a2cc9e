/**
 * Write paths that cannot be written (a file where a folder should be, a folder under a file, a
 * read-only folder) are refused before any work starts: one `<cmd>: error: --flag …` line, exit 2.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin } from './helpers.js';

let dataDir = '';
let work = '';
let aFile = '';
let runs = '';
let clean = '';

beforeAll(async () => {
  dataDir = await makeCifarC(4, ['fog']);
  clean = join(dirname(dataDir), 'cifar-10-batches-bin', 'test_batch.bin');
  work = mkdtempSync(join(tmpdir(), 'cta-outpath-'));
  aFile = join(work, 'a-file');
  writeFileSync(aFile, 'not a folder\n');
  // one finished run, for cta-report
  runs = join(work, 'runs');
  const r = await runBin('cta-eval', ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', 'fog', '--batch-size', '4', '--backend', 'wasm', '--progress', 'none', '--out', join(runs, 'one')]);
  expect(r.code).toBe(0);
});

afterAll(() => {
  if (dataDir) rmSync(dirname(dataDir), { recursive: true, force: true });
  if (work) {
    // the read-only case's folder must be writable again to be removed by a non-root user
    if (existsSync(join(work, 'ro'))) chmodSync(join(work, 'ro'), 0o755);
    rmSync(work, { recursive: true, force: true });
  }
});

/** Exit 2, nothing on stdout (refused before the run started), one stderr line naming `flag`. */
function expectRefused(r: { code: number | null; stdout: string; stderr: string }, cmd: string, flag: string, path: string) {
  expect(r.stderr.trim().split('\n'), r.stderr).toHaveLength(1);
  expect(r.stderr).toMatch(new RegExp(`^${cmd}: error: ${flag} `));
  expect(r.stderr).toContain(path);
  expect(r.stderr).not.toMatch(/internal error|EEXIST|ENOENT|ENOTDIR/);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
}

const evalArgs = () => ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--corruptions', 'fog', '--backend', 'wasm', '--progress', 'none'];

describe('unwritable output paths', () => {
  it('cta-eval --out: a file, a folder under a file', async () => {
    expectRefused(await runBin('cta-eval', [...evalArgs(), '--out', aFile]), 'cta-eval', '--out', aFile);
    const under = join(aFile, 'run');
    expectRefused(await runBin('cta-eval', [...evalArgs(), '--out', under]), 'cta-eval', '--out', under);
  });

  // Root writes into a chmod 555 folder anyway, so the permission case only means something for
  // other users (the file cases above fail for root too).
  it.skipIf(process.getuid?.() === 0)('cta-eval --out: inside a read-only folder', async () => {
    const ro = join(work, 'ro');
    mkdirSync(ro);
    chmodSync(ro, 0o555);
    const out = join(ro, 'run');
    expectRefused(await runBin('cta-eval', [...evalArgs(), '--out', out]), 'cta-eval', '--out', ro);
  });

  it('cta-report --out under a file', async () => {
    const out = join(aFile, 'report');
    expectRefused(await runBin('cta-report', [runs, '--out', out]), 'cta-report', '--out', out);
  });

  it('profile-mem --json: a folder, a file under a file', async () => {
    const base = ['--synthetic', '--batch-sizes', '2', '--weights', FIXTURE_WEIGHTS, '--backend', 'wasm'];
    expectRefused(await runBin('profile-mem', [...base, '--json', work]), 'profile-mem', '--json', work);
    const under = join(aFile, 'mem.json');
    expectRefused(await runBin('profile-mem', [...base, '--json', under]), 'profile-mem', '--json', under);
  });

  it('cta-corrupt --out under a file', async () => {
    const out = join(aFile, 'c');
    expectRefused(await runBin('cta-corrupt', ['--input', clean, '--corruptions', 'fog', '--out', out]), 'cta-corrupt', '--out', out);
  });

  it('cta-train --out under a file, or a folder', async () => {
    const base = ['--data', clean, '--test', 'none', '--depth', '11', '--width', '16', '--epochs', '1', '--batch-size', '2'];
    const under = join(aFile, 'w.safetensors');
    expectRefused(await runBin('cta-train', [...base, '--out', under]), 'cta-train', '--out', under);
    expectRefused(await runBin('cta-train', [...base, '--out', work]), 'cta-train', '--out', work);
  });

  it('cta-sweep --run / --emit slurm with --runs-dir under a file', async () => {
    const sweep = join(work, 'tiny.yaml');
    writeFileSync(sweep, `extends: ${join(ROOT, 'configs/cifar10/tent.yaml')}\nn-examples: 4\ncorruptions: [fog]\nbackend: wasm\nprogress: none\ngrid:\n  alg: [norm, tent]\n`);
    const under = join(aFile, 'runs');
    const inputs = ['--data-dir', dataDir, '--weights', FIXTURE_WEIGHTS, '--runs-dir', under];
    expectRefused(await runBin('cta-sweep', [sweep, '--run', ...inputs]), 'cta-sweep', '--runs-dir', under);
    expectRefused(await runBin('cta-sweep', [sweep, '--emit', 'slurm', ...inputs]), 'cta-sweep', '--runs-dir', under);
  });
});
