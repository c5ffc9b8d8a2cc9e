/**
 * A freshly initialised Vision Transformer state_dict with timm's `vit_base_patch16_224` key names
 * (what `buildModel('vit_b16', …)` expects; src/models/vit.ts reads width, depth, MLP width, patch
 * and grid off the shapes), at a size chosen by the caller (cta-train --vit-dim/--vit-depth/…).
 *
 * Initialisation follows timm's VisionTransformer default ('' weight-init mode,
 * `init_weights_vit_timm`):
 * - every nn.Linear (attn.qkv, attn.proj, mlp.fc1, mlp.fc2, head): trunc_normal_(std = 0.02) with
 *   timm's absolute bounds [−2, 2], bias 0;
 * - pos_embed trunc_normal_(std = 0.02); cls_token normal_(std = 1e-6);
 * - LayerNorm weight 1, bias 0;
 * - patch_embed.proj (an nn.Conv2d, which timm's Linear-only init leaves alone): PyTorch's default
 *   Conv2d init, kaiming_uniform_(a = √5) = U(−1/√fan_in, 1/√fan_in) for the weight and the same
 *   bound for the bias, fan_in = 3·patch².
 */
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import type { RawTensor, StateDict } from '../io/types.js';
import { vitExpectedKeys, type VitArch } from '../models/vit.js';

export interface VitTrainConfig {
  /** Token width D (timm embed_dim). */
  dim: number;
  /** Transformer blocks. */
  depth: number;
  /** Attention heads (D must be divisible by it); not in the weights: cta-train stores it in the file's metadata. */
  heads: number;
  /** MLP hidden width (timm: mlp_ratio·D). */
  mlpDim: number;
  /** Patch side (the conv's kernel = stride); the image side must be a multiple of it. */
  patch: number;
  /** Image side in pixels (32 for the CIFAR-sized sets). */
  imageSize: number;
  numClasses: number;
}

/** Checks the configuration (one CtaError naming the flag) and returns the model's VitArch. */
export function vitArchOf(c: VitTrainConfig): VitArch {
  const ints: [string, number, number][] = [
    ['vit-dim', c.dim, 1],
    ['vit-depth', c.depth, 1],
    ['vit-heads', c.heads, 1],
    ['vit-mlp-dim', c.mlpDim, 1],
    ['patch', c.patch, 1],
    ['num-classes', c.numClasses, 2],
  ];
  for (const [name, v, min] of ints) {
    if (!Number.isInteger(v) || v < min) throw new CtaError(`--${name}: expected an integer ≥ ${min}, got ${v}`);
  }
  if (c.dim % c.heads !== 0) throw new CtaError(`--vit-heads ${c.heads}: does not divide --vit-dim ${c.dim} (head width = dim / heads)`);
  if (c.imageSize % c.patch !== 0) throw new CtaError(`--patch ${c.patch}: does not divide the ${c.imageSize}-pixel image side`);
  return { dim: c.dim, depth: c.depth, mlpDim: c.mlpDim, patch: c.patch, grid: c.imageSize / c.patch, numClasses: c.numClasses, qkvBias: true };
}

/**
 * PyTorch's trunc_normal_(mean 0, std, a, b): N(0, std²) conditioned on [a, b] (absolute bounds,
 * as timm passes them). Rejection sampling; the bounds are far out for std = 0.02, so it rarely
 * rejects.
 */
export function truncNormal(rng: Rng, n: number, std: number, a = -2, b = 2): Float32Array {
  if (!(a < 0 && b > 0)) throw new Error('truncNormal: the interval must contain 0');
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v: number;
    do v = rng.normal() * std;
    while (v < a || v > b);
    out[i] = v;
  }
  return out;
}

function uniform(rng: Rng, n: number, bound: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (2 * rng.next() - 1) * bound;
  return out;
}

/** Randomly initialised state dict (float32), timm's state_dict order. */
export function initVit(c: VitTrainConfig, rng: Rng): StateDict {
  const arch = vitArchOf(c);
  const sd: StateDict = new Map();
  const fanIn = 3 * c.patch * c.patch;
  for (const [key, shape] of vitExpectedKeys(arch)) {
    const n = shape.reduce((x, y) => x * y, 1);
    let data: Float32Array;
    if (key === 'cls_token') data = Float32Array.from({ length: n }, () => rng.normal() * 1e-6);
    else if (key === 'pos_embed') data = truncNormal(rng, n, 0.02);
    else if (key.startsWith('patch_embed.proj.')) data = uniform(rng, n, 1 / Math.sqrt(fanIn));
    else if (/(^|\.)norm\d?\.weight$/.test(key)) data = new Float32Array(n).fill(1);
    else if (key.endsWith('.weight')) data = truncNormal(rng, n, 0.02); // every Linear
    else data = new Float32Array(n); // Linear and LayerNorm biases
    sd.set(key, { dtype: 'float32', shape, data } satisfies RawTensor);
  }
  return sd;
}

/**
 * timm's parameter-group split for weight decay (`param_groups_weight_decay`: no decay for 1-D
 * parameters — biases and LayerNorm affines — nor for the `no_weight_decay()` set pos_embed /
 * cls_token). True = decayed.
 */
export function vitDecays(name: string, shape: readonly number[]): boolean {
  if (name === 'pos_embed' || name === 'cls_token') return false;
  return shape.length > 1;
}
