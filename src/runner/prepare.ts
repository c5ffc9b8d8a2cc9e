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
import { loadWeightFile } from '../io/state-dict.js';
import { resolveWeights } from '../models/weights-variant.js';
import { buildModel, MODELS } from '../models/registry.js';
import { buildProtocol, normalisationText, type Protocol } from './provenance.js';
import type { Classifier, MectaOptions } from '../models/types.js';
import { ALGORITHMS, type AlgorithmName } from '../algorithms/registry.js';
import { configureNorm } from '../algorithms/norm-mode.js';
import { allocateCache } from '../models/cache-budget.js';
import { MB } from './accounting.js';
import type { Algorithm, AlgorithmSpec } from '../algorithms/types.js';
import { copiesAndAugmentation } from '../algorithms/context.js';
import { prepareAdapters, trainableCount } from '../adapters/attach.js';
import { isAdapterHost } from '../models/injection.js';
import { PASSES } from './pass-count.js';
import { openDomain, type DomainSource, type DomainStream, type FingerprintEntry } from '../data/stream.js';
import { openDataSource } from '../data/registry.js';
import { checkSettingOptions, GRADUAL_SEVERITIES, type SettingSpec, type StreamStep } from '../data/settings.js';
import { checkEvalModeOptions, isDefaultCorruptions, streamCorruptions } from '../data/eval-modes.js';
import { resolveDomainOrders, type DomainOrders } from '../data/orders.js';
import { planSteps } from './plan.js';
import { runnerProbe, type MemoryProbe } from '../memory/probe.js';
import { clearCheckpoint, hasCheckpoint, readCheckpointMeta, restoreCheckpoint, type CheckpointMeta } from './checkpoint.js';
import { RunWriter, type Summary } from './output.js';
import { InterleavedEval } from './forgetting.js';
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
export async function prepareModel(cfg: CtaConfig, log: (l: string) => void): Promise<{ model: Classifier; weightsSha256: string | null; backend: BackendInfo; pruneRng: Rng; checkpoint: string }> {
  const backend = await initBackend(cfg.backend, cfg.threads);
  if (backend.notice) log(backend.notice);
  if (!cfg.weights) throw new CtaError('--weights: required (a .safetensors or PyTorch .pt state_dict for --model ' + cfg.model + ')');
  // A Google ViT .npz (Flax names) becomes timm's state_dict here; the variant goes into the protocol.
  const file = await loadWeightFile(cfg.weights);
  const { sd, variant, heads, inputNorm } = resolveWeights(file.sd, file.format, cfg.model, cfg.weights, file.metadata);
  const weightsSha256 = await sha256File(cfg.weights);
  // What the weights are (the protocol record, src/runner/provenance.ts), read before the build releases them.
  const checkpoint = `${variant}: ${MODELS[cfg.model].describe(sd)}${heads !== undefined ? `, ${heads} heads` : ''}`;
  if (cfg.model === 'resnext29' && !sd.has('mu')) {
    // RobustBench's AugMix ResNeXt normalises (x − 0.5)/0.5 through mu/sigma buffers; a raw
    // checkpoint without them would silently get [0,1] input, so say so.
    log(`notice: ${cfg.weights} has no mu/sigma buffers: the model takes [0,1] input unnormalised (export RobustBench's load_model(...).state_dict() to include them)`);
  }
  const pruneRng = new Rng(cfg.seed + 7);
  const model = buildModel(cfg.model, sd, {
    rng: pruneRng,
    expect: { depth: cfg.depth ?? undefined, cardinality: cfg.cardinality ?? undefined, heads },
    // A cta-train ViT's recorded mean/std (the same as vit_b16's default 0.5 unless trained otherwise).
    ...(inputNorm ? { inputNorm } : {}),
  });
  const values = cfg as Record<string, unknown>;
  for (const [k, f] of Object.entries(FIELDS) as [FieldKey, FieldSpec][]) {
    if (values[k] === null && 'fromModel' in f && f.fromModel) values[k] = f.fromModel(model);
  }
  applyGradCheckpoint(cfg, model);
  return { model, weightsSha256, backend, pruneRng, checkpoint };
}

/** --grad-checkpoint-segments on the model (docs/memory.md#gradient-checkpointing). */
export function applyGradCheckpoint(cfg: Pick<CtaConfig, 'gradCheckpointSegments' | 'gradCheckpointScope' | 'model'>, model: Classifier): void {
  if (cfg.gradCheckpointSegments === 1) return;
  if (!model.gradCheckpoint) throw new CtaError(`--grad-checkpoint-segments: ${cfg.model} has no stages of blocks to checkpoint`);
  model.gradCheckpoint.segments = cfg.gradCheckpointSegments;
  model.gradCheckpoint.scope = cfg.gradCheckpointScope;
}

export type PreparedModel = Awaited<ReturnType<typeof prepareModel>>;

/**
 * The norm mode of a run of `cfg`: what its method needs, with MECTA under --accum-bn, and the
 * backprop-cache budget of --cache-budget-mb (docs/memory.md#cache-budget), checked up front
 * against the smallest achievable cache at each of `batchSizes`.
 */
export function configureRunNorm(cfg: CtaConfig, model: Classifier, batchSizes: readonly number[] = [cfg.batchSize]): void {
  configureNorm(model, ALGORITHMS[cfg.alg].norm, cfg.accumBn ? mectaOptions(cfg) : null);
  if (cfg.cacheBudgetMb === null) return;
  if (!model.setCacheBudget || model.normMode !== 'mecta') {
    throw new CtaError(`--cache-budget-mb needs the MECTA norm layer: --alg ${cfg.alg} on --model ${cfg.model} does not run it`);
  }
  const budget = model.setCacheBudget(cfg.cacheBudgetMb * MB, cfg.cacheBudgetMode)!;
  for (const n of batchSizes) allocateCache(budget.known, n, budget.bytes, budget.mode);
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
  /** --domain-orders (src/data/orders.ts), or null. */
  domainOrders: DomainOrders | null;
  /** The generators' states once the method is configured: where every order restarts (src/runner/plan.ts). */
  freshRngs: Record<string, number[]>;
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
  /** --interleave-clean / --interleave-seen: the side-effect-free evaluations (src/runner/forgetting.ts). */
  interleave: InterleavedEval | null;
}

/**
 * Opens the run: checkpoint (resuming) or a clean folder, model, data, manifest, method. Polls
 * for a stop between the slow steps.
 */
export async function prepareRun(cfg: CtaConfig, dir: string, control: RunControl, started: Date, resume: boolean): Promise<PreparedRun> {
  const { log } = control.hooks;
  const setting = checkSettingOptions(cfg);
  // --eval-mode, --corruption-set, --domain-orders (src/data/eval-modes.ts, src/data/orders.ts):
  // checked, and an order file read, before the model loads.
  checkEvalModeOptions(cfg);
  const stream = streamCorruptions(cfg);
  const domainOrders = resolveDomainOrders(cfg.domainOrders, stream.corruptions, cfg.seed, cfg.corruptionSet === 'custom' && isDefaultCorruptions(cfg.corruptions));
  if (domainOrders && setting.mixed) throw new CtaError('--domain-orders: --setting mixed pools every domain into one step, so there is no order to vary');
  // The data of the orders' corruptions (every order names the same ones).
  const dataCfg: CtaConfig = domainOrders ? { ...cfg, corruptionSet: 'custom', corruptions: domainOrders.orders[0], cleanLast: stream.cleanLast } : cfg;
  if (cfg.cleanEvalN !== null && !cfg.interleaveClean && !cfg.interleaveSeen) throw new CtaError('--clean-eval-n: only with --interleave-clean or --interleave-seen');
  // One matrix follows one adapting model; several orders are several runs from the source model.
  if ((cfg.interleaveClean || cfg.interleaveSeen) && cfg.domainOrders !== null) throw new CtaError(`--${cfg.interleaveClean ? 'interleave-clean' : 'interleave-seen'}: not with --domain-orders (each order restarts from the source model; run one order per folder)`);
  // Resuming: the finished domains' results, rngs and model/algorithm state come from the
  // checkpoint; a run stopped before its first domain finished has none and starts over.
  let ckpt: CheckpointMeta | null = null;
  if (resume && hasCheckpoint(dir)) ckpt = readCheckpointMeta(dir);
  else if (resume) log(`notice: ${dir} has no checkpoint (no domain had finished): running it from the first domain`);
  else clearCheckpoint(dir);
  if (ckpt) control.position.finished = ckpt.nextDomain;
  control.stopIfAsked();
  const { model, weightsSha256, backend, pruneRng, checkpoint } = await prepareModel(cfg, log);
  control.stopIfAsked();
  const source = await openDataSource(dataCfg);
  const steps = planSteps(source.names, cfg, domainOrders, stream.cleanLast);
  // gradual: the same data at the other severities, each checked up front like --severity's.
  const bySeverity = new Map<number, DomainSource>([[cfg.severity, source]]);
  if (setting.gradual) {
    for (const s of GRADUAL_SEVERITIES) if (!bySeverity.has(s)) bySeverity.set(s, await openDataSource({ ...dataCfg, severity: s }));
  }
  const sourceAt = (severity: number | null): DomainSource => (severity === null ? source : bySeverity.get(severity)!);
  control.position.total = steps.length;
  control.stopIfAsked();
  const spec: AlgorithmSpec = ALGORITHMS[cfg.alg];
  checkModelFitsRun(cfg, model, source);
  configureRunNorm(cfg, model);

  // Generated frost without the original photographs is our procedural texture: say so, always.
  const proceduralFrost = cfg.data === 'synthetic-c' && source.names.includes('frost') && !cfg.frostDir;
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
    ...(domainOrders ? { domain_orders: { ...domainOrders.from, orders: domainOrders.orders } } : {}),
    protocol: buildProtocol(cfg, {
      weightsSha256,
      normalisation: normalisationText(model.inputNormalisation),
      checkpoint,
      imagesPerDomain: await imagesPerDomain(source),
    }),
    stream_fingerprint: null as string | null,
  };
  if (ckpt) {
    // Keep the original provenance; record when the run was resumed.
    const prev = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    const prevOrders = (prev.domain_orders as { orders?: string[][] } | undefined)?.orders ?? null;
    if (JSON.stringify(prevOrders) !== JSON.stringify(domainOrders?.orders ?? null)) {
      throw new CtaError(`--resume ${dir}: the orders of --domain-orders ${cfg.domainOrders} differ from those the run started with (manifest.json domain_orders); restore the file or start a new run`);
    }
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
  // --adapt-params (docs/adapters.md): the modules go on before the method configures, so they are
  // what it trains and snapshots.
  await prepareAdapters(cfg, model, (x) => ctx.augment(x));
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
  // A method without gradients (source, norm) trains nothing, modules included.
  if (!spec.usesGradients && isAdapterHost(model)) model.adapters?.requiresGrad(() => false);
  const trainable = { adapt_params: cfg.adaptParams, trainable_params: trainableCount(model) };

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
    summary: { ...(ckpt?.summary ?? { config: { ...cfg }, protocol: manifest.protocol as Protocol, domains: [], mean_error: null, mean_error_all: null, complete: false }), ...trainable },
    orders: (ckpt?.orders ?? []).map((o) => ({ ...o, order: Int32Array.from(o.order) })),
    rngs: { shuffle: new Rng(cfg.seed), prune: pruneRng, alg: ctx.rng },
    domainOrders,
    freshRngs: {},
    first: ckpt?.nextDomain ?? 0,
    batchIndex: 0,
    trackCache: cfg.accumBn || spec.usesGradients,
    probe: runnerProbe(),
    interleave: null,
  };
  if (cfg.interleaveClean || cfg.interleaveSeen) run.interleave = new InterleavedEval(run);
  run.freshRngs = Object.fromEntries(Object.entries(run.rngs).map(([k, r]) => [k, r.state()]));
  if (ckpt) {
    await restoreCheckpoint(dir, model, alg, ckpt);
    for (const [k, r] of Object.entries(run.rngs)) r.setState(ckpt.rngs[k]);
    model.normLayers.forEach((l, i) => (l.pastSize = ckpt.pastSizes[i] ?? 0));
    if (ckpt.budgetBetas) model.normLayers.find((l) => l.cacheBudget)?.cacheBudget?.restoreBetas(ckpt.budgetBetas);
    run.batchIndex = ckpt.batchIndex;
    log(`resuming ${dir} at domain ${run.first + 1}/${steps.length} (${steps[run.first].domain})`);
  }
  return run;
}

/** Images in the stream's first domain (the protocol record); null when the source cannot say cheaply. */
async function imagesPerDomain(source: DomainSource): Promise<number | null> {
  const first = source.names[0];
  if (first === undefined) return null;
  try {
    if (source.count) return await source.count(first);
    if (source.open) return (await source.open(first)).n;
  } catch {
    // a missing domain is reported where it is read
  }
  return null;
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
