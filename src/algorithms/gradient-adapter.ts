/**
 * Machinery shared by the gradient-based methods (Tent, ETA, EATA): model configuration
 * (docs/methods.md#configuration), the one-forward adaptation step with MECTA's cache-stopping
 * rules (docs/mecta-norm.md#cache-stopping), optimizer wiring (docs/methods.md#optimiser) and the
 * configure-time snapshot used by `reset()` / `episodic`.
 */
import { tf } from '../tf.js';
import type { Classifier, MectaOptions, NormLayer } from '../models/types.js';
import type { AdaptOptions } from './types.js';
import { createOptimizer, type Optimizer, type OptimizerOptions } from './optim.js';
import { optimizerBytes, tensorBytes } from './state-bytes.js';
import { CtaError } from '../util/errors.js';
import { moduleOf, nLayerFilter, TRAIN_ADAPTERS, trainingParameters } from './param-select.js';
import { isAdapterHost, type AdapterSet } from '../models/injection.js';
import { prepareModules } from '../adapters/teacher.js';

/**
 * The MECTA options the model currently runs with, needed to switch back to 'mecta' after a
 * temporary mode change (EATA's Fisher, docs/mecta-norm.md#standard-bn-mode). The Classifier
 * contract has no getter, so this reads an optional `mectaOptions` property when the
 * implementation exposes one.
 */
export function currentMectaOptions(model: Classifier): MectaOptions {
  const opts = model.mectaOptions;
  if (!opts) {
    throw new CtaError('cannot restore MECTA mode: the model does not expose its MECTA options', 1);
  }
  return opts;
}

/** The optimizer hyper-parameters of AdaptOptions (unset ones are PyTorch's defaults). */
export function optimizerOptions(opts: AdaptOptions): OptimizerOptions {
  return {
    lr: opts.lr,
    momentum: opts.momentum,
    dampening: opts.dampening,
    nesterov: opts.nesterov,
    weightDecay: opts.weightDecay,
    beta1: opts.adamBeta1,
    beta2: opts.adamBeta2,
    eps: opts.adamEps,
  };
}

/** Optimizer state keys end in the flat parameter index (optim.ts); saved state uses the name. */
const INDEX_SUFFIX = /^(.*)\.(\d+)$/;

/** Per-batch outcome of {@link GradientAdapter.step}. */
export interface AdaptStepOutput {
  logits: tf.Tensor2D;
  updated: boolean;
}

/**
 * Decides, given the logits of the forward (inside the gradient tape), the loss to minimise, or
 * null when no update should happen for this batch (EATA with no selected sample).
 */
export type LossFn = (logits: tf.Tensor2D) => tf.Scalar | null;

/** Outcome of {@link GradientAdapter.grads}: one forward and, when a step is wanted, its backward. */
export interface AdaptGrads {
  /** Logits of the forward (computed before any update); the caller disposes them. */
  logits: tf.Tensor2D;
  /**
   * d loss / d params[i] (null: the loss does not reach the parameter, a zero gradient), or null
   * when no step should happen (the loss function returned null, or no MECTA layer caches). The
   * caller disposes them ({@link disposeGrads}); `apply` does not.
   */
  grads: (tf.Tensor | null)[] | null;
  /**
   * Per trainable norm layer (`GradientAdapter.layers`): fully matched in this forward (MECTA
   * mode, no cache kept, docs/mecta-norm.md#matched-updates), so `apply` gives its parameters no
   * gradient.
   */
  matched: boolean[];
}

export function disposeGrads(grads: ReadonlyArray<tf.Tensor | null> | null): void {
  if (grads) for (const g of grads) g?.dispose();
}

/**
 * Owns the parameters of a model that `requiresGrad` selected (norm-layer affines by default,
 * docs/methods.md#configuration; the last N BatchNorm layers with `nLayer`, MECTA's filter=N;
 * any conv/linear/embedding the method chose) and their optimizer. One `step` = one forward,
 * the prediction from that forward (pre-update, docs/methods.md#configuration), and at most one
 * optimizer step. `step` is `grads` then `apply`; a method that needs several forward/backward
 * passes per batch (e.g. SAM's perturbed second gradient) calls the two itself.
 */
export class GradientAdapter {
  /** Trainable norm layers, module order (MECTA's matched-layer rule and cache stopping). */
  readonly layers: readonly NormLayer[];
  /** The trained variables, state_dict order (norm-only: [w0, b0, w1, b1, …] as before). */
  readonly params: readonly tf.Variable[];
  /** PyTorch names of `params` (`Classifier.parameters()` names). */
  readonly keys: readonly string[];
  /** Per parameter: index into `layers` of its norm layer, or −1 (not a norm-layer parameter). */
  readonly layerOf: readonly number[];
  /** Whether anything but norm-layer affines trains (those always back-propagate). */
  private readonly nonNorm: boolean;
  readonly optimizer: Optimizer;
  /**
   * Whether parameter i has ever received a gradient. Models PyTorch 1.12, where `.grad` stays
   * None until the first backward that reaches the parameter and is zero-filled (not None) by
   * `zero_grad()` afterwards: only then does a matched layer take a momentum-only step
   * (docs/mecta-norm.md#matched-updates).
   */
  private hadGrad: boolean[];
  private initialModel: Map<string, tf.Tensor>;
  /** The attached module set (--adapt-params, docs/adapters.md), whose parameters are then the trained ones. */
  private readonly adapters: AdapterSet | null;
  private initialAdapters: Map<string, tf.Tensor> | null;
  /** The batch `beforeStep` last ran on, until `apply` (SAR's second pass on the same batch does not repeat it). */
  private prepared: tf.Tensor4D | null = null;

  constructor(
    readonly model: Classifier,
    readonly opts: AdaptOptions,
    algName: string,
  ) {
    this.adapters = isAdapterHost(model) ? model.adapters : null;
    if (this.adapters) {
      // A module set replaces every method's own choice: exactly its parameters train.
      if (opts.nLayer !== undefined && opts.nLayer !== null) throw new CtaError(`--n-layer chooses BatchNorm affines to train; it cannot be combined with --adapt-params ${this.adapters.kind}`);
      model.requiresGrad(TRAIN_ADAPTERS);
    } else if (opts.nLayer !== undefined && opts.nLayer !== null) model.requiresGrad(nLayerFilter(model, opts.nLayer));
    const selected = trainingParameters(model);
    if (selected.length === 0) {
      throw new CtaError(`${algName} needs trainable parameters, but no norm layer is trainable and no other parameter requires grad`);
    }
    this.layers = model.normLayers.filter((l) => l.trainable);
    const layerIndex = new Map(this.layers.map((l, i) => [l.name, i]));
    this.params = selected.map((p) => p.variable!);
    this.keys = selected.map((p) => p.name);
    this.layerOf = selected.map((p) => (p.kind === 'norm' ? (layerIndex.get(moduleOf(p.name)) ?? -1) : -1));
    this.nonNorm = selected.some((p) => p.kind !== 'norm');
    this.optimizer = createOptimizer(opts.optimizer, this.params, optimizerOptions(opts));
    this.hadGrad = this.params.map(() => false);
    this.initialModel = model.stateDict();
    this.initialAdapters = this.adapters?.saveState() ?? null;
  }

  /**
   * Algorithm.stateBytes of what the adapter holds: the optimizer's slots and the configure-time
   * snapshot `restore()` reloads (docs/memory.md#method-state).
   */
  stateBytes(): { optimizer: number; snapshot: number } {
    return { optimizer: optimizerBytes(this.optimizer), snapshot: tensorBytes(this.initialModel.values()) };
  }

  /** Marks every parameter as having a (zeroed) gradient, as after EATA's Fisher pass in 1.12. */
  markAllHadGrad(): void {
    this.hadGrad = this.params.map(() => true);
  }

  /** Re-takes the snapshot that `restore()` returns to (EATA: after the Fisher pass). */
  snapshot(): void {
    for (const t of this.initialModel.values()) t.dispose();
    this.initialModel = this.model.stateDict();
    if (this.initialAdapters) tf.dispose([...this.initialAdapters.values()]);
    this.initialAdapters = this.adapters?.saveState() ?? null;
  }

  /**
   * MECTA cache stopping (docs/mecta-norm.md#cache-stopping): in 'mecta' mode, whether any
   * trainable layer kept a cache in the last forward (`has_accum_bn_grad`). Outside 'mecta' every
   * trainable layer back-propagates.
   */
  anyLayerCaches(): boolean {
    if (this.model.normMode !== 'mecta' || this.nonNorm) return true;
    return this.layers.some((l) => l.last?.cached === true);
  }

  /**
   * The module set's per-batch preparation for `x` (`beforeStep`, once per batch; `grads` calls
   * it). A mean-teacher method calls it first with its teacher, which then decides for both
   * models (ViDA's scales from the EMA teacher, src/adapters/teacher.ts).
   */
  prepare(x: tf.Tensor4D, teacher?: Classifier): void {
    if (x === this.prepared) return;
    if (prepareModules(x, this.model, teacher)) this.prepared = x;
  }

  /**
   * Forward `x`, build the loss and back-propagate, without touching the parameters — or skip the
   * backward entirely when the loss function returns null or no MECTA layer caches. The backward
   * is skipped by returning a scalar that is not connected to the tape, so the engine finds no
   * path and runs nothing. A backward that runs sets the PyTorch `.grad` of every parameter of a
   * non-matched layer (`hadGrad`), whether or not the gradients are applied.
   */
  grads(x: tf.Tensor4D, lossFn: LossFn): AdaptGrads {
    this.prepare(x);
    // filled inside the taped function (a holder object, because TS does not track closures)
    const out: { logits?: tf.Tensor2D; wantStep: boolean } = { wantStep: false };
    let value: tf.Tensor;
    let grads: (tf.Tensor | undefined)[];
    try {
      ({ value, grads } = tf.engine().gradients(
        () => {
          const z = this.model.forward(x);
          out.logits = tf.keep(z);
          const loss = lossFn(z);
          if (loss === null || !this.anyLayerCaches()) return tf.scalar(0);
          out.wantStep = true;
          // A module set's own term (L2P's pull constraint, src/models/injection.ts).
          const aux = this.adapters?.auxLoss?.() ?? null;
          return aux ? (tf.add(loss, aux) as tf.Scalar) : loss;
        },
        this.params as tf.Variable[],
        undefined,
        true,
      ));
    } catch (err) {
      out.logits?.dispose();
      throw err;
    }
    value.dispose();
    const mecta = this.model.normMode === 'mecta';
    const matched = this.layers.map((l) => mecta && l.last?.cached !== true);
    if (!out.wantStep) {
      for (const g of grads) g?.dispose();
      return { logits: out.logits!, grads: null, matched };
    }
    this.layerOf.forEach((li, i) => {
      if (li < 0 || !matched[li]) this.hadGrad[i] = true;
    });
    // undefined = no path from the loss, i.e. a zero gradient
    return { logits: out.logits!, grads: grads.map((g) => g ?? null), matched };
  }

  /**
   * Optimizer step from `grads` with MECTA's matched-layer rule (docs/mecta-norm.md#matched-updates):
   * a matched layer's parameters get no gradient and move only by momentum ('momentum', once they
   * had a gradient) or not at all ('skip'). Returns whether a step ran (not when `grads.grads` is
   * null). Does not dispose the gradients.
   */
  apply(grads: Pick<AdaptGrads, 'grads' | 'matched'>): boolean {
    // the next step prepares again, even on the same batch tensor
    this.prepared = null;
    const g = grads.grads;
    if (!g) return false;
    if (g.length !== this.params.length || grads.matched.length !== this.layers.length) {
      throw new Error(`apply: ${g.length} gradients / ${grads.matched.length} layers for ${this.params.length} parameters / ${this.layers.length} layers`);
    }
    const stepGrads: (tf.Tensor | null)[] = [];
    const mask: boolean[] = [];
    this.layerOf.forEach((li, i) => {
      if (li < 0 || !grads.matched[li]) {
        stepGrads.push(g[i]);
        mask.push(true);
      } else {
        // requires_grad=False in the reference: no new gradient, even from EATA's Fisher term.
        stepGrads.push(null);
        mask.push(this.opts.matchedUpdate === 'momentum' && this.hadGrad[i]);
      }
    });
    this.optimizer.step(stepGrads, mask);
    return true;
  }

  /** `grads` then `apply`: one forward, at most one optimizer step. */
  step(x: tf.Tensor4D, lossFn: LossFn): AdaptStepOutput {
    const r = this.grads(x, lossFn);
    try {
      this.apply(r);
    } catch (err) {
      r.logits.dispose();
      throw err;
    } finally {
      disposeGrads(r.grads);
    }
    return { logits: r.logits, updated: r.grads !== null };
  }

  /**
   * Reloads the configure-time model state and clears the optimizer (the reference's
   * `load_model_and_optimizer`, used by `episodic`). MECTA per-run layer state is not touched.
   */
  restore(): void {
    this.model.loadStateDict(this.initialModel);
    if (this.initialAdapters) this.adapters!.loadState(this.initialAdapters);
    this.optimizer.clear();
  }

  /** `restore()` plus MECTA per-run layer state (the reference's `reset_all` / `reset_bn`). */
  resetAll(): void {
    this.restore();
    for (const l of this.model.normLayers) l.reset();
  }

  /**
   * Optimizer slots keyed by parameter name, `optim.<slot>.<PyTorch name>` (e.g.
   * `optim.sgd.momentum_buffer.stage_1.0.bn.weight`), so saved state does not depend on which
   * other parameters train; `optim.had_grad` is per parameter in `keys` order.
   */
  saveState(out: Map<string, tf.Tensor>): void {
    for (const [k, t] of this.optimizer.saveState()) {
      const m = INDEX_SUFFIX.exec(k);
      out.set(`optim.${m ? `${m[1]}.${this.keys[Number(m[2])]}` : k}`, t);
    }
    out.set('optim.had_grad', tf.tensor1d(this.hadGrad.map((h) => (h ? 1 : 0)), 'float32'));
  }

  loadState(state: Map<string, tf.Tensor>): void {
    const optim = new Map<string, tf.Tensor>();
    const index = new Map(this.keys.map((k, i) => [k, i]));
    for (const [k, t] of state) {
      if (!k.startsWith('optim.') || k === 'optim.had_grad') continue;
      const key = k.slice(6);
      // `<slot>.<name>` → `<slot>.<index>`; older state saved the index itself.
      // The longest name that ends the key: 'bn1.weight' is also the tail of 'block1.layer.0.bn1.weight'.
      let name: string | undefined;
      for (const n of this.keys) if (key.endsWith(`.${n}`) && n.length > (name?.length ?? -1)) name = n;
      optim.set(name !== undefined ? `${key.slice(0, -name.length - 1)}.${index.get(name)}` : key, t);
    }
    this.optimizer.loadState(optim);
    const had = state.get('optim.had_grad');
    if (had) {
      const v = had.dataSync();
      if (v.length !== this.params.length) throw new CtaError('algorithm state: optim.had_grad has the wrong length');
      this.hadGrad = Array.from(v, (x) => x !== 0);
    } else {
      this.hadGrad = this.params.map((_, i) => this.optimizer.hasState(i));
    }
  }

  dispose(): void {
    this.optimizer.dispose();
    for (const t of this.initialModel.values()) t.dispose();
    this.initialModel.clear();
    if (this.initialAdapters) tf.dispose([...this.initialAdapters.values()]);
    this.initialAdapters = null;
  }
}
