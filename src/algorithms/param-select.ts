/**
 * Which parameters a gradient method trains (PyTorch `requires_grad`), by name from
 * `Classifier.parameters()`:
 * - the default of Tent / EATA / MECTA: the norm-layer affines (docs/methods.md#configuration);
 * - `--n-layer N`: the affines of the last N BatchNorm layers, MECTA's `filter=N` (below);
 * - `TRAIN_ALL`: every parameter (CoTTA, Wang et al., CVPR 2022, updates the whole student).
 */
import type { Classifier, ModelParameter, ParamFilter } from '../models/types.js';
import { CtaError } from '../util/errors.js';

/** Every parameter trains (CoTTA's student). */
export const TRAIN_ALL: ParamFilter = () => true;

/** The attached module set's parameters only (--adapt-params, docs/adapters.md). */
export const TRAIN_ADAPTERS: ParamFilter = (p) => p.kind === 'adapter';

/** Norm-layer affines only (Tent, EATA, MECTA). */
export const TRAIN_NORM: ParamFilter = (p) => p.kind === 'norm';

/** The module path of a parameter ('stage_1.0.bn.weight' → 'stage_1.0.bn'). */
export function moduleOf(name: string): string {
  const dot = name.lastIndexOf('.');
  return dot < 0 ? '' : name.slice(0, dot);
}

/**
 * The norm layers MECTA's `parse_filter(model, filter=N)` keeps, in module order: the BatchNorm2d
 * modules whose name does not contain 'downsample' (shortcut BNs are never counted), then the last
 * N of them for N > 0 and the first |N| for N ≤ 0 (so N = 0 keeps none). LayerNorms are not
 * BatchNorm2d, so a ViT has no candidates. The reference asserts that exactly |N| layers were
 * found; here that is a one-line CtaError.
 */
export function nLayerNames(model: Pick<Classifier, 'normLayers'>, n: number): string[] {
  if (!Number.isInteger(n)) throw new CtaError(`--n-layer must be an integer, got ${n}`);
  const candidates = model.normLayers.filter((l) => l.kind === 'batch' && !l.name.includes('downsample')).map((l) => l.name);
  const chosen = n > 0 ? candidates.slice(-n) : candidates.slice(0, -n);
  if (chosen.length !== Math.abs(n)) {
    throw new CtaError(`--n-layer ${n}: the model has only ${candidates.length} BatchNorm layers outside the downsample shortcuts`);
  }
  return chosen;
}

/** The filter that trains the affines of the last `n` BatchNorm layers (MECTA's filter=N). */
export function nLayerFilter(model: Pick<Classifier, 'normLayers'>, n: number): ParamFilter {
  const names = new Set(nLayerNames(model, n));
  return (p) => p.kind === 'norm' && names.has(moduleOf(p.name));
}

/**
 * The parameters that currently train, state_dict order. A model without `parameters()` (a test
 * double of the Classifier contract) is read from its trainable norm layers.
 */
export function trainingParameters(model: Classifier): ModelParameter[] {
  if (typeof model.parameters !== 'function') {
    return model.normLayers
      .filter((l) => l.trainable)
      .flatMap((l) =>
        (['weight', 'bias'] as const).map((k) => ({
          name: `${l.name}.${k}`,
          kind: 'norm' as const,
          requiresGrad: true,
          variable: l[k],
          shape: [l.numFeatures],
          toTorch: (t: import('../tf.js').tf.Tensor) => t.clone(),
        })),
      );
  }
  const out = model.parameters().filter((p) => p.requiresGrad);
  for (const p of out) if (!p.variable) throw new Error(`parameter ${p.name} requires grad but has no variable`);
  return out;
}
