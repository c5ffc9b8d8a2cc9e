/**
 * KAdaptation (He et al., AAAI 2023, Eqs. 4–6): beside a frozen linear W₀ (the attention query
 * and value projections by default, as in the paper and the PEViT code),
 *   ΔW = s·Σ_{i=1}^{n} A_i ⊗ B_i,   A_i ∈ R^{n×n} shared by every layer ("slow" weights),
 *   B_i = u_i·v_iᵀ ∈ R^{(in/n)×(out/n)} of rank r per layer ("fast" weights),
 * h = W₀x + ΔW x. One set of A_i per target (q, v, …) for all blocks, each A_i itself the rank-1
 * product PEViT uses (a_i·b_iᵀ, U(±0.01)); u glorot-uniform (gain √2), v zero — PEViT zeroes
 * both factors, which would leave their gradients zero forever, so here only v starts at zero;
 * the model is unchanged at step 0 either way. s = 160 is PEViT's lora_attn_alpha / lora_attn_dim · 5.
 * On a CNN the same ΔW ∈ R^{in×out} goes beside each 1×1 convolution (a linear map on channels,
 * as LoRA's, lora.ts), with one set of A_i per conv role (reduce, expand, shortcut) for all blocks.
 * Left out of the official code: the extra shared bias b, the dropout on ΔW, and adding the q
 * update after q's 1/√d scaling (here ΔW is part of the q projection, as the paper writes it).
 * docs/adapters.md#kadaptation.
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
import { ADAPTER_TARGETS, KRON_FACTORS, RANK, blockCount, commonFactor, intOption, parseBlocks, parseTargets } from './options.js';
import { CNN_CONV_TARGETS, VIT_LINEAR_TARGETS, convRows, isVit, selectConvSites, selectLinearSites } from './lora.js';
import { kronSum, lowRankTerms } from './kron.js';
import { uniform, xavierUniform, zeros } from './store.js';
import type { AdapterConfig, AdapterContext, AdapterSpec } from './types.js';

export const KADAPTATION_OPTIONS = {
  ...KRON_FACTORS,
  ...RANK,
  kronScale: { type: 'number', min: 0, exclusiveMin: true, default: 160, group: 'adapters', description: "KAdaptation's scale s of ΔW = s·Σ A_i ⊗ B_i (PEViT: lora_attn_alpha / lora_attn_dim · 5 = 160)" },
  ...ADAPTER_TARGETS,
} as const satisfies Record<string, FieldSpec>;

interface Update {
  /** Column offset in the site's output and width (a q/k/v slice of qkv, or the whole output). */
  offset: number;
  width: number;
  rule: tf.Tensor3D[];
  left: tf.Variable;
  right: tf.Variable;
}

class KAdaptationSet extends ModuleSet {
  private readonly updates = new Map<string, Update[]>();
  private readonly convs = new Map<string, { update: Update; stride: number }>();
  private readonly scale: number;

  constructor(
    private readonly sites: readonly AdapterSite[],
    private readonly cfg: AdapterConfig,
    ctx: AdapterContext,
  ) {
    super('kadaptation', ctx);
    const n = intOption(cfg, 'kronFactors', 32);
    const r = intOption(cfg, 'rank', 1);
    this.scale = Number(cfg.kronScale ?? KADAPTATION_OPTIONS.kronScale.default);
    const inBlocks = parseBlocks(cfg, blockCount(sites));
    const rules = new Map<string, tf.Variable[]>();
    const ruleFor = (t: string): tf.Variable[] => {
      let pair = rules.get(t);
      if (!pair) {
        // A_i = a_i·b_iᵀ, shared by every block's `t` projection.
        pair = [this.store.add(`kadaptation.${t}.rule_left`, [n, n, 1], 'same', uniform(0.01)), this.store.add(`kadaptation.${t}.rule_right`, [n, 1, n], 'same', uniform(0.01))];
        rules.set(t, pair);
      }
      return pair;
    };
    // u_i [in/n, r] and v_i [r, out/n] of one site (a q / v slice, a linear or a 1×1 conv).
    const fast = (base: string, inF: number, outF: number, t: string, offset: number): Update => {
      const k = inF / n;
      const p = outF / n;
      const [rl, rr] = ruleFor(t); // the shared A_i first (declared with the first block)
      const left = this.store.add(`${base}.W_left`, [n, k, r], 'same', xavierUniform(r, k, Math.SQRT2));
      const right = this.store.add(`${base}.W_right`, [n, r, p], 'same', zeros);
      return { offset, width: outF, rule: [rl as tf.Tensor3D, rr as tf.Tensor3D], left, right };
    };
    if (!isVit(sites)) {
      const convs = selectConvSites(sites, parseTargets(cfg, CNN_CONV_TARGETS, CNN_CONV_TARGETS, 'kadaptation'), inBlocks);
      const bad = convs.find((s) => s.inChannels % n !== 0 || s.outChannels % n !== 0);
      if (bad) {
        const m = commonFactor(n, convs.flatMap((s) => [s.inChannels, s.outChannels]));
        throw new CtaError(`--kron-factors ${n}: must divide the channels of 1×1 conv ${bad.name} (${bad.inChannels}→${bad.outChannels}); ${m} divides every selected 1×1 conv of this model`);
      }
      for (const s of convs) this.convs.set(s.name, { update: fast(`${s.name}.kadaptation`, s.inChannels, s.outChannels, s.role, 0), stride: s.stride });
      if (this.convs.size === 0) throw new CtaError(`--adapt-params kadaptation: no layer matches --adapt-targets / --adapt-blocks on this model`);
      return;
    }
    const targets = parseTargets(cfg, VIT_LINEAR_TARGETS.filter((t) => t !== 'qkv'), ['q', 'v'], 'kadaptation');
    for (const s of selectLinearSites(sites, targets, inBlocks)) {
      const parts: { t: string; offset: number; width: number }[] =
        s.role === 'qkv'
          ? (['q', 'k', 'v'] as const).flatMap((t, i) => (targets.has(t) ? [{ t, offset: (i * s.outFeatures) / 3, width: s.outFeatures / 3 }] : []))
          : [{ t: s.role, offset: 0, width: s.outFeatures }];
      const list: Update[] = [];
      for (const { t, offset, width } of parts) {
        if (s.inFeatures % n !== 0 || width % n !== 0) throw new CtaError(`--kron-factors ${n}: must divide ${s.name} (${t})'s ${s.inFeatures}×${width} weight (PEViT uses 32 for ViT-B's 768)`);
        list.push(fast(s.role === 'qkv' ? `${s.name}.kadaptation.${t}` : `${s.name}.kadaptation`, s.inFeatures, width, t, offset));
      }
      this.updates.set(s.name, list);
    }
    if (this.updates.size === 0) throw new CtaError(`--adapt-params kadaptation: no layer matches --adapt-targets / --adapt-blocks on this model`);
  }

  linear(site: LinearSite, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    const list = this.updates.get(site.name);
    if (!list) return y;
    const deltas = list.map((u) => ({ offset: u.offset, t: this.delta(u, x) }));
    // Each slice's update at its columns of the (fused) output.
    return addColumns(y, deltas);
  }

  conv(site: ConvSite, x: tf.Tensor4D, y: tf.Tensor4D): tf.Tensor4D {
    const e = this.convs.get(site.name);
    if (!e) return y;
    // a strided 1×1 conv sees every s-th pixel, and so does its update (as LoRA's, lora.ts)
    const { rows, outShape } = convRows(x, e.stride);
    return add(y, reshape<tf.Tensor4D>(this.delta(e.update, rows), [...outShape, site.outChannels]));
  }

  /** x·ΔW for rows x [R, in]: [R, width]. */
  private delta(u: Update, x: tf.Tensor2D): tf.Tensor2D {
    recordWeightInput(u.left, x);
    const a = lowRankTerms(u.rule[0], u.rule[1]); // A_i [n, n]
    // s·ΔW on the weight-sized matrix, not on the activation
    const dw = scaled(kronSum(a, lowRankTerms(u.left as tf.Tensor3D, u.right as tf.Tensor3D)), this.scale); // [in, width]
    return matMul(x, dw);
  }

  protected rebuild(ctx: AdapterContext): ModuleSet {
    return new KAdaptationSet(this.sites, this.cfg, ctx);
  }
}

export const kadaptation = {
  description: 'KAdaptation: ΔW = s·Σ A_i ⊗ u_i v_iᵀ on the attention q, v projections (ViT) or the 1×1 convs (CNN), slow A_i shared across layers',
  options: KADAPTATION_OPTIONS,
  models: ['vit', 'cnn'],
  create: (model, cfg, ctx) => new KAdaptationSet(model.adapterSites(), cfg, ctx),
} satisfies AdapterSpec;
