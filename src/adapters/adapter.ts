/**
 * Bottleneck adapters (Houlsby et al., ICML 2019, Fig. 2): h ← h + W_up·GELU(W_down·h + b_down)
 * + b_up on a sub-layer's output before its residual add — after the attention and after the MLP
 * of every ViT block by default — or on a CNN's 1×1 convolution outputs. W_down is PyTorch
 * nn.Linear's kaiming-uniform, W_up and both biases are zero, so the adapter is the identity at
 * step 0 (AdaptFormer's choice of the near-identity init Houlsby et al. ask for).
 * docs/adapters.md#adapter.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { FieldSpec } from '../config/schema.js';
import type { AdapterSite, BranchSite, ConvSite } from '../models/injection.js';
import { recordWeightInput } from '../models/ops/weights.js';
import { gelu } from '../models/vit.js';
import { add, reshape } from '../models/ops/lean.js';
import { addBias } from './ops.js';
import { matMul } from '../models/ops/mat-mul.js';
import { ModuleSet } from './module-set.js';
import { ADAPTER_DIM, ADAPTER_TARGETS, blockCount, intOption, parseBlocks, parseTargets } from './options.js';
import { CNN_CONV_TARGETS, convRows, isVit, selectConvSites } from './lora.js';
import { kaimingUniform, zeros, type ParamStore } from './store.js';
import type { AdapterConfig, AdapterContext, AdapterSpec } from './types.js';

export const ADAPTER_OPTIONS = { ...ADAPTER_DIM, ...ADAPTER_TARGETS } as const satisfies Record<string, FieldSpec>;

export const VIT_BRANCH_TARGETS = ['attn', 'mlp'] as const;

/** A site that gets a bottleneck: a ViT sub-layer output or a CNN 1×1 conv output. */
export interface BottleneckSite {
  name: string;
  dim: number;
}

/** The sites a bottleneck kind adapts, with the kind's targets (ViT attn/mlp, CNN 1×1 convs). */
export function bottleneckSites(sites: readonly AdapterSite[], cfg: AdapterConfig, kind: string): BottleneckSite[] {
  const inBlocks = parseBlocks(cfg, blockCount(sites));
  let out: BottleneckSite[];
  if (isVit(sites)) {
    const targets = parseTargets(cfg, VIT_BRANCH_TARGETS, VIT_BRANCH_TARGETS, kind);
    out = sites
      .filter((s): s is BranchSite => s.kind === 'branch' && inBlocks(s.block) && targets.has(s.role))
      .map((s) => ({ name: s.name, dim: s.dim }));
  } else {
    const targets = parseTargets(cfg, CNN_CONV_TARGETS, CNN_CONV_TARGETS, kind);
    out = selectConvSites(sites, targets, inBlocks).map((s) => ({ name: s.name, dim: s.outChannels }));
  }
  if (out.length === 0) throw new CtaError(`--adapt-params ${kind}: no site matches --adapt-targets / --adapt-blocks on this model`);
  return out;
}

/** One projection of a bottleneck: rows [R, in] → [R, out]. */
export type Projection = (x: tf.Tensor2D) => tf.Tensor2D;

/** x + up(GELU(down(x))) on [R, D] rows. */
export function bottleneck(down: Projection, up: Projection, x: tf.Tensor2D): tf.Tensor2D {
  return add(x, up(gelu(down(x))));
}

/** A plain linear projection with bias, its weight's input recorded for the accounting. */
export function denseProjection(store: ParamStore, name: string, inF: number, outF: number, zeroWeight: boolean): Projection {
  const w = store.add(`${name}.weight`, [outF, inF], 'linear', zeroWeight ? zeros : kaimingUniform(inF));
  const b = store.add(`${name}.bias`, [outF], 'same', zeros);
  return (x) => {
    recordWeightInput(w, x);
    return addBias(matMul(x, w), b);
  };
}

/** The bottleneck of each site, applied by the `branch` (ViT) and `conv` (CNN) hooks. */
export abstract class BottleneckSet extends ModuleSet {
  protected readonly blocks = new Map<string, { down: Projection; up: Projection }>();

  branch(site: BranchSite, h: tf.Tensor3D): tf.Tensor3D {
    const e = this.blocks.get(site.name);
    if (!e) return h;
    const [n, t, d] = h.shape;
    return reshape<tf.Tensor3D>(bottleneck(e.down, e.up, reshape<tf.Tensor2D>(h, [n * t, d])), [n, t, d]);
  }

  conv(site: ConvSite, _x: tf.Tensor4D, y: tf.Tensor4D): tf.Tensor4D {
    const e = this.blocks.get(site.name);
    if (!e) return y;
    const { rows, outShape } = convRows(y, 1);
    return reshape<tf.Tensor4D>(bottleneck(e.down, e.up, rows), [...outShape, site.outChannels]);
  }
}

class HoulsbySet extends BottleneckSet {
  constructor(
    private readonly sites: readonly AdapterSite[],
    private readonly cfg: AdapterConfig,
    ctx: AdapterContext,
  ) {
    super('adapter', ctx);
    const m = intOption(cfg, 'adapterDim', 64);
    for (const s of bottleneckSites(sites, cfg, 'adapter')) {
      this.blocks.set(s.name, {
        down: denseProjection(this.store, `${s.name}.adapter.down`, s.dim, m, false),
        up: denseProjection(this.store, `${s.name}.adapter.up`, m, s.dim, true),
      });
    }
  }

  protected rebuild(ctx: AdapterContext): ModuleSet {
    return new HoulsbySet(this.sites, this.cfg, ctx);
  }
}

export const adapter = {
  description: 'Houlsby bottleneck adapters: h + up(GELU(down(h))) after attention and MLP (ViT) or 1×1 convs (CNN); up = 0 at start',
  options: ADAPTER_OPTIONS,
  models: ['vit', 'cnn'],
  create: (model, cfg, ctx) => new HoulsbySet(model.adapterSites(), cfg, ctx),
} satisfies AdapterSpec;
