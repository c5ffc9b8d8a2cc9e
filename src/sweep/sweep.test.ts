import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { defaultConfig, type CtaConfig } from '../config/schema.js';
import { parseCommand } from '../cli/args.js';
import { expandAxes, planSweep, readSweep, type PlannedRun } from './spec.js';
import { configHash, runId, stableJson } from './hash.js';
import { commandArgs, emitSh, emitSlurm, shQuote } from './emit.js';
import { runLocal, runStatus } from './local.js';
import { errorOf } from '../util/test-errors.js';

const ROOT = resolve(import.meta.dirname, '..', '..');

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'sweep-'));
}

function sweepFile(text: string, dir = tmp(), name = 's.yaml'): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

describe('sweep files', () => {
  it('grid is a cartesian product, first key slowest; zip values advance together', () => {
    const f = sweepFile(`alg: tent
grid:
  batch-size: [8, 16]
  lr: [0.001, 0.01, 0.1]
zip:
  - accum-bn: [false, true]
    prune-q: [0, 0.7]
`);
    const plan = planSweep(readSweep(f), { cwd: tmp() });
    expect(plan.runs).toHaveLength(2 * 3 * 2);
    expect(plan.sweptKeys).toEqual(['batchSize', 'lr', 'accumBn', 'pruneQ']);
    const pts = plan.runs.map((r) => [r.config.batchSize, r.config.lr, r.config.accumBn, r.config.pruneQ]);
    expect(pts.slice(0, 4)).toEqual([
      [8, 0.001, false, 0],
      [8, 0.001, true, 0.7],
      [8, 0.01, false, 0],
      [8, 0.01, true, 0.7],
    ]);
    expect(pts[11]).toEqual([16, 0.1, true, 0.7]);
    // zip never pairs false with 0.7
    expect(plan.runs.every((r) => r.config.accumBn === (r.config.pruneQ === 0.7))).toBe(true);
    expect(plan.runs.every((r) => r.config.alg === 'tent')).toBe(true);
    expect(plan.runs.map((r) => r.index)).toEqual([...Array(12).keys()]);
  });

  it('expandAxes with no axes is one empty point; two zip groups multiply', () => {
    expect(expandAxes([])).toEqual([[]]);
    const f = sweepFile('zip:\n  - {seed: [1, 2, 3], lr: [0.1, 0.2, 0.3]}\n  - {batch-size: [4, 8]}\n');
    const plan = planSweep(readSweep(f));
    expect(plan.runs.map((r) => [r.config.seed, r.config.lr, r.config.batchSize])).toEqual([
      [1, 0.1, 4], [1, 0.1, 8], [2, 0.2, 4], [2, 0.2, 8], [3, 0.3, 4], [3, 0.3, 8],
    ]);
  });

  it('extends a config file relative to the sweep file; grid overrides inherited keys', () => {
    const dir = tmp();
    mkdirSync(join(dir, 'configs'));
    writeFileSync(join(dir, 'configs', 'base.yaml'), 'alg: eata\nlr: 0.5\nseverity: 3\n');
    mkdirSync(join(dir, 'sweeps'));
    const f = sweepFile('extends: ../configs/base.yaml\nseverity: 4\ngrid:\n  alg: [tent, eata]\n', join(dir, 'sweeps'));
    const plan = planSweep(readSweep(f));
    expect(plan.runs.map((r) => r.config.alg)).toEqual(['tent', 'eata']);
    expect(plan.runs.every((r) => r.config.lr === 0.5 && r.config.severity === 4)).toBe(true);
    expect(plan.name).toBe('s');
  });

  it('runs: each entry extends its own config, below the sweep base keys and above the sweep extends', () => {
    const dir = tmp();
    mkdirSync(join(dir, 'configs'));
    writeFileSync(join(dir, 'configs', 'base.yaml'), 'alg: eata\nlr: 0.5\nseverity: 3\nbatch-size: 64\n');
    writeFileSync(join(dir, 'configs', 'tent.yaml'), 'alg: tent\nlr: 0.01\nbatch-size: 200\n');
    writeFileSync(join(dir, 'configs', 'sar.yaml'), 'alg: sar\nlr: 0.002\nsam-rho: 0.1\n');
    mkdirSync(join(dir, 'sweeps'));
    const f = sweepFile(
      `extends: ../configs/base.yaml
batch-size: 16
runs:
  - extends: ../configs/tent.yaml
  - { extends: ../configs/tent.yaml, accum-bn: true }
  - { extends: ../configs/sar.yaml, lr: 0.003 }
grid:
  seed: [1, 2]
`,
      join(dir, 'sweeps'),
    );
    const plan = planSweep(readSweep(f));
    const got = plan.runs.map((r) => [r.config.alg, r.config.lr, r.config.batchSize, r.config.accumBn, r.config.seed]);
    expect(got).toEqual([
      ['tent', 0.01, 16, false, 1], // the method config's lr; the sweep's own batch size wins over it
      ['tent', 0.01, 16, false, 2],
      ['tent', 0.01, 16, true, 1],
      ['tent', 0.01, 16, true, 2],
      ['sar', 0.003, 16, false, 1], // the entry's own key wins over its config
      ['sar', 0.003, 16, false, 2],
    ]);
    expect(plan.runs[4].config.samRho).toBe(0.1);
    expect(plan.runs[0].config.severity).toBe(3); // from the sweep's extends
    expect(plan.sweptKeys).toEqual(['alg', 'accumBn', 'lr', 'seed']);
    expect(plan.runs[0].params).toEqual([['alg', 'tent'], ['seed', 1]]);
    expect(errorOf(() => readSweep(sweepFile('runs:\n  - extends: nope.yaml\n')))).toMatch(/s\.yaml: runs\[0\]: extends: nope\.yaml not found/);
    expect(errorOf(() => readSweep(sweepFile('runs: []\n')))).toMatch(/s\.yaml: runs: expected a non-empty list/);
    expect(errorOf(() => readSweep(sweepFile('lr: 0.1\nruns:\n  - {lr: 0.2}\n')))).toMatch(/runs\[0\]: lr: also set as a base key/);
    expect(errorOf(() => readSweep(sweepFile('runs:\n  - {lr: 0.2}\ngrid:\n  lr: [0.1]\n')))).toMatch(/runs: lr: already varied in grid/);
  });

  it('errors name the sweep file, the section and the key', () => {
    expect(errorOf(() => readSweep(sweepFile('grid:\n  beta-thre: [0.1, lots]\n')))).toMatch(/s\.yaml: grid: beta-thre: expected a number/);
    expect(errorOf(() => readSweep(sweepFile('grid:\n  batch-sise: [1]\n')))).toMatch(/s\.yaml: grid: batch-sise: unknown key/);
    expect(errorOf(() => readSweep(sweepFile('severity: 9\n')))).toMatch(/s\.yaml: severity: expected an integer/);
    expect(errorOf(() => readSweep(sweepFile('grid:\n  lr: 0.1\n')))).toMatch(/grid: lr: expected a non-empty list/);
    expect(errorOf(() => readSweep(sweepFile('zip:\n  - {lr: [0.1, 0.2], seed: [1]}\n')))).toMatch(/zip\[0\]: .*lr has 2, seed has 1/);
    expect(errorOf(() => readSweep(sweepFile('lr: 0.1\ngrid:\n  lr: [0.2]\n')))).toMatch(/grid: lr: also set as a base key/);
    expect(errorOf(() => readSweep(sweepFile('grid:\n  lr: [0.2]\nzip:\n  - {lr: [0.1]}\n')))).toMatch(/zip\[0\]: lr: already varied in grid/);
    expect(errorOf(() => readSweep(sweepFile('grid:\n  out: [a, b]\n')))).toMatch(/grid: out: .*runs-dir/);
    expect(errorOf(() => readSweep(sweepFile('extends: nope.yaml\n')))).toMatch(/s\.yaml: extends: nope\.yaml not found/);
    expect(errorOf(() => readSweep('/nonexistent/s.yaml'))).toMatch(/\/nonexistent\/s\.yaml: sweep file not found/);
  });

  it('every expanded run is validated like a cta-eval config, naming the run', () => {
    const f = sweepFile('accum-bn: true\ngrid:\n  forget-gate: [true, false]\n  beta-thre: [0.01]\n');
    const msg = errorOf(() => planSweep(readSweep(f)));
    expect(msg).toMatch(/s\.yaml: run 1 \(forget-gate=false, beta-thre=0\.01\): --beta-thre only takes effect with --forget-gate/);
  });

  it('cta-sweep flags apply to every run, may not touch swept keys, and paths become absolute', () => {
    const f = sweepFile('grid:\n  alg: [norm, tent]\n');
    const cwd = tmp();
    const plan = planSweep(readSweep(f), { overrides: { weights: 'w.safetensors', dataDir: '/data', nExamples: 4 }, cwd });
    for (const r of plan.runs) {
      expect(r.config.weights).toBe(join(cwd, 'w.safetensors'));
      expect(r.config.dataDir).toBe('/data');
      expect(r.config.nExamples).toBe(4);
      expect(r.dir).toBe(join(cwd, 'runs/sweeps/s', r.id));
    }
    expect(errorOf(() => planSweep(readSweep(f), { overrides: { alg: 'eata' } }))).toMatch(/--alg: .* varies this key/);
  });

  it('duplicate grid points collapse to one run', () => {
    const f = sweepFile('grid:\n  alg: [tent, tent]\n');
    const plan = planSweep(readSweep(f));
    expect(plan.runs).toHaveLength(1);
    expect(plan.duplicates).toEqual([{ index: 1, of: plan.runs[0].id }]);
  });

  it('the shipped sweeps expand and validate', () => {
    const counts: Record<string, number> = {
      'cifar10-main.yaml': 4,
      'cifar10-ablation-batch.yaml': 5,
      'cifar10-ablation-beta-thre.yaml': 8,
      'cifar10-ablation-prune.yaml': 6,
      'cifar10-ablation-gate.yaml': 6,
    };
    for (const [name, n] of Object.entries(counts)) {
      const plan = planSweep(readSweep(join(ROOT, 'sweeps', name)), { overrides: { weights: '/w.safetensors', dataDir: '/d' } });
      expect(plan.runs, name).toHaveLength(n);
      expect(plan.runs.every((r) => r.config.data === 'cifar10c' && r.config.seed === 2020 && r.config.severity === 5)).toBe(true);
    }
    const main = planSweep(readSweep(join(ROOT, 'sweeps', 'cifar10-main.yaml')));
    const mecta = main.runs.find((r) => r.config.alg === 'eata' && r.config.accumBn)!.config;
    expect([mecta.forgetGate, mecta.betaThre, mecta.pruneQ, mecta.lr, mecta.batchSize]).toEqual([true, 0.00125, 0.7, 0.0025, 16]);
    const beta = planSweep(readSweep(join(ROOT, 'sweeps', 'cifar10-ablation-beta-thre.yaml')));
    expect(beta.runs.map((r) => r.config.betaThre)).toEqual([0.0001, 0.000625, 0.00125, 0.0025, 0.005, 0.01, 0.02, 0.04]);
    const prune = planSweep(readSweep(join(ROOT, 'sweeps', 'cifar10-ablation-prune.yaml')));
    expect(prune.runs.map((r) => r.config.pruneQ)).toEqual([0.1, 0.3, 0.5, 0.7, 0.8, 0.9]);
  });
});

describe('run hash', () => {
  const cfg = (over: Partial<CtaConfig> = {}): CtaConfig => ({ ...defaultConfig(), weights: '/w', dataDir: '/d', ...over });

  it('is a fixed function of the config values (scheme pinned)', () => {
    expect(stableJson({ b: 1, a: [2, { d: null, c: 'x' }] })).toBe('{"a":[2,{"c":"x","d":null}],"b":1}');
    // Pinned: if this changes, every existing run folder name changes with it.
    expect(configHash({ alg: 'tent', lr: 0.001, corruptions: ['fog'] })).toBe('ed131370c2fb');
  });

  it('ignores key order and the keys that cannot change results', () => {
    const a = cfg({ alg: 'eata' });
    const reordered = Object.fromEntries(Object.entries(a).reverse()) as CtaConfig;
    expect(configHash(reordered)).toBe(configHash(a));
    expect(configHash(cfg({ alg: 'eata', out: '/x', progress: 'none', backend: 'wasm' }))).toBe(configHash(a));
    expect(configHash(cfg({ alg: 'eata', lr: 0.01 }))).not.toBe(configHash(a));
    expect(configHash(cfg({ alg: 'eata', seed: 1 }))).not.toBe(configHash(a));
    expect(runId(cfg({ alg: 'eata', accumBn: true }))).toMatch(/^eata-mecta-[0-9a-f]{12}$/);
  });

  it('is the same whether a value comes from the base, the grid or a flag', () => {
    const d = tmp();
    const a = planSweep(readSweep(sweepFile('lr: 0.01\ngrid:\n  alg: [tent]\n', d, 'a.yaml')), { cwd: d });
    const b = planSweep(readSweep(sweepFile('alg: tent\ngrid:\n  lr: [0.01]\n', d, 'b.yaml')), { cwd: d });
    const c = planSweep(readSweep(sweepFile('alg: tent\n', d, 'c.yaml')), { cwd: d, overrides: { lr: 0.01 } });
    expect(a.runs[0].id).toBe(b.runs[0].id);
    expect(c.runs[0].id).toBe(a.runs[0].id);
  });
});

describe('emitted scripts', () => {
  const dir = tmp();
  const f = sweepFile('corruptions: [fog, snow]\nshuffle: false\ngrid:\n  alg: [tent, eata]\n  beta: [0.1, 0.25]\n', dir);
  const plan = planSweep(readSweep(f), { cwd: dir, overrides: { weights: 'my weights.safetensors', dataDir: '/d' } });

  it('commands spell out exactly the resolved config', async () => {
    for (const r of plan.runs) {
      const args = commandArgs(r.config);
      expect(args).toContain('--no-shuffle');
      expect(args.slice(args.indexOf('--corruptions'), args.indexOf('--corruptions') + 2)).toEqual(['--corruptions', 'fog,snow']);
      const { cfg } = await parseCommand([...args, '--out', r.dir], 'cta-eval', '', (y) => y);
      expect(cfg).toEqual({ ...r.config, out: r.dir });
    }
  });

  it('sh: one cta_run line per run, each with its own --out, valid bash', () => {
    const sh = emitSh(plan, { ctaEval: '/repo/bin/cta-eval.js' });
    expect(sh.startsWith('#!/usr/bin/env bash\n')).toBe(true);
    const lines = sh.split('\n').filter((l) => l.startsWith('cta_run '));
    expect(lines).toHaveLength(4);
    plan.runs.forEach((r, i) => {
      expect(lines[i]).toContain(`cta_run "$RUNS/${r.id}" "$NODE" "$CTA_EVAL" `);
      expect(lines[i].endsWith(`--out "$RUNS/${r.id}"`)).toBe(true);
    });
    expect(sh).toContain(`RUNS=${plan.runsDir}`);
    expect(sh).toContain(shQuote(join(dir, 'my weights.safetensors')));
    const check = spawnSync('bash', ['-n'], { input: sh, encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
  });

  it('slurm: an array job 0-(N-1), one run per task, resources from options, valid bash', () => {
    const s = emitSlurm(plan, { ctaEval: '/repo/bin/cta-eval.js', time: '02:00:00', cpus: 8, mem: '32G', gpus: 1, partition: 'gpu', maxParallel: 2, sbatch: ['--constraint=a100'], logDir: '/logs', setup: ['module load nodejs/20'] });
    const sb = s.split('\n').filter((l) => l.startsWith('#SBATCH'));
    expect(sb).toEqual([
      '#SBATCH --job-name=cta-s',
      '#SBATCH --array=0-3%2',
      '#SBATCH --ntasks=1',
      '#SBATCH --cpus-per-task=8',
      '#SBATCH --mem=32G',
      '#SBATCH --time=02:00:00',
      '#SBATCH --gres=gpu:1',
      '#SBATCH --partition=gpu',
      '#SBATCH --constraint=a100',
      '#SBATCH --output=/logs/%A_%a.out',
    ]);
    // #SBATCH lines must precede the first command or Slurm ignores them.
    const firstCmd = s.split('\n').findIndex((l) => l && !l.startsWith('#'));
    const lastSbatch = s.split('\n').reduce((at, l, i) => (l.startsWith('#SBATCH') ? i : at), -1);
    expect(lastSbatch).toBeLessThan(firstCmd);
    for (let i = 0; i < 4; i++) expect(s).toMatch(new RegExp(`\\n  ${i}\\) cta_run "\\$RUNS/${plan.runs[i].id}" .* --out "\\$RUNS/${plan.runs[i].id}" ;;\\n`));
    expect(s).toContain('module load nodejs/20');
    expect(spawnSync('bash', ['-n'], { input: s, encoding: 'utf8' }).status).toBe(0);
    expect(errorOf(() => emitSlurm(plan, { ctaEval: '/x', time: '1 day', cpus: 1, mem: '1G', gpus: 0, logDir: '/l' }))).toMatch(/--time: expected a single word/);
  });

  it('sh: a task runs its command, skips a complete run, restarts a partial one', () => {
    const d = tmp();
    const runs = join(d, 'runs');
    // A stand-in for node: writes a complete summary into the --out folder and logs the call.
    const fake = join(d, 'fake-node');
    writeFileSync(fake, `#!/usr/bin/env bash\nout="\${@: -1}"; echo "$out" >> "${d}/calls"; echo '{"complete": true}' > "$out/summary.json"\n`, { mode: 0o755 });
    const p = planSweep(readSweep(f), { cwd: d, runsDir: runs, overrides: { weights: '/w', dataDir: '/d' } });
    writeFileSync(join(d, 'run.sh'), emitSh(p, { ctaEval: '/repo/bin/cta-eval.js' }));
    const run = () => spawnSync('bash', [join(d, 'run.sh')], { encoding: 'utf8', env: { ...process.env, NODE: fake } });
    expect(run().status).toBe(0);
    expect(readFileSync(join(d, 'calls'), 'utf8').trim().split('\n')).toHaveLength(4);
    // one run left partial, with a stale checkpoint: only it runs again, from scratch
    writeFileSync(join(p.runs[2].dir, 'summary.json'), '{"complete": false}');
    writeFileSync(join(p.runs[2].dir, 'checkpoint.json'), '{}');
    const second = run();
    expect(second.stdout.match(/skip \(complete\)/g)).toHaveLength(3);
    expect(readFileSync(join(d, 'calls'), 'utf8').trim().split('\n')).toHaveLength(5);
    expect(existsSync(join(p.runs[2].dir, 'checkpoint.json'))).toBe(false);
  });
});

describe('local runner', () => {
  /** A plan over `n` runs whose "cta-eval" is a node one-liner (fast, no model). */
  function fakePlan(n: number): PlannedRun[] {
    const d = tmp();
    const f = sweepFile(`grid:\n  seed: [${[...Array(n).keys()].join(', ')}]\n`, d);
    return planSweep(readSweep(f), { cwd: d }).runs;
  }
  // Child script: optionally sleeps, then writes summary.json (complete) with the run's seed.
  const CHILD = `const [out, ms] = process.argv.slice(1); const fs = require('fs');
fs.writeFileSync(out + '/summary.json', JSON.stringify({ complete: false }));
setTimeout(() => { fs.writeFileSync(out + '/summary.json', JSON.stringify({ complete: true, mean_error: 12.5 })); }, Number(ms));`;
  const cmd = (ms: (r: PlannedRun) => number) => (r: PlannedRun) => ({ file: process.execPath, args: ['-e', CHILD, r.dir, String(ms(r))] });

  it('runs every run with N workers, then skips them all', async () => {
    const runs = fakePlan(5);
    const log: string[] = [];
    const res = await runLocal(runs, { jobs: 2, command: cmd(() => 0), log: (l) => log.push(l) });
    expect(res.ran.sort()).toEqual(runs.map((r) => r.id).sort());
    expect(runs.every((r) => runStatus(r.dir) === 'complete')).toBe(true);
    expect(log.filter((l) => l.includes(' done '))).toHaveLength(5);
    const mtimes = runs.map((r) => statSync(join(r.dir, 'summary.json')).mtimeMs);
    const again = await runLocal(runs, { jobs: 2, command: cmd(() => 0), log: () => undefined });
    expect(again).toEqual({ ran: [], skipped: runs.map((r) => r.id), failed: [], interrupted: [] });
    expect(runs.map((r) => statSync(join(r.dir, 'summary.json')).mtimeMs)).toEqual(mtimes);
  });

  it('resumes a partial run that has a complete checkpoint (cta-eval --resume <dir>)', async () => {
    const runs = fakePlan(1);
    const dir = runs[0].dir;
    mkdirSync(dir, { recursive: true });
    for (const f of ['checkpoint.json', 'checkpoint.safetensors', 'manifest.json']) writeFileSync(join(dir, f), '{}');
    writeFileSync(join(dir, 'summary.json'), JSON.stringify({ complete: false }));
    // A stand-in cta-eval script that records its arguments and completes the run.
    const script = join(tmp(), 'fake-cta-eval.cjs');
    writeFileSync(script, `const fs = require('fs'); const a = process.argv.slice(2); const out = a[a.indexOf('--resume') + 1];
fs.writeFileSync(out + '/args.json', JSON.stringify(a)); fs.writeFileSync(out + '/summary.json', JSON.stringify({ complete: true }));`);
    const log: string[] = [];
    const res = await runLocal(runs, { jobs: 1, command: (r) => ({ file: process.execPath, args: [script, '--alg', 'tent', '--out', r.dir] }), log: (l) => log.push(l) });
    expect(res.ran).toEqual([runs[0].id]);
    expect(JSON.parse(readFileSync(join(dir, 'args.json'), 'utf8'))).toEqual(['--resume', dir, '--progress', 'none']);
    expect(existsSync(join(dir, 'checkpoint.json'))).toBe(true);
    expect(log.some((l) => l.startsWith('cta-sweep: resume'))).toBe(true);
  });

  it('restarts a partial run cleanly and reports failures with the log', async () => {
    const runs = fakePlan(2);
    mkdirSync(runs[0].dir, { recursive: true });
    writeFileSync(join(runs[0].dir, 'summary.json'), JSON.stringify({ complete: false }));
    writeFileSync(join(runs[0].dir, 'checkpoint.json'), '{}');
    writeFileSync(join(runs[0].dir, 'notes.txt'), 'mine');
    expect(runStatus(runs[0].dir)).toBe('partial');
    const res = await runLocal(runs, {
      jobs: 1,
      command: (r) => (r === runs[1] ? { file: process.execPath, args: ['-e', 'console.error("cta-eval: error: boom"); process.exit(2)'] } : cmd(() => 0)(r)),
      log: () => undefined,
    });
    expect(res.ran).toEqual([runs[0].id]);
    expect(existsSync(join(runs[0].dir, 'checkpoint.json'))).toBe(false);
    expect(readFileSync(join(runs[0].dir, 'notes.txt'), 'utf8')).toBe('mine');
    expect(res.failed).toEqual([{ id: runs[1].id, reason: 'exit 2: cta-eval: error: boom' }]);
  });

  it('abort stops running workers and starts nothing new; finished runs stay complete', async () => {
    const runs = fakePlan(4);
    const ctl = new AbortController();
    const log: string[] = [];
    const res = await runLocal(runs, {
      jobs: 2,
      // run 0 finishes at once; the others would take 60 s
      command: cmd((r) => (r === runs[0] ? 0 : 60_000)),
      log: (l) => {
        log.push(l);
        if (l.includes(`start ${runs[2].id}`)) setTimeout(() => ctl.abort(), 300);
      },
      signal: ctl.signal,
    });
    expect(res.ran).toEqual([runs[0].id]);
    expect(res.interrupted.sort()).toEqual([runs[1].id, runs[2].id, runs[3].id].sort());
    expect(runStatus(runs[0].dir)).toBe('complete');
    expect(runStatus(runs[1].dir)).toBe('partial');
    expect(runStatus(runs[3].dir)).toBe('new');
  });

  it('a child that caught Ctrl-C (exit 130) counts as interrupted and stops the sweep', async () => {
    const runs = fakePlan(3);
    // cta-eval catches SIGINT, saves what finished and exits 130 instead of dying by the signal.
    const res = await runLocal(runs, {
      jobs: 1,
      command: (r) => (r === runs[1] ? { file: process.execPath, args: ['-e', 'process.exit(130)'] } : cmd(() => 0)(r)),
      log: () => undefined,
    });
    expect(res.ran).toEqual([runs[0].id]);
    expect(res.failed).toEqual([]);
    // the run it cut short, and the one never started
    expect(res.interrupted).toEqual([runs[1].id, runs[2].id]);
    expect(runStatus(runs[2].dir)).toBe('new');
  });
});

describe('sweep booleans', () => {
  it('base keys, grid and zip values take true/false/1/0/yes/no in any case; others name the file and section', () => {
    const dir = tmp();
    try {
      const f = sweepFile('accum-bn: "Yes"\nforget-gate: 1\ngrid:\n  clean-last: [True, "NO", 0]\nzip:\n  - { shuffle: ["yes", "false"], seed: [1, 2] }\n', dir);
      const spec = readSweep(f);
      expect(spec.base).toMatchObject({ accumBn: true, forgetGate: true });
      expect(spec.axes[0].rows).toEqual([[true], [false], [false]]);
      expect(spec.axes[1].rows).toEqual([[true, 1], [false, 2]]);
      const bad = sweepFile('grid:\n  accum-bn: [true, maybe]\n', dir, 'bad.yaml');
      expect(errorOf(() => readSweep(bad))).toBe(`${bad}: grid: accum-bn: expected true or false (also 1/0, yes/no), got "maybe"`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
