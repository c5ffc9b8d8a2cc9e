/**
 * Runs a planned sweep on this machine with a pool of N workers, one cta-eval process per run.
 *
 * - A run whose summary.json says complete is skipped; an unfinished one with a domain-boundary
 *   checkpoint continues with `cta-eval --resume`; any other existing run folder is cleared of its
 *   previous outputs and started afresh (cta-eval rewrites its folder from the first batch).
 * - Each child writes its own stdout/stderr to <run>/cta-eval.log; this process prints one line per
 *   start, finish and failure.
 * - On abort (Ctrl-C in the CLI) no new run starts and running children get SIGTERM. A folder only
 *   ever becomes complete by cta-eval's atomic rename of summary.json, so finished runs are never
 *   touched and interrupted ones are resumed (or restarted) next time.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { describeParams, type PlannedRun } from './spec.js';

export type RunStatus = 'complete' | 'partial' | 'new';

/**
 * Files a run folder may hold from an earlier attempt, removed before a restart (including
 * cta-eval's resume checkpoint, so a later `--resume` cannot pick up a stale one).
 */
export const RUN_FILES = ['summary.json', 'batches.jsonl', 'manifest.json', 'checkpoint.json', 'checkpoint.safetensors', 'cta-eval.log'].flatMap((f) => [f, `${f}.tmp`]);
export const LOG_NAME = 'cta-eval.log';

export function readSummary(dir: string): { complete?: unknown; mean_error?: unknown } | null {
  try {
    return JSON.parse(readFileSync(join(dir, 'summary.json'), 'utf8'));
  } catch {
    return null;
  }
}

export function runStatus(dir: string): RunStatus {
  if (readSummary(dir)?.complete === true) return 'complete';
  return RUN_FILES.some((f) => existsSync(join(dir, f))) ? 'partial' : 'new';
}

/**
 * An interrupted run that reached a domain boundary left a checkpoint: it continues with
 * `cta-eval --resume` (same numbers as an uninterrupted run) instead of starting over.
 */
export function canResume(dir: string): boolean {
  return existsSync(join(dir, 'checkpoint.json')) && existsSync(join(dir, 'checkpoint.safetensors')) && existsSync(join(dir, 'manifest.json'));
}

/** Removes an unfinished attempt's outputs (only the files cta-eval and cta-sweep write). */
export function resetRun(dir: string): void {
  for (const f of RUN_FILES) rmSync(join(dir, f), { force: true });
}

export interface LocalOptions {
  jobs: number;
  /** The process to start for a run (cta-eval with the run's flags and --out). */
  command: (run: PlannedRun) => { file: string; args: string[] };
  log: (line: string) => void;
  signal?: AbortSignal;
}

export interface LocalResult {
  ran: string[];
  skipped: string[];
  failed: { id: string; reason: string }[];
  interrupted: string[];
}

function lastLine(path: string): string {
  try {
    const lines = readFileSync(path, 'utf8').trim().split('\n');
    return lines[lines.length - 1] ?? '';
  } catch {
    return '';
  }
}

export async function runLocal(runs: readonly PlannedRun[], opts: LocalOptions): Promise<LocalResult> {
  const result: LocalResult = { ran: [], skipped: [], failed: [], interrupted: [] };
  const todo: PlannedRun[] = [];
  for (const r of runs) {
    if (runStatus(r.dir) === 'complete') result.skipped.push(r.id);
    else todo.push(r);
  }
  if (result.skipped.length) opts.log(`cta-sweep: ${result.skipped.length} of ${runs.length} runs already complete, skipped`);
  if (todo.length === 0) return result;

  const active = new Map<ChildProcess, PlannedRun>();
  let next = 0;
  let finished = 0;
  let aborted = opts.signal?.aborted ?? false;
  const total = todo.length;
  const onAbort = () => {
    aborted = true;
    for (const child of active.keys()) child.kill('SIGTERM');
  };
  opts.signal?.addEventListener('abort', onAbort);

  const runOne = (run: PlannedRun): Promise<void> =>
    new Promise((done) => {
      mkdirSync(run.dir, { recursive: true });
      const resume = canResume(run.dir);
      if (!resume) resetRun(run.dir);
      const logPath = join(run.dir, LOG_NAME);
      const fd = openSync(logPath, resume ? 'a' : 'w');
      const cmd = opts.command(run);
      // args[0] is the cta-eval script; a resumed run takes its config from its own manifest.
      const { file, args } = resume ? { file: cmd.file, args: [cmd.args[0], '--resume', run.dir, '--progress', 'none'] } : cmd;
      const t0 = performance.now();
      let child: ChildProcess;
      try {
        // Not detached: a Ctrl-C in the terminal reaches the children too; onAbort covers a signal
        // sent to this process alone.
        child = spawn(file, args, { stdio: ['ignore', fd, fd] });
      } finally {
        closeSync(fd);
      }
      active.set(child, run);
      const what = run.params.length ? ` (${describeParams(run.params)})` : '';
      opts.log(`cta-sweep: ${resume ? 'resume' : 'start'} ${run.id}${what}`);
      let spawnError: Error | null = null;
      child.on('error', (e) => (spawnError = e));
      child.on('close', (code, sig) => {
        active.delete(child);
        finished++;
        const secs = ((performance.now() - t0) / 1000).toFixed(1);
        const summary = readSummary(run.dir);
        if (summary?.complete === true) {
          result.ran.push(run.id);
          const err = typeof summary.mean_error === 'number' ? `, mean error ${summary.mean_error.toFixed(2)}%` : '';
          opts.log(`cta-sweep: done  ${run.id} [${finished}/${total}] ${secs} s${err}`);
        } else if (aborted || sig === 'SIGINT' || code === 130) {
          // A child killed by SIGINT (or, catching it, exiting 130 after saving what it finished)
          // means Ctrl-C reached the process group, possibly before our own handler ran: stop
          // starting runs either way.
          aborted = true;
          result.interrupted.push(run.id);
          opts.log(`cta-sweep: stopped ${run.id} (interrupted; it resumes or restarts next time)`);
        } else {
          const reason = spawnError
            ? (spawnError as Error).message
            : code === 0
              ? 'exited without a complete summary.json'
              : `exit ${code ?? sig}: ${lastLine(logPath)}`;
          result.failed.push({ id: run.id, reason });
          opts.log(`cta-sweep: FAILED ${run.id} [${finished}/${total}] ${reason} (log: ${logPath})`);
        }
        done();
      });
    });

  const worker = async () => {
    while (!aborted && next < todo.length) await runOne(todo[next++]);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.jobs, todo.length)) }, worker));
  opts.signal?.removeEventListener('abort', onAbort);
  // Runs never started because of the abort count as interrupted too (nothing was written for them).
  for (; next < todo.length; next++) result.interrupted.push(todo[next].id);
  return result;
}
