/**
 * The injection point for parameter-efficient modules (docs/adapters.md): a model lists the places
 * where a module may change its computation (`AdapterSite`s) and, once a module set is attached
 * with `setAdapters`, calls the set's hooks there on every forward. The set's parameters are not
 * part of the PyTorch state_dict: they are listed by `Classifier.parameters()` with kind
 * 'adapter' (so every gradient method selects them the usual way, src/algorithms/param-select.ts)
 * and saved through the set's own `saveState` (checkpoints, `--save-adapted`).
 *
 * Every hook runs inside the model's forward (and so inside its tf.tidy and the gradient tape);
 * it returns new tensors and must not keep any. A hook that is absent leaves its site unchanged.
 */
import type { tf } from '../tf.js';
import type { ModelParameter } from './types.js';

/**
 * A linear layer (ViT: `blocks.i.attn.qkv` / `attn.proj` / `mlp.fc1` / `mlp.fc2`, the head).
 * `role` says which; the fused qkv output's columns are [q | k | v], `outFeatures / 3` each
 * (timm's layout).
 */
export interface LinearSite {
  readonly kind: 'linear';
  /** Module path, e.g. 'blocks.3.attn.qkv'. */
  readonly name: string;
  /** Transformer block index; −1 outside the blocks (the head). */
  readonly block: number;
  readonly role: 'qkv' | 'proj' | 'fc1' | 'fc2' | 'head';
  readonly inFeatures: number;
  readonly outFeatures: number;
}

/** A 1×1 convolution of a CNN (ResNeXt / WRN / ResNet-50 bottlenecks, projection shortcuts). */
export interface ConvSite {
  readonly kind: 'conv1x1';
  /** Module path, e.g. 'stage_1.0.conv_reduce'. */
  readonly name: string;
  /** Index of the residual block in forward order. */
  readonly block: number;
  /** A bottleneck's first 1×1 ('reduce'), its last ('expand'), or a projection shortcut. */
  readonly role: 'reduce' | 'expand' | 'shortcut';
  readonly inChannels: number;
  readonly outChannels: number;
  readonly stride: number;
}

/**
 * A transformer sub-layer's output before its residual add: `blocks.i.attn` (after attn.proj) and
 * `blocks.i.mlp` (after mlp.fc2), [N, T, D] (Houlsby et al. 2019 place their adapters here).
 */
export interface BranchSite {
  readonly kind: 'branch';
  /** 'blocks.i.attn' or 'blocks.i.mlp'. */
  readonly name: string;
  readonly block: number;
  readonly role: 'attn' | 'mlp';
  readonly dim: number;
}

/**
 * The token sequence entering block `block` ([N, T, D]; block 0 = after cls_token + pos_embed).
 * `tokens` is the model's own count (1 + grid²); a hook may return more (prompts) or the same
 * number; the blocks accept any T. Token 0 must stay the class token unless `pool` is given.
 */
export interface TokenSite {
  readonly kind: 'tokens';
  readonly name: string;
  readonly block: number;
  readonly dim: number;
  readonly tokens: number;
}

export type AdapterSite = LinearSite | ConvSite | BranchSite | TokenSite;

/** What the model passes to the per-forward hooks. */
export interface ForwardContext {
  /** The forward's input images (NHWC in [0, 1]); do not dispose. */
  readonly input: tf.Tensor4D;
  readonly batch: number;
  /**
   * The class-token features [N, D] of `input` with every hook off (the pretrained model's
   * forward: L2P's query), from the model the set is attached to. Lazy: runs only when called; a
   * new tensor the caller disposes (it is taped like any op: wrap it to stop gradients).
   */
  baseFeatures(): tf.Tensor2D;
}

/** The hooks a module set implements (any subset). */
export interface AdapterHooks {
  /** Called once at the start of every forward, before any other hook (e.g. L2P's query). */
  begin?(ctx: ForwardContext): void;
  /** y = base(x) of a linear site, [rows, in] → [rows, out]; returns the adapted output. */
  linear?(site: LinearSite, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D;
  /** y = conv1x1(x) of a CNN, NHWC; returns the adapted output. */
  conv?(site: ConvSite, x: tf.Tensor4D, y: tf.Tensor4D): tf.Tensor4D;
  /** A sub-layer output h (before the residual add); returns its replacement. */
  branch?(site: BranchSite, h: tf.Tensor3D): tf.Tensor3D;
  /** The tokens entering a block; returns the sequence the block sees. */
  tokens?(site: TokenSite, x: tf.Tensor3D, ctx: ForwardContext): tf.Tensor3D;
  /**
   * The head's input from the final-normed tokens [N, T, D]; null = the model's own pooling
   * (class token). L2P pools the prompt tokens.
   */
  pool?(normed: tf.Tensor3D, ctx: ForwardContext): tf.Tensor2D | null;
  /** Called once at the end of every forward (also when it throws): drop per-forward state. */
  end?(): void;
}

/** A module set: the hooks plus the state it owns. */
export interface AdapterSet extends AdapterHooks {
  /** The --adapt-params kind ('lora', 'adapter', ...). */
  readonly kind: string;
  /**
   * Its parameters with kind 'adapter', names unique within the model and not state_dict keys
   * (e.g. 'blocks.0.attn.qkv.lora_A.q.weight'). `requiresGrad` follows Classifier.requiresGrad.
   */
  parameters(): readonly ModelParameter[];
  /** Classifier.requiresGrad applied to the set's parameters (the model forwards the filter). */
  requiresGrad(filter: (p: { name: string; kind: 'adapter' }) => boolean): void;
  /**
   * Called by the gradient methods before each adaptation forward, outside the gradient tape
   * (ViDA's uncertainty-driven scale update, src/adapters/vida.ts); `x` is the test batch and
   * `predict` the forward of the model whose predictions decide: the set's own model, or a mean
   * teacher's (src/adapters/teacher.ts).
   */
  beforeStep?(x: tf.Tensor4D, predict: (x: tf.Tensor4D) => tf.Tensor2D): void;
  /**
   * Takes the per-batch state `beforeStep` decided (not parameters: ViDA's scales) from `from`,
   * a set of the same kind and sites, so that a student and its mean teacher agree on it.
   */
  copyStepState?(from: AdapterSet): void;
  /**
   * A term added to the method's loss inside the gradient tape, after the forward of the same
   * batch (L2P's pull constraint); null = nothing. Read only when the method takes a step.
   */
  auxLoss?(): tf.Scalar | null;
  /** Every tensor that defines the set (parameters and any buffer), by name (new tensors). */
  saveState(): Map<string, import('../tf.js').tf.Tensor>;
  /** Loads `saveState()`'s names and shapes (all-or-nothing; CtaError on a mismatch). */
  loadState(state: Map<string, import('../tf.js').tf.Tensor>): void;
  /** A deep copy with its own variables and the same trainable flags (Classifier.clone). */
  clone(): AdapterSet;
  dispose(): void;
}

/** What a model with an injection point implements besides Classifier. */
export interface AdapterHost {
  /** Every site in forward order. */
  adapterSites(): readonly AdapterSite[];
  /**
   * Attaches a module set (the model owns it from then on and disposes it with itself, or when
   * another set replaces it); null detaches and disposes the current one.
   */
  setAdapters(set: AdapterSet | null): void;
  readonly adapters: AdapterSet | null;
}

/** Whether a model has an injection point. */
export function isAdapterHost(model: object): model is AdapterHost {
  return typeof (model as Partial<AdapterHost>).setAdapters === 'function' && typeof (model as Partial<AdapterHost>).adapterSites === 'function';
}
