/**
 * profile-mem's logic (docs/memory.md#the-profile-mem-command): build the model and algorithm
 * from a cta-eval config, and for each batch size run one forward without a tape (inference peak)
 * and one adaptation step on the first batch of a domain (or random input), reporting the
 * analytic MECTA cache (docs/memory.md#analytic), the measured bytes held for backprop, the step's
 * peak and its time.
 * The model state is restored before every measurement, so each batch size starts from the same
 * weights and statistics (MECTA's forget gate sees the same "first batch" situation).
 */
import { tf, initBackend, type BackendInfo } from '../tf.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { FIELDS, type CtaConfig, type FieldSpec } from '../config/schema.js';
import { prepareAdapters } from '../adapters/attach.js';
import { cottaAugment } from '../algorithms/augment.js';
import { buildModel } from '../models/registry.js';
import type { Classifier, NormRecord } from '../models/types.js';
import { ALGORITHMS } from '../algorithms/registry.js';
import { STATE_BYTES_KINDS, type Algorithm, type AlgorithmContext, type StateBytesKind } from '../algorithms/types.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { openDataSource } from '../data/registry.js';
import { openDomain, type DomainSource } from '../data/stream.js';
import { accountCache, weightRecords, type WeightRecord } from '../runner/accounting.js';
import { TRAIN_ALL, TRAIN_NORM } from '../algorithms/param-select.js';
import { adaptOptions, configureRunNorm, prepareModel } from '../runner/continual.js';
import { MB, MemoryProbe, type StepMemory } from './probe.js';
import { FlopCounter } from './flops.js';
import { applyGradCheckpoint } from '../runner/prepare.js';
import { randomStateDict } from './random-weights.js';

export const DEFAULT_BATCH_SIZES = [8, 16, 32, 64];

export interface ProfileSpec {
  cfg: CtaConfig;
  batchSizes: number[];
  /** Domain whose first batch is used (ignored with `synthetic`). */
  domain: string;
  /** Random input of the model's shape instead of a data set. */
  synthetic: boolean;
  perLayer: boolean;
  /**
   * What trains (docs/memory.md#trainable-weights): 'norm' = what the method selects (norm-layer
   * affines, or the last --n-layer BatchNorm layers); 'all' = every parameter (CoTTA's student).
   */
  train?: TrainSet;
  /**
   * Adaptation steps per batch size on the same batch (memory: the first, or the first that
   * back-propagates; time: the fastest, of those that back-propagate if any does).
   */
  steps: number;
  /**
   * Tests: profile this model (e.g. a reduced shape of cfg.model's family, random weights) instead
   * of --weights or the random RobustBench shape.
   */
  model?: () => Classifier;
  /** Images a gradient method may take to reach its first backward (default MEMORY_STEP_SAMPLES). */
  memoryStepSamples?: number;
  log: (line: string) => void;
}

/** How many images a gradient method may take before its first backward is measured (RoTTA updates every 64 by default). */
export const MEMORY_STEP_SAMPLES = 64;

export const TRAIN_SETS = ['norm', 'all'] as const;
export type TrainSet = (typeof TRAIN_SETS)[number];

/** A trainable conv / linear / embedding layer's row (--per-layer with --train all). */
export interface WeightLayerRow {
  name: string;
  kind: string;
  /** Input shape (NHWC for a conv, [rows, in] for a linear). */
  shape: number[];
  /** The input its weight gradient needs, float32 (0 when another layer saved it first), MB. */
  analytic_backward_mb: number;
  /** Saved by the nodes taking its weight (and bias) as an input, MB. */
  measured_mb: number;
}

export interface LayerRow {
  name: string;
  shape: number[];
  beta: number | null;
  cached: boolean;
  analytic_forward_mb: number;
  analytic_backward_mb: number;
  measured_norm_mb: number;
  measured_after_mb: number;
  /** Kept-channel fraction the cache budget chose (0: not caching); absent without a budget. */
  kept_ratio?: number;
}

export interface ProfileRow {
  batch_size: number;
  /** Analytic (docs/memory.md#analytic): the largest single layer's (pruned) input, MB. */
  analytic_forward_mb: number | null;
  /** Analytic: Σ inputs of the layers that cache in this step, MB. */
  analytic_backward_mb: number | null;
  /** Analytic: max(forward, backward), the figure cta-eval logs as cache_mb. */
  analytic_cache_mb: number | null;
  /** Saved tensors the backward runs on, when it starts (distinct buffers), MB. */
  measured_backprop_mb: number | null;
  /** All saved tensors on the tape (≥ backprop; includes nodes the backward skips), MB. */
  measured_tape_mb: number | null;
  /** measured_backprop / analytic_backward (null when the analytic figure is 0). */
  ratio: number | null;
  /** Highest engine tensor bytes during the step, everything included (weights…), MB. */
  step_peak_mb: number | null;
  /** Engine tensor bytes when the step began (weights, optimizer state, the batch), MB. */
  step_start_mb: number | null;
  /** Same as step_peak for one forward without a tape, MB. */
  inference_peak_mb: number | null;
  /**
   * webgpu only: the highest live GPU buffer bytes during the step / the inference forward, and
   * the backend's buffer pool (live + kept for reuse) after the step, MB.
   */
  gpu_step_peak_mb?: number;
  gpu_inference_peak_mb?: number;
  gpu_allocated_mb?: number;
  /** Wall time of the step (the fastest of --steps), ms. */
  step_ms: number | null;
  /** CPU time of this process during that step (user + system), ms: steadier on a shared machine. */
  step_cpu_ms: number | null;
  inference_ms: number | null;
  /** Whether the step ran a backward + optimizer step. */
  updated: boolean | null;
  /**
   * The step whose memory the row reports when it is not the first (1-based): the first step
   * that back-propagated, for a method that updates only every few samples (RoTTA).
   */
  memory_step?: number;
  /** --cache-budget-mb: the kept-channel fraction per norm layer (module order) of the step's forward. */
  kept_ratios?: number[];
  /**
   * Operation counts of the step (docs/memory.md#flops), 1e9 units: every forward it ran (teacher,
   * augmented copies and second passes included) and what its backward ran for the trainable set
   * (with checkpointing, the recomputed forwards too).
   */
  gflops_forward?: number | null;
  gflops_backward?: number | null;
  /** Highest process RSS during the step (sampled at every tensor allocation), MB. */
  rss_peak_mb?: number | null;
  /** wasm: the WASM heap size after the step (its high-water mark so far), MB. */
  wasm_heap_mb?: number | null;
  /** Algorithm.stateBytes() after the step by kind (docs/memory.md#method-state), MB. */
  state_mb?: Partial<Record<StateBytesKind, number>>;
  /**
   * --grad-checkpoint-segments (docs/memory.md#gradient-checkpointing): checkpointed segments, the
   * bytes of their inputs, and the largest recomputed segment's own tape, MB.
   */
  checkpoint_segments?: number;
  checkpoint_inputs_mb?: number;
  recompute_max_mb?: number;
  error?: string;
  /** Saved bytes before the first norm layer (input normalisation, stem), MB (--per-layer). */
  preamble_mb?: number;
  layers?: LayerRow[];
  /** Trainable conv / linear / embedding layers, forward order (--per-layer, when any trains). */
  weight_layers?: WeightLayerRow[];
}

export interface ProfileReport {
  tool: 'profile-mem';
  node: string;
  tfjs: string;
  backend: string;
  /** webgpu: the adapter (vendor, architecture, device, description, software?). */
  adapter?: BackendInfo['adapter'];
  wasm_threads: number;
  model: { arch: string; num_classes: number; input_shape: readonly number[]; norm_layers: number };
  weights: string;
  input: string;
  alg: string;
  /** The trainable set (ProfileSpec.train). */
  train: TrainSet;
  mecta: boolean;
  config: Record<string, unknown>;
  rows: ProfileRow[];
}

const mb = (bytes: number | null | undefined) => (bytes == null ? null : bytes / MB);

/** "8,16,32,64" → [8, 16, 32, 64] (positive integers, duplicates removed, order kept). */
export function parseBatchSizes(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(',').map((s) => s.trim()).filter((s) => s.length > 0)) {
    const v = Number(part);
    if (!Number.isInteger(v) || v < 1) throw new CtaError(`--batch-sizes: '${part}' is not a positive integer`);
    if (!out.includes(v)) out.push(v);
  }
  if (out.length === 0) throw new CtaError('--batch-sizes: give at least one batch size, e.g. 8,16,32,64');
  return out;
}

/** Weights from --weights, or a random RobustBench-shaped state dict. */
async function prepare(cfg: CtaConfig, log: (l: string) => void): Promise<{ model: Classifier; backend: BackendInfo; weights: string }> {
  if (cfg.weights) {
    const { model, backend } = await prepareModel(cfg, log);
    return { model, backend, weights: cfg.weights };
  }
  const backend = await initBackend(cfg.backend, cfg.threads);
  if (backend.notice) log(backend.notice);
  const numClasses = cfg.data === 'cifar100c' ? 100 : 10;
  const sd = randomStateDict(cfg.model, { numClasses, seed: cfg.seed });
  const model = buildModel(cfg.model, sd, {
    rng: new Rng(cfg.seed + 7),
    expect: { depth: cfg.depth ?? undefined, cardinality: cfg.cardinality ?? undefined },
  });
  applyGradCheckpoint(cfg, model);
  resolveFromModel(cfg, model);
  log(`profile-mem: no --weights: random ${cfg.model} weights of the RobustBench shape (${numClasses} classes); memory and time depend only on the shapes`);
  return { model, backend, weights: `random ${cfg.model} (RobustBench shape)` };
}

/** The defaults that depend on the model (FieldSpec.fromModel, e.g. EATA's E0), as prepareModel resolves them. */
function resolveFromModel(cfg: CtaConfig, model: Classifier): void {
  const values = cfg as Record<string, unknown>;
  for (const [k, f] of Object.entries(FIELDS) as [string, FieldSpec][]) {
    if (values[k] === null && 'fromModel' in f && f.fromModel) values[k] = f.fromModel(model);
  }
}

/** ProfileSpec.model: the caller's model, configured as prepare() configures one. */
async function given(cfg: CtaConfig, make: () => Classifier): Promise<{ model: Classifier; backend: BackendInfo; weights: string }> {
  const backend = await initBackend(cfg.backend, cfg.threads);
  const model = make();
  applyGradCheckpoint(cfg, model);
  resolveFromModel(cfg, model);
  return { model, backend, weights: `given ${model.arch} (ProfileSpec.model)` };
}

/** Model weights and buffers as plain arrays (no tensors alive during the measurements). */
type Snapshot = Map<string, { data: Float32Array; shape: number[] }>;

function snapshot(model: Classifier): Snapshot {
  const out: Snapshot = new Map();
  for (const [k, t] of model.stateDict()) {
    out.set(k, { data: t.dataSync() as Float32Array, shape: t.shape.slice() });
    t.dispose();
  }
  return out;
}

function restore(model: Classifier, snap: Snapshot, cfg: CtaConfig): void {
  const sd = new Map<string, tf.Tensor>();
  for (const [k, v] of snap) sd.set(k, tf.tensor(v.data, v.shape, 'float32'));
  try {
    model.loadStateDict(sd);
  } finally {
    for (const t of sd.values()) t.dispose();
  }
  for (const l of model.normLayers) l.reset();
  // a fresh budget (no β yet) for every measurement; its minimum is checked up front in runProfile
  configureRunNorm(cfg, model, []);
}

/** Uniform [0, 1) images from a seeded generator. */
function randomImages(count: number, pix: number, rng: Rng): Float32Array {
  const x = new Float32Array(count * pix);
  for (let i = 0; i < x.length; i++) x[i] = rng.next();
  return x;
}

/** The first `count` images of a domain, NHWC floats in [0, 1]. */
async function firstImages(source: DomainSource, name: string, count: number, shape: readonly number[]): Promise<Float32Array> {
  const d = await openDomain(source, name);
  const [h, w, c] = shape;
  if (d.height !== h || d.width !== w || d.channels !== c) {
    throw new CtaError(`domain ${name}: images are ${d.height}×${d.width}×${d.channels}, the model takes ${h}×${w}×${c}`);
  }
  const n = Math.min(count, d.n);
  if (n < count) throw new CtaError(`domain ${name} has ${d.n} images, fewer than the largest batch size ${count}`);
  const order = Int32Array.from({ length: n }, (_, i) => i);
  for await (const b of d.batches(order, n)) return b.x;
  throw new CtaError(`domain ${name}: no images`);
}

const WASM_FATAL = /memory access out of bounds|Aborted|table index is out of bounds|Cannot enlarge memory|out of memory|Array buffer allocation failed/i;

function analyticRow(records: readonly (NormRecord | null)[], weights: readonly WeightRecord[]) {
  const acc = accountCache(records, weights);
  return {
    analytic_forward_mb: acc.maxForwardBytes / MB,
    analytic_backward_mb: acc.totalBackwardBytes / MB,
    analytic_cache_mb: acc.cacheMb,
  };
}

function layerRows(model: Classifier, mem: StepMemory): LayerRow[] {
  const measured = mem.layers ?? [];
  return model.normLayers.map((l, i) => {
    const r = l.last;
    const m = measured[i] && measured[i].name === l.name ? measured[i] : measured.find((x) => x.name === l.name);
    return {
      name: l.name,
      shape: m?.shape ?? [],
      beta: r?.beta ?? null,
      cached: r?.cached ?? false,
      analytic_forward_mb: (r?.forwardBytes ?? 0) / MB,
      analytic_backward_mb: (r?.backwardBytes ?? 0) / MB,
      measured_norm_mb: (m?.normBytes ?? 0) / MB,
      measured_after_mb: (m?.afterBytes ?? 0) / MB,
      ...(r?.keptRatio !== undefined ? { kept_ratio: r.keptRatio } : {}),
    };
  });
}

function weightLayerRows(weights: readonly WeightRecord[], mem: StepMemory): WeightLayerRow[] {
  const measured = new Map((mem.weightLayers ?? []).map((w) => [w.name, w]));
  return weights.map((w) => ({
    name: w.name,
    kind: w.kind,
    shape: w.shape,
    analytic_backward_mb: w.bytes / MB,
    measured_mb: (measured.get(w.name)?.bytes ?? 0) / MB,
  }));
}

/** Runs the whole profile; rows that failed carry `error` (a WASM heap abort stops the rest). */
export async function runProfile(spec: ProfileSpec): Promise<ProfileReport> {
  const { cfg, log } = spec;
  const train = spec.train ?? 'norm';
  if (train === 'all' && cfg.nLayer !== null) throw new CtaError('--train all trains every parameter; it cannot be combined with --n-layer');
  const algSpec = ALGORITHMS[cfg.alg];
  const { model, backend, weights } = spec.model ? await given(cfg, spec.model) : await prepare(cfg, log);
  const shape = model.inputShape;
  const pix = shape[0] * shape[1] * shape[2];
  const maxBs = Math.max(...spec.batchSizes);
  const rng = new Rng(cfg.seed);
  const source = spec.synthetic ? null : await openDataSource(cfg);
  const images = source ? await firstImages(source, spec.domain, maxBs, shape) : randomImages(maxBs, pix, rng);
  // The Fisher values do not change the step's memory: one batch unless --fisher-size was set.
  const fisherExplicit = cfg.fisherSize !== FIELDS.fisherSize.default;
  const snap = snapshot(model);
  // --adapt-params (docs/adapters.md): the modules every measurement starts from.
  const adapterSet = await prepareAdapters(cfg, model, (t) => cottaAugment(t, new Rng(cfg.seed + 3)));
  const adapterSnap = adapterSet?.saveState() ?? null;
  // --cache-budget-mb below the smallest achievable cache at any batch size: refuse before measuring
  if (cfg.cacheBudgetMb !== null) configureRunNorm(cfg, model, spec.batchSizes);
  const probe = new MemoryProbe(spec.perLayer, true);
  const flops = new FlopCounter();
  if (!probe.supported) log('profile-mem: notice: this tfjs build lacks the engine internals the measurement hooks need; measured columns are empty');
  const report: ProfileReport = {
    tool: 'profile-mem',
    node: process.version,
    tfjs: tf.version.tfjs,
    backend: backend.name,
    ...(backend.adapter ? { adapter: backend.adapter } : {}),
    wasm_threads: backend.threads,
    model: { arch: model.arch, num_classes: model.numClasses, input_shape: shape, norm_layers: model.normLayers.length },
    weights,
    input: spec.synthetic ? 'synthetic (uniform [0,1) random images)' : `${cfg.data} ${spec.domain} severity ${cfg.severity}, first images in file order`,
    alg: cfg.alg,
    train,
    mecta: cfg.accumBn,
    config: { ...cfg },
    rows: [],
  };
  let fatal: string | null = null;
  for (const bs of spec.batchSizes) {
    const row: ProfileRow = {
      batch_size: bs,
      analytic_forward_mb: null,
      analytic_backward_mb: null,
      analytic_cache_mb: null,
      measured_backprop_mb: null,
      measured_tape_mb: null,
      ratio: null,
      step_peak_mb: null,
      step_start_mb: null,
      inference_peak_mb: null,
      step_ms: null,
      step_cpu_ms: null,
      inference_ms: null,
      updated: null,
    };
    report.rows.push(row);
    if (fatal) {
      row.error = `skipped after an earlier WASM failure (${fatal})`;
      continue;
    }
    let x: tf.Tensor4D | null = null;
    let alg: Algorithm | null = null;
    try {
      x = tf.tensor4d(images.subarray(0, bs * pix), [bs, shape[0], shape[1], shape[2]]);
      // Inference: one forward without a tape, in the algorithm's norm mode (frozen weights).
      restore(model, snap, cfg);
      if (train === 'all') model.requiresGrad(TRAIN_NORM);
      probe.begin();
      let t0 = performance.now();
      const logits = model.forward(x);
      logits.dataSync();
      row.inference_ms = Math.round((performance.now() - t0) * 10) / 10;
      logits.dispose();
      const inf = probe.end();
      row.inference_peak_mb = mb(inf.peakBytes);
      if (inf.gpuPeakBytes !== undefined) row.gpu_inference_peak_mb = inf.gpuPeakBytes / MB;

      // Adaptation: fresh state, the algorithm as cta-eval configures it.
      restore(model, snap, cfg);
      const fisherCount = fisherExplicit ? cfg.fisherSize : bs;
      const fisherRng = new Rng(cfg.seed + 1);
      const algRng = new Rng(cfg.seed + 3);
      const ctx: AlgorithmContext = {
        rng: algRng,
        ...copiesAndAugmentation(model, algRng),
        fisherData: async function* () {
          const clean = source ? await firstImages(source, 'original', fisherCount, shape) : null;
          for (let s = 0; s < fisherCount; s += bs) {
            const n = Math.min(bs, fisherCount - s);
            const data = clean ? clean.subarray(s * pix, (s + n) * pix) : randomImages(n, pix, fisherRng);
            yield tf.tensor4d(data, [n, shape[0], shape[1], shape[2]]);
          }
        },
      };
      if (train === 'all') model.requiresGrad(TRAIN_ALL);
      if (adapterSet && adapterSnap) adapterSet.loadState(adapterSnap);
      alg = await algSpec.create(model, adaptOptions(cfg), ctx);
      if (spec.perLayer) probe.nameWeights(model.parameters());
      const undo = spec.perLayer ? probe.markLayers(model.normLayers) : () => undefined;
      try {
        // The memory is that of the first step; a gradient method that back-propagates only
        // every few samples (RoTTA: every --rotta-update-frequency) is stepped on until it does,
        // for up to MEMORY_STEP_SAMPLES images, and that step is measured instead (row.memory_step).
        let recorded = false;
        let recordedBackprop = false;
        const more = (s: number) => s < Math.max(1, spec.steps) || (algSpec.usesGradients && !recordedBackprop && s * bs < (spec.memoryStepSamples ?? MEMORY_STEP_SAMPLES));
        for (let s = 0; more(s); s++) {
          probe.begin();
          flops.begin();
          t0 = performance.now();
          const c0 = process.cpuUsage();
          const res = alg.step(x);
          res.logits.dataSync();
          const ms = Math.round((performance.now() - t0) * 10) / 10;
          const cpu = process.cpuUsage(c0);
          const ops = flops.end();
          const mem = probe.end();
          res.logits.dispose();
          const backprop = mem.backwards > 0;
          // time: the fastest step, among those that back-propagated once one has
          if (row.step_ms === null || (backprop && !recordedBackprop) || (backprop === recordedBackprop && ms < row.step_ms)) {
            row.step_ms = ms;
            row.step_cpu_ms = Math.round((cpu.user + cpu.system) / 100) / 10;
          }
          if (recorded && (recordedBackprop || !backprop)) continue;
          recorded = true;
          recordedBackprop = backprop;
          if (s > 0) row.memory_step = s + 1;
          row.updated = res.updated;
          const weights = weightRecords(model);
          Object.assign(row, analyticRow(model.normLayers.map((l) => l.last), weights));
          if (cfg.cacheBudgetMb !== null) row.kept_ratios = model.normLayers.map((l) => l.last?.keptRatio ?? 1);
          row.gflops_forward = ops.forward / 1e9;
          row.gflops_backward = ops.backward / 1e9;
          row.rss_peak_mb = mb(mem.rssPeakBytes);
          row.wasm_heap_mb = mb(mem.wasmHeapBytes);
          const state = alg.stateBytes?.() ?? {};
          row.state_mb = Object.fromEntries(STATE_BYTES_KINDS.filter((k) => state[k] !== undefined).map((k) => [k, state[k]! / MB]));
          const gc = model.gradCheckpoint;
          if (gc && gc.segments > 1) {
            row.checkpoint_segments = gc.lastSegments;
            row.checkpoint_inputs_mb = gc.lastInputBytes / MB;
            row.recompute_max_mb = Math.max(0, ...(mem.recomputes ?? []).map((r) => r.bytes)) / MB;
          }
          row.measured_backprop_mb = mb(mem.backpropBytes);
          row.measured_tape_mb = mb(mem.tapeBytes);
          row.step_peak_mb = mb(mem.peakBytes);
          row.step_start_mb = mb(mem.startBytes);
          if (mem.gpuPeakBytes !== undefined) {
            row.gpu_step_peak_mb = mem.gpuPeakBytes / MB;
            row.gpu_allocated_mb = (mem.gpuAllocatedBytes ?? 0) / MB;
          }
          row.ratio = row.measured_backprop_mb !== null && row.analytic_backward_mb ? row.measured_backprop_mb / row.analytic_backward_mb : null;
          if (spec.perLayer) {
            row.preamble_mb = (mem.preambleBytes ?? 0) / MB;
            row.layers = layerRows(model, mem);
            if (weights.length) row.weight_layers = weightLayerRows(weights, mem);
          }
        }
      } finally {
        undo();
      }
      const gpu = row.gpu_step_peak_mb === undefined ? '' : `, GPU peak ${fmt(row.gpu_step_peak_mb)} MB (pool ${fmt(row.gpu_allocated_mb)} MB)`;
      const at = row.memory_step ? ` (memory of step ${row.memory_step}, the first that back-propagated)` : '';
      log(`profile-mem: batch ${bs}: step ${row.step_ms} ms, measured backprop ${fmt(row.measured_backprop_mb)} MB, peak ${fmt(row.step_peak_mb)} MB${gpu}${at}`);
    } catch (e) {
      const msg = (e as Error)?.message ?? String(e);
      row.error = msg.split('\n')[0];
      log(`profile-mem: batch ${bs}: failed: ${row.error}`);
      if (WASM_FATAL.test(msg) || e instanceof WebAssembly.RuntimeError) fatal = row.error;
      else if (e instanceof CtaError) throw e;
    } finally {
      try {
        alg?.dispose();
        x?.dispose();
      } catch {
        /* the backend may be unusable after a heap abort */
      }
    }
  }
  if (adapterSnap) tf.dispose([...adapterSnap.values()]);
  if (!fatal) {
    restore(model, snap, cfg);
    model.dispose();
  }
  return report;
}

const fmt = (v: number | null | undefined, digits = 1) => (v == null ? '–' : v.toFixed(digits));

/** Right-aligned text table (first column left-aligned). */
export function textTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The batch-size table. */
export function summaryTable(report: ProfileReport): string {
  // --grad-checkpoint-segments (docs/memory.md#gradient-checkpointing)
  const gc = report.rows.some((r) => r.checkpoint_segments !== undefined);
  const gcCells = (r: ProfileRow) => (gc ? [String(r.checkpoint_segments ?? '–'), fmt(r.checkpoint_inputs_mb), fmt(r.recompute_max_mb)] : []);
  // docs/memory.md#flops and the process columns
  const opCells = (r: ProfileRow) => [fmt(r.gflops_forward, 3), fmt(r.gflops_backward, 3), fmt(r.rss_peak_mb, 0), fmt(r.wasm_heap_mb, 0)];
  const headers = [
    'batch',
    'analytic fwd MB',
    'analytic bwd MB',
    'measured backprop MB',
    'meas/anal',
    'step peak MB',
    'infer peak MB',
    'step ms',
    'step cpu ms',
  ];
  // webgpu: the GPU's own bytes beside the engine's.
  const gpu = report.rows.some((r) => r.gpu_step_peak_mb !== undefined);
  if (gpu) headers.push('GPU step peak MB', 'GPU infer peak MB', 'GPU pool MB');
  headers.push('GFLOPs fwd', 'GFLOPs bwd', 'RSS peak MB', 'WASM heap MB');
  if (gc) headers.push('ckpt segments', 'ckpt inputs MB', 'recompute max MB');
  const gpuCells = (r: ProfileRow) => (gpu ? [fmt(r.gpu_step_peak_mb), fmt(r.gpu_inference_peak_mb), fmt(r.gpu_allocated_mb)] : []);
  const rows = report.rows.map((r) =>
    r.error && r.measured_backprop_mb === null
      ? [String(r.batch_size), `failed: ${r.error}`, ...headers.slice(2).map(() => '')]
      : [
          String(r.batch_size),
          fmt(r.analytic_forward_mb),
          fmt(r.analytic_backward_mb),
          fmt(r.measured_backprop_mb),
          r.ratio === null ? '–' : r.ratio.toFixed(2),
          fmt(r.step_peak_mb),
          fmt(r.inference_peak_mb),
          fmt(r.step_ms, 0),
          fmt(r.step_cpu_ms, 0),
          ...gpuCells(r),
          ...opCells(r),
          ...gcCells(r),
        ],
  );
  return textTable(headers, rows);
}

const STATE_HEADERS: Record<StateBytesKind, string> = {
  teacher: 'teacher MB',
  anchor: 'anchor MB',
  memoryBank: 'memory bank MB',
  optimizer: 'optimizer MB',
  snapshot: 'reset snapshot MB',
  other: 'other MB',
};

/**
 * What the method holds beyond the model's weights after each batch size's step, by kind
 * (Algorithm.stateBytes, docs/memory.md#method-state); null when the method reports none.
 */
export function stateTable(report: ProfileReport): string | null {
  const kinds = STATE_BYTES_KINDS.filter((k) => report.rows.some((r) => r.state_mb?.[k] !== undefined));
  if (kinds.length === 0) return null;
  const rows = report.rows.map((r) => [String(r.batch_size), ...kinds.map((k) => fmt(r.state_mb?.[k], 2))]);
  return textTable(['batch', ...kinds.map((k) => STATE_HEADERS[k])], rows);
}

/** The per-layer table of the trainable conv / linear / embedding layers of one row (--per-layer). */
export function weightLayerTable(row: ProfileRow): string {
  const headers = ['layer', 'kind', 'input', 'analytic bwd MB', 'measured MB'];
  const layers = row.weight_layers ?? [];
  const rows = layers.map((l) => [l.name, l.kind, l.shape.join('×'), fmt(l.analytic_backward_mb, 3), fmt(l.measured_mb, 3)]);
  const sum = (f: (l: WeightLayerRow) => number) => layers.reduce((a, l) => a + f(l), 0);
  rows.push(['total', '', '', fmt(sum((l) => l.analytic_backward_mb), 2), fmt(sum((l) => l.measured_mb), 2)]);
  return textTable(headers, rows);
}

/** The per-layer table of one row (--per-layer). */
export function layerTable(row: ProfileRow): string {
  // --cache-budget-mb: the kept fraction the budget chose for each layer
  const kept = (row.layers ?? []).some((l) => l.kept_ratio !== undefined);
  const headers = ['layer', 'input NHWC', 'beta', 'cached', ...(kept ? ['kept'] : []), 'analytic fwd MB', 'analytic bwd MB', 'measured norm MB', 'measured after MB'];
  const rows = (row.layers ?? []).map((l) => [
    l.name,
    l.shape.join('×'),
    l.beta === null ? '–' : l.beta.toPrecision(3),
    l.cached ? 'yes' : 'no',
    ...(kept ? [l.kept_ratio === undefined ? '–' : l.kept_ratio.toFixed(2)] : []),
    fmt(l.analytic_forward_mb, 2),
    fmt(l.analytic_backward_mb, 2),
    fmt(l.measured_norm_mb, 2),
    fmt(l.measured_after_mb, 2),
  ]);
  const sum = (f: (l: LayerRow) => number) => (row.layers ?? []).reduce((a, l) => a + f(l), 0);
  const pad = kept ? [''] : [];
  rows.push(['(before the first norm layer)', '', '', '', ...pad, '', '', '', fmt(row.preamble_mb ?? 0, 2)]);
  rows.push([
    'total',
    '',
    '',
    '',
    ...pad,
    '',
    fmt(sum((l) => l.analytic_backward_mb), 2),
    fmt(sum((l) => l.measured_norm_mb), 2),
    fmt(sum((l) => l.measured_after_mb) + (row.preamble_mb ?? 0), 2),
  ]);
  return textTable(headers, rows);
}

/**
 * --cache-budget-mb: one line per batch size with the kept-channel fraction of every norm layer
 * (module order; 0 = not caching) the budget chose for the step (docs/memory.md#cache-budget).
 */
export function keptRatioLines(report: ProfileReport): string[] {
  return report.rows
    .filter((r) => r.kept_ratios)
    .map((r) => {
      const k = r.kept_ratios!;
      return `batch ${r.batch_size}: ${k.filter((v) => v > 0).length} of ${k.length} layers cache; kept fraction per layer: ${k.map((v) => v.toFixed(2)).join(' ')}`;
    });
}
