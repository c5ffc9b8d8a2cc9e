/**
 * Google's original ViT checkpoints (`.npz`, google-research/vision_transformer; the ViT-B_16.npz
 * that L2P / DualPrompt start from, the AugReg `*.npz`) → timm's `vit_base_patch16_224` state_dict
 * (docs/data-formats.md#google-vit-npz). The arrays are Flax parameters named by module path:
 *
 *   embedding/kernel [p, p, 3, D] (HWIO)          → patch_embed.proj.weight [D, 3, p, p]
 *   embedding/bias, cls, Transformer/posembed_input/pos_embedding → patch bias, cls_token, pos_embed
 *   Transformer/encoderblock_i/LayerNorm_0/{scale,bias}            → blocks.i.norm1.{weight,bias}
 *     …/MultiHeadDotProductAttention_1/{query,key,value}/kernel [D, H, hd], bias [H, hd]
 *                                                 → blocks.i.attn.qkv.weight [3D, D] (rows q | k | v), bias [3D]
 *     …/MultiHeadDotProductAttention_1/out/kernel [H, hd, D] → blocks.i.attn.proj.weight [D, D]
 *     …/LayerNorm_2/{scale,bias}                  → blocks.i.norm2
 *     …/MlpBlock_3/Dense_{0,1}/kernel [in, out]   → blocks.i.mlp.fc{1,2}.weight [out, in]
 *   Transformer/encoder_norm/{scale,bias}         → norm.{weight,bias}
 *   head/kernel [D, C], head/bias                 → head.weight [C, D], head.bias
 *
 * Flax Dense kernels are [in, out], the transpose of PyTorch's Linear; the attention kernels keep
 * the head axis separate, so the checkpoint — unlike a timm state_dict — carries the head count
 * (query/kernel's middle axis). This is the same correspondence as timm's `_load_weights`; it is
 * checked against a plain-PyTorch model on the same weights (scripts/make-npz-fixtures.py).
 * Training checkpoints keep the parameters under `opt/target/` (everything else there is
 * optimiser state and is ignored).
 */
import { CtaError, listSome } from '../util/errors.js';
import type { RawTensor, StateDict } from '../io/types.js';

/** The prefix of vit_jax training checkpoints (flax.optim state: `opt/target/` = the parameters). */
const OPT_PREFIX = 'opt/target/';

/** Whether `sd` holds a Google (Flax) ViT: the patch embedding under its Flax name. */
export function isGoogleVitNpz(sd: StateDict): boolean {
  return sd.has('embedding/kernel') || sd.has(`${OPT_PREFIX}embedding/kernel`);
}

/** What the checkpoint says about the architecture (the head count is not in timm's names). */
export interface GoogleVitInfo {
  dim: number;
  depth: number;
  heads: number;
  headDim: number;
  mlpDim: number;
  patch: number;
  numClasses: number;
}

/** A shape for messages; −1 (a size the checkpoint does not reveal) shows as '?'. */
const fmt = (s: readonly number[]) => `[${s.map((d) => (d < 0 ? '?' : d)).join(',')}]`;

/** Row-major transpose of a [rows, cols] matrix. */
function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(src.length);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let c = 0; c < cols; c++) out[c * rows + r] = src[base + c];
  }
  return out;
}

/**
 * Converts a Google ViT `.npz` state to timm names and PyTorch layouts. Throws one CtaError (exit 2)
 * naming the file and the first keys that are missing, misshapen or unknown.
 */
export function googleVitToTimm(npz: StateDict, label: string): { sd: StateDict; info: GoogleVitInfo } {
  const prefix = npz.has(`${OPT_PREFIX}embedding/kernel`) ? OPT_PREFIX : '';
  const src = new Map<string, RawTensor>();
  for (const [k, t] of npz) if (k.startsWith(prefix)) src.set(k.slice(prefix.length), t);
  const where = `${label}: Google ViT checkpoint`;
  const used = new Set<string>();
  const problems: string[] = [];

  if (src.has('pre_logits/kernel') || src.has('pre_logits/bias')) {
    throw new CtaError(
      `${where} has a pre_logits layer (the representation layer of an ImageNet-21k pre-training checkpoint): ` +
        `its head classifies the pre-training classes, so it cannot be evaluated here; use a checkpoint fine-tuned to the evaluated classes (head/kernel [D, classes], no pre_logits)`,
    );
  }
  const emb = src.get('embedding/kernel');
  if (!emb) throw new CtaError(`${where} is missing embedding/kernel (the patch embedding, [p, p, 3, D])`);
  if (emb.shape.length !== 4 || emb.shape[0] !== emb.shape[1] || emb.shape[2] !== 3) {
    throw new CtaError(`${where}: embedding/kernel has shape ${fmt(emb.shape)}, expected [p, p, 3, D] (square patches, RGB input)`);
  }
  const [patch, , , dim] = emb.shape;
  const q0 = src.get('Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel');
  if (!q0) throw new CtaError(`${where} is missing Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel ([D, heads, head_dim])`);
  if (q0.shape.length !== 3 || q0.shape[0] !== dim || q0.shape[1] * q0.shape[2] !== dim) {
    throw new CtaError(`${where}: Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel has shape ${fmt(q0.shape)}, expected [${dim}, heads, head_dim] with heads·head_dim = ${dim}`);
  }
  const heads = q0.shape[1];
  const headDim = q0.shape[2];
  const fc1 = src.get('Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel');
  const mlpDim = fc1 && fc1.shape.length === 2 ? fc1.shape[1] : -1;
  const headW = src.get('head/kernel');
  const numClasses = headW && headW.shape.length === 2 ? headW.shape[1] : -1;
  let depth = 0;
  while (src.has(`Transformer/encoderblock_${depth}/LayerNorm_0/scale`)) depth++;

  /** The tensor under `key` if its shape is `shape` (−1 = any), else a problem is recorded. */
  const take = (key: string, shape: readonly number[]): RawTensor | null => {
    const t = src.get(key);
    used.add(key);
    if (!t) {
      problems.push(`missing ${key} ${fmt(shape)}`);
      return null;
    }
    const ok = t.shape.length === shape.length && t.shape.every((d, i) => shape[i] < 0 || d === shape[i]);
    if (!ok) {
      problems.push(`${key} has shape ${fmt(t.shape)}, expected ${fmt(shape)}`);
      return null;
    }
    if (!(t.data instanceof Float32Array)) {
      problems.push(`${key} is ${t.dtype}, expected floating point`);
      return null;
    }
    return t;
  };
  const out: StateDict = new Map();
  const put = (key: string, shape: number[], data: Float32Array | null, dtype: RawTensor['dtype'] = 'float32') => {
    if (data) out.set(key, { dtype, shape, data });
  };
  const same = (key: string, t: RawTensor | null, shape?: number[]) => put(key, shape ?? t?.shape.slice() ?? [], t ? (t.data as Float32Array) : null, t?.dtype);
  /** Flax Dense kernel [in, out] → PyTorch Linear weight [out, in]. */
  const linear = (key: string, t: RawTensor | null) => {
    if (t) put(key, [t.shape[1], t.shape[0]], transpose2d(t.data as Float32Array, t.shape[0], t.shape[1]), t.dtype);
  };

  // Patch embedding: HWIO [p, p, 3, D] → OIHW [D, 3, p, p] (transpose [3, 2, 0, 1]).
  const embK = take('embedding/kernel', [patch, patch, 3, dim])!;
  const oihw = new Float32Array(embK.data.length);
  const e = embK.data as Float32Array;
  for (let h = 0; h < patch; h++) {
    for (let w = 0; w < patch; w++) {
      for (let i = 0; i < 3; i++) {
        for (let o = 0; o < dim; o++) oihw[((o * 3 + i) * patch + h) * patch + w] = e[((h * patch + w) * 3 + i) * dim + o];
      }
    }
  }
  same('cls_token', take('cls', [1, 1, dim]));
  same('pos_embed', take('Transformer/posembed_input/pos_embedding', [1, -1, dim]));
  put('patch_embed.proj.weight', [dim, 3, patch, patch], oihw, embK.dtype);
  same('patch_embed.proj.bias', take('embedding/bias', [dim]));

  for (let i = 0; i < depth; i++) {
    const b = `Transformer/encoderblock_${i}/`;
    const mha = `${b}MultiHeadDotProductAttention_1/`;
    const p = `blocks.${i}`;
    same(`${p}.norm1.weight`, take(`${b}LayerNorm_0/scale`, [dim]));
    same(`${p}.norm1.bias`, take(`${b}LayerNorm_0/bias`, [dim]));
    // q, k, v kernels [D, H, hd] = [D, H·hd] (row-major) → each transposed to [H·hd, D], stacked as rows.
    const kernels = (['query', 'key', 'value'] as const).map((n) => take(`${mha}${n}/kernel`, [dim, heads, headDim]));
    const biases = (['query', 'key', 'value'] as const).map((n) => take(`${mha}${n}/bias`, [heads, headDim]));
    if (kernels.every((k) => k)) {
      const qkv = new Float32Array(3 * dim * dim);
      kernels.forEach((k, j) => qkv.set(transpose2d(k!.data as Float32Array, dim, dim), j * dim * dim));
      put(`${p}.attn.qkv.weight`, [3 * dim, dim], qkv);
    }
    if (biases.every((x) => x)) {
      const qkvBias = new Float32Array(3 * dim);
      biases.forEach((x, j) => qkvBias.set(x!.data as Float32Array, j * dim));
      put(`${p}.attn.qkv.bias`, [3 * dim], qkvBias);
    }
    // out/kernel [H, hd, D] = [H·hd, D] (the Dense [in, out] layout) → proj.weight [D, H·hd].
    const outK = take(`${mha}out/kernel`, [heads, headDim, dim]);
    if (outK) put(`${p}.attn.proj.weight`, [dim, dim], transpose2d(outK.data as Float32Array, dim, dim), outK.dtype);
    same(`${p}.attn.proj.bias`, take(`${mha}out/bias`, [dim]));
    same(`${p}.norm2.weight`, take(`${b}LayerNorm_2/scale`, [dim]));
    same(`${p}.norm2.bias`, take(`${b}LayerNorm_2/bias`, [dim]));
    linear(`${p}.mlp.fc1.weight`, take(`${b}MlpBlock_3/Dense_0/kernel`, [dim, mlpDim]));
    same(`${p}.mlp.fc1.bias`, take(`${b}MlpBlock_3/Dense_0/bias`, [mlpDim]));
    linear(`${p}.mlp.fc2.weight`, take(`${b}MlpBlock_3/Dense_1/kernel`, [mlpDim, dim]));
    same(`${p}.mlp.fc2.bias`, take(`${b}MlpBlock_3/Dense_1/bias`, [dim]));
  }
  same('norm.weight', take('Transformer/encoder_norm/scale', [dim]));
  same('norm.bias', take('Transformer/encoder_norm/bias', [dim]));
  linear('head.weight', take('head/kernel', [dim, numClasses]));
  same('head.bias', take('head/bias', [numClasses]));

  if (depth === 0) problems.unshift('no Transformer/encoderblock_0/LayerNorm_0/scale (no transformer blocks)');
  const unexpected = [...src.keys()].filter((k) => !used.has(k));
  if (unexpected.length > 0) problems.push(`${unexpected.length} unexpected (${listSome(unexpected, 4)})`);
  if (problems.length > 0) throw new CtaError(`${where} does not match a ViT (width ${dim}, ${heads} heads, ${depth} blocks): ${listSome(problems, 4)}`);
  return { sd: out, info: { dim, depth, heads, headDim, mlpDim, patch, numClasses } };
}
