/**
 * The PyTorch CPU reference (bench.mjs --torch-dir, outside the repository): the same RobustBench ResNeXt-29
 * (cardinality 4, base width 32) timed by bench_torch.py and profiled by mem_torch.py. Only the
 * ResNeXt exists there; other models get no ratio.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** Cardinality of RobustBench's Hendrycks2020AugMix_ResNeXt (width 128/card = 32 per group). */
const RESNEXT_CARD = 4;

function lastJsonLine(text) {
  const lines = text.trim().split('\n').filter((l) => l.startsWith('{'));
  return lines.length ? JSON.parse(lines[lines.length - 1]) : null;
}

export class TorchReference {
  /**
   * @param {{ dir: string, python: string, threads: number[], timeoutS: number }} opts
   *   threads: PyTorch thread counts to time (each gets its own ratio column)
   */
  constructor(opts) {
    this.dir = opts.dir;
    this.python = opts.python;
    this.threads = opts.threads;
    this.timeoutS = opts.timeoutS;
    this.speed = new Map();
    this.memory = new Map();
    this.version = null;
    this.unavailable = this.probe();
  }

  /** Null when usable, else why not. */
  probe() {
    if (!existsSync(join(this.dir, 'bench_torch.py'))) return `no ${join(this.dir, 'bench_torch.py')}`;
    const r = spawnSync(this.python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
    if (r.status !== 0) return `${this.python} cannot import torch (apt-get install -y python3-torch)`;
    this.version = r.stdout.trim();
    return null;
  }

  /** Whether the reference has this model at all. */
  static covers(model) {
    return model === 'resnext29';
  }

  run(script, args) {
    const r = spawnSync(this.python, [script, ...args.map(String)], {
      cwd: this.dir,
      encoding: 'utf8',
      timeout: this.timeoutS * 1000,
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' },
    });
    if (r.status !== 0) {
      const why = r.error ? r.error.message : (r.stderr || '').trim().split('\n').slice(-1)[0];
      return { error: `${script} ${args.join(' ')} failed: ${why}` };
    }
    return lastJsonLine(r.stdout) ?? { error: `${script} printed no JSON` };
  }

  /** bench_torch.py result for (batch, torch mode, threads), cached. */
  speedFor(batch, torchMode, threads) {
    const key = `${batch}/${torchMode}/${threads}`;
    if (!this.speed.has(key)) this.speed.set(key, this.run('bench_torch.py', [RESNEXT_CARD, batch, torchMode, threads]));
    return this.speed.get(key);
  }

  /** mem_torch.py result for a batch size (profiler peaks; it always uses 2 threads), cached. */
  memoryFor(batch) {
    const key = String(batch);
    if (!this.memory.has(key)) this.memory.set(key, this.run('mem_torch.py', [RESNEXT_CARD, batch]));
    return this.memory.get(key);
  }
}
