/**
 * Compacter (Mahabadi et al., NeurIPS 2021, Eqs. 2–4): a bottleneck adapter (adapter.ts) whose
 * down- and up-projections are PHM layers W = Σ_{i=1}^{n} A_i ⊗ B_i, with the "slow" rules
 * A_i ∈ R^{n×n} shared by every adapter layer and the "fast" weights B_i = s_i·t_iᵀ of rank r
 * (rank 1 in the paper) per layer. Initialisation as the PEViT Compacter code: A ~ U(−1, 1),
 * s, t glorot-uniform (gain √2), biases zero — except the up-projection's t, which is zero so the
 * model is unchanged at step 0. On a CNN the adapter sits on each 1×1 convolution's output
 * (before its BatchNorm, as adapter.ts places it), the bottleneck width per site.
 * docs/adapters.md#compacter.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { FieldSpec } from '../config/schema.js';
import type { AdapterSite } from '../models/injection.js';
import { recordWeightInput } from '../models/ops/weights.js';
import { addBias } from './ops.js';
import { matMul } from '../models/ops/mat-mul.js';
import { ModuleSet } from './module-set.js';
import { ADAPTER_DIM, ADAPTER_TARGETS, KRON_FACTORS, RANK, commonFactor, intOption } from './options.js';
import { isVit } from './lora.js';
import { BottleneckSet, bottleneckSites, type Projection } from './adapter.js';
import { kronSum, lowRankTerms } from './kron.js';
import { uniform, xavierUniform, zeros, type ParamStore } from './store.js';
import type { AdapterConfig, AdapterContext, AdapterSpec } from './types.js';

export const COMPACTER_OPTIONS = { ...KRON_FACTORS, ...RANK, ...ADAPTER_DIM, ...ADAPTER_TARGETS } as const satisfies Record<string, FieldSpec>;

/** A PHM projection in → out: x·(Σ A_i ⊗ s_i t_iᵀ) + b. */
function phmProjection(store: ParamStore, rule: tf.Variable, name: string, n: number, r: number, inF: number, outF: number, zeroUp: boolean): Projection {
  const k = inF / n;
  const p = outF / n;
  const left = store.add(`${name}.W_left`, [n, k, r], 'same', xavierUniform(r, k, Math.SQRT2));
  const right = store.add(`${name}.W_right`, [n, r, p], 'same', zeroUp ? zeros : xavierUniform(p, r, Math.SQRT2));
  const b = store.add(`${name}.b`, [outF], 'same', zeros);
  return (x) => {
    recordWeightInput(left, x);
    const h = kronSum(rule as tf.Tensor3D, lowRankTerms(left as tf.Tensor3D, right as tf.Tensor3D));
    return addBias(matMul(x, h), b);
  };
}

class CompacterSet extends BottleneckSet {
  constructor(
    private readonly sites: readonly AdapterSite[],
    private readonly cfg: AdapterConfig,
    ctx: AdapterContext,
  ) {
    super('compacter', ctx);
    const n = intOption(cfg, 'kronFactors', 4);
    const r = intOption(cfg, 'rank', 1);
    const chosen = bottleneckSites(sites, cfg, 'compacter');
    // Compacter's reduction factor 32 on each site's width (one width on the ViT; per conv on a CNN).
    const dimOf = (width: number) => intOption(cfg, 'adapterDim', Math.max(n, Math.ceil(width / 32 / n) * n));
    const bad = chosen.find((s) => s.dim % n !== 0);
    if (bad) {
      const where = isVit(sites) ? `${bad.name}'s width ${bad.dim}` : `the ${bad.dim} output channels of 1×1 conv ${bad.name}`;
      throw new CtaError(`--kron-factors ${n}: must divide ${where}; ${commonFactor(n, chosen.map((s) => s.dim))} divides every selected site of this model`);
    }
    const m0 = dimOf(chosen[0].dim);
    if (m0 % n !== 0) throw new CtaError(`--kron-factors ${n}: must divide --adapter-dim ${m0}`);
    // One set of rules for every PHM layer (Compacter's shared A_i).
    const rule = this.store.add('compacter.phm_rule', [n, n, n], 'same', uniform(1));
    for (const s of chosen) {
      const m = dimOf(s.dim);
      this.blocks.set(s.name, {
        down: phmProjection(this.store, rule, `${s.name}.compacter.down`, n, r, s.dim, m, false),
        up: phmProjection(this.store, rule, `${s.name}.compacter.up`, n, r, m, s.dim, true),
      });
    }
  }

  protected rebuild(ctx: AdapterContext): ModuleSet {
    return new CompacterSet(this.sites, this.cfg, ctx);
  }
}

export const compacter = {
  description: 'Compacter: bottleneck adapters with PHM (Σ A_i ⊗ s_i t_iᵀ) down/up projections after attention and MLP (ViT) or 1×1 convs (CNN), rules A_i shared by all layers',
  options: COMPACTER_OPTIONS,
  models: ['vit', 'cnn'],
  create: (model, cfg, ctx) => new CompacterSet(model.adapterSites(), cfg, ctx),
} satisfies AdapterSpec;
