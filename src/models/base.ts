/**
 * What both CIFAR classifiers share: building layers from a PyTorch state_dict in module order,
 * the norm-layer list and its mode/trainable switches, MECTA's pruning choice, and stateDict /
 * loadStateDict under PyTorch key names and layouts (NCHW/OIHW/[out,in]).
 */
import { tf } from '../tf.js';
import { CtaError, listSome } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import type { StateDict } from '../io/types.js';
import type { Classifier, ClassifierOutput, MectaOptions, ModelParameter, NormLayer, NormMode, NormModeOptions, ParamFilter, ParamKind } from './types.js';
import { BatchNormLayer } from './batch-norm.js';
import type { AdapterHooks, AdapterSet, AdapterSite } from './injection.js';
import { CacheBudget, type BudgetMode } from './cache-budget.js';
import { withoutSideEffects } from './norm-policy.js';
import { Conv2d, type Conv2dSpec } from './ops/conv.js';
import { Linear } from './ops/linear.js';
import { rawToTensor, usingTemps, type WeightOptions } from './ops/weights.js';

/** One state_dict entry: its PyTorch shape, a getter (new tensor, PyTorch layout) and a setter. */
export interface StateEntry {
  key: string;
  shape: number[];
  get(): tf.Tensor;
  set(value: tf.Tensor): void;
}

/** A conv filter / linear weight or bias held in a tf.Variable (models built with `trainWeights`). */
export interface TrainableWeight {
  /** State-dict key, e.g. 'stage_1.0.conv_conv.weight' (the variable's layout may differ: HWIO, [in, out]). */
  key: string;
  variable: tf.Variable;
  /** True for conv/linear weights, false for biases (weight decay applies to weights only). */
  isWeight: boolean;
}

/** Per-channel input normalisation (x − mean)/std, e.g. RobustBench AugMix's mu/sigma buffers. */
export interface InputNorm {
  mean: readonly number[];
  std: readonly number[];
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
const fmt = (s: readonly number[]) => `[${s.join(',')}]`;

/** Something whose parameters train or not as one (a layer: its weight and bias switch together). */
export interface GradSwitch {
  get(): boolean;
  set(on: boolean): void;
}

interface ParamSlot {
  name: string;
  kind: ParamKind;
  shape: readonly number[];
  owner: GradSwitch;
  variable(): tf.Variable | null;
  toTorch(t: tf.Tensor): tf.Tensor;
}

const sameLayout = (t: tf.Tensor) => t.clone();
/** HWIO conv filter → PyTorch OIHW. */
export const hwioToTorch = (t: tf.Tensor) => tf.transpose(t, [3, 2, 0, 1]);
/** Linear weight [in, out] → PyTorch [out, in]. */
export const inOutToTorch = (t: tf.Tensor) => tf.transpose(t);

/**
 * The model's parameters in state_dict order (Classifier.parameters / requiresGrad), each tied to
 * the layer that owns it, so that choosing what trains switches the layer between its trainable
 * form (weight as an op input, weight gradient returned, input saved) and its frozen,
 * memory-economic form (docs/memory.md).
 */
export class ParamTable {
  private readonly slots: ParamSlot[] = [];

  add(slot: ParamSlot): void {
    this.slots.push(slot);
  }

  /** A conv layer's filter (variable layout HWIO). */
  addConv(name: string, conv: Conv2d, kind: ParamKind = 'conv'): void {
    const owner = { get: () => conv.trainable, set: (on: boolean) => conv.setRequiresGrad(on) };
    this.add({ name, kind, shape: conv.weightShape, owner, variable: () => conv.weightVariable, toTorch: hwioToTorch });
  }

  /** A norm layer's affine weight and bias (always variables; `trainable` is the switch). */
  addNorm(layer: NormLayer): void {
    const owner = { get: () => layer.trainable, set: (on: boolean) => (layer.trainable = on) };
    const shape = [layer.numFeatures];
    this.add({ name: `${layer.name}.weight`, kind: 'norm', shape, owner, variable: () => layer.weight, toTorch: sameLayout });
    this.add({ name: `${layer.name}.bias`, kind: 'norm', shape, owner, variable: () => layer.bias, toTorch: sameLayout });
  }

  /** A Linear layer's weight (variable layout [in, out]) and bias. */
  addLinear(prefix: string, lin: Linear, kind: ParamKind = 'linear'): void {
    const owner = { get: () => lin.trainable, set: (on: boolean) => lin.setRequiresGrad(on) };
    const vars = () => lin.variables;
    this.add({ name: `${prefix}.weight`, kind, shape: [lin.outFeatures, lin.inFeatures], owner, variable: () => vars()?.weight ?? null, toTorch: inOutToTorch });
    if (lin.hasBias) {
      this.add({ name: `${prefix}.bias`, kind, shape: [lin.outFeatures], owner, variable: () => vars()?.bias ?? null, toTorch: sameLayout });
    }
  }

  list(): ModelParameter[] {
    return this.slots.map((s) => {
      const on = s.owner.get();
      return { name: s.name, kind: s.kind, shape: s.shape, requiresGrad: on, variable: s.variable(), toTorch: s.toTorch };
    });
  }

  /** Every owner trains iff the filter selects one of its parameters (PyTorch requires_grad_). */
  requiresGrad(filter: ParamFilter): void {
    const want = new Map<GradSwitch, boolean>();
    for (const s of this.slots) want.set(s.owner, (want.get(s.owner) ?? false) || filter({ name: s.name, kind: s.kind }));
    for (const [owner, on] of want) owner.set(on);
  }

  /** The names of the parameters that train (clone() copies them). */
  trainingNames(): Set<string> {
    return new Set(this.slots.filter((s) => s.owner.get()).map((s) => s.name));
  }

  /** Conv/linear variables (what `trainableWeights()` lists), state_dict order. */
  weightVariables(): TrainableWeight[] {
    const out: TrainableWeight[] = [];
    for (const s of this.slots) {
      if (s.kind === 'norm') continue;
      const v = s.variable();
      if (v) out.push({ key: s.name, variable: v, isWeight: !s.name.endsWith('.bias') });
    }
    return out;
  }
}

export function isBatchCounter(key: string): boolean {
  return key === 'num_batches_tracked' || key.endsWith('.num_batches_tracked');
}

export abstract class BaseClassifier implements Classifier {
  abstract readonly arch: string;
  abstract readonly numClasses: number;
  readonly inputShape: readonly [number, number, number] = [32, 32, 3];

  private readonly norms: BatchNormLayer[] = [];
  private readonly entries: StateEntry[] = [];
  private readonly owned: { dispose(): void }[] = [];
  private mode: NormMode = 'source';
  private mecta: MectaOptions | null = null;
  private chooser: ((layer: string, channels: number) => Int32Array) | null = null;
  /** Input normalisation as kept [3] tensors: mean and 1/std. */
  private inputMean: tf.Tensor1D | null = null;
  private inputInvStd: tf.Tensor1D | null = null;
  private inputStats: { mean: number[]; std: number[] } | null = null;
  private disposed = false;
  /** The raw weights while building; released by finishBuild(). */
  private sd: StateDict | null;
  /** Every parameter, state_dict order (Classifier.parameters). */
  private readonly params = new ParamTable();

  /** `weightOpts.trainable`: conv filters and linear weights become tf.Variables (source training). */
  protected constructor(
    sd: StateDict,
    private readonly rng: Rng,
    private readonly weightOpts: WeightOptions = {},
  ) {
    this.sd = sd;
  }

  private source(): StateDict {
    if (!this.sd) throw new Error('model layers can only be built in the constructor');
    return this.sd;
  }

  // ------------------------------------------------------------------------------------------
  // Builders (call in state_dict order: stateDict() lists entries in registration order)
  // ------------------------------------------------------------------------------------------

  private raw(key: string): tf.Tensor {
    const t = this.source().get(key);
    if (!t) throw new CtaError(`weights: missing key ${key}`); // registry validation runs first
    return rawToTensor(t, key);
  }

  /**
   * Root buffers `mu`/`sigma` [1,3,1,1] (RobustBench AugMix: x ← (x − mu)/sigma before the stem).
   * They come first in PyTorch's state_dict (root buffers precede child modules), so call this
   * before building any layer. Without them, `fallback` (if any) normalises the input instead.
   */
  protected inputNormalization(fallback: InputNorm | null | undefined): void {
    const sd = this.source();
    if (sd.has('mu') || sd.has('sigma')) {
      this.setInputNorm(Array.from(sd.get('mu')!.data), Array.from(sd.get('sigma')!.data));
      for (const [key, which] of [['mu', 'mean'], ['sigma', 'std']] as const) {
        this.entries.push({
          key,
          shape: [1, 3, 1, 1],
          get: () => tf.tensor4d(Float32Array.from(this.inputStats![which]), [1, 3, 1, 1]),
          set: (value) => {
            const next = { ...this.inputStats!, [which]: Array.from(value.dataSync()) };
            this.setInputNorm(next.mean, next.std);
          },
        });
      }
    } else if (fallback) {
      this.setInputNorm(fallback.mean, fallback.std);
    }
  }

  private setInputNorm(mean: readonly number[], std: readonly number[]): void {
    if (mean.length !== 3 || std.length !== 3 || std.some((v) => !(v > 0))) {
      throw new CtaError(`input normalisation needs 3 means and 3 positive stds, got ${fmt(mean)} / ${fmt(std)}`);
    }
    this.inputMean?.dispose();
    this.inputInvStd?.dispose();
    this.inputStats = { mean: [...mean], std: [...std] };
    this.inputMean = tf.keep(tf.tensor1d(Float32Array.from(mean)));
    this.inputInvStd = tf.keep(tf.tensor1d(Float32Array.from(std, (v) => 1 / v)));
  }

  /** Registers something the model disposes with itself (e.g. folded inference filters). */
  protected own<T extends { dispose(): void }>(o: T): T {
    this.owned.push(o);
    return o;
  }

  protected conv(prefix: string, spec: Conv2dSpec): Conv2d {
    const key = `${prefix}.weight`;
    const w = this.raw(key) as tf.Tensor4D;
    const conv = usingTemps([w], () => new Conv2d(w, spec, this.weightOpts));
    this.owned.push(conv);
    this.params.addConv(key, conv);
    this.entries.push({
      key,
      shape: conv.weightShape,
      get: () => conv.weightOIHW(),
      set: (v) => conv.setWeight(v as tf.Tensor4D),
    });
    return conv;
  }

  protected norm(prefix: string): BatchNormLayer {
    const params = {
      weight: this.raw(`${prefix}.weight`) as tf.Tensor1D,
      bias: this.raw(`${prefix}.bias`) as tf.Tensor1D,
      runningMean: this.raw(`${prefix}.running_mean`) as tf.Tensor1D,
      runningVar: this.raw(`${prefix}.running_var`) as tf.Tensor1D,
    };
    const layer = usingTemps(
      Object.values(params),
      () => new BatchNormLayer(prefix, params, (name, channels, count) => this.removedChannels(name, channels, count)),
    );
    this.norms.push(layer);
    this.owned.push(layer);
    this.params.addNorm(layer);
    const c = layer.numFeatures;
    const vars: [string, tf.Variable][] = [
      ['weight', layer.weight],
      ['bias', layer.bias],
      ['running_mean', layer.runningMean],
      ['running_var', layer.runningVar],
    ];
    for (const [suffix, v] of vars) {
      this.entries.push({ key: `${prefix}.${suffix}`, shape: [c], get: () => v.clone(), set: (t) => v.assign(t) });
    }
    return layer;
  }

  protected linear(prefix: string): Linear {
    const hasBias = this.source().has(`${prefix}.bias`);
    const w = this.raw(`${prefix}.weight`) as tf.Tensor2D;
    const b = hasBias ? (this.raw(`${prefix}.bias`) as tf.Tensor1D) : null;
    const lin = usingTemps(b ? [w, b] : [w], () => new Linear(w, b, this.weightOpts));
    this.owned.push(lin);
    this.params.addLinear(prefix, lin);
    this.entries.push({
      key: `${prefix}.weight`,
      shape: [lin.outFeatures, lin.inFeatures],
      get: () => lin.weightOutIn(),
      set: (v) => lin.setWeight(v as tf.Tensor2D),
    });
    if (hasBias) {
      this.entries.push({
        key: `${prefix}.bias`,
        shape: [lin.outFeatures],
        get: () => lin.biasValue()!,
        set: (v) => lin.setBias(v as tf.Tensor1D),
      });
    }
    return lin;
  }

  /** Drops the reference to the raw state dict once every layer is built. */
  protected finishBuild(): void {
    this.sd = null;
  }

  // ------------------------------------------------------------------------------------------
  // Forward helpers
  // ------------------------------------------------------------------------------------------

  protected checkInput(x: tf.Tensor4D): void {
    if (this.disposed) throw new CtaError(`${this.arch}: model used after dispose()`, 1);
    const [h, w, c] = this.inputShape;
    if (x.rank !== 4 || x.shape[1] !== h || x.shape[2] !== w || x.shape[3] !== c) {
      throw new CtaError(`${this.arch}: expected NHWC input [N,${h},${w},${c}], got ${fmt(x.shape)}`);
    }
  }

  /** (x − mean)/std when the model owns an input normalisation, else x itself. */
  protected normalizeInput(x: tf.Tensor4D): tf.Tensor4D {
    if (!this.inputMean || !this.inputInvStd) return x;
    return tf.mul(tf.sub(x, this.inputMean), this.inputInvStd) as tf.Tensor4D;
  }

  /** Logits: `forwardFeatures` without the features. */
  forward(x: tf.Tensor4D): tf.Tensor2D {
    return tf.tidy(() => this.forwardFeatures(x).logits);
  }

  abstract forwardFeatures(x: tf.Tensor4D): ClassifierOutput;

  /**
   * A new model of the same class and constructor options (the same Rng included) built from
   * `sd`, which has this model's stateDict() keys and layouts (used by clone()).
   */
  protected abstract rebuild(sd: StateDict): BaseClassifier;

  // ------------------------------------------------------------------------------------------
  // Classifier contract
  // ------------------------------------------------------------------------------------------

  get normLayers(): readonly NormLayer[] {
    return this.norms;
  }

  /** The concrete norm layers (same objects as `normLayers`). */
  get batchNormLayers(): readonly BatchNormLayer[] {
    return this.norms;
  }

  get normMode(): NormMode {
    return this.mode;
  }

  /** The input normalisation applied before the first layer (weights' mu/sigma or the fallback); null for none. */
  get inputNormalisation(): { mean: number[]; std: number[] } | null {
    return this.inputStats ? { mean: [...this.inputStats.mean], std: [...this.inputStats.std] } : null;
  }

  /** The MECTA options last set (kept while another mode is active, e.g. during EATA's Fisher pass). */
  get mectaOptions(): MectaOptions | null {
    return this.mecta;
  }

  setNormMode(mode: NormMode, options?: NormModeOptions): void {
    if (mode === 'mecta' && !options) throw new CtaError(`setNormMode('mecta') needs MECTA options`);
    for (const layer of this.norms) layer.setMode(mode, options);
    this.mode = mode;
    if (mode === 'mecta') this.mecta = { ...(options as MectaOptions) };
  }

  setPruneChooser(chooser: ((layer: string, channels: number) => Int32Array) | null): void {
    this.chooser = chooser;
  }

  /**
   * docs/memory.md#cache-budget: one budget shared by every BatchNorm layer. A forward of one
   * blank image without side effects and without a tape registers the layers' shapes in forward
   * order, so the first real forward can already be planned. Needs norm mode 'mecta'.
   */
  setCacheBudget(bytes: number | null, mode: BudgetMode = 'greedy'): CacheBudget | null {
    for (const l of this.norms) l.cacheBudget = null;
    if (bytes === null) return null;
    if (this.mode !== 'mecta') throw new CtaError(`--cache-budget-mb needs the MECTA norm layer (--accum-bn); the model is in norm mode '${this.mode}'`);
    const budget = new CacheBudget(bytes, mode);
    for (const l of this.norms) l.cacheBudget = budget;
    const [h, w, c] = this.inputShape;
    withoutSideEffects(this, () => tf.tidy(() => void this.forward(tf.zeros([1, h, w, c]) as tf.Tensor4D)));
    return budget;
  }

  /**
   * floor(C·q) removed channels per caching forward, from the chooser or the seeded Rng
   * (docs/mecta-norm.md#pruning).
   */
  private removedChannels(layer: string, channels: number, count: number): Int32Array {
    if (this.chooser) return this.chooser(layer, channels);
    // Like torch.randperm(C)[:n_rm]: a fresh permutation per layer and forward.
    return this.rng.permutation(channels).slice(0, count);
  }

  /**
   * The conv/linear variables (a model built with trainable weights, or whose convs/linears
   * `requiresGrad` selected), in module order. Source training (src/train) reads it.
   */
  trainableWeights(): readonly TrainableWeight[] {
    return this.params.weightVariables();
  }

  parameters(): readonly ModelParameter[] {
    const own = this.params.list();
    return this.adapterSet ? [...own, ...this.adapterSet.parameters()] : own;
  }

  requiresGrad(filter: ParamFilter): void {
    this.params.requiresGrad(filter);
    this.adapterSet?.requiresGrad(filter);
  }

  // ------------------------------------------------------------------------------------------
  // Injection point (src/models/injection.ts, docs/adapters.md): the 1×1 convs a subclass lists

  private adapterSet: AdapterSet | null = null;

  /** The sites in forward order (the subclass's 1×1 convs). */
  abstract adapterSites(): readonly AdapterSite[];

  get adapters(): AdapterSet | null {
    return this.adapterSet;
  }

  /** The hooks the forward calls (the attached set, or none). */
  protected get adapterHooks(): AdapterHooks | null {
    return this.adapterSet;
  }

  setAdapters(set: AdapterSet | null): void {
    if (set === this.adapterSet) return;
    this.adapterSet?.dispose();
    this.adapterSet = set;
  }

  trainableParams(): tf.Variable[] {
    return trainableNormParams(this.norms);
  }

  /**
   * Sets `trainable` on the layers selected by `filter` (all when omitted); other layers keep
   * their flag. Configure like docs/methods.md#configuration with setTrainable(false) then
   * setTrainable(true, f).
   */
  setTrainable(trainable: boolean, filter?: (layer: NormLayer) => boolean): void {
    setNormTrainable(this.norms, trainable, filter);
  }

  stateDict(): Map<string, tf.Tensor> {
    return readEntries(this.entries);
  }

  /**
   * Loads every entry (all-or-nothing: keys and shapes are checked before anything changes).
   * `num_batches_tracked` keys are accepted and ignored.
   */
  loadStateDict(sd: Map<string, tf.Tensor>): void {
    writeEntries(this.entries, sd, this.arch);
  }

  /**
   * Classifier.clone: the subclass rebuilds itself from the current stateDict() (every parameter
   * and buffer, input normalisation included) with its own constructor options, so the copy gets
   * fresh variables, folded filters and input-normalisation tensors; then the copy takes over the
   * model-level and per-layer state that is not in a state_dict.
   */
  clone(): BaseClassifier {
    if (this.disposed) throw new CtaError(`${this.arch}: model used after dispose()`, 1);
    const copy = this.rebuild(toRawStateDict(this.stateDict()));
    copy.mode = this.mode;
    copy.mecta = this.mecta ? { ...this.mecta } : null;
    copy.chooser = this.chooser;
    this.norms.forEach((layer, i) => copy.norms[i].copyStateFrom(layer));
    const training = this.params.trainingNames();
    copy.params.requiresGrad((p) => training.has(p.name));
    const mine = this.trainableWeights();
    copy.trainableWeights().forEach((w, i) => (w.variable.trainable = mine[i].variable.trainable));
    if (this.adapterSet) copy.setAdapters(this.adapterSet.clone());
    return copy;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const o of this.owned) o.dispose();
    this.setAdapters(null);
    this.inputMean?.dispose();
    this.inputInvStd?.dispose();
  }
}

/**
 * A stateDict() result as the raw float32 state dict the model constructors read (PyTorch
 * layouts, as a weight file would give them); disposes the tensors.
 */
export function toRawStateDict(sd: Map<string, tf.Tensor>): StateDict {
  const out: StateDict = new Map();
  try {
    for (const [key, t] of sd) {
      out.set(key, { dtype: 'float32', shape: t.shape.slice(), data: Float32Array.from(t.dataSync()) });
    }
  } finally {
    for (const t of sd.values()) t.dispose();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Shared by every Classifier (CNNs here, the ViT in vit.ts).

/** Affine weight/bias of the trainable norm layers, in module order. */
export function trainableNormParams(norms: readonly NormLayer[]): tf.Variable[] {
  const out: tf.Variable[] = [];
  for (const layer of norms) if (layer.trainable) out.push(layer.weight, layer.bias);
  return out;
}

/** Sets `trainable` on the layers `filter` selects (all when omitted); the others keep theirs. */
export function setNormTrainable(norms: readonly NormLayer[], trainable: boolean, filter?: (layer: NormLayer) => boolean): void {
  for (const layer of norms) if (!filter || filter(layer)) layer.trainable = trainable;
}

/** Current values of every entry under its PyTorch key (new tensors the caller disposes). */
export function readEntries(entries: readonly StateEntry[]): Map<string, tf.Tensor> {
  const out = new Map<string, tf.Tensor>();
  for (const e of entries) out.set(e.key, e.get());
  return out;
}

/**
 * Loads every entry, all-or-nothing: keys and shapes are checked before anything changes, and
 * one CtaError lists what is missing, unexpected or wrongly shaped. `num_batches_tracked` keys
 * are accepted and ignored.
 */
export function writeEntries(entries: readonly StateEntry[], sd: Map<string, tf.Tensor>, arch: string): void {
  const expected = new Set(entries.map((e) => e.key));
  const missing: string[] = [];
  const wrong: string[] = [];
  for (const e of entries) {
    const t = sd.get(e.key);
    if (!t) missing.push(e.key);
    else if (!sameShape(t.shape, e.shape)) wrong.push(`${e.key} ${fmt(t.shape)} expected ${fmt(e.shape)}`);
  }
  const unexpected = [...sd.keys()].filter((k) => !expected.has(k) && !isBatchCounter(k));
  if (missing.length + wrong.length + unexpected.length > 0) {
    const parts: string[] = [];
    if (missing.length) parts.push(`${missing.length} missing (${listSome(missing, 4)})`);
    if (unexpected.length) parts.push(`${unexpected.length} unexpected (${listSome(unexpected, 4)})`);
    if (wrong.length) parts.push(`${wrong.length} wrong shape (${listSome(wrong, 3)})`);
    throw new CtaError(`loadStateDict: state does not match ${arch}: ${parts.join(', ')}`);
  }
  for (const e of entries) e.set(sd.get(e.key)!);
}
