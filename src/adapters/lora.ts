/**
 * LoRA (Hu et al., ICLR 2022, Eq. 3): h = W₀x + (α/r)·B·A·x beside a frozen linear W₀, with
 * A ∈ R^{r×in} (kaiming-uniform, loralib's init) and B ∈ R^{out×r} zero, so the model is unchanged
 * at step 0. On the ViT the default targets are the attention query and value projections (the
 * paper's choice): slices of timm's fused qkv linear, whose columns are [q | k | v]. On a CNN the
 * same update goes beside each 1×1 convolution (a linear map on channels; a strided 1×1 conv sees
 * every s-th pixel, and so does its update). docs/adapters.md#lora.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { FieldSpec } from '../config/schema.js';
import type { AdapterSite, ConvSite, LinearSite } from '../models/injection.js';
import { recordWeightInput } from '../models/ops/weights.js';
import { add, reshape } from '../models/ops/lean.js';
import { addColumns, scaled } from './ops.js';
import { matMul } from '../models/ops/mat-mul.js';
import { ModuleSet } from './module-set.js';
import { ADAPTER_TARGETS, RANK, blockCount, intOption, parseBlocks, parseTargets } from './options.js';
import { kaimingUniform, zeros } from './store.js';
import type { AdapterConfig, AdapterContext, AdapterSpec } from './types.js';

export const LORA_OPTIONS = {
  ...RANK,
  loraAlpha: { type: 'number', min: 0, exclusiveMin: true, nullable: true, default: null, defaultText: 'the rank (scale α/r = 1)', group: 'adapters', description: 'LoRA α: the update is scaled by α/r' },
  ...ADAPTER_TARGETS,
} as const satisfies Record<string, FieldSpec>;

/** ViT linear targets: q, k, v are column slices of the fused qkv; the others whole linears. */
export const VIT_LINEAR_TARGETS = ['q', 'k', 'v', 'qkv', 'proj', 'fc1', 'fc2'] as const;
export const CNN_CONV_TARGETS = ['reduce', 'expand', 'shortcut'] as const;

/** A low-rank pair: variables A [in, r] and B [r, out] (PyTorch lora_A [r, in], lora_B [out, r]). */
export interface LowRank {
  a: tf.Variable;
  b: tf.Variable;
  scale: number;
}

/** (x·A)·B·scale for rows x [rows, in], recording both weights' inputs for the accounting. */
export function lowRank(p: LowRank, x: tf.Tensor2D): tf.Tensor2D {
  recordWeightInput(p.a, x);
  // The scale on the r-wide hidden: nothing activation-sized is kept for it.
  const xa = scaled(matMul(x, p.a), p.scale);
  recordWeightInput(p.b, xa);
  return matMul(xa, p.b);
}

/** Which slice of a qkv linear: 0 = q, 1 = k, 2 = v. */
const SLICES = ['q', 'k', 'v'] as const;

/** Sites of a ViT selected by linear targets (q/k/v select the qkv site) and blocks. */
export function selectLinearSites(sites: readonly AdapterSite[], targets: ReadonlySet<string>, inBlocks: (b: number) => boolean): LinearSite[] {
  return sites.filter((s): s is LinearSite => {
    if (s.kind !== 'linear' || !inBlocks(s.block)) return false;
    if (s.role === 'qkv') return targets.has('qkv') || SLICES.some((q) => targets.has(q));
    return targets.has(s.role);
  });
}

export function selectConvSites(sites: readonly AdapterSite[], targets: ReadonlySet<string>, inBlocks: (b: number) => boolean): ConvSite[] {
  return sites.filter((s): s is ConvSite => s.kind === 'conv1x1' && inBlocks(s.block) && targets.has(s.role));
}

/** x [N, H, W, C] as the rows a 1×1 conv of `stride` maps: [N·H'·W', C] and the output's [N, H', W']. */
export function convRows(x: tf.Tensor4D, stride: number): { rows: tf.Tensor2D; outShape: [number, number, number] } {
  const xs = stride > 1 ? everyNth(x, stride) : x;
  const [n, h, w, c] = xs.shape;
  return { rows: reshape<tf.Tensor2D>(xs, [n * h * w, c]), outShape: [n, h, w] };
}

/**
 * x[:, ::s, ::s, :] with a gradient (tfjs has none for StridedSlice): pad H and W up to multiples
 * of s, then keep the first of every s rows and columns through rank-≤ 4 reshapes and slices.
 */
function everyNth(x: tf.Tensor4D, s: number): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  const ho = Math.ceil(h / s);
  const wo = Math.ceil(w / s);
  const padded = ho * s > h || wo * s > w ? tf.pad(x, [[0, 0], [0, ho * s - h], [0, wo * s - w], [0, 0]]) : x;
  const rowsKept = tf.reshape(tf.slice(tf.reshape(padded, [n * ho, s, wo * s, c]), [0, 0, 0, 0], [n * ho, 1, wo * s, c]), [n * ho * wo, s, c]);
  return tf.reshape(tf.slice(rowsKept, [0, 0, 0], [n * ho * wo, 1, c]), [n, ho, wo, c]) as tf.Tensor4D;
}

export function isVit(sites: readonly AdapterSite[]): boolean {
  return sites.some((s) => s.kind === 'linear');
}

interface LinearEntry {
  /** Per q/k/v slice of a qkv site (null: not adapted), or one pair for the whole linear. */
  slices: (LowRank | null)[] | null;
  whole: LowRank | null;
}

class LoraSet extends ModuleSet {
  private readonly linears = new Map<string, LinearEntry>();
  private readonly convs = new Map<string, { pair: LowRank; stride: number }>();

  constructor(
    private readonly sites: readonly AdapterSite[],
    private readonly cfg: AdapterConfig,
    ctx: AdapterContext,
  ) {
    super('lora', ctx);
    const r = intOption(cfg, 'rank', 8);
    const alphaRaw = cfg.loraAlpha;
    const alpha = alphaRaw === null || alphaRaw === undefined ? r : Number(alphaRaw);
    if (!(alpha > 0)) throw new CtaError(`--lora-alpha: expected a positive number, got ${String(alphaRaw)}`);
    const scale = alpha / r;
    const inBlocks = parseBlocks(cfg, blockCount(sites));
    const pair = (name: string, inF: number, outF: number): LowRank => {
      if (r > Math.min(inF, outF)) throw new CtaError(`--rank ${r}: larger than ${name}'s ${inF}×${outF} weight allows (at most ${Math.min(inF, outF)})`);
      return {
        a: this.store.add(`${name}.lora_A.weight`, [r, inF], 'linear', kaimingUniform(inF)),
        b: this.store.add(`${name}.lora_B.weight`, [outF, r], 'linear', zeros),
        scale,
      };
    };
    if (isVit(sites)) {
      const targets = parseTargets(cfg, VIT_LINEAR_TARGETS, ['q', 'v'], 'lora');
      if (targets.has('qkv') && SLICES.some((q) => targets.has(q))) throw new CtaError(`--adapt-targets: give either qkv (the fused linear) or some of q, k, v, not both`);
      for (const s of selectLinearSites(sites, targets, inBlocks)) {
        if (s.role === 'qkv' && !targets.has('qkv')) {
          const d = s.outFeatures / 3;
          const slices = SLICES.map((q) => (targets.has(q) ? this.slicePair(`${s.name}`, q, s.inFeatures, d, r, scale) : null));
          this.linears.set(s.name, { slices, whole: null });
        } else {
          this.linears.set(s.name, { slices: null, whole: pair(s.name, s.inFeatures, s.outFeatures) });
        }
      }
    } else {
      const targets = parseTargets(cfg, CNN_CONV_TARGETS, CNN_CONV_TARGETS, 'lora');
      for (const s of selectConvSites(sites, targets, inBlocks)) {
        this.convs.set(s.name, { pair: this.convPair(s, r, scale), stride: s.stride });
      }
    }
    if (this.linears.size + this.convs.size === 0) throw new CtaError(`--adapt-params lora: no layer matches --adapt-targets / --adapt-blocks on this model`);
  }

  /** lora_A.q / lora_B.q of a fused qkv linear (PEFT-style names per slice). */
  private slicePair(site: string, q: string, inF: number, outF: number, r: number, scale: number): LowRank {
    if (r > Math.min(inF, outF)) throw new CtaError(`--rank ${r}: larger than ${site}.${q}'s ${inF}×${outF} weight allows (at most ${Math.min(inF, outF)})`);
    return {
      a: this.store.add(`${site}.lora_A.${q}.weight`, [r, inF], 'linear', kaimingUniform(inF)),
      b: this.store.add(`${site}.lora_B.${q}.weight`, [outF, r], 'linear', zeros),
      scale,
    };
  }

  /** A 1×1 conv's pair, PyTorch shapes lora_A [r, in, 1, 1], lora_B [out, r, 1, 1] (loralib's ConvLoRA). */
  private convPair(s: ConvSite, r: number, scale: number): LowRank {
    if (r > Math.min(s.inChannels, s.outChannels)) throw new CtaError(`--rank ${r}: larger than ${s.name}'s ${s.inChannels}→${s.outChannels} channels allow`);
    return {
      a: this.store.add(`${s.name}.lora_A.weight`, [r, s.inChannels, 1, 1], 'conv1x1', kaimingUniform(s.inChannels)),
      b: this.store.add(`${s.name}.lora_B.weight`, [s.outChannels, r, 1, 1], 'conv1x1', zeros),
      scale,
    };
  }

  linear(site: LinearSite, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    const e = this.linears.get(site.name);
    if (!e) return y;
    if (e.whole) return add(y, lowRank(e.whole, x));
    const d = site.outFeatures / 3;
    const parts = e.slices!.flatMap((p, i) => (p ? [{ offset: i * d, t: lowRank(p, x) }] : []));
    return addColumns(y, parts);
  }

  conv(site: ConvSite, x: tf.Tensor4D, y: tf.Tensor4D): tf.Tensor4D {
    const e = this.convs.get(site.name);
    if (!e) return y;
    const { rows, outShape } = convRows(x, e.stride);
    const delta = reshape<tf.Tensor4D>(lowRank(e.pair, rows), [...outShape, site.outChannels]);
    return add(y, delta);
  }

  protected rebuild(ctx: AdapterContext): ModuleSet {
    return new LoraSet(this.sites, this.cfg, ctx);
  }
}

export const lora = {
  description: 'LoRA: (α/r)·B·A beside the attention q, v projections (ViT) or the 1×1 convs (CNN); B = 0 at start',
  options: LORA_OPTIONS,
  models: ['vit', 'cnn'],
  create: (model, cfg, ctx) => new LoraSet(model.adapterSites(), cfg, ctx),
} satisfies AdapterSpec;
