/**
 * One benchmark measurement in its own process: `node scripts/bench/child.mjs '<spec JSON>'`,
 * spec = { backend, model, batch, mode, reps, warmup, fisherBatches, seed }. Builds a fresh model
 * from random full-size weights (scripts/bench/weights.mjs), configures the algorithm the way the
 * runner does (src/runner/continual.ts), runs `warmup` steps, one step under `tf.profile` (peak
 * bytes), then `reps` timed steps on fresh random batches, and prints one line
 * `@@BENCH@@ {json}` on stdout.
 *
 * A process per measurement keeps the WASM heap (which only grows) and a possible `Aborted()`
 * from one configuration from affecting the next. Imports the build output (dist/).
 */
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';
import { tf, initBackend } from '../../dist/tf.js';
import { buildModel } from '../../dist/models/registry.js';
import { ALGORITHMS } from '../../dist/algorithms/registry.js';
import { resolveConfig } from '../../dist/config/load.js';
import { adaptOptions, configureRunNorm } from '../../dist/runner/continual.js';
import { Rng } from '../../dist/util/rng.js';
import { MemoryProbe } from '../../dist/memory/probe.js';
import { MODES } from './modes.mjs';
import { benchStateDict } from './weights.mjs';

const MARK = '@@BENCH@@ ';

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/**
 * Where the profiled step's time went: kernel calls and summed time per kernel name, largest 8.
 * Indicative only: under tf.profile every kernel's output is read back, which adds time.
 */
function topKernels(kernels) {
  const by = new Map();
  for (const k of kernels) {
    // A custom-gradient op shows as an 'unnamed scope' whose time includes its own kernels.
    if (k.name === 'unnamed scope') continue;
    const e = by.get(k.name) ?? { name: k.name, calls: 0, ms: 0 };
    e.calls++;
    e.ms += typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    by.set(k.name, e);
  }
  const all = [...by.values()].sort((a, b) => b.ms - a.ms);
  return {
    calls: kernels.length,
    totalMs: Math.round(all.reduce((a, e) => a + e.ms, 0)),
    top: all.slice(0, 8).map((e) => ({ ...e, ms: Math.round(e.ms) })),
  };
}

/** Fills a fresh NHWC batch in [0,1) from the seeded generator (not timed). */
function randomBatch(rng, n, [h, w, c]) {
  const data = new Float32Array(n * h * w * c);
  for (let i = 0; i < data.length; i++) data[i] = rng.next();
  return tf.tensor4d(data, [n, h, w, c]);
}

function wasmHeapBytes() {
  try {
    const b = tf.backend();
    const heap = b && b.wasm && (b.wasm.HEAPU8 ?? b.wasm.HEAP8);
    return heap ? heap.buffer.byteLength : null;
  } catch {
    return null;
  }
}

async function measure(spec) {
  const mode = MODES[spec.mode];
  const fisherBatches = spec.fisherBatches ?? 2;
  if (!mode) throw new Error(`unknown mode '${spec.mode}'`);
  const info = await initBackend(spec.backend, spec.threads ?? 0);
  const out = {
    backend: info.name,
    threads: info.threads,
    nativePackage: info.nativePackage,
    ...(info.adapter ? { adapter: info.adapter } : {}),
    tfjs: tf.version.tfjs,
    model: spec.model,
    batch: spec.batch,
    mode: spec.mode,
    warmup: spec.warmup,
    reps: spec.reps,
  };

  let sd;
  try {
    sd = await benchStateDict(spec.model, spec.seed);
  } catch (e) {
    return { ...out, status: 'skipped', error: `no random weights for '${spec.model}': ${e.message}` };
  }
  const model = buildModel(spec.model, sd, { rng: new Rng(spec.seed + 7) });
  sd = null;
  out.inputShape = [...model.inputShape];
  out.numClasses = model.numClasses;
  out.normLayers = model.normLayers.length;

  // The runner's configuration for this method (configs/cifar10/*.yaml), see src/runner/continual.ts.
  const cfgPath = fileURLToPath(new URL(`../../configs/cifar10/${mode.config}`, import.meta.url));
  if (!existsSync(cfgPath)) throw new Error(`missing config ${cfgPath}`);
  const cfg = resolveConfig(cfgPath, {});
  if (mode.alg === 'eata' || mode.alg === 'eta') {
    // Random weights give near-uniform predictions (entropy ≈ ln C > E0 = 0.4·ln C), so EATA would
    // select no sample and never run a backward. Select every sample instead: the worst case.
    cfg.eMargin = Math.log(model.numClasses) + 1; // entropy ≤ ln C < E0: all reliable
    cfg.dMargin = 2; // |cos| ≤ 1 < 2: none redundant
    cfg.fisherSize = fisherBatches * spec.batch;
  }
  if (cfg.eMargin === null) cfg.eMargin = 0.4 * Math.log(model.numClasses);
  if (mode.gradCheckpointSegments) {
    if (!model.gradCheckpoint) {
      model.dispose();
      return { ...out, status: 'unsupported', error: `${spec.model} has no stages to checkpoint` };
    }
    model.gradCheckpoint.segments = mode.gradCheckpointSegments;
    out.gradCheckpointSegments = mode.gradCheckpointSegments;
  }
  try {
    configureRunNorm(cfg, model);
  } catch (e) {
    model.dispose();
    return { ...out, status: 'unsupported', error: e.message }; // e.g. MECTA on a LayerNorm model
  }
  out.config = mode.config;

  const dataRng = new Rng(spec.seed + 11);
  const ctx = {
    rng: new Rng(spec.seed + 3),
    // EATA's Fisher (not timed): a few random batches at the run's batch size.
    fisherData: async function* () {
      for (let i = 0; i < fisherBatches; i++) yield randomBatch(dataRng, spec.batch, model.inputShape);
    },
  };
  const tCreate = performance.now();
  const alg = await ALGORITHMS[cfg.alg].create(model, adaptOptions(cfg), ctx);
  out.createMs = Math.round(performance.now() - tCreate);

  // One timed step under the memory probe: the measured backprop bytes (docs/memory.md#measured)
  // and, on webgpu, the GPU's live buffer bytes. Not under tf.profile, where the backend holds
  // every disposed buffer until the profiled function ends.
  const stepProbe = new MemoryProbe(false);
  const stepOnce = async (profile, measureGpu = false) => {
    const x = randomBatch(dataRng, spec.batch, model.inputShape);
    let res;
    let ms = 0;
    let cpuMs = 0;
    let peak = null;
    let kernels = null;
    let gpu = null;
    let backprop = null;
    if (profile) {
      const before = tf.memory().numBytes;
      const prof = await tf.profile(() => {
        res = alg.step(x);
        return res.logits;
      });
      peak = Math.max(0, prof.peakBytes - before);
      kernels = topKernels(prof.kernels);
      await res.logits.data();
    } else {
      const probe = measureGpu ? stepProbe : null;
      probe?.begin();
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      res = alg.step(x);
      await res.logits.data(); // the step is done when its logits can be read
      ms = performance.now() - t0;
      const mem = probe?.end();
      backprop = mem?.backpropBytes ?? null;
      if (mem?.gpuPeakBytes !== undefined) gpu = { peak: mem.gpuPeakBytes - mem.gpuStartBytes, pool: mem.gpuAllocatedBytes };
      const c = process.cpuUsage(c0); // this process only: less sensitive to other jobs than wall time
      cpuMs = (c.user + c.system) / 1000;
    }
    res.logits.dispose();
    x.dispose();
    const cached = model.normLayers.filter((l) => l.last && l.last.cached).length;
    return { ms, cpuMs, peak, gpu, backprop, kernels, updated: res.updated, used: res.metrics?.used, cached };
  };

  const tWarm = performance.now();
  for (let i = 0; i < spec.warmup; i++) await stepOnce(false);
  out.warmupMs = Math.round(performance.now() - tWarm);
  const p = await stepOnce(true);
  out.stepPeakBytes = p.peak;
  out.profiledKernels = p.kernels;
  // After ≥ 1 step the algorithm's own state (optimizer slots, EATA's average) exists: from here on
  // the tensor count must not grow.
  const tensorsBefore = tf.memory().numTensors;
  const times = [];
  const cpuTimes = [];
  let updated = 0;
  let used = 0;
  let usedCount = 0;
  let cached = 0;
  for (let i = 0; i < spec.reps; i++) {
    const r = await stepOnce(false, i === 0);
    if (r.backprop !== null) out.measuredBackpropBytes = r.backprop;
    if (r.gpu) {
      out.gpuStepPeakBytes = r.gpu.peak;
      out.gpuPoolBytes = r.gpu.pool;
    }
    times.push(r.ms);
    cpuTimes.push(r.cpuMs);
    if (r.updated) updated++;
    if (typeof r.used === 'number') {
      used += r.used;
      usedCount++;
    }
    cached += r.cached;
  }
  out.leakedTensors = tf.memory().numTensors - tensorsBefore;
  alg.dispose();
  model.dispose();

  const sorted = [...times].sort((a, b) => a - b);
  const med = median(times);
  const cpuMed = median(cpuTimes);
  Object.assign(out, {
    status: 'ok',
    timesMs: times.map((t) => Math.round(t)),
    minMs: Math.round(sorted[0]),
    medMs: Math.round(med),
    imgPerSecMed: +(spec.batch / (med / 1000)).toFixed(3),
    imgPerSecBest: +(spec.batch / (sorted[0] / 1000)).toFixed(3),
    cpuTimesMs: cpuTimes.map((t) => Math.round(t)),
    imgPerCpuSecMed: +(spec.batch / (cpuMed / 1000)).toFixed(3),
    updatedSteps: updated,
    usedMean: usedCount ? +(used / usedCount).toFixed(2) : null,
    cachedLayersMean: +(cached / spec.reps).toFixed(2),
    wasmHeapBytes: info.name === 'wasm' ? wasmHeapBytes() : null,
    maxRssBytes: process.resourceUsage().maxRSS * 1024,
  });
  return out;
}

const spec = JSON.parse(process.argv[2] ?? '{}');
try {
  const out = await measure(spec);
  process.stdout.write(MARK + JSON.stringify(out) + '\n');
} catch (e) {
  const msg = e instanceof Error ? e.message : String(e);
  process.stdout.write(MARK + JSON.stringify({ backend: spec.backend, model: spec.model, batch: spec.batch, mode: spec.mode, status: 'error', error: msg.split('\n')[0].slice(0, 300) }) + '\n');
  process.exitCode = 1;
}
