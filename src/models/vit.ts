/**
 * Vision Transformer with timm's `vit_base_patch16_224` key names (docs/data-formats.md#vit-b16),
 * NHWC input in [0, 1]:
 *
 *   (x − mean)/std → patch_embed.proj (conv k = s = patch, bias) → tokens [N, g², D]
 *   → prepend cls_token, + pos_embed
 *   → blocks.i: x += attn.proj(MHSA(attn.qkv(norm1(x))));  x += mlp.fc2(GELU(mlp.fc1(norm2(x))))
 *   → norm → token 0 → head
 *
 * Everything timm does for this model: LayerNorm ε = 1e-6, exact (erf) GELU, q scaled by
 * head_dim^−½ before q·kᵀ, class-token pooling, no layer scale / q-k norm / register tokens.
 * Width D, depth, MLP width, patch size, token grid and classes are read off the state_dict shapes
 * (so reduced test models load with the same code); the head count is not in the weights and comes
 * from the model config (12 for ViT-B), as does the input normalisation (timm's augreg weights use
 * mean = std = 0.5, stored with the config rather than typed on a command line).
 *
 * The norm layers are the 2·depth + 1 LayerNorms; they are what Tent / ETA / EATA adapt.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { StateDict } from '../io/types.js';
import type { Classifier, ClassifierOutput, MectaOptions, ModelParameter, NormLayer, NormMode, NormModeOptions, ParamFilter } from './types.js';
import type { InputNorm } from './base.js';
import type { AdapterHooks, AdapterHost, AdapterSet, AdapterSite, BranchSite, ForwardContext, LinearSite, TokenSite } from './injection.js';
import { ParamTable, readEntries, setNormTrainable, toRawStateDict, trainableNormParams, writeEntries, type StateEntry } from './base.js';
import { Conv2d } from './ops/conv.js';
import { GradCheckpoint } from './grad-checkpoint.js';
import { customOp } from './ops/custom-op.js';
import { add, reshape } from './ops/lean.js';
import { Linear } from './ops/linear.js';
import { rawToTensor, usingTemps } from './ops/weights.js';
import { LayerNormLayer } from './layer-norm.js';
import { UNKNOWN, childCount, dimOf } from './infer.js';
import { splitChannels, unstackRows } from './kernels.js';

/** What a ViT needs beyond the weights (timm's model config). */
export interface VitConfig {
  heads: number;
  inputNorm: InputNorm;
  /** LayerNorm ε (timm ViT: 1e-6). */
  eps: number;
}

/** timm `vit_base_patch16_224` (augreg): 12 heads, mean = std = 0.5, ε = 1e-6. */
export const VIT_B16_CONFIG: Readonly<VitConfig> = Object.freeze({
  heads: 12,
  inputNorm: { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] },
  eps: 1e-6,
});

export interface VitArch {
  dim: number;
  depth: number;
  mlpDim: number;
  patch: number;
  /** Tokens per side of the patch grid (pos_embed has grid² + 1 tokens). */
  grid: number;
  numClasses: number;
  qkvBias: boolean;
}

export function inferVit(sd: StateDict): VitArch {
  const dim = dimOf(sd, ['patch_embed.proj.weight', 'cls_token', 'norm.weight'], 0);
  const clsDim = dimOf(sd, ['cls_token'], 2);
  const tokens = dimOf(sd, ['pos_embed'], 1);
  const grid = tokens === UNKNOWN ? UNKNOWN : Math.round(Math.sqrt(tokens - 1));
  return {
    dim: dim === UNKNOWN ? clsDim : dim,
    depth: childCount(sd, 'blocks.'),
    mlpDim: dimOf(sd, ['blocks.0.mlp.fc1.weight', 'blocks.0.mlp.fc1.bias'], 0),
    patch: dimOf(sd, ['patch_embed.proj.weight'], 2),
    grid: grid !== UNKNOWN && grid * grid + 1 === tokens ? grid : UNKNOWN,
    numClasses: dimOf(sd, ['head.weight', 'head.bias'], 0),
    qkvBias: sd.has('blocks.0.attn.qkv.bias'),
  };
}

/** Every state_dict key with its PyTorch shape, in timm's module order. */
export function vitExpectedKeys(a: VitArch): Map<string, number[]> {
  const d = a.dim;
  const out = new Map<string, number[]>();
  out.set('cls_token', [1, 1, d]);
  out.set('pos_embed', [1, a.grid === UNKNOWN ? UNKNOWN : a.grid * a.grid + 1, d]);
  out.set('patch_embed.proj.weight', [d, 3, a.patch, a.patch]);
  out.set('patch_embed.proj.bias', [d]);
  const ln = (p: string) => {
    out.set(`${p}.weight`, [d]);
    out.set(`${p}.bias`, [d]);
  };
  for (let i = 0; i < a.depth; i++) {
    const p = `blocks.${i}`;
    ln(`${p}.norm1`);
    out.set(`${p}.attn.qkv.weight`, [3 * d, d]);
    if (a.qkvBias) out.set(`${p}.attn.qkv.bias`, [3 * d]);
    out.set(`${p}.attn.proj.weight`, [d, d]);
    out.set(`${p}.attn.proj.bias`, [d]);
    ln(`${p}.norm2`);
    out.set(`${p}.mlp.fc1.weight`, [a.mlpDim, d]);
    out.set(`${p}.mlp.fc1.bias`, [a.mlpDim]);
    out.set(`${p}.mlp.fc2.weight`, [d, a.mlpDim]);
    out.set(`${p}.mlp.fc2.bias`, [d]);
  }
  ln('norm');
  out.set('head.weight', [a.numClasses, d]);
  out.set('head.bias', [a.numClasses]);
  return out;
}

// ---------------------------------------------------------------------------------------------
// GELU (exact, PyTorch nn.GELU() default): y = x·Φ(x), dy/dx = Φ(x) + x·φ(x). A custom op that
// saves only x; autodiff through erf would keep several intermediates of the MLP's widest tensor.

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);
let geluOp: ((x: tf.Tensor) => tf.Tensor) | null = null;

export function gelu<T extends tf.Tensor>(x: T): T {
  geluOp ??= customOp<tf.Tensor>(([input], save) => {
    save([input]);
    const cdf = tf.mul(tf.add(tf.erf(tf.mul(input, SQRT1_2)), 1), 0.5);
    return {
      value: tf.mul(input, cdf),
      gradFunc: (dy, [xs]) => {
        const phi = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), INV_SQRT_2PI);
        const cdfB = tf.mul(tf.add(tf.erf(tf.mul(xs, SQRT1_2)), 1), 0.5);
        return [tf.mul(dy, tf.add(cdfB, tf.mul(xs, phi)))];
      },
    };
  });
  return geluOp(x) as T;
}

// ---------------------------------------------------------------------------------------------
// Matrix products the WASM backend runs fast (docs/porting.md#matrix-products): a 2-D matMul with
// transposeB = true is ~14× slower than the same product with an explicitly transposed right
// operand, and a batched (rank-3, batch > 1) matMul ~13× slower than the same products as one 2-D
// matMul per batch entry (timings: docs/porting.md#measurements). tfjs's own matMul gradient uses
// both slow forms, so the linear layers and the attention core below have hand-written backwards
// that use only plain 2-D products.

/** A per-entry 2-D product of [B, m, k] and [B, k, n] (see above). */
function batchedMatMul(a: tf.Tensor3D, b: tf.Tensor3D): tf.Tensor3D {
  const as = unstackRows<tf.Tensor2D>(a);
  const bs = unstackRows<tf.Tensor2D>(b);
  return tf.stack(as.map((ai, i) => tf.matMul(ai, bs[i]))) as tf.Tensor3D;
}

const swapLast = (t: tf.Tensor3D) => tf.transpose(t, [0, 2, 1]) as tf.Tensor3D;

/**
 * softmax(q·kᵀ·scale)·v for q, k, v [B, T, d] (B = batch·heads). Saves q, k, v and the attention
 * map p; backward: dP = dO·vᵀ, dV = pᵀ·dO, dS = p ⊙ (dP − Σ_j dP⊙p), dQ = s·dS·k, dK = s·dSᵀ·q.
 */
let attentionOp: ((q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, scale: tf.Scalar) => tf.Tensor3D) | null = null;

export function attentionCore(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, scale: number): tf.Tensor3D {
  attentionOp ??= customOp<tf.Tensor3D>(([qi, ki, vi, si], save) => {
    const q3 = qi as tf.Tensor3D;
    const k3 = ki as tf.Tensor3D;
    const v3 = vi as tf.Tensor3D;
    const p = tf.softmax(batchedMatMul(tf.mul(q3, si) as tf.Tensor3D, swapLast(k3))) as tf.Tensor3D;
    save([q3, k3, v3, p, si]);
    return {
      value: batchedMatMul(p, v3),
      gradFunc: (dO, [qs, ks, vs, ps, sc]) => {
        const p3 = ps as tf.Tensor3D;
        const dP = batchedMatMul(dO, swapLast(vs as tf.Tensor3D));
        const dV = batchedMatMul(swapLast(p3), dO);
        const dS = tf.mul(p3, tf.sub(dP, tf.sum(tf.mul(dP, p3), -1, true))) as tf.Tensor3D;
        const dQ = tf.mul(batchedMatMul(dS, ks as tf.Tensor3D), sc);
        const dK = tf.mul(batchedMatMul(swapLast(dS), qs as tf.Tensor3D), sc);
        return [dQ, dK, dV, tf.zerosLike(sc)];
      },
    };
  }) as (q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, scale: tf.Scalar) => tf.Tensor3D;
  const s = tf.scalar(scale);
  return attentionOp(q, k, v, s);
}

/**
 * A Linear layer applied through a custom op whose input gradient is dy·Wᵀ with Wᵀ kept as a
 * constant (built on the first backward, dropped when the weight is replaced). Nothing is saved.
 */
class FastLinear {
  private transposed: tf.Tensor2D | null = null;
  private readonly op: (x: tf.Tensor2D) => tf.Tensor2D;

  constructor(readonly lin: Linear) {
    this.op = customOp<tf.Tensor2D>(([x]) => ({
      value: this.lin.apply(x as tf.Tensor2D),
      gradFunc: (dy) => {
        this.transposed ??= tf.keep(this.lin.weightOutIn());
        return [tf.matMul(dy, this.transposed)];
      },
    })) as (x: tf.Tensor2D) => tf.Tensor2D;
  }

  /**
   * Frozen: the lean op above. Trainable (`requiresGrad` selected the layer, e.g. cta-train's
   * source training): the Linear itself, whose trainable product has the plain-product backward
   * (ops/mat-mul.ts; docs/porting.md#matrix-products).
   */
  apply(x: tf.Tensor2D): tf.Tensor2D {
    if (!this.lin.trainable) return this.op(x);
    this.invalidate(); // the cached Wᵀ goes stale once the weight trains
    return this.lin.apply(x);
  }

  /** Call after the weight changed (loadStateDict). */
  invalidate(): void {
    this.transposed?.dispose();
    this.transposed = null;
  }

  dispose(): void {
    this.invalidate();
  }
}

// ---------------------------------------------------------------------------------------------


interface Block {
  /** Where a module set may act in this block (src/models/injection.ts), forward order. */
  sites: { tokens: TokenSite; qkv: LinearSite; proj: LinearSite; attn: BranchSite; fc1: LinearSite; fc2: LinearSite; mlp: BranchSite };
  norm1: LayerNormLayer;
  qkv: FastLinear;
  proj: FastLinear;
  norm2: LayerNormLayer;
  fc1: FastLinear;
  fc2: FastLinear;
}

export interface VitOptions {
  config?: Partial<VitConfig>;
}

const fmt = (s: readonly number[]) => `[${s.join(',')}]`;

export class VisionTransformer implements Classifier, AdapterHost {
  readonly arch = 'vit_b16';
  readonly numClasses: number;
  readonly inputShape: readonly [number, number, number];
  readonly architecture: VitArch;
  readonly config: VitConfig;
  readonly mectaOptions: MectaOptions | null = null;
  innerPassObserver: ((images: number) => void) | null = null;

  /** The input normalisation of the model config (timm's mean/std). */
  get inputNormalisation(): { mean: number[]; std: number[] } {
    return { mean: [...this.config.inputNorm.mean], std: [...this.config.inputNorm.std] };
  }

  private readonly norms: LayerNormLayer[] = [];
  private readonly entries: StateEntry[] = [];
  /** Every parameter, state_dict order (Classifier.parameters). */
  private readonly params = new ParamTable();
  private readonly owned: { dispose(): void }[] = [];
  private readonly blocks: Block[] = [];
  /** The blocks as one stage (docs/memory.md#gradient-checkpointing). */
  readonly gradCheckpoint: GradCheckpoint;
  private mode: NormMode = 'source';
  private disposed = false;
  private sd: StateDict | null;
  private clsToken!: tf.Tensor3D;
  private posEmbed!: tf.Tensor3D;
  private patchConv!: Conv2d;
  private patchBias!: tf.Tensor1D;
  private finalNorm!: LayerNormLayer;
  private head!: FastLinear;
  private inputMean!: tf.Tensor1D;
  private inputInvStd!: tf.Tensor1D;
  private readonly headDim: number;
  private readonly scale: number;

  /** `sd` must already match `vitExpectedKeys(arch)` (the registry checks it). */
  constructor(sd: StateDict, arch: VitArch, private readonly opts: VitOptions = {}) {
    this.sd = sd;
    this.architecture = arch;
    this.config = { ...VIT_B16_CONFIG, ...opts.config };
    const { heads, inputNorm } = this.config;
    if (!Number.isInteger(heads) || heads < 1 || arch.dim % heads !== 0) {
      throw new CtaError(`vit: width ${arch.dim} cannot be split into ${heads} attention heads (the model config's head count)`);
    }
    this.headDim = arch.dim / heads;
    this.scale = this.headDim ** -0.5;
    this.numClasses = arch.numClasses;
    const side = arch.grid * arch.patch;
    this.inputShape = [side, side, 3];
    try {
      if (inputNorm.mean.length !== 3 || inputNorm.std.length !== 3 || inputNorm.std.some((v) => !(v > 0))) {
        throw new CtaError(`vit: input normalisation needs 3 means and 3 positive stds`);
      }
      this.inputMean = tf.keep(tf.tensor1d(Float32Array.from(inputNorm.mean)));
      this.inputInvStd = tf.keep(tf.tensor1d(Float32Array.from(inputNorm.std, (v) => 1 / v)));
      // timm state_dict order: the root parameters, then patch_embed, blocks, norm, head.
      this.clsToken = this.constant('cls_token') as tf.Tensor3D;
      this.posEmbed = this.constant('pos_embed') as tf.Tensor3D;
      const w = this.raw('patch_embed.proj.weight') as tf.Tensor4D;
      this.patchConv = usingTemps([w], () => new Conv2d(w, { stride: arch.patch, pad: 0, groups: 1 }));
      this.owned.push(this.patchConv);
      const conv = this.patchConv;
      this.entries.push({ key: 'patch_embed.proj.weight', shape: conv.weightShape, get: () => conv.weightOIHW(), set: (v) => conv.setWeight(v as tf.Tensor4D) });
      this.params.addConv('patch_embed.proj.weight', conv, 'embed');
      this.patchBias = this.constant('patch_embed.proj.bias') as tf.Tensor1D;
      for (let i = 0; i < arch.depth; i++) {
        const p = `blocks.${i}`;
        const lin = (name: string, role: LinearSite['role'], inFeatures: number, outFeatures: number): LinearSite => ({ kind: 'linear', name: `${p}.${name}`, block: i, role, inFeatures, outFeatures });
        const d = arch.dim;
        this.blocks.push({
          sites: {
            tokens: { kind: 'tokens', name: p, block: i, dim: d, tokens: arch.grid * arch.grid + 1 },
            qkv: lin('attn.qkv', 'qkv', d, 3 * d),
            proj: lin('attn.proj', 'proj', d, d),
            attn: { kind: 'branch', name: `${p}.attn`, block: i, role: 'attn', dim: d },
            fc1: lin('mlp.fc1', 'fc1', d, arch.mlpDim),
            fc2: lin('mlp.fc2', 'fc2', arch.mlpDim, d),
            mlp: { kind: 'branch', name: `${p}.mlp`, block: i, role: 'mlp', dim: d },
          },
          norm1: this.layerNorm(`${p}.norm1`),
          qkv: this.linear(`${p}.attn.qkv`),
          proj: this.linear(`${p}.attn.proj`),
          norm2: this.layerNorm(`${p}.norm2`),
          fc1: this.linear(`${p}.mlp.fc1`),
          fc2: this.linear(`${p}.mlp.fc2`),
        });
      }
      this.gradCheckpoint = new GradCheckpoint(this, [arch.depth], this.blocks.map((_, i) => `blocks.${i}`));
      this.finalNorm = this.layerNorm('norm');
      this.head = this.linear('head');
      this.sd = null;
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  // ------------------------------------------------------------------------------------------
  // Builders (state_dict order)

  private raw(key: string): tf.Tensor {
    const t = this.sd?.get(key);
    if (!t) throw new CtaError(`weights: missing key ${key}`);
    return rawToTensor(t, key);
  }

  /**
   * A tensor used as is (cls_token, pos_embed, patch bias), kept in a slot so it can be reloaded;
   * a tf.Variable while `requiresGrad` selects it (the forward's tf ops then give its gradient).
   */
  private constant(key: string): tf.Tensor {
    const slot: { value: tf.Tensor; isVar: boolean } = { value: tf.keep(this.raw(key)), isVar: false };
    const publish = (next: tf.Tensor) => {
      slot.value = next;
      if (key === 'cls_token') this.clsToken = next as tf.Tensor3D;
      else if (key === 'pos_embed') this.posEmbed = next as tf.Tensor3D;
      else this.patchBias = next as tf.Tensor1D;
    };
    this.owned.push({ dispose: () => slot.value.dispose() });
    this.entries.push({
      key,
      shape: slot.value.shape.slice(),
      get: () => slot.value.clone(),
      set: (v) => {
        if (slot.isVar) {
          (slot.value as tf.Variable).assign(v);
          return;
        }
        const next = tf.keep(v.clone());
        slot.value.dispose();
        publish(next);
      },
    });
    const owner = {
      get: () => slot.isVar,
      set: (on: boolean) => {
        if (on === slot.isVar) return;
        const old = slot.value;
        const next = on ? tf.variable(old, true) : tf.keep(old.clone());
        old.dispose();
        slot.isVar = on;
        publish(next);
      },
    };
    this.params.add({
      name: key,
      kind: 'embed',
      shape: slot.value.shape.slice(),
      owner,
      variable: () => (slot.isVar ? (slot.value as tf.Variable) : null),
      toTorch: (t) => t.clone(),
    });
    return slot.value;
  }

  private layerNorm(prefix: string): LayerNormLayer {
    const params = { weight: this.raw(`${prefix}.weight`) as tf.Tensor1D, bias: this.raw(`${prefix}.bias`) as tf.Tensor1D };
    const layer = usingTemps([params.weight, params.bias], () => new LayerNormLayer(prefix, params, this.config.eps));
    this.norms.push(layer);
    this.owned.push(layer);
    const c = layer.numFeatures;
    this.entries.push({ key: `${prefix}.weight`, shape: [c], get: () => layer.weight.clone(), set: (t) => layer.weight.assign(t) });
    this.entries.push({ key: `${prefix}.bias`, shape: [c], get: () => layer.bias.clone(), set: (t) => layer.bias.assign(t) });
    this.params.addNorm(layer);
    return layer;
  }

  private linear(prefix: string): FastLinear {
    const hasBias = this.sd!.has(`${prefix}.bias`);
    const w = this.raw(`${prefix}.weight`) as tf.Tensor2D;
    const b = hasBias ? (this.raw(`${prefix}.bias`) as tf.Tensor1D) : null;
    const lin = usingTemps(b ? [w, b] : [w], () => new Linear(w, b));
    const fast = new FastLinear(lin);
    this.owned.push(lin, fast);
    this.params.addLinear(prefix, lin);
    const setWeight = (v: tf.Tensor) => {
      lin.setWeight(v as tf.Tensor2D);
      fast.invalidate();
    };
    this.entries.push({ key: `${prefix}.weight`, shape: [lin.outFeatures, lin.inFeatures], get: () => lin.weightOutIn(), set: setWeight });
    if (hasBias) {
      this.entries.push({ key: `${prefix}.bias`, shape: [lin.outFeatures], get: () => lin.biasValue()!, set: (v) => lin.setBias(v as tf.Tensor1D) });
    }
    return fast;
  }

  // ------------------------------------------------------------------------------------------
  // Forward

  /** Multi-head self-attention on [N, T, D] tokens (timm Attention). */
  private attention(b: Block, x: tf.Tensor3D): tf.Tensor3D {
    const [n, t, d] = x.shape;
    const h = this.config.heads;
    const hd = this.headDim;
    const x2 = reshape<tf.Tensor2D>(x, [n * t, d]);
    const qkv = this.linearAt(b.sites.qkv, x2, b.qkv.apply(x2));
    // [N·T, 3D] (columns ordered 3, H, hd) → q, k, v [N·T, D] → [N, T, H, hd] → [N, H, T, hd].
    // Split first: WASM's Transpose is slow on the rank-5 [N, T, 3, H, hd] form
    // (docs/porting.md#matrix-products).
    const [q, k, v] = splitChannels(qkv, 3).map(
      (p) => reshape<tf.Tensor3D>(tf.transpose(reshape(p, [n, t, h, hd]), [0, 2, 1, 3]), [n * h, t, hd]),
    );
    const out = attentionCore(q, k, v, this.scale); // softmax(q·s·kᵀ)·v, [N·H, T, hd]
    const merged = reshape<tf.Tensor2D>(tf.transpose(reshape(out, [n, h, t, hd]), [0, 2, 1, 3]), [n * t, d]);
    const y = reshape<tf.Tensor3D>(this.linearAt(b.sites.proj, merged, b.proj.apply(merged)), [n, t, d]);
    return this.hooks?.branch ? this.hooks.branch(b.sites.attn, y) : y;
  }

  /** A linear site's output after the module set's `linear` hook (src/models/injection.ts). */
  private linearAt(site: LinearSite, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    return this.hooks?.linear ? this.hooks.linear(site, x, y) : y;
  }

  private mlp(b: Block, x: tf.Tensor3D): tf.Tensor3D {
    const [n, t, d] = x.shape;
    const x2 = reshape<tf.Tensor2D>(x, [n * t, d]);
    const hidden = gelu(this.linearAt(b.sites.fc1, x2, b.fc1.apply(x2)));
    const y = reshape<tf.Tensor3D>(this.linearAt(b.sites.fc2, hidden, b.fc2.apply(hidden)), [n, t, d]);
    return this.hooks?.branch ? this.hooks.branch(b.sites.mlp, y) : y;
  }

  forward(x: tf.Tensor4D): tf.Tensor2D {
    return tf.tidy(() => this.forwardFeatures(x).logits);
  }

  /** Classifier.forwardFeatures: the features are the class token after the final LayerNorm. */
  forwardFeatures(x: tf.Tensor4D): ClassifierOutput {
    if (this.disposed) throw new CtaError(`${this.arch}: model used after dispose()`, 1);
    const [hh, ww, cc] = this.inputShape;
    if (x.rank !== 4 || x.shape[1] !== hh || x.shape[2] !== ww || x.shape[3] !== cc) {
      throw new CtaError(`${this.arch}: expected NHWC input [N,${hh},${ww},${cc}], got ${fmt(x.shape)}`);
    }
    const n = x.shape[0];
    const d = this.architecture.dim;
    const hooks = this.hooks;
    const ctx: ForwardContext = {
      input: x,
      batch: n,
      baseFeatures: () =>
        this.withoutAdapters(() => {
          this.innerPassObserver?.(n);
          const o = this.forwardFeatures(x);
          o.logits.dispose();
          return o.features;
        }),
    };
    hooks?.begin?.(ctx);
    try {
      return this.forwardTokens(x, n, d, hooks, ctx);
    } finally {
      hooks?.end?.();
    }
  }

  private forwardTokens(x: tf.Tensor4D, n: number, d: number, hooks: AdapterHooks | null, ctx: ForwardContext): ClassifierOutput {
    return tf.tidy(() => {
      let h = tf.tidy(() => {
        const xn = tf.mul(tf.sub(x, this.inputMean), this.inputInvStd) as tf.Tensor4D;
        // Conv output [N, g, g, D] in NHWC row-major order = timm's flatten(2).transpose(1, 2).
        const patches = tf.reshape(tf.add(this.patchConv.apply(xn), this.patchBias), [n, -1, d]);
        const cls = tf.tile(this.clsToken, [n, 1, 1]);
        return tf.add(tf.concat([cls, patches], 1), this.posEmbed) as tf.Tensor3D;
      });
      // Each block's input (and its attention maps) is freed once the next block has run, not at
      // the end of the outer tidy: inference peak memory is then one block's worth. A recording
      // tape keeps what the backward needs through its own saved copies. The block's reshapes and
      // residual adds are lean ops (ops/lean.ts) so that the tape holds only what the gradients
      // use. With --grad-checkpoint-segments the blocks (one stage) run in segments
      // (grad-checkpoint.ts), which find a segment's variables by their `blocks.<i>.` names.
      if (hooks && this.gradCheckpoint.segments > 1) {
        throw new CtaError('--grad-checkpoint-segments: not with an injected adapter (its parameters are not named by block)');
      }
      h = this.gradCheckpoint.run(
        this.blocks,
        h,
        (b, hb) => {
          const hin = hooks?.tokens ? hooks.tokens(b.sites.tokens, hb, ctx) : hb;
          const mid = add(hin, this.attention(b, b.norm1.apply(hin)));
          return add(mid, this.mlp(b, b.norm2.apply(mid)));
        },
        true,
      );
      const normed = this.finalNorm.apply(h);
      const token0 = hooks?.pool?.(normed, ctx) ?? (tf.reshape(tf.slice(normed, [0, 0, 0], [n, 1, d]), [n, d]) as tf.Tensor2D);
      return { features: token0, logits: this.head.apply(token0) };
    });
  }

  // ------------------------------------------------------------------------------------------
  // Classifier contract

  get normLayers(): readonly NormLayer[] {
    return this.norms;
  }

  get normMode(): NormMode {
    return this.mode;
  }

  /**
   * 'source' and 'batch' are accepted and change nothing (a LayerNorm normalises every token by its
   * own statistics in both); the modes that use or update BN running statistics are refused.
   */
  setNormMode(mode: NormMode, _options?: NormModeOptions): void {
    if (mode !== 'source' && mode !== 'batch') {
      throw new CtaError(
        `${this.arch} has no BatchNorm layers (its norm layers are LayerNorms, which keep no running statistics): ` +
          `norm mode '${mode}' (MECTA / BN statistics) cannot be used`,
      );
    }
    this.mode = mode;
  }

  setPruneChooser(): void {
    /* MECTA channel pruning applies to BatchNorm caches only; nothing to choose here */
  }

  trainableParams(): tf.Variable[] {
    return trainableNormParams(this.norms);
  }

  setTrainable(trainable: boolean, filter?: (layer: NormLayer) => boolean): void {
    setNormTrainable(this.norms, trainable, filter);
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
  // Injection point (src/models/injection.ts, docs/adapters.md)

  private adapterSet: AdapterSet | null = null;
  private adaptersOff = false;

  /** The hooks the current forward calls: none while `withoutAdapters` runs. */
  private get hooks(): AdapterHooks | null {
    return this.adaptersOff ? null : this.adapterSet;
  }

  adapterSites(): readonly AdapterSite[] {
    return this.blocks.flatMap((b) => [b.sites.tokens, b.sites.qkv, b.sites.proj, b.sites.attn, b.sites.fc1, b.sites.fc2, b.sites.mlp]);
  }

  get adapters(): AdapterSet | null {
    return this.adapterSet;
  }

  setAdapters(set: AdapterSet | null): void {
    if (set === this.adapterSet) return;
    this.adapterSet?.dispose();
    this.adapterSet = set;
  }

  /**
   * Runs `fn` with the module set's hooks switched off: the pretrained model's forward (L2P's
   * query features, Wang et al., CVPR 2022). Safe to call from inside a hook.
   */
  withoutAdapters<T>(fn: () => T): T {
    const was = this.adaptersOff;
    this.adaptersOff = true;
    try {
      return fn();
    } finally {
      this.adaptersOff = was;
    }
  }

  stateDict(): Map<string, tf.Tensor> {
    return readEntries(this.entries);
  }

  loadStateDict(sd: Map<string, tf.Tensor>): void {
    writeEntries(this.entries, sd, this.arch);
  }

  /** Classifier.clone: rebuilt from the current stateDict() with the same options, then the mode and per-layer state. */
  clone(): VisionTransformer {
    if (this.disposed) throw new CtaError(`${this.arch}: model used after dispose()`, 1);
    const copy = new VisionTransformer(toRawStateDict(this.stateDict()), this.architecture, this.opts);
    copy.mode = this.mode;
    this.norms.forEach((layer, i) => copy.norms[i].copyStateFrom(layer));
    const training = this.params.trainingNames();
    copy.params.requiresGrad((p) => training.has(p.name));
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
