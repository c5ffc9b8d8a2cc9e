/**
 * cta-sweep FILE: expands a sweep file (src/sweep/spec.ts) into runs and lists them, emits them as
 * a shell script or a Slurm array job, or runs them here with N workers. Run folders are named by a
 * hash of the resolved config, so every mode skips runs that already finished.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runMain } from './run-main.js';
import { ALIAS_HELP, configureCli, addConfigOptions, flagValues, parseArgv, valueOption, yargs } from './args.js';
import { CtaError } from '../util/errors.js';
import { checkOutDir } from '../util/out-path.js';
import { coerce } from '../config/load.js';
import { toKebab, type FieldKey } from '../config/schema.js';
import { formatValue, missingInputs, planSweep, readSweep, type SweepPlan } from '../sweep/spec.js';
import { commandArgs, emitSh, emitSlurm } from '../sweep/emit.js';
import { runLocal, runStatus } from '../sweep/local.js';
import { autoThreads } from '../wasm-threads.js';

const USAGE = `$0 FILE [--list | --emit sh | --emit slurm | --run [-j N]] [options]`;
const ABOUT =
  'Expands a sweep file (a base config or extends: configs/…yaml, a grid: of key → values and zip: groups) ' +
  'into runs. --list shows them (the default); --emit sh prints a bash script with one cta-eval command per ' +
  'run; --emit slurm prints a Slurm array job (one run per task); --run runs them here, -j at a time. Run ' +
  'folders are <runs-dir>/<alg>[-mecta]-<config hash>: finished runs are skipped, unfinished ones resume from their last domain checkpoint (or restart). ' +
  'Config flags given here (e.g. --data-dir, --weights, --n-examples) apply to every run.';

export const CTA_EVAL_BIN = fileURLToPath(new URL('../../bin/cta-eval.js', import.meta.url));

function listText(plan: SweepPlan): string {
  const rows = plan.runs.map((r) => [String(r.index), r.id, runStatus(r.dir), ...plan.sweptKeys.map((k) => {
    const hit = r.params.find(([pk]) => pk === k);
    return hit ? formatValue(hit[1]) : '';
  })]);
  const head = ['#', 'run', 'status', ...plan.sweptKeys.map(toKebab)];
  const widths = head.map((h, j) => Math.max(h.length, ...rows.map((r) => r[j].length)));
  const fmt = (r: string[]) => r.map((c, j) => (j === 0 ? c.padStart(widths[j]) : c.padEnd(widths[j]))).join('  ').trimEnd();
  const lines = [`sweep ${plan.name} (${plan.file}): ${plan.runs.length} run${plan.runs.length === 1 ? '' : 's'} in ${plan.runsDir}`, fmt(head), ...rows.map(fmt)];
  for (const d of plan.duplicates) lines.push(`(grid point ${d.index} resolves to the same config as ${d.of}; run once)`);
  return lines.join('\n');
}

function requireInputs(plan: SweepPlan): void {
  for (const r of plan.runs) {
    const missing = missingInputs(r.config);
    if (missing.length) {
      throw new CtaError(`${plan.file}: run ${r.index} needs ${missing.join(' and ')}: pass it to cta-sweep or set it in the sweep file`);
    }
  }
}

function num(name: string, v: unknown, min: number): number {
  const n = Number(Array.isArray(v) ? v[v.length - 1] : v);
  if (!Number.isInteger(n) || n < min) throw new CtaError(`--${name}: expected an integer ≥ ${min}, got ${JSON.stringify(v)}`);
  return n;
}

function str(v: unknown): string | null {
  const s = Array.isArray(v) ? v[v.length - 1] : v;
  return typeof s === 'string' && s !== '' ? s : null;
}

function strList(v: unknown): string[] {
  return (Array.isArray(v) ? v : v === undefined ? [] : [v]).map(String);
}

export async function main(argv: string[]): Promise<void> {
  await runMain('cta-sweep', async () => {
    const y = configureCli(addConfigOptions(yargs(argv)), 'cta-sweep', USAGE)
      .epilogue(ABOUT)
      .epilogue(ALIAS_HELP)
      .option('list', { type: 'boolean', default: false, describe: 'print the expanded runs and their status (what runs without --emit or --run)', group: 'sweep' })
      .option('emit', { type: 'string', choices: ['sh', 'slurm'], defaultDescription: 'none', describe: 'print a bash script or a Slurm array job to stdout', group: 'sweep' })
      .option('run', { type: 'boolean', default: false, describe: 'run the sweep on this machine', group: 'sweep' })
      .option('jobs', { alias: 'j', ...valueOption('int'), defaultDescription: '1', describe: 'with --run: runs at the same time', group: 'sweep' })
      .option('runs-dir', { type: 'string', defaultDescription: "the sweep's runs-dir, else runs/sweeps/<name>", describe: 'folder for the run folders', group: 'sweep' })
      .option('setup', { type: 'string', array: true, defaultDescription: 'none', describe: 'shell line to run before the runs in emitted scripts (repeatable), e.g. "module load nodejs"', group: 'sweep' })
      .option('partition', { type: 'string', defaultDescription: "the cluster's", describe: 'Slurm partition', group: 'slurm' })
      .option('account', { type: 'string', defaultDescription: "the cluster's", describe: 'Slurm account', group: 'slurm' })
      .option('qos', { type: 'string', defaultDescription: "the cluster's", describe: 'Slurm QOS', group: 'slurm' })
      .option('time', { type: 'string', defaultDescription: '12:00:00', describe: 'Slurm time limit per run', group: 'slurm' })
      .option('cpus', { ...valueOption('int'), defaultDescription: '4', describe: 'CPUs per run', group: 'slurm' })
      .option('mem', { type: 'string', defaultDescription: '16G', describe: 'memory per run', group: 'slurm' })
      .option('gpus', { ...valueOption('int'), defaultDescription: '0', describe: 'GPUs per run, as --gres=gpu:N (useful with tfjs-node-gpu)', group: 'slurm' })
      .option('max-parallel', { ...valueOption('int'), defaultDescription: 'no limit', describe: 'at most this many array tasks at once (--array=0-N%K)', group: 'slurm' })
      .option('job-name', { type: 'string', defaultDescription: 'cta-<sweep name>', describe: 'Slurm job name', group: 'slurm' })
      .option('sbatch', { type: 'string', array: true, defaultDescription: 'none', describe: 'extra #SBATCH option, verbatim (repeatable), e.g. --sbatch=--constraint=a100', group: 'slurm' })
      // addConfigOptions brings --config; a sweep names its base with extends: instead. Each
      // run's --out is chosen here (--runs-dir). Both stay parseable so that giving them is a
      // clear error (below, and in planSweep), but neither is offered.
      .hide('config')
      .hide('out');
    const a = await parseArgv(y, argv);
    const files = ((a._ as unknown[]) ?? []).map(String);
    if (files.length !== 1) throw new CtaError(`expected one sweep file, got ${files.length === 0 ? 'none' : files.join(' ')} (see cta-sweep --help)`);
    if (a.config !== undefined) throw new CtaError('--config: a sweep names its base config with extends: in the sweep file');
    const modes = [a.list === true, a.emit !== undefined, a.run === true].filter(Boolean).length;
    if (modes > 1) throw new CtaError('choose one of --list, --emit, --run');

    // Config flags apply to every run; they are validated like cta-eval's.
    const overrides: Partial<Record<FieldKey, unknown>> = {};
    for (const [k, v] of Object.entries(flagValues(a))) overrides[k as FieldKey] = coerce(k as FieldKey, v, { kind: 'flag' });
    const plan = planSweep(readSweep(files[0]), { overrides, runsDir: str(a.runsDir) });
    // --run writes the run folders there, --emit slurm its log folder: refuse a bad one before either.
    if (a.run === true || a.emit === 'slurm') checkOutDir('--runs-dir', plan.runsDir);
    const out = (s: string) => process.stdout.write(s);
    const generatedBy = `cta-sweep ${argv.map((s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : JSON.stringify(s))).join(' ')}`;
    const setup = strList(a.setup);

    if (a.emit === 'sh') {
      requireInputs(plan);
      out(emitSh(plan, { ctaEval: CTA_EVAL_BIN, setup, generatedBy }));
      return;
    }
    if (a.emit === 'slurm') {
      requireInputs(plan);
      const logDir = join(plan.runsDir, 'slurm-logs');
      const script = emitSlurm(plan, {
        ctaEval: CTA_EVAL_BIN,
        setup,
        generatedBy,
        jobName: str(a.jobName) ?? undefined,
        partition: str(a.partition),
        account: str(a.account),
        qos: str(a.qos),
        time: str(a.time) ?? '12:00:00',
        cpus: a.cpus === undefined ? 4 : num('cpus', a.cpus, 1),
        mem: str(a.mem) ?? '16G',
        gpus: a.gpus === undefined ? 0 : num('gpus', a.gpus, 0),
        maxParallel: a.maxParallel === undefined ? null : num('max-parallel', a.maxParallel, 1),
        sbatch: strList(a.sbatch),
        logDir,
      });
      // Slurm does not create the --output folder; a missing one makes every task fail silently.
      mkdirSync(logDir, { recursive: true });
      out(script);
      return;
    }
    if (a.run === true) {
      requireInputs(plan);
      const jobs = a.jobs === undefined ? 1 : num('jobs', a.jobs, 1);
      const log = (line: string) => process.stdout.write(line + '\n');
      log(`cta-sweep: ${plan.name}: ${plan.runs.length} runs in ${plan.runsDir}, ${jobs} at a time`);
      const ctl = new AbortController();
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals) => {
        signals++;
        if (signals === 1) {
          log(`cta-sweep: ${sig}: stopping running runs; finished runs are kept (again to quit at once)`);
          ctl.abort();
        } else {
          process.exit(130);
        }
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const res = await runLocal(plan.runs, {
          jobs,
          // Runs that leave --threads at auto share the CPUs: jobs × one-per-CPU threads would
          // oversubscribe them (numbers do not depend on the thread count).
          command: (r) => ({
            file: process.execPath,
            args: [CTA_EVAL_BIN, ...commandArgs(r.config), ...(r.config.threads === 0 ? ['--threads', String(Math.max(1, Math.floor(autoThreads() / jobs)))] : []), '--out', r.dir],
          }),
          log,
          signal: ctl.signal,
        });
        log(
          `cta-sweep: ${res.ran.length} ran, ${res.skipped.length} skipped (complete), ${res.failed.length} failed` +
            (res.interrupted.length ? `, ${res.interrupted.length} interrupted` : '') +
            ` — tables and plots: cta-report ${plan.runsDir}`,
        );
        if (res.interrupted.length) process.exitCode = 130;
        else if (res.failed.length) process.exitCode = 1;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      return;
    }
    out(listText(plan) + '\n');
    const missing = plan.runs.length ? missingInputs(plan.runs[0].config) : [];
    if (missing.length) {
      out(`before --emit/--run, add ${missing.join(' and ')} (flags here or keys in the sweep file);\n`);
      out('run ids and status include these paths, so list with the same flags you run with\n');
    }
  });
}
