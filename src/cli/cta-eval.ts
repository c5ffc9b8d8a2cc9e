/**
 * cta-eval: continual test-time adaptation over a corruption stream. Thin layer: parse flags into
 * the typed config, call the runner, print the table. With no arguments it runs the embedded demo
 * (configs/demo.yaml: shipped data and weights, no download).
 */
import { isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync, readFileSync } from 'node:fs';
import { configFiles, flagValues, parseCommand } from './args.js';
import { writeOrdersFile } from './write-orders.js';
import { configsRunName, resolveConfig } from '../config/load.js';
import { CtaError, Interrupted } from '../util/errors.js';
import { checkOutDir } from '../util/out-path.js';
import { runMain } from './run-main.js';
import { watchInterrupts } from './signals.js';
import { RunInterrupted, defaultOutDir, runContinual } from '../runner/continual.js';
import { resultTable, runTables } from '../runner/table.js';
import { endNotes } from '../runner/end-notes.js';
import type { CtaConfig } from '../config/schema.js';
import type { Summary } from '../runner/output.js';

const USAGE = `$0 [--config FILE] [options]

Runs a continual test-time adaptation experiment: every domain of the stream in order, one model
adapting throughout, top-1 error per domain. Results go to --out (batches.jsonl, summary.json,
manifest.json). With no arguments: the embedded demo (configs/demo.yaml).`;

const PKG_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const DEMO_CONFIG = join(PKG_ROOT, 'configs', 'demo.yaml');
/** Path-valued keys of the demo config, resolved against the package root (run from anywhere). */
const DEMO_PATHS = ['source', 'weights', 'dataDir', 'frostDir'] as const;

/** The comparison run: same stream and seed, another method, no MECTA options (they belong to the main run). */
function comparisonConfig(cfg: CtaConfig, out: string): CtaConfig {
  return {
    ...cfg,
    alg: cfg.compareWith as CtaConfig['alg'],
    compareWith: 'none',
    accumBn: false,
    forgetGate: false,
    betaThre: 0,
    pruneQ: 0,
    initBeta: null,
    cacheBudgetMb: null,
    cacheBudgetMode: 'greedy',
    saveAdapted: null,
    out: join(out, `compare-${cfg.compareWith}`),
  };
}

/** The resolved config of an existing run folder (its manifest), for --resume. */
function resumedConfig(dir: string, argv: Record<string, unknown>): CtaConfig {
  const others = Object.keys(flagValues(argv)).filter((k) => k !== 'progress');
  if (others.length > 0 || argv.config !== undefined) {
    throw new CtaError(`--resume takes no other options (the run's config is in ${dir}/manifest.json); got --${others[0] ?? 'config'}`);
  }
  const path = join(dir, 'manifest.json');
  if (!existsSync(path)) throw new CtaError(`--resume ${dir}: no manifest.json (not a cta-eval run folder)`);
  const saved = (JSON.parse(readFileSync(path, 'utf8')) as { config: Record<string, unknown> }).config;
  const cfg = resolveConfig(null, { ...saved, ...(argv.progress !== undefined ? { progress: argv.progress } : {}) });
  cfg.out = dir;
  return cfg;
}

const shellWord = (s: string) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/**
 * The one line for a run stopped by a signal: where it stood, what finished, and the exact command
 * that continues it (always the main run's folder: its --resume also finishes a comparison run).
 */
function interruptLine(e: RunInterrupted, mainDir: string, comparison: { alg: string; main: string } | null): string {
  const p = e.position;
  const head = `interrupted (${e.signal})${comparison ? ` in the comparison run (${comparison.alg}; the ${comparison.main} run is complete)` : ''}`;
  if (!p.resumable) return `${head} while starting, before the run folder was written: run the same command again`;
  const where = p.current ? ` in domain ${p.current.index}/${p.total} (${p.current.name})` : '';
  const done = `${p.finished}${p.total === null ? '' : ` of ${p.total}`} domain${p.total === 1 && p.finished <= 1 ? '' : 's'} finished`;
  const saved = p.finished > 0 ? ` (results so far in ${join(p.dir, 'summary.json')})` : '';
  return `${head}${where}: ${done}${saved}; continue with: cta-eval --resume ${shellWord(mainDir)}`;
}

export async function main(argv: string[]): Promise<void> {
  await runMain('cta-eval', async () => {
    const demo = argv.length === 0;
    const parsed = await parseCommand(demo ? ['--config', DEMO_CONFIG] : argv, 'cta-eval', USAGE, (y) =>
      y
        .option('resume', { type: 'string', defaultDescription: 'none', describe: 'continue an interrupted run folder from its last finished domain', group: 'output' })
        .option('write-orders', { type: 'string', defaultDescription: 'none', describe: 'write the orders of --domain-orders (k seeded or a file, checked) to this file and exit, running nothing', group: 'data' }),
    );
    const resume = typeof parsed.argv.resume === 'string' ? parsed.argv.resume : null;
    const cfg = resume ? resumedConfig(resume, parsed.argv) : parsed.cfg;
    if (typeof parsed.argv.writeOrders === 'string') {
      if (resume) throw new CtaError('--write-orders: not with --resume');
      process.stdout.write(writeOrdersFile(cfg, parsed.argv.writeOrders, process.argv.slice(2)) + '\n');
      return;
    }
    if (demo) {
      for (const k of DEMO_PATHS) {
        const v = cfg[k];
        if (typeof v === 'string' && !isAbsolute(v)) cfg[k] = join(PKG_ROOT, v);
      }
    }
    // Composed configs name the run by their files (src/config/load.ts configsRunName).
    cfg.out = cfg.out ?? defaultOutDir(configsRunName(configFiles(parsed.argv)) ?? cfg.alg);
    // Before the backend, weights and data: an unwritable folder would only fail at the first write.
    checkOutDir(resume ? '--resume' : '--out', cfg.out);
    const log = (line: string) => process.stdout.write(line + '\n');
    const name = `${cfg.alg}${cfg.accumBn ? '+mecta' : ''}`;
    // Installed before the first line, so a signal at any point after it gets the one-line answer.
    const interrupts = watchInterrupts('cta-eval');
    const stopRequested = interrupts.requested;
    let comparing: { alg: string; main: string } | null = null;
    const columns: Parameters<typeof resultTable>[0] = [];
    const finished: { label: string; summary: Summary }[] = [];
    try {
      if (demo) log(`cta-eval: no arguments — running the embedded demo (${DEMO_CONFIG})`);
      log(`cta-eval: ${name} on ${cfg.data} (${cfg.model}), batch ${cfg.batchSize}, severity ${cfg.severity}`);
      const main = await runContinual(cfg, cfg.out, { log, label: cfg.compareWith !== 'none' ? name : undefined, stopRequested }, { resume: resume !== null });
      columns.push({ title: name, domains: main.summary.domains, mean: main.summary.mean_error, meanAll: main.summary.mean_error_all });
      finished.push({ label: name, summary: main.summary });
      if (cfg.compareWith !== 'none') {
        const other = comparisonConfig(cfg, cfg.out);
        comparing = { alg: other.alg, main: name };
        log(`cta-eval: comparison run: ${other.alg} on the same stream`);
        // Resuming the main folder continues (or, when it never started, runs) its comparison too.
        const resumeOther = resume !== null && existsSync(join(other.out!, 'manifest.json'));
        const cmp = await runContinual(other, other.out!, { log, label: other.alg, stopRequested }, { resume: resumeOther });
        columns.unshift({ title: other.alg, domains: cmp.summary.domains, mean: cmp.summary.mean_error, meanAll: cmp.summary.mean_error_all });
        finished.unshift({ label: other.alg, summary: cmp.summary });
      }
    } catch (e) {
      if (e instanceof RunInterrupted) throw new Interrupted(interruptLine(e, cfg.out, comparing), e.signal);
      throw e;
    } finally {
      interrupts.dispose();
    }
    log('');
    log(runTables(columns, finished));
    for (const line of endNotes(finished)) log(line);
    log('');
    log(`results: ${cfg.out}/summary.json${cfg.compareWith !== 'none' ? ` (comparison: ${join(cfg.out, `compare-${cfg.compareWith}`)}/summary.json)` : ''}`);
  });
}
