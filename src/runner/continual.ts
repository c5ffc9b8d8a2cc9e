/**
 * The continual test-time adaptation loop (docs/protocol.md#stream): one model and one algorithm
 * state carried across every domain in order — never reset between domains — with the prediction of
 * each batch taken from the forward before that batch's update. Streaming, timing, logging and
 * memory accounting live here; algorithms only see batches.
 */
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tf, initBackend, type BackendInfo } from '../tf.js';
import { CtaError, Interrupted } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import type { CtaConfig } from '../config/schema.js';
import { loadStateDict } from '../io/state-dict.js';
import { buildModel } from '../models/registry.js';
import type { Classifier, MectaOptions } from '../models/types.js';
import { ALGORITHMS } from '../algorithms/registry.js';
import type { AdaptOptions, Algorithm } from '../algorithms/types.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { batchOrder, openDomain, streamFingerprint, type DomainSource, type DomainStream, type FingerprintEntry } from '../data/stream.js';
import { openDataSource } from '../data/registry.js';
import { accountCache, MB } from './accounting.js';
import { MeasuredDomain, runnerProbe, type StepMemory } from '../memory/probe.js';
import { clearCheckpoint, hasCheckpoint, readCheckpointMeta, removeStaleTemps, restoreCheckpoint, saveCheckpoint, type CheckpointMeta } from './checkpoint.js';
import { RunWriter, meanErrors, readCompleteSummary, type DomainResult, type Summary } from './output.js';
import { domainProgress } from './progress.js';

export interface RunHooks {
  /** One line of human output (progress in plain mode, notices). */
  log: (line: string) => void;
  /** Label prefix for progress lines (e.g. the algorithm when two runs share a terminal). */
  label?: string;
  /** Polled at safe points (start-up steps, every batch): a signal there stops the run (RunInterrupted). */
  stopRequested?: () => NodeJS.Signals | null;
}

/** Where a run stood when a signal stopped it; the CLI turns it into its one line. */
export interface RunPosition {
  dir: string;
  /** Domains finished (results in summary.json, resumable from the checkpoint). */
  finished: number;
  /** Domains in the stream, once the data is open. */
  total: number | null;
  /** The domain being adapted on (1-based index and name), if one had started. */
  current: { index: number; name: string } | null;
  /** The folder holds this run's manifest, so `--resume` can continue it. */
  resumable: boolean;
}

export class RunInterrupted extends Interrupted {
  constructor(signal: NodeJS.Signals, readonly position: RunPosition) {
    super(`interrupted (${signal})`, signal);
  }
}

/** Streams a file through sha256 (weights can be hundreds of MB: never read them twice in memory). */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

export function mectaOptions(cfg: CtaConfig): MectaOptions {
  return {
    beta: cfg.beta,
    initBeta: cfg.initBeta,
    forgetGate: cfg.forgetGate,
    distMetric: cfg.bnDistMetric,
    distScale: cfg.bnDistScale,
    betaThre: cfg.betaThre,
    pruneQ: cfg.pruneQ,
  };
}

/** Loads weights and builds the model; resolves defaults that depend on the model (E0). */
export async function prepareModel(cfg: CtaConfig, log: (l: string) => void): Promise<{ model: Classifier; weightsSha256: string | null; backend: BackendInfo; pruneRng: Rng }> {
  const backend = await initBackend(cfg.backend, cfg.threads);
  if (backend.notice) log(backend.notice);
  if (!cfg.weights) throw new CtaError('--weights: required (a .safetensors or PyTorch .pt state_dict for --model ' + cfg.model + ')');
  const sd = await loadStateDict(cfg.weights);
  const weightsSha256 = await sha256File(cfg.weights);
  if (cfg.model === 'resnext29' && !sd.has('mu')) {
    // RobustBench's AugMix ResNeXt normalises (x − 0.5)/0.5 through mu/sigma buffers; a raw
    // checkpoint without them would silently get [0,1] input, so say so.
    log(`notice: ${cfg.weights} has no mu/sigma buffers: the model takes [0,1] input unnormalised (export RobustBench's load_model(...).state_dict() to include them)`);
  }
  const pruneRng = new Rng(cfg.seed + 7);
  const model = buildModel(cfg.model, sd, {
    rng: pruneRng,
    expect: { depth: cfg.depth ?? undefined, cardinality: cfg.cardinality ?? undefined },
  });
  // E0 = 0.4·ln C (docs/methods.md#reliable-samples) needs the class count, which comes from the
  // weights.
  if (cfg.eMargin === null) cfg.eMargin = 0.4 * Math.log(model.numClasses);
  return { model, weightsSha256, backend, pruneRng };
}

export type PreparedModel = Awaited<ReturnType<typeof prepareModel>>;

export function adaptOptions(cfg: CtaConfig): AdaptOptions {
  return {
    lr: cfg.lr,
    momentum: cfg.momentum,
    optimizer: cfg.optimizer,
    dampening: cfg.dampening,
    nesterov: cfg.nesterov,
    weightDecay: cfg.weightDecay,
    adamBeta1: cfg.adamBeta1,
    adamBeta2: cfg.adamBeta2,
    adamEps: cfg.adamEps,
    episodic: cfg.episodic,
    eMargin: cfg.eMargin ?? 0,
    dMargin: cfg.dMargin,
    fisherAlpha: cfg.fisherAlpha,
    fisherSize: cfg.fisherSize,
    matchedUpdate: cfg.matchedUpdate,
  };
}

/** A random `size`-sample subset of the clean domain, batched (docs/methods.md#fisher-estimation). */
function fisherBatches(clean: () => Promise<DomainStream>, size: number, batchSize: number, seed: number) {
  return async function* (): AsyncIterable<tf.Tensor4D> {
    const d = await clean();
    // MECTA draws the subset with RandomState(seed + 1); we use our own seeded generator.
    const order = new Rng(seed + 1).permutation(d.n).slice(0, Math.min(size, d.n));
    for await (const b of d.batches(order, batchSize)) {
      yield tf.tensor4d(b.x, [b.y.length, d.height, d.width, d.channels]);
    }
  };
}

/**
 * Refusals that need the built model: the BN-statistics methods (norm, MECTA) on a model without
 * BatchNorm (a ViT's LayerNorms keep no running statistics; tent/eta/eata adapt their affine
 * parameters instead), and a data set whose class count differs from the model's outputs.
 */
function checkModelFitsRun(cfg: CtaConfig, model: Classifier, source: DomainSource): void {
  if (!model.normLayers.some((l) => l.kind === 'batch')) {
    if (cfg.alg === 'norm') {
      throw new CtaError(`--alg norm re-estimates BatchNorm statistics, but --model ${cfg.model} has no BatchNorm layers (its LayerNorms normalise each token on its own); use tent, eta or eata, which adapt the LayerNorm affine parameters`);
    }
    if (cfg.accumBn) {
      throw new CtaError(`--accum-bn (MECTA) needs BatchNorm layers, but --model ${cfg.model} has only LayerNorms, which keep no statistics to accumulate`);
    }
  }
  if (source.numClasses !== undefined && source.numClasses !== model.numClasses) {
    throw new CtaError(`--data ${cfg.data}: the data has ${source.numClasses} classes but the model has ${model.numClasses} outputs (labels are ranks of the sorted class folders, so every class folder must be present)`);
  }
}

export interface RunResult {
  summary: Summary;
  dir: string;
  /** `--resume` of a folder whose run had already finished: nothing was run. */
  alreadyComplete?: boolean;
}

/**
 * Runs one algorithm over the whole stream, writing the run folder as results are produced.
 * `model` may be passed in to share weights loading between runs (it is reset by the caller).
 */
export async function runContinual(cfg: CtaConfig, outDir: string, hooks: RunHooks, opts: { resume?: boolean } = {}): Promise<RunResult> {
  const started = new Date();
  if (opts.resume) {
    // The checkpoint is that of the last domain boundary, not of the end: summary.json says
    // whether the run finished.
    const done = readCompleteSummary(outDir);
    if (done) {
      hooks.log(`${outDir}: the run is already complete, nothing to resume (results: ${join(outDir, 'summary.json')})`);
      return { summary: done, dir: outDir, alreadyComplete: true };
    }
  }
  for (const p of removeStaleTemps(outDir)) hooks.log(`notice: removed ${p}, left by a write that did not finish (the file it was to replace is intact)`);
  const position: RunPosition = { dir: outDir, finished: 0, total: null, current: null, resumable: opts.resume === true };
  const stopIfAsked = () => {
    const sig = hooks.stopRequested?.();
    if (sig) throw new RunInterrupted(sig, { ...position });
  };
  // Resuming: the finished domains' results, rngs and model/algorithm state come from the
  // checkpoint; a run stopped before its first domain finished has none and starts over.
  let ckpt: CheckpointMeta | null = null;
  if (opts.resume && hasCheckpoint(outDir)) ckpt = readCheckpointMeta(outDir);
  else if (opts.resume) hooks.log(`notice: ${outDir} has no checkpoint (no domain had finished): running it from the first domain`);
  else clearCheckpoint(outDir);
  if (ckpt) position.finished = ckpt.nextDomain;
  stopIfAsked();
  const { model, weightsSha256, backend, pruneRng } = await prepareModel(cfg, hooks.log);
  stopIfAsked();
  const source = await openDataSource(cfg);
  position.total = source.names.length;
  stopIfAsked();
  const spec = ALGORITHMS[cfg.alg];
  checkModelFitsRun(cfg, model, source);
  if (cfg.accumBn) model.setNormMode('mecta', mectaOptions(cfg));
  else model.setNormMode(cfg.alg === 'source' ? 'source' : 'batch');

  // Generated frost without the original photographs is our procedural texture: say so, always.
  const proceduralFrost = cfg.data === 'synthetic-c' && cfg.corruptions.includes('frost') && !cfg.frostDir;
  if (proceduralFrost) hooks.log('notice: frost uses the procedural texture (non-standard); --frost-dir <folder with frost1.png … frost6.jpg> gives the standard one');
  const writer = new RunWriter(outDir, ckpt ? ckpt.batchIndex : 0);
  const manifest: Record<string, unknown> = {
    tool: 'cta-eval',
    version: packageVersion(),
    started: started.toISOString(),
    argv: process.argv.slice(2),
    node: process.version,
    tfjs: tf.version.tfjs,
    backend: backend.name,
    backend_requested: backend.requested,
    native_package: backend.nativePackage,
    wasm_threads: backend.threads,
    weights: cfg.weights,
    weights_sha256: weightsSha256,
    model: { arch: model.arch, num_classes: model.numClasses, input_shape: model.inputShape, norm_layers: model.normLayers.length },
    data_files: source.files().map((path) => ({ path, bytes: fileSize(path) })),
    ...(proceduralFrost ? { frost: 'procedural (non-standard: not the Hendrycks frost photographs)' } : {}),
    config: { ...cfg },
    stream_fingerprint: null as string | null,
  };
  if (ckpt) {
    // Keep the original provenance; record when the run was resumed.
    const prev = JSON.parse(readFileSync(join(outDir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    Object.assign(manifest, prev, { resumed: [...((prev.resumed as string[]) ?? []), started.toISOString()] });
  }
  writer.writeJson('manifest.json', manifest);
  position.resumable = true;

  const algRng = new Rng(cfg.seed + 3);
  const ctx = {
    rng: algRng,
    fisherData: fisherBatches(() => openDomain(source, 'original'), cfg.fisherSize, cfg.batchSize, cfg.seed),
    ...copiesAndAugmentation(model, algRng),
  };
  let alg: Algorithm;
  try {
    alg = await spec.create(model, adaptOptions(cfg), ctx);
  } catch (e) {
    if (e instanceof CtaError) throw e;
    throw new CtaError(`--alg ${cfg.alg}: could not configure (${(e as Error).message})`, 1);
  }

  const trackCache = cfg.accumBn || spec.usesGradients;
  // Measured memory per step (engine hooks; cheap, no per-layer breakdown here).
  const probe = runnerProbe();
  const summary: Summary = ckpt?.summary ?? { config: { ...cfg }, domains: [], mean_error: null, mean_error_all: null, complete: false };
  const orders: FingerprintEntry[] = (ckpt?.orders ?? []).map((o) => ({ ...o, order: Int32Array.from(o.order) }));
  const shuffleRng = new Rng(cfg.seed);
  const rngs = { shuffle: shuffleRng, prune: pruneRng, alg: ctx.rng };
  let batchIndex = 0;
  const first = ckpt?.nextDomain ?? 0;
  if (ckpt) {
    await restoreCheckpoint(outDir, model, alg, ckpt);
    for (const [k, r] of Object.entries(rngs)) r.setState(ckpt.rngs[k]);
    model.normLayers.forEach((l, i) => (l.pastSize = ckpt.pastSizes[i] ?? 0));
    batchIndex = ckpt.batchIndex;
    hooks.log(`resuming ${outDir} at domain ${first + 1}/${source.names.length} (${source.names[first]})`);
  }
  // openDomain: in-memory sets load whole domains; streaming ones (ImageNet-C) list files here and
  // decode batch by batch below.
  let next = openDomain(source, source.names[first]);
  for (let di = first; di < source.names.length; di++) {
    const name = source.names[di];
    position.current = { index: di + 1, name };
    stopIfAsked();
    const domain = await next;
    // Decode the next domain while this one adapts (no data stall at domain boundaries).
    if (di + 1 < source.names.length) {
      next = openDomain(source, source.names[di + 1]);
      // Handled here so a failure surfaces as its CtaError when awaited, not as an unhandled rejection.
      next.catch(() => undefined);
    }
    const order = batchOrder(domain.n, cfg.shuffle, shuffleRng);
    orders.push({ name, severity: domain.severity, order });
    const totalBatches = Math.ceil(order.length / cfg.batchSize);
    const label = `${hooks.label ? hooks.label + ' ' : ''}[${di + 1}/${source.names.length}] ${name}`;
    const progress = domainProgress(cfg.progress, label, totalBatches, hooks.log);
    let correct = 0;
    let seen = 0;
    let reliable = 0;
    let used = 0;
    let updates = 0;
    let batches = 0;
    const caches: number[] = [];
    const measured = new MeasuredDomain();
    const betas: number[] = [];
    const t0 = performance.now();
    for await (const b of domain.batches(order, cfg.batchSize)) {
      const n = b.y.length;
      const tb = performance.now();
      const x = tf.tensor4d(b.x, [n, domain.height, domain.width, domain.channels]);
      let pred: Int32Array;
      let res;
      let mem: StepMemory | null = null;
      try {
        probe.begin();
        try {
          res = alg.step(x);
        } finally {
          mem = probe.end();
        }
        const am = tf.argMax(res.logits, 1);
        pred = (await am.data()) as Int32Array;
        am.dispose();
        res.logits.dispose();
      } finally {
        x.dispose();
      }
      let c = 0;
      for (let i = 0; i < n; i++) if (pred[i] === b.y[i]) c++;
      correct += c;
      seen += n;
      batches++;
      if (res.updated) updates++;
      if (res.reliable !== undefined) reliable += res.reliable;
      if (res.used !== undefined) used += res.used;
      const records = model.normLayers.map((l) => l.last);
      const layerBetas = records.map((r) => r?.beta ?? null);
      const acc = trackCache ? accountCache(records) : null;
      if (acc) caches.push(acc.cacheMb);
      const finite = layerBetas.filter((v): v is number => v !== null);
      if (finite.length) betas.push(finite.reduce((a, v) => a + v, 0) / finite.length);
      const ms = performance.now() - tb;
      writer.appendBatch({
        batch: batchIndex++,
        domain: name,
        domain_batch: batches - 1,
        n,
        correct: c,
        error: (100 * (n - c)) / n,
        updated: res.updated,
        ...(res.reliable !== undefined ? { reliable: res.reliable, used: res.used } : {}),
        ...(acc
          ? {
              cache_mb: acc.cacheMb,
              max_forward_mb: acc.maxForwardBytes / MB,
              total_backward_mb: acc.totalBackwardBytes / MB,
            }
          : {}),
        ...measured.add(mem),
        ...(cfg.accumBn ? { beta: layerBetas, cached: records.map((r) => r?.cached ?? false) } : {}),
        ms: Math.round(ms * 10) / 10,
      });
      // The lines of an unfinished domain are dropped by --resume, which re-runs it from the
      // checkpoint. A bar is closed first: it hides the terminal's cursor while it runs.
      if (hooks.stopRequested?.()) {
        progress.stop();
        stopIfAsked();
      }
      const secs = (performance.now() - t0) / 1000;
      progress.update(batches, seen, (100 * (seen - correct)) / seen, seen / secs);
    }
    progress.stop();
    const seconds = (performance.now() - t0) / 1000;
    const result: DomainResult = {
      domain: name,
      severity: domain.severity,
      n: seen,
      error: seen ? (100 * (seen - correct)) / seen : NaN,
      correct,
      batches,
      seconds: Math.round(seconds * 100) / 100,
      img_per_s: Math.round((seen / seconds) * 10) / 10,
      updates,
      ...(cfg.alg === 'eata' || cfg.alg === 'eta' ? { reliable, updated: used } : {}),
      ...(trackCache
        ? {
            max_cache_mb: caches.length ? Math.max(...caches) : null,
            avg_cache_mb: caches.length ? caches.reduce((a, v) => a + v, 0) / caches.length : null,
          }
        : {}),
      ...measured.summary(),
      ...(betas.length ? { mean_beta: betas.reduce((a, v) => a + v, 0) / betas.length } : {}),
    };
    summary.domains.push(result);
    Object.assign(summary, meanErrors(summary.domains));
    writer.writeJson('summary.json', summary);
    position.finished = di + 1;
    position.current = null;
    if (di + 1 < source.names.length) {
      await saveCheckpoint(
        outDir,
        {
          version: 1,
          nextDomain: di + 1,
          batchIndex,
          rngs: Object.fromEntries(Object.entries(rngs).map(([k, r]) => [k, r.state()])),
          pastSizes: model.normLayers.map((l) => l.pastSize),
          summary,
          orders: orders.map((o) => ({ name: o.name, severity: o.severity ?? null, order: Array.from(o.order) })),
        },
        model,
        alg,
      );
      // Test hook: simulate a crash at a domain boundary (used by the resume test).
      if (process.env.CTA_TEST_EXIT_AFTER_DOMAIN === String(di + 1)) process.exit(99);
    }
    const extra =
      (result.reliable !== undefined ? ` reliable ${result.reliable} updated ${result.updated}` : '') +
      (result.max_cache_mb != null ? ` cache max ${result.max_cache_mb.toFixed(1)} MB avg ${result.avg_cache_mb!.toFixed(1)} MB` : '');
    if (cfg.progress !== 'bar' && cfg.progress !== 'none' && !(cfg.progress === 'auto' && process.stdout.isTTY)) {
      hooks.log(`${label} error ${result.error.toFixed(2)}% (${seen} images, ${result.img_per_s} img/s)${extra}`);
    }
  }
  alg.dispose();
  summary.complete = true;
  writer.writeJson('summary.json', summary);
  manifest.stream_fingerprint = streamFingerprint(orders);
  manifest.finished = new Date().toISOString();
  manifest.config = { ...cfg };
  writer.writeJson('manifest.json', manifest);
  return { summary, dir: outDir };
}

let cachedVersion: string | null = null;
function packageVersion(): string {
  if (cachedVersion) return cachedVersion;
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    cachedVersion = pkg.version;
  } catch {
    cachedVersion = 'unknown';
  }
  return cachedVersion;
}

/** Default run folder: runs/<timestamp>-<alg>. */
export function defaultOutDir(alg: string, now = new Date()): string {
  const ts = now.toISOString().replace(/[:.]/g, '-').replace('T', '_').slice(0, 19);
  return join('runs', `${ts}-${alg}`);
}

export function fileSize(path: string): number | null {
  try {
    return statSync(path).size;
  } catch {
    return null;
  }
}
