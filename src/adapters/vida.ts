/**
 * ViDA (Liu et al., ICLR 2024, Eq. 2–3, official inject_vida.py): beside every linear of the
 * attention (timm's qkv and proj), a low-rank and a high-rank adapter,
 *   h = W₀x + λ_low·W_up,l·W_down,l·x + λ_high·W_up,h·W_down,h·x,
 * ranks 1 and 128 (the official vida_rank1 / vida_rank2), W_down ~ N(0, (1/r²)²) and W_up = 0
 * (so the model is unchanged at step 0). The scales follow the batch's uncertainty (Sec. 3.3):
 * U = 0.1·mean Var_j[f(aug_j(x))] over 10 augmented predictions (torch.var, unbiased); if
 * U ≥ 0.2 the high-rank adapter gets λ_high = 1 + U and the low-rank λ_low = 1 − U, otherwise
 * the other way round. The official set_scale only ever changes λ_low (its `elif` for scale2 is
 * never reached, every injected module having both), which is `--vida-scale-update official`,
 * the default; `paper` moves both, `off` keeps both at 1. Under a method without a teacher the
 * model itself (with its current adapters) gives the augmented predictions; under a mean teacher
 * (cotta) the teacher gives them and both models get the scales, as in the official
 * forward_and_adapt (src/adapters/teacher.ts). docs/adapters.md#vida.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { FieldSpec } from '../config/schema.js';
import type { AdapterSet, AdapterSite, LinearSite } from '../models/injection.js';
import { ModuleSet } from './module-set.js';
import { add } from '../models/ops/lean.js';
import { scaled } from './ops.js';
import { ADAPTER_TARGETS, blockCount, parseBlocks, parseTargets } from './options.js';
import { VIT_LINEAR_TARGETS, lowRank, selectLinearSites, type LowRank } from './lora.js';
import { normal, zeros } from './store.js';
import type { AdapterConfig, AdapterContext, AdapterSpec } from './types.js';

export const VIDA_SCALE_UPDATES = ['official', 'paper', 'off'] as const;

export const VIDA_OPTIONS = {
  vidaLowRank: { type: 'int', min: 1, default: 1, group: 'adapters', description: "ViDA's low-rank adapter rank (official vida_rank1)" },
  vidaHighRank: { type: 'int', min: 1, default: 128, group: 'adapters', description: "ViDA's high-rank adapter rank (official vida_rank2)" },
  vidaScaleUpdate: { type: 'enum', choices: VIDA_SCALE_UPDATES, default: 'official', group: 'adapters', description: "ViDA's uncertainty scales: official (only λ_low moves, as the released code does), paper (both), off (both 1)" },
  vidaUncThr: { type: 'number', min: 0, default: 0.2, group: 'adapters', description: "ViDA's uncertainty threshold (official --unc_thr)" },
  vidaAugmentations: { type: 'int', min: 2, default: 10, group: 'adapters', description: 'ViDA: augmented predictions per batch for the uncertainty (official N = 10)' },
  ...ADAPTER_TARGETS,
} as const satisfies Record<string, FieldSpec>;

/** ViDA's allotment (Sec. 3.3): λ_low, λ_high from the uncertainty U and the threshold. */
export function vidaScales(u: number, thr: number, mode: (typeof VIDA_SCALE_UPDATES)[number]): { low: number; high: number } {
  if (mode === 'off') return { low: 1, high: 1 };
  const low = u >= thr ? 1 - u : 1 + u;
  const high = u >= thr ? 1 + u : 1 - u;
  return mode === 'paper' ? { low, high } : { low, high: 1 };
}

class VidaSet extends ModuleSet {
  private readonly pairs = new Map<string, { low: LowRank; high: LowRank }>();
  private scaleLow = 1;
  private scaleHigh = 1;
  private readonly mode: (typeof VIDA_SCALE_UPDATES)[number];

  constructor(
    private readonly sites: readonly AdapterSite[],
    private readonly cfg: AdapterConfig,
    private readonly ctx: AdapterContext,
  ) {
    super('vida', ctx);
    const r1 = Number(cfg.vidaLowRank ?? VIDA_OPTIONS.vidaLowRank.default);
    const r2 = Number(cfg.vidaHighRank ?? VIDA_OPTIONS.vidaHighRank.default);
    this.mode = (cfg.vidaScaleUpdate ?? VIDA_OPTIONS.vidaScaleUpdate.default) as (typeof VIDA_SCALE_UPDATES)[number];
    const targets = parseTargets(cfg, VIT_LINEAR_TARGETS.filter((t) => !['q', 'k', 'v'].includes(t)), ['qkv', 'proj'], 'vida');
    const inBlocks = parseBlocks(cfg, blockCount(sites));
    const pair = (name: string, down: string, up: string, r: number, s: LinearSite): LowRank => ({
      a: this.store.add(`${name}.${down}.weight`, [r, s.inFeatures], 'linear', normal(1 / (r * r))),
      b: this.store.add(`${name}.${up}.weight`, [s.outFeatures, r], 'linear', zeros),
      scale: 1,
    });
    for (const s of selectLinearSites(sites, targets, inBlocks)) {
      this.pairs.set(s.name, { low: pair(s.name, 'vida_down', 'vida_up', r1, s), high: pair(s.name, 'vida_down2', 'vida_up2', r2, s) });
    }
    if (this.pairs.size === 0) throw new CtaError(`--adapt-params vida: no layer matches --adapt-targets / --adapt-blocks on this model`);
  }

  get scales(): { low: number; high: number } {
    return { low: this.scaleLow, high: this.scaleHigh };
  }

  linear(site: LinearSite, x: tf.Tensor2D, y: tf.Tensor2D): tf.Tensor2D {
    const p = this.pairs.get(site.name);
    if (!p) return y;
    // λ on the r-wide hidden (LowRank.scale) would be the same product; here on the output, saving nothing.
    const low = scaled(lowRank(p.low, x), this.scaleLow);
    const high = scaled(lowRank(p.high, x), this.scaleHigh);
    return add(add(y, low), high);
  }

  /** The uncertainty of `x` under `predict`: 0.1·mean over logits of the unbiased variance across augmentations. */
  uncertainty(x: tf.Tensor4D, predict: (x: tf.Tensor4D) => tf.Tensor2D): number {
    if (!this.ctx.augment) throw new CtaError('--adapt-params vida: the scale update needs the test-time augmentation', 1);
    const n = Number(this.cfg.vidaAugmentations ?? VIDA_OPTIONS.vidaAugmentations.default);
    const augment = this.ctx.augment;
    const u = tf.tidy(() => {
      const outs = Array.from({ length: n }, () => predict(augment(x)));
      const stack = tf.stack(outs); // [n, N, K]
      const mean = tf.mean(stack, 0);
      const variance = tf.div(tf.sum(tf.square(tf.sub(stack, mean)), 0), n - 1);
      return tf.mul(tf.mean(variance), 0.1);
    });
    const value = u.dataSync()[0];
    u.dispose();
    return value;
  }

  beforeStep(x: tf.Tensor4D, predict: (x: tf.Tensor4D) => tf.Tensor2D): void {
    if (this.mode === 'off') return;
    const thr = Number(this.cfg.vidaUncThr ?? VIDA_OPTIONS.vidaUncThr.default);
    // The augmented predictions use the current scales (the official code sets them after).
    const s = vidaScales(this.uncertainty(x, predict), thr, this.mode);
    this.scaleLow = s.low;
    this.scaleHigh = s.high;
  }

  /** The scales a mean teacher's set decided (official: set_scale on the student and on model_ema). */
  copyStepState(from: AdapterSet): void {
    if (!(from instanceof VidaSet)) throw new Error(`vida: cannot take the step state of a '${from.kind}' set`);
    this.scaleLow = from.scaleLow;
    this.scaleHigh = from.scaleHigh;
  }

  override saveState(): Map<string, tf.Tensor> {
    const out = super.saveState();
    out.set('vida.scales', tf.tensor1d([this.scaleLow, this.scaleHigh]));
    return out;
  }

  override loadState(state: Map<string, tf.Tensor>): void {
    const scales = state.get('vida.scales');
    if (!scales || scales.size !== 2) throw new CtaError('adapter state does not match the modules built for this model and options: vida.scales [2] missing');
    const rest = new Map([...state].filter(([k]) => k !== 'vida.scales'));
    super.loadState(rest);
    [this.scaleLow, this.scaleHigh] = Array.from(scales.dataSync());
  }

  override clone() {
    const copy = super.clone() as VidaSet;
    copy.scaleLow = this.scaleLow;
    copy.scaleHigh = this.scaleHigh;
    return copy;
  }

  protected rebuild(ctx: AdapterContext): ModuleSet {
    return new VidaSet(this.sites, this.cfg, { ...ctx, augment: this.ctx.augment });
  }
}

export const vida = {
  description: "ViDA: rank-1 and rank-128 adapters beside the attention linears, scaled by the batch's uncertainty",
  options: VIDA_OPTIONS,
  models: ['vit'],
  create: (model, cfg, ctx) => new VidaSet(model.adapterSites(), cfg, ctx),
} satisfies AdapterSpec;
