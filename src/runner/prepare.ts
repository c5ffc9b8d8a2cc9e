/**
 * Everything a run needs before its first batch (docs/protocol.md#stream): the resume point, the
 * model and its norm mode, the data, the manifest, the configured method and, when resuming, the
 * state restored from the checkpoint.
 */
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { tf, initBackend, type BackendInfo } from '../tf.js';
import { CtaError } from '../util/errors.js';
import { Rng } from '../util/rng.js';
import { FIELDS, type CtaConfig, type FieldKey, type FieldSpec } from '../config/schema.js';
import { loadStateDict } from '../io/state-dict.js';
import { buildModel } from '../models/registry.js';
import type { Classifier, MectaOptions } from '../models/types.js';
import { ALGORITHMS, type AlgorithmName } from '../algorithms/registry.js';
import { configureNorm } from '../algorithms/norm-mode.js';
import type { Algorithm, AlgorithmSpec } from '../algorithms/types.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { PASSES } from './pass-count.js';
import { openDomain, type DomainSource, type DomainStream, type FingerprintEntry } from '../data/stream.js';
import { openDataSource } from '../data/registry.js';
import { checkSettingOptions, GRADUAL_SEVERITIES, streamSteps, type SettingSpec, type StreamStep } from '../data/settings.js';
import { runnerProbe, type MemoryProbe } from '../memory/probe.js';
import { clearCheckpoint, hasCheckpoint, readCheckpointMeta, restoreCheckpoint, type CheckpointMeta } from './checkpoint.js';
import { RunWriter, type Summary } from './output.js';
import type { RunControl } from './control.js';

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

/** Loads weights and builds the model; resolves the defaults that depend on it (FieldSpec.fromModel). */
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
  const values = cfg as Record<string, unknown>;
  for (const [k, f] of Object.entries(FIELDS) as [FieldKey, FieldSpec][]) {
    if (values[k] === null && 'fromModel' in f && f.fromModel) values[k] = f.fromModel(model);
  }
  return { model, weightsSha256, backend, pruneRng };
}

export type PreparedModel = Awaited<ReturnType<typeof prepareModel>>;

/** The norm mode of a run of `cfg`: what its method needs, with MECTA under --accum-bn. */
export function configureRunNorm(cfg: CtaConfig, model: Classifier): void {
  configureNorm(model, ALGORITHMS[cfg.alg].norm, cfg.accumBn ? mectaOptions(cfg) : null);
}

type UnionToIntersection<U> = (U extends unknown ? (u: U) => void : never) extends (i: infer I) => void ? I : never;
/** What every registered method's `create()` takes. */
export type MethodOptions = UnionToIntersection<Parameters<(typeof ALGORITHMS)[AlgorithmName]['create']>[1]>;

/** The methods' options (every registered method's fields) and the MECTA matched-layer rule. */
export function adaptOptions(cfg: CtaConfig): MethodOptions {
  const opts: Record<string, unknown> = {};
  for (const spec of Object.values(ALGORITHMS)) for (const k of Object.keys(spec.options)) opts[k] = cfg[k as FieldKey];
  opts.eMargin ??= 0; // resolved by prepareModel before any method runs
  opts.matchedUpdate = cfg.matchedUpdate;
  opts.nLayer = cfg.nLayer; // MECTA's --n_layer (src/algorithms/param-select.ts)
  return opts as unknown as MethodOptions;
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

/** The random generators whose states a checkpoint saves. */
export interface RunRngs {
  shuffle: Rng;
  prune: Rng;
  alg: Rng;
}

/** A run ready for its first (or, resuming, next) domain. */
export interface PreparedRun {
  cfg: CtaConfig;
  dir: string;
  spec: AlgorithmSpec;
  model: Classifier;
  source: DomainSource;
  alg: Algorithm;
  writer: RunWriter;
  manifest: Record<string, unknown>;
  summary: Summary;
  /** Batch orders of the domains so far (the stream fingerprint). */
  orders: FingerprintEntry[];
  rngs: RunRngs;
  /** The stream setting (--setting) and the steps it makes of the source's domains. */
  setting: SettingSpec;
  steps: StreamStep[];
  /** The source at another severity (gradual settings); `source` at --severity. */
  sourceAt(severity: number | null): DomainSource;
  /** Index of the first step to run (0, or the checkpoint's next domain). */
  first: number;
  /** Running batch number across domains (batches.jsonl `batch`). */
  batchIndex: number;
  /** Whether batch lines carry the analytic cache accounting (MECTA or a gradient method). */
  trackCache: boolean;
  /** Measured memory per step (engine hooks; cheap, no per-layer breakdown here). */
  probe: MemoryProbe;
}

/**
 * Opens the run: checkpoint (resuming) or a clean folder, model, data, manifest, method. Polls
 * for a stop between the slow steps.
 */
export async function prepareRun(cfg: CtaConfig, dir: string, control: RunControl, started: Date, resume: boolean): Promise<PreparedRun> {
  const { log } = control.hooks;
  const setting = checkSettingOptions(cfg);
  // Resuming: the finished domains' results, rngs and model/algorithm state come from the
  // checkpoint; a run stopped before its first domain finished has none and starts over.
  let ckpt: CheckpointMeta | null = null;
  if (resume && hasCheckpoint(dir)) ckpt = readCheckpointMeta(dir);
  else if (resume) log(`notice: ${dir} has no checkpoint (no domain had finished): running it from the first domain`);
  else clearCheckpoint(dir);
  if (ckpt) control.position.finished = ckpt.nextDomain;
  control.stopIfAsked();
  const { model, weightsSha256, backend, pruneRng } = await prepareModel(cfg, log);
  control.stopIfAsked();
  const source = await openDataSource(cfg);
  const steps = streamSteps(source.names, cfg);
  if (setting.correlated && source.open) throw new CtaError(`--setting ${cfg.setting}: the correlated order needs every label before decoding, which --data ${cfg.data} (decoded batch by batch) does not give`);
  if (setting.mixed && source.open) throw new CtaError(`--setting mixed: pools whole domains in memory, which --data ${cfg.data} (decoded batch by batch) does not support`);
  // gradual: the same data at the other severities, each checked up front like --severity's.
  const bySeverity = new Map<number, DomainSource>([[cfg.severity, source]]);
  if (setting.gradual) {
    for (const s of GRADUAL_SEVERITIES) if (!bySeverity.has(s)) bySeverity.set(s, await openDataSource({ ...cfg, severity: s }));
  }
  const sourceAt = (severity: number | null): DomainSource => (severity === null ? source : bySeverity.get(severity)!);
  control.position.total = steps.length;
  control.stopIfAsked();
  const spec: AlgorithmSpec = ALGORITHMS[cfg.alg];
  checkModelFitsRun(cfg, model, source);
  configureRunNorm(cfg, model);

  // Generated frost without the original photographs is our procedural texture: say so, always.
  const proceduralFrost = cfg.data === 'synthetic-c' && cfg.corruptions.includes('frost') && !cfg.frostDir;
  if (proceduralFrost) log('notice: frost uses the procedural texture (non-standard); --frost-dir <folder with frost1.png … frost6.jpg> gives the standard one');
  const writer = new RunWriter(dir, ckpt ? ckpt.batchIndex : 0);
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
    data_files: [...new Set([...bySeverity.values()].flatMap((s) => s.files()))].map((path) => ({ path, bytes: fileSize(path) })),
    ...(proceduralFrost ? { frost: 'procedural (non-standard: not the Hendrycks frost photographs)' } : {}),
    config: { ...cfg },
    stream_fingerprint: null as string | null,
  };
  if (ckpt) {
    // Keep the original provenance; record when the run was resumed.
    const prev = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    Object.assign(manifest, prev, { resumed: [...((prev.resumed as string[]) ?? []), started.toISOString()] });
  }
  writer.writeJson('manifest.json', manifest);
  control.position.resumable = true;

  const algRng = new Rng(cfg.seed + 3);
  const ctx = {
    rng: algRng,
    fisherData: fisherBatches(() => openDomain(source, 'original'), cfg.fisherSize, cfg.batchSize, cfg.seed),
    ...copiesAndAugmentation(model, algRng),
  };
  // Forwards / backwards per batch for every method (src/runner/pass-count.ts), copies included.
  PASSES.install();
  PASSES.watch(model);
  const clone = ctx.cloneModel;
  ctx.cloneModel = () => PASSES.watch(clone());
  let alg: Algorithm;
  try {
    alg = await spec.create(model, adaptOptions(cfg), ctx);
  } catch (e) {
    if (e instanceof CtaError) throw e;
    throw new CtaError(`--alg ${cfg.alg}: could not configure (${(e as Error).message})`, 1);
  }
  PASSES.take(); // configure-time passes (EATA's Fisher) are not the first batch's

  const run: PreparedRun = {
    cfg,
    dir,
    spec,
    model,
    source,
    setting,
    steps,
    sourceAt,
    alg,
    writer,
    manifest,
    summary: ckpt?.summary ?? { config: { ...cfg }, domains: [], mean_error: null, mean_error_all: null, complete: false },
    orders: (ckpt?.orders ?? []).map((o) => ({ ...o, order: Int32Array.from(o.order) })),
    rngs: { shuffle: new Rng(cfg.seed), prune: pruneRng, alg: ctx.rng },
    first: ckpt?.nextDomain ?? 0,
    batchIndex: 0,
    trackCache: cfg.accumBn || spec.usesGradients,
    probe: runnerProbe(),
  };
  if (ckpt) {
    await restoreCheckpoint(dir, model, alg, ckpt);
    for (const [k, r] of Object.entries(run.rngs)) r.setState(ckpt.rngs[k]);
    model.normLayers.forEach((l, i) => (l.pastSize = ckpt.pastSizes[i] ?? 0));
    run.batchIndex = ckpt.batchIndex;
    log(`resuming ${dir} at domain ${run.first + 1}/${steps.length} (${steps[run.first].domain})`);
  }
  return run;
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

export function fileSize(path: string): number | null {
  try {
    return statSync(path).size;
  } catch {
    return null;
  }
}
