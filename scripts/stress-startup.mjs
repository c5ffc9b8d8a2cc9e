#!/usr/bin/env node
/**
 * Start-up stress test of the TF.js backend: `node scripts/stress-startup.mjs [flags]` (needs dist/,
 * i.e. `npm run build`). Runs N fresh processes, K at a time; each initialises the backend exactly
 * as a cta-eval run does (`initBackend(--backend, --threads)`), runs one small op and reports its
 * time to ready. A process that has not reported within --timeout seconds is a hang: it is sent
 * SIGKILL and counted. Prints one JSON object on stdout; exit 1 when any start hung or failed.
 *
 *   --starts N        processes in all (default 300)
 *   --concurrency K   processes at a time (default 6)
 *   --threads T       WASM threads, as cta-eval's --threads (default 0 = one per CPU)
 *   --backend B       as cta-eval's --backend (default wasm)
 *   --timeout S       seconds before a start counts as hung (default 90)
 */
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const MARK = '@@READY@@ ';

if (process.argv[2] === '--child') {
  // One start, as a bin does it: errors print through runMain as one `<cmd>: error:` line.
  const [, , , backend, threads] = process.argv;
  const { initBackend, tf } = await import(pathToFileURL(join(ROOT, 'dist', 'tf.js')).href);
  const { runMain } = await import(pathToFileURL(join(ROOT, 'dist', 'cli', 'run-main.js')).href);
  await runMain('stress-startup', async () => {
    const info = await initBackend(backend, Number(threads));
    const sum = tf.tidy(() => tf.matMul(tf.ones([32, 32]), tf.ones([32, 32])).sum().dataSync()[0]);
    if (sum !== 32 * 32 * 32) throw new Error(`wrong result ${sum}`);
    process.stdout.write(`${MARK}${JSON.stringify({ ms: performance.now(), backend: info.name, threads: info.threads })}\n`);
  });
} else {
  const { values } = parseArgs({
    options: {
      starts: { type: 'string', default: '300' },
      concurrency: { type: 'string', default: '6' },
      threads: { type: 'string', default: '0' },
      backend: { type: 'string', default: 'wasm' },
      timeout: { type: 'string', default: '90' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(readHelp());
    process.exit(0);
  }
  const n = positiveInt('--starts', values.starts);
  const k = positiveInt('--concurrency', values.concurrency);
  const timeoutMs = positiveInt('--timeout', values.timeout) * 1000;
  if (!existsSync(join(ROOT, 'dist', 'tf.js'))) fatal('dist/tf.js not found: run `npm run build` first');
  const tempBefore = wasmTempFolders();
  const t0 = performance.now();
  const results = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      results[i] = await oneStart(values.backend, values.threads, timeoutMs);
    }
  };
  await Promise.all(Array.from({ length: Math.min(k, n) }, worker));
  const ready = results.filter((r) => r.status === 'ready').map((r) => r.ms).sort((a, b) => a - b);
  const pct = (p) => (ready.length ? round(ready[Math.min(ready.length - 1, Math.floor((p / 100) * ready.length))]) : null);
  const leftover = wasmTempFolders().filter((d) => !tempBefore.includes(d));
  const report = {
    starts: n,
    concurrency: k,
    backend: values.backend,
    threads_requested: Number(values.threads),
    threads_used: [...new Set(results.filter((r) => r.status === 'ready').map((r) => r.threads))],
    cpus: cpus().length,
    ready: ready.length,
    hangs: results.filter((r) => r.status === 'hang').length,
    failures: results.filter((r) => r.status === 'failed').length,
    time_to_ready_ms: { p50: pct(50), p90: pct(90), p99: pct(99), max: ready.length ? round(ready[ready.length - 1]) : null },
    leftover_temp_folders: leftover.length,
    wall_s: round((performance.now() - t0) / 1000),
    load_avg_1m: round(loadavg()[0]),
    problems: results.filter((r) => r.status !== 'ready').slice(0, 5).map((r) => ({ status: r.status, code: r.code, stderr: r.stderr.slice(-400) })),
  };
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  process.exitCode = report.hangs || report.failures || report.leftover_temp_folders ? 1 : 0;
}

/** One child start: 'ready' with its time, 'hang' past the timeout, or 'failed'. */
function oneStart(backend, threads, timeoutMs) {
  return new Promise((resolveStart) => {
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), '--child', backend, threads], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let hung = false;
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      const line = stdout.split('\n').find((l) => l.startsWith(MARK));
      if (hung) resolveStart({ status: 'hang', code, stderr });
      else if (code === 0 && line) resolveStart({ status: 'ready', ...JSON.parse(line.slice(MARK.length)), stderr });
      else resolveStart({ status: 'failed', code, stderr });
    });
  });
}

/** Temporary folders an older threaded start wrote (none are written now): any left is a bug. */
function wasmTempFolders() {
  return readdirSync(tmpdir()).filter((d) => d.startsWith('cta-eval-wasm-'));
}

function positiveInt(flag, v) {
  const x = Number(v);
  if (!Number.isInteger(x) || x < 1) fatal(`${flag}: expected a positive integer, got '${v}'`);
  return x;
}

function round(x) {
  return Math.round(x * 100) / 100;
}

function fatal(msg) {
  process.stderr.write(`stress-startup: error: ${msg}\n`);
  process.exit(2);
}

function readHelp() {
  return 'node scripts/stress-startup.mjs [--starts N] [--concurrency K] [--threads T] [--backend B] [--timeout S]\n' +
    '  N fresh processes, K at a time, each initialising the backend as cta-eval does; JSON report on stdout,\n' +
    '  exit 1 when any start hung (no report within --timeout seconds) or failed.\n';
}
