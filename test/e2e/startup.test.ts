/**
 * End-to-end: the threaded WASM start-up (src/wasm-threads.ts) never waits silently. It writes no
 * file (the worker and main scripts run from source text), gives up with one error line naming
 * `--threads 1` when it cannot finish in time, and survives many concurrent starts
 * (scripts/stress-startup.mjs, a small run of the 300-start check recorded in LOG.md).
 */
import { describe, it, expect } from 'vitest';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FIXTURE_WEIGHTS, ROOT, makeCifarC, runBin, runCommand } from './helpers.js';

const STRESS = join(ROOT, 'scripts', 'stress-startup.mjs');

describe('threaded WASM start-up', () => {
  it('writes nothing to the temporary folder: starts with TMPDIR pointing at a file', async () => {
    // A folder that cannot be written (TMPDIR on a read-only or missing mount) used to make the
    // threaded start fail; and the worker script rewritten in it per worker was the start-up hang.
    const file = join(tmpdir(), 'not-a-folder');
    writeFileSync(file, '');
    const r = await runCommand(process.execPath, [STRESS, '--child', 'wasm', '2'], { env: { TMPDIR: file } });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const ready = JSON.parse(r.stdout.split('@@READY@@ ')[1]) as { backend: string; threads: number };
    expect(ready).toMatchObject({ backend: 'wasm', threads: 2 });
  });

  it('a start that does not finish in time ends with one line naming --threads 1, exit 1', async () => {
    const dataDir = await makeCifarC(4, ['fog']);
    const t0 = Date.now();
    const r = await runBin(
      'cta-eval',
      ['--data-dir', dataDir, '--corruptions', 'fog', '--weights', FIXTURE_WEIGHTS, '--backend', 'wasm', '--threads', '2', '--progress', 'none', '--out', join(tmpdir(), 'run-timeout')],
      { CTA_WASM_START_TIMEOUT_S: '0.01' },
    );
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^cta-eval: error: the threaded WASM backend \(2 threads\) failed to start: did not finish within 0\.01 s .*--threads 1/);
    // The half-started workers are ended, so the process exits at once instead of waiting on them.
    expect(Date.now() - t0).toBeLessThan(30_000);
  });

  it('rejects a malformed CTA_WASM_START_TIMEOUT_S with one line, exit 2', async () => {
    const r = await runCommand(process.execPath, [STRESS, '--child', 'wasm', '2'], { env: { CTA_WASM_START_TIMEOUT_S: 'soon' } });
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe("stress-startup: error: CTA_WASM_START_TIMEOUT_S: expected a positive number of seconds, got 'soon'");
  });

  it('30 starts, 4 at a time: no hang, no failure, no temporary folder left', async () => {
    const r = await runCommand(process.execPath, [STRESS, '--starts', '30', '--concurrency', '4', '--threads', '2', '--timeout', '60']);
    const report = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({ starts: 30, ready: 30, hangs: 0, failures: 0, leftover_temp_folders: 0, threads_used: [2] });
    expect(r.code).toBe(0);
  }, 150_000);
});
