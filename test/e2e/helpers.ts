/** Shared e2e helpers: a tiny CIFAR-10-C-layout folder and a way to run the built bins. */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeNpy } from '../../src/io/npy.js';
import { CORRUPTIONS_15 } from '../../src/data/stream.js';
import { Rng } from '../../src/util/rng.js';

export const ROOT = join(import.meta.dirname, '..', '..');
export const FIXTURE_WEIGHTS = join(ROOT, 'test/fixtures/models/resnext_small.safetensors');

/**
 * Writes `<root>/CIFAR-10-C/{<corruption>.npy, labels.npy}` (n random images per severity block)
 * and `<root>/cifar-10-batches-bin/test_batch.bin` (n clean records). Returns the CIFAR-10-C dir.
 */
export async function makeCifarC(n: number, corruptions: readonly string[] = CORRUPTIONS_15, seed = 1): Promise<string> {
  const root = mkdtempSync(join(tmpdir(), 'cta-e2e-'));
  const dir = join(root, 'CIFAR-10-C');
  mkdirSync(dir);
  const rng = new Rng(seed);
  await writeNpy(join(dir, 'labels.npy'), 'uint8', [5 * n], new Uint8Array(5 * n).map((_, i) => i % 10));
  for (const c of corruptions) {
    await writeNpy(join(dir, `${c}.npy`), 'uint8', [5 * n, 32, 32, 3], new Uint8Array(5 * n * 3072).map(() => rng.int(256)));
  }
  mkdirSync(join(root, 'cifar-10-batches-bin'));
  const rec = new Uint8Array(n * 3073);
  for (let i = 0; i < n; i++) {
    rec[i * 3073] = i % 10;
    for (let k = 1; k < 3073; k++) rec[i * 3073 + k] = rng.int(256);
  }
  writeFileSync(join(root, 'cifar-10-batches-bin', 'test_batch.bin'), rec);
  return dir;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command and resolves when it exits, without blocking the event loop: vitest's worker
 * must keep answering its runner's RPC, and a spawnSync blocking it for more than 60 s fails the
 * whole run ("Timeout calling onTaskUpdate") even when every test passes.
 */
export function runCommand(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; input?: string; onSpawn?: (child: ChildProcess) => NodeJS.Timeout } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...(opts.env ?? {}) } });
    const timer = opts.onSpawn?.(child);
    child.on('close', () => clearTimeout(timer));
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

/** Bins that start the WASM backend and take --threads. */
const THREADED_BINS = new Set(['cta-eval', 'profile-mem', 'cta-train']);

/**
 * `--threads 1` unless the test chose a thread count (or the bin takes none, or --resume takes no
 * other option). The suite runs two test files at a time on two cores, so each bin's default of
 * one XNNPACK thread per CPU oversubscribes them, and every threaded start spawns 8 workers
 * (~0.3 s of CPU). Results are bit-identical for any count; the threaded path has its own tests
 * (threads.test.ts, startup.test.ts, the SIGINT case of interrupt.test.ts).
 */
function withOneThread(name: string, args: string[]): string[] {
  const bin = name.replace(/\.js$/, '');
  if (!THREADED_BINS.has(bin)) return args;
  if (args.some((a) => /^--(threads|resume|help|version)(=|$)/.test(a) || a === '-h')) return args;
  return [...args, '--threads', '1'];
}

/** A bin still running after this long gets a Node diagnostic report, then is killed. */
const WATCHDOG_MS = Number(process.env.CTA_E2E_WATCHDOG_MS ?? 100_000);

/**
 * Runs a built bin (`bin/<name>.js`) in the repository root (or `cwd`). Two fresh-clone CI runs
 * (recorded in LOG.md) saw an ImageNet-C e2e run hang until the 120 s test timeout,
 * never reproduced since; so a run past WATCHDOG_MS is sent SIGUSR2 (`--report-on-signal`), and
 * the report's JavaScript stack and active libuv handles are appended to its stderr before it is
 * killed. (No report comes from a main thread blocked in Atomics.wait: then stderr says so.)
 */
export async function runBin(name: string, args: string[], env: Record<string, string> = {}, cwd?: string): Promise<RunResult> {
  args = withOneThread(name, args);
  const reports = mkdtempSync(join(tmpdir(), 'cta-e2e-report-'));
  const nodeArgs = ['--report-on-signal', '--report-signal=SIGUSR2', `--report-directory=${reports}`];
  let watchdog = '';
  const r = await runCommand(process.execPath, [...nodeArgs, join(ROOT, 'bin', `${name.replace(/\.js$/, '')}.js`), ...args], {
    env,
    cwd,
    onSpawn: (child) =>
      setTimeout(() => {
        child.kill('SIGUSR2');
        setTimeout(() => {
          watchdog = describeReport(reports);
          child.kill('SIGKILL');
        }, 3000);
      }, WATCHDOG_MS),
  });
  // The report (if any) has been read into the message above.
  rmSync(reports, { recursive: true, force: true });
  return watchdog ? { ...r, stderr: `${r.stderr}\n[e2e watchdog] ${name} ran past ${WATCHDOG_MS / 1000} s: ${watchdog}` } : r;
}

function describeReport(dir: string): string {
  const file = readdirSync(dir).find((f) => f.endsWith('.json'));
  if (!file) return 'no diagnostic report (main thread blocked outside JavaScript, e.g. in Atomics.wait)';
  const report = JSON.parse(readFileSync(join(dir, file), 'utf8')) as {
    javascriptStack?: { message?: string; stack?: string[] };
    libuv?: Array<{ type: string; is_active?: boolean; is_referenced?: boolean }>;
    workers?: unknown[];
  };
  const stack = (report.javascriptStack?.stack ?? []).slice(0, 12).join(' | ');
  const handles = (report.libuv ?? []).filter((h) => h.is_active).map((h) => h.type);
  return `report ${file}; JS stack: ${report.javascriptStack?.message ?? ''} ${stack}; active libuv handles: ${handles.join(', ')}; workers: ${report.workers?.length ?? 0}`;
}
