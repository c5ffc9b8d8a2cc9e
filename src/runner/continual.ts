/**
 * A continual test-time adaptation run (docs/protocol.md#stream), in three pieces: prepare
 * (src/runner/prepare.ts: resume point, model, data, manifest, method), the loop over the domains
 * (src/runner/loop.ts) and what gets written (src/runner/record.ts). Streaming, timing, logging
 * and memory accounting live in these; methods only see batches.
 */
import { join } from 'node:path';
import type { CtaConfig } from '../config/schema.js';
import { removeStaleTemps } from './checkpoint.js';
import { readCompleteSummary, type Summary } from './output.js';
import { RunControl, type RunHooks } from './control.js';
import { prepareRun } from './prepare.js';
import { runDomains } from './loop.js';
import { recordFinish } from './record.js';
import { saveAdapterFile } from '../adapters/attach.js';

export { RunInterrupted, type RunHooks, type RunPosition } from './control.js';
export { adaptOptions, configureRunNorm, fileSize, mectaOptions, prepareModel, sha256File, type PreparedModel } from './prepare.js';

export interface RunResult {
  summary: Summary;
  dir: string;
  /** `--resume` of a folder whose run had already finished: nothing was run. */
  alreadyComplete?: boolean;
}

/**
 * Runs one algorithm over the whole stream, writing the run folder as results are produced.
 * A signal seen by `hooks.stopRequested` stops it with RunInterrupted.
 */
export async function runContinual(cfg: CtaConfig, outDir: string, hooks: RunHooks, opts: { resume?: boolean } = {}): Promise<RunResult> {
  const started = new Date();
  const resume = opts.resume === true;
  if (resume) {
    // The checkpoint is that of the last domain boundary, not of the end: summary.json says
    // whether the run finished.
    const done = readCompleteSummary(outDir);
    if (done) {
      hooks.log(`${outDir}: the run is already complete, nothing to resume (results: ${join(outDir, 'summary.json')})`);
      return { summary: done, dir: outDir, alreadyComplete: true };
    }
  }
  for (const p of removeStaleTemps(outDir)) hooks.log(`notice: removed ${p}, left by a write that did not finish (the file it was to replace is intact)`);
  const control = new RunControl(hooks, outDir, resume);
  control.stopIfAsked();
  const run = await prepareRun(cfg, outDir, control, started, resume);
  await runDomains(run, control);
  if (cfg.saveAdapted) {
    await saveAdapterFile(run.model, cfg.saveAdapted);
    hooks.log(`adapted modules (${cfg.adaptParams}): ${cfg.saveAdapted}`);
  }
  run.alg.dispose();
  recordFinish(run);
  return { summary: run.summary, dir: outDir };
}

/** Default run folder: runs/<timestamp>-<alg>. */
export function defaultOutDir(alg: string, now = new Date()): string {
  const ts = now.toISOString().replace(/[:.]/g, '-').replace('T', '_').slice(0, 19);
  return join('runs', `${ts}-${alg}`);
}
