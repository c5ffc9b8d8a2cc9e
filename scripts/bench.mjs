#!/usr/bin/env node
/**
 * cta-eval speed/memory benchmark: `npm run bench -- [flags]` (builds dist/ first).
 *
 * For every backend × model × batch × mode: img/s (median and best of --reps timed steps after
 * --warmup steps) and the step's peak tensor bytes (tf.profile peakBytes minus the bytes alive
 * before the step). Each measurement runs in its own process with a fresh model built from random
 * RobustBench-shaped weights. Prints one JSON line per measurement on stdout, then a summary table.
 * The PyTorch CPU reference (the --torch-dir folder, outside the repository; when Debian python3-torch is there)
 * adds the ratio TF.js / PyTorch where the reference has the model (ResNeXt-29 only);
 * --no-compare-torch skips it.
 */
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { MODES, DEFAULT_MODES } from './bench/modes.mjs';
import { TorchReference } from './bench/torch.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CHILD = join(ROOT, 'scripts', 'bench', 'child.mjs');
const CEILING_CHILD = join(ROOT, 'scripts', 'bench', 'ceiling-child.mjs');
const MARK = '@@BENCH@@ ';

const HELP = `npm run bench -- [flags]

  --quick              resnext29, batch 16, all modes, 5 reps, 1 warm-up, 1 Fisher batch
                       (< 10 min on 2 cores)
  --no-jpeg            skip the ImageNet-C JPEG pipeline bench that runs last
  --vit-adapt-params   also run every --adapt-params kind on the full-size ViT-B/16 through the
                       CLI (tent; eata with lora), batch 4, 1 thread: exit code, wall s, domains,
                       trainable parameters, measured backprop MB per run (scripts/vit-b16-adapt-params.mjs;
                       ~15-30 min; its own flags: node scripts/vit-b16-adapt-params.mjs --help)
  --only-vit-adapt-params  that suite alone (no speed measurements, ceiling or JPEG bench)
  --no-ceiling         skip the convolution ceiling (ResNeXt-29's forward conv calls timed alone in
                       TF.js and, with the PyTorch reference, in PyTorch: the best ratio a
                       conv-bound step can reach)
  --models LIST        comma-separated (default: every model in the registry)
  --batches LIST       default 16,64
  --modes LIST         default ${DEFAULT_MODES.join(',')} (also: ${Object.keys(MODES).filter((m) => !DEFAULT_MODES.includes(m)).join(',')})
  --reps N             timed steps per measurement (default 7; --quick 5)
  --warmup N           untimed steps first (default 2; --quick 1), then 1 profiled step
  --backends LIST      tensorflow,webgpu,wasm,cpu (default: tensorflow when tfjs-node(-gpu) is installed, and wasm;
                       webgpu only when named: it takes a software adapter too, see README "GPU")
  --threads LIST       WASM thread counts to measure, 0 = one per CPU (default 0; e.g. 1,2 compares)
  --no-compare-torch   skip the PyTorch CPU reference (default: time it when available and print
                       TF.js / PyTorch)
  --torch-threads LIST PyTorch thread counts, one ratio column each; targets are checked against
                       the fastest (default: ${defaultTorchThreads().join(',')}: all cores, and 1 like TF.js WASM)
  --torch-dir DIR      default ../shared/tools/pytorch-reference
  --python PATH        default /usr/bin/python3 (Debian python3-torch)
  --json FILE          also write the JSON lines to FILE
  --timeout S          per-measurement limit in seconds (default 900)
`;

function list(v) {
  return v === undefined ? undefined : String(v).split(',').map((s) => s.trim()).filter(Boolean);
}

function intList(v, flag) {
  return list(v)?.map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${flag}: '${s}' is not a positive integer`);
    return n;
  });
}

function defaultTorchThreads() {
  const n = availableParallelism();
  return n > 1 ? [n, 1] : [1];
}

function nativeInstalled() {
  const require = createRequire(join(ROOT, 'package.json'));
  for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
    try {
      require.resolve(pkg);
      return pkg;
    } catch {
      /* not installed */
    }
  }
  return null;
}

/** Runs one measurement in a child process; resolves to its JSON result (never rejects). */
function runChild(spec, timeoutS, script = CHILD) {
  return new Promise((done) => {
    const child = spawn(process.execPath, [script, JSON.stringify(spec)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutS * 1000);
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith(MARK));
      if (line) return done(JSON.parse(line.slice(MARK.length)));
      const base = { backend: spec.backend, model: spec.model, batch: spec.batch, mode: spec.mode };
      if (timedOut) return done({ ...base, status: 'timeout', error: `killed after ${timeoutS} s` });
      const tail = err.trim().split('\n').filter(Boolean).slice(-2).join(' | ').slice(0, 300);
      done({ ...base, status: 'crashed', error: `exit ${code ?? signal}: ${tail || 'no output'}` });
    });
  });
}

const mb = (b) => (typeof b === 'number' && b > 0 ? (b / 2 ** 20).toFixed(0) : '–');
const num = (v, d = 2) => (typeof v === 'number' ? v.toFixed(d) : '–');
/** The backend as measured: WASM rows carry their thread count. */
const backendLabel = (r) => (r.backend === 'wasm' && typeof r.threads === 'number' ? `wasm ${r.threads} thr` : r.backend);

function note(r) {
  if (r.status !== 'ok') return `${r.status}: ${r.error}`;
  const parts = [];
  if (r.mode.startsWith('eata')) parts.push(`used ${r.usedMean}/${r.batch}`);
  if (r.mode.includes('mecta')) parts.push(`cached ${r.cachedLayersMean}/${r.normLayers} BN`);
  if (r.updatedSteps !== undefined && MODES[r.mode].alg !== 'source' && MODES[r.mode].alg !== 'norm' && r.updatedSteps < r.reps) parts.push(`updated ${r.updatedSteps}/${r.reps}`);
  if (r.leakedTensors) parts.push(`LEAK ${r.leakedTensors} tensors`);
  if (typeof r.gpuStepPeakBytes === 'number') parts.push(`GPU step peak ${mb(r.gpuStepPeakBytes)} MB, pool ${mb(r.gpuPoolBytes)} MB`);
  if (r.torchError) parts.push(r.torchError);
  return parts.join('; ');
}

function table(rows, torch) {
  const out = [];
  const threads = torch && !torch.unavailable ? torch.threads : [];
  const head = threads.flatMap((t) => [`PyTorch ${t} thr img/s`, `TF.js / PyTorch ${t} thr`]);
  if (threads.length) head.push('PyTorch peak MB');
  out.push(`| backend | model | batch | mode | img/s med | img/s best | img/CPU-s med | step peak MB | backprop MB | ${head.map((h) => h + ' | ').join('')}load | notes |`);
  out.push(`|---|---|---|---|---|---|---|---|---|${head.map(() => '---|').join('')}---|---|`);
  for (const r of rows) {
    // backprop MB: the probe's measured bytes held for the backward (docs/memory.md#measured)
    const cells = [backendLabel(r), r.model, r.batch, r.mode, num(r.imgPerSecMed), num(r.imgPerSecBest), num(r.imgPerCpuSecMed), mb(r.stepPeakBytes), mb(r.measuredBackpropBytes)];
    for (const t of threads) {
      const ref = r.torch?.find((x) => x.threads === t);
      cells.push(num(ref?.imgPerSecMed), ref ? `${ref.ratio.toFixed(2)}×` : 'n/a');
    }
    if (threads.length) cells.push(mb(r.torchPeakBytes));
    cells.push(r.loadAvg ? r.loadAvg.map((l) => l.toFixed(1)).join('→') : '–');
    cells.push(note(r).replace(/\|/g, '/'));
    out.push(`| ${cells.join(' | ')} |`);
  }
  return out.join('\n');
}

/** The issue's targets, stated against what was measured. */
function targets(rows, torch) {
  const lines = [];
  const ok = (r) => r && r.status === 'ok';
  for (const backend of [...new Set(rows.map(backendLabel))]) {
    const find = (model, batch, mode) => rows.find((r) => backendLabel(r) === backend && r.model === model && r.batch === batch && r.mode === mode);
    for (const mode of ['tent', 'inference']) {
      const r = find('resnext29', 16, mode);
      if (!r) continue;
      const thr = typeof r.torchThreads === 'number' ? ` (fastest PyTorch run: ${r.torchThreads} thr)` : '';
      if (!torch || torch.unavailable) lines.push(`${backend}: ${mode} ResNeXt-29 b16 ≥ 0.5× PyTorch CPU: no PyTorch ratio (${torch ? torch.unavailable : '--no-compare-torch'})`);
      else if (!ok(r) || typeof r.ratio !== 'number') lines.push(`${backend}: ${mode} ResNeXt-29 b16 ≥ 0.5× PyTorch CPU: not measured (${r.error ?? r.torchError ?? r.status})`);
      else lines.push(`${backend}: ${mode} ResNeXt-29 b16 ≥ 0.5× PyTorch CPU${thr}: ${r.ratio.toFixed(2)}× (${r.imgPerSecMed.toFixed(2)} vs ${r.torchImgPerSecMed.toFixed(2)} img/s) → ${r.ratio >= 0.5 ? 'met' : 'BELOW target'}`);
    }
    const pairs = new Set(rows.filter((r) => backendLabel(r) === backend && r.mode === 'eata+mecta').map((r) => `${r.model}/${r.batch}`));
    for (const key of pairs) {
      const [model, b] = key.split('/');
      const m = find(model, Number(b), 'eata+mecta');
      const e = find(model, Number(b), 'eata');
      if (!e) continue;
      if (!ok(m) || !ok(e)) {
        lines.push(`${backend}: EATA+MECTA faster than EATA, ${model} b${b}: not comparable (eata ${e.status}, eata+mecta ${m.status})`);
        continue;
      }
      const s = m.imgPerSecMed / e.imgPerSecMed;
      const c = m.imgPerCpuSecMed / e.imgPerCpuSecMed;
      const mem = m.stepPeakBytes && e.stepPeakBytes ? `; step peak ${mb(m.stepPeakBytes)} vs ${mb(e.stepPeakBytes)} MB` : '';
      lines.push(
        `${backend}: EATA+MECTA faster than EATA, ${model} b${b}: wall ${m.imgPerSecMed.toFixed(2)} vs ${e.imgPerSecMed.toFixed(2)} img/s (${s.toFixed(2)}×) → ${s > 1 ? 'met' : 'NOT met'}; ` +
          `CPU time ${m.imgPerCpuSecMed.toFixed(2)} vs ${e.imgPerCpuSecMed.toFixed(2)} img/CPU-s (${c.toFixed(2)}×) → ${c > 1 ? 'met' : 'NOT met'}${mem}`,
      );
    }
  }
  return lines;
}

/**
 * The convolution ceiling: ResNeXt-29's forward conv calls timed one by one in TF.js (per WASM
 * thread count) and in PyTorch (per reference thread count). The summed conv time bounds the
 * TF.js / PyTorch ratio of any step whose time is mostly these convolutions.
 */
async function convCeiling({ threadList, batch, torch, timeoutS, json }) {
  const model = 'resnext29';
  const out = [`\nConvolution ceiling (${model} b${batch} forward: every Conv2D call timed alone, median of 7; scripts/bench/ceiling-child.mjs, conv_ceiling.py):`];
  out.push('| framework | threads | conv calls | conv ms | conv GFLOP/s | 1024³ matMul GFLOP/s |', '|---|---|---|---|---|---|');
  const emit = (r) => {
    process.stdout.write(JSON.stringify(r) + '\n');
    if (json) appendFileSync(json, JSON.stringify(r) + '\n');
  };
  const tfRows = [];
  for (const threads of threadList) {
    const r = await runChild({ model, batch, threads }, timeoutS, CEILING_CHILD);
    emit(r);
    if (r.status !== 'ok') {
      out.push(`| TF.js wasm | ${threads || 'auto'} | – | ${r.status}: ${r.error} | | |`);
      continue;
    }
    tfRows.push(r);
    out.push(`| TF.js ${r.backend} | ${r.threads} | ${r.convCalls} | ${r.convMs.toFixed(0)} | ${r.convGflopPerS.toFixed(1)} | ${r.gemm.gflopPerS.toFixed(1)} |`);
  }
  const torchRows = [];
  if (torch && !torch.unavailable && tfRows.length) {
    const shapesFile = join(tmpdir(), `cta-bench-conv-shapes-${process.pid}.json`);
    writeFileSync(shapesFile, JSON.stringify(tfRows[0].shapes));
    const script = join(ROOT, 'scripts', 'bench', 'conv_ceiling.py');
    for (const threads of torch.threads) {
      const r = spawnSync(torch.python, [script, shapesFile, String(threads)], { encoding: 'utf8', timeout: 600_000 });
      const line = (r.stdout || '').trim().split('\n').filter((l) => l.startsWith('{')).pop();
      if (r.status !== 0 || !line) {
        out.push(`| PyTorch | ${threads} | – | failed: ${(r.stderr || '').trim().split('\n').pop()} | | |`);
        continue;
      }
      const p = JSON.parse(line);
      p.convGflopPerS = +(tfRows[0].convGflop / (p.convMs / 1000)).toFixed(1);
      emit(p);
      torchRows.push(p);
      out.push(`| PyTorch ${p.torch} | ${p.threads} | ${tfRows[0].convCalls} | ${p.convMs.toFixed(0)} | ${p.convGflopPerS.toFixed(1)} | ${p.gemm.gflopPerS.toFixed(1)} |`);
    }
    rmSync(shapesFile, { force: true });
  }
  for (const t of tfRows) {
    for (const p of torchRows) {
      out.push(`ceiling: TF.js wasm ${t.threads} thr / PyTorch ${p.threads} thr on the same convolution calls: ${(p.convMs / t.convMs).toFixed(2)}× (the conv kernels alone: most of a TF.js adaptation step, see profiledKernels)`);
    }
  }
  return out;
}

async function main() {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      models: { type: 'string' },
      batches: { type: 'string' },
      modes: { type: 'string' },
      reps: { type: 'string' },
      warmup: { type: 'string' },
      backends: { type: 'string' },
      threads: { type: 'string' },
      'compare-torch': { type: 'boolean', default: true },
      'torch-threads': { type: 'string' },
      'torch-dir': { type: 'string' },
      python: { type: 'string' },
      json: { type: 'string' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
      jpeg: { type: 'boolean', default: true },
      ceiling: { type: 'boolean', default: true },
      'vit-adapt-params': { type: 'boolean', default: false },
      'only-vit-adapt-params': { type: 'boolean', default: false },
    },
    allowNegative: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (values['only-vit-adapt-params']) {
    const t0 = performance.now();
    if (values.json) writeFileSync(values.json, '');
    const code = vitAdaptParams(values.json);
    process.stdout.write(`total ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
    if (code !== 0) process.exitCode = 1;
    return;
  }
  const { MODEL_NAMES } = await import('../dist/models/registry.js');
  const models = list(values.models) ?? (values.quick ? ['resnext29'] : [...MODEL_NAMES]);
  for (const m of models) if (!MODEL_NAMES.includes(m)) throw new Error(`--models: unknown '${m}' (registry has: ${MODEL_NAMES.join(', ')})`);
  const batches = intList(values.batches, '--batches') ?? (values.quick ? [16] : [16, 64]);
  const modes = list(values.modes) ?? DEFAULT_MODES;
  for (const m of modes) if (!MODES[m]) throw new Error(`--modes: unknown '${m}' (choose from ${Object.keys(MODES).join(', ')})`);
  const reps = intList(values.reps, '--reps')?.[0] ?? (values.quick ? 5 : 7);
  const warmup = values.warmup === undefined ? (values.quick ? 1 : 2) : Number(values.warmup);
  const fisherBatches = values.quick ? 1 : 2;
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error('--warmup: expected an integer ≥ 0');
  const timeoutS = intList(values.timeout, '--timeout')?.[0] ?? 900;
  const native = nativeInstalled();
  const backends = list(values.backends) ?? (native ? ['tensorflow', 'wasm'] : ['wasm']);
  for (const b of backends) {
    if (!['tensorflow', 'webgpu', 'wasm', 'cpu'].includes(b)) throw new Error(`--backends: unknown '${b}' (tensorflow, webgpu, wasm, cpu)`);
    if (b === 'tensorflow' && !native) throw new Error('--backends tensorflow: neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed (see README "Benchmarks")');
  }
  const threadList = list(values.threads)?.map((t) => {
    const n = Number(t);
    if (!Number.isInteger(n) || n < 0 || n > 8) throw new Error(`--threads: '${t}' is not an integer from 0 to 8`);
    return n;
  }) ?? [0];
  if (reps < 5) process.stderr.write(`note: --reps ${reps} < 5: the median is of fewer than 5 steps\n`);

  let torch = null;
  if (values['compare-torch']) {
    torch = new TorchReference({
      dir: resolve(ROOT, values['torch-dir'] ?? '../shared/tools/pytorch-reference'),
      python: values.python ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3'),
      threads: intList(values['torch-threads'], '--torch-threads') ?? defaultTorchThreads(),
      timeoutS: 600,
    });
    if (torch.unavailable) process.stderr.write(`note: PyTorch reference unavailable (${torch.unavailable}); ratios are n/a\n`);
  }
  if (values.json) writeFileSync(values.json, '');

  const plan = [];
  for (const backend of backends) {
    for (const threads of backend === 'wasm' ? threadList : [0]) {
      for (const model of models) for (const batch of batches) for (const mode of modes) plan.push({ backend, threads, model, batch, mode });
    }
  }
  const t0 = performance.now();
  process.stderr.write(`bench: ${plan.length} measurement(s), ${warmup} warm-up + 1 profiled + ${reps} timed steps each; backends ${backends.join(', ')}${native ? ` (${native})` : ''}\n`);
  const rows = [];
  for (const [i, p] of plan.entries()) {
    const label = `[${i + 1}/${plan.length}] ${p.backend}${p.backend === 'wasm' ? ` (threads ${p.threads || 'auto'})` : ''} ${p.model} b${p.batch} ${p.mode}`;
    process.stderr.write(`${label} …\n`);
    const load0 = loadavg()[0];
    const r = await runChild({ ...p, reps, warmup, fisherBatches, seed: 0 }, timeoutS);
    r.loadAvg = [+load0.toFixed(2), +loadavg()[0].toFixed(2)]; // 1-min load average before / after
    if (torch && !torch.unavailable && TorchReference.covers(p.model) && r.status === 'ok') {
      const m = MODES[p.mode];
      if (m.torch) {
        r.torch = [];
        for (const threads of torch.threads) {
          const s = torch.speedFor(p.batch, m.torch, threads);
          if (s.error) {
            r.torchError = s.error;
            continue;
          }
          const ratio = +(r.imgPerSecMed / s.imgPerSecMed).toFixed(3);
          r.torch.push({ version: s.torch, threads: s.threads, mode: m.torch, card: s.card, timesMs: s.timesMs, imgPerSecMed: s.imgPerSecMed, imgPerSecBest: s.imgPerSecBest, ratio });
        }
        // The targets are stated against the fastest PyTorch setting measured (on a shared machine
        // the all-cores run can be the slower one).
        const best = r.torch.reduce((a, x) => (a && a.imgPerSecMed >= x.imgPerSecMed ? a : x), null);
        if (best) {
          r.torchImgPerSecMed = best.imgPerSecMed;
          r.torchThreads = best.threads;
          r.ratio = best.ratio;
        }
      }
      if (m.torchPeak) {
        const mem = torch.memoryFor(p.batch);
        if (!mem.error) r.torchPeakBytes = mem[m.torchPeak];
      }
    }
    rows.push(r);
    const line = JSON.stringify(r);
    process.stdout.write(line + '\n');
    if (values.json) appendFileSync(values.json, line + '\n');
    const vs = (r.torch ?? []).map((x) => `${x.ratio.toFixed(2)}× PyTorch ${x.threads} thr`).join(', ');
    const summary = r.status === 'ok' ? `${r.imgPerSecMed.toFixed(2)} img/s, step peak ${mb(r.stepPeakBytes)} MB${vs ? `, ${vs}` : ''}` : `${r.status}: ${r.error}`;
    process.stderr.write(`${label}: ${summary} (${((performance.now() - t0) / 1000).toFixed(0)} s elapsed)\n`);
  }

  process.stdout.write('\n' + table(rows, torch) + '\n\n');
  process.stdout.write(`img/CPU-s = batch ÷ median CPU time of the bench process per step (other jobs inflate wall time much more). load = 1-min load average before→after the row (${availableParallelism()} cores).\n`);
  if (torch && !torch.unavailable) {
    process.stdout.write(`TF.js / PyTorch = TF.js img/s ÷ PyTorch ${torch.version} CPU img/s (medians of 5 after 2 warm-ups; the WASM thread count is in the backend column). n/a: no PyTorch counterpart (the reference has only ResNeXt-29 inference, norm and tent). PyTorch peak: torch.profiler live-allocation peak (mem_torch.py).\n`);
  }
  for (const l of targets(rows, torch)) process.stdout.write(`target: ${l}\n`);
  if (values.ceiling && backends.includes('wasm')) {
    const lines = await convCeiling({ threadList, batch: batches[0], torch, timeoutS, json: values.json });
    process.stdout.write(lines.join('\n') + '\n');
  }
  if (values.jpeg) {
    // ImageNet-C JPEG pipeline alone (decode + resize at 224 with the prefetch queue), compared
    // with a Tent step of ResNet-50 (scripts/bench-jpeg.mjs; --no-jpeg skips it).
    process.stdout.write('\nJPEG pipeline (scripts/bench-jpeg.mjs):\n');
    const args = [join(dirname(fileURLToPath(import.meta.url)), 'bench-jpeg.mjs'), '--images', values.quick ? '256' : '512', '--models', 'resnet50', '--model-batch', values.quick ? '2' : '4', '--steps', values.quick ? '1' : '2'];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    process.stdout.write(r.stdout);
    if (values.json) appendFileSync(values.json, r.stdout);
  }
  if (values['vit-adapt-params'] && vitAdaptParams(values.json) !== 0) process.exitCode = 1;
  process.stdout.write(`total ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
}

/**
 * Every --adapt-params kind end to end at the full ViT-B/16 size (scripts/vit-b16-adapt-params.mjs):
 * its JSON lines (one per run, then the suite's) to stdout and --json, its table on stderr; returns
 * its exit status (1 when a run failed).
 */
function vitAdaptParams(json) {
  process.stdout.write('\nEvery --adapt-params kind on the full-size ViT-B/16 (scripts/vit-b16-adapt-params.mjs):\n');
  const r = spawnSync(process.execPath, [join(ROOT, 'scripts', 'vit-b16-adapt-params.mjs')], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 2 ** 20 });
  process.stdout.write(r.stdout ?? '');
  if (json) appendFileSync(json, r.stdout ?? '');
  return r.status ?? 1;
}

main().catch((e) => {
  process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(2);
});
