/**
 * Model registry: architecture name → how to read its shape off a state_dict, which keys/shapes it
 * expects, and how to build it. `buildModel` validates the whole state_dict first (one CtaError
 * listing missing / unexpected / wrongly shaped keys), so a model is never partially loaded.
 */
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import type { StateDict } from '../io/types.js';
import { checkKeys } from '../io/state-dict.js';
import type { Classifier } from './types.js';
import { isBatchCounter } from './base.js';
import type { InputNorm } from './base.js';
import { UNKNOWN } from './infer.js';
import { CifarResNeXt, inferResNeXt, resnextExpectedKeys } from './resnext.js';
import { WideResNet, inferWrn, wrnExpectedKeys } from './wrn.js';
import { ResNet50, inferResNet, resnetExpectedKeys } from './resnet50.js';
import { VIT_B16_CONFIG, VisionTransformer, inferVit, vitExpectedKeys } from './vit.js';

/** Architecture facts a config may pin; checked against what the weights imply. */
export interface ExpectedArch {
  depth?: number;
  cardinality?: number;
  baseWidth?: number;
  /** ViT attention heads, when the weights carry them (Google .npz: query/kernel [D, heads, head_dim]). */
  heads?: number;
}

export interface BuildOptions {
  /** Seeded generator for MECTA's channel pruning (docs/mecta-norm.md#pruning). */
  rng: Rng;
  expect?: ExpectedArch;
  /**
   * Input normalisation used when the weights carry no `mu`/`sigma` buffers (e.g. a RobustBench
   * AugMix checkpoint saved without them: RobustBench itself then uses mean = std = 0.5).
   */
  inputNorm?: InputNorm | null;
}

interface ModelSpec {
  readonly description: string;
  /** Every expected key (num_batches_tracked excluded) → PyTorch shape; −1 = not inferable. */
  expectedKeys(sd: StateDict): Map<string, number[]>;
  /** One line on what the weights imply (for error messages). */
  describe(sd: StateDict): string;
  /** Mismatches between the pinned facts and the weights, as phrases. */
  check(sd: StateDict, expect: ExpectedArch): string[];
  build(sd: StateDict, opts: BuildOptions): Classifier;
}

function mismatch(label: string, want: number | undefined, got: number): string[] {
  return want !== undefined && want !== got ? [`${label} ${want} expected, weights have ${got === UNKNOWN ? 'unknown' : got}`] : [];
}

export const MODELS = {
  resnext29: {
    description: 'RobustBench CifarResNeXt (Hendrycks2020AugMix_ResNeXt: depth 29, cardinality 4, base width 32)',
    expectedKeys: (sd) => resnextExpectedKeys(inferResNeXt(sd)),
    describe: (sd) => {
      const a = inferResNeXt(sd);
      return `depth ${a.depth}, cardinality ${dimText(a.cardinality)}, base width ${dimText(a.baseWidth)}, ${a.numClasses} classes`;
    },
    check: (sd, e) => {
      const a = inferResNeXt(sd);
      return [
        ...mismatch('depth', e.depth, a.depth),
        ...mismatch('cardinality', e.cardinality, a.cardinality),
        ...mismatch('base width', e.baseWidth, a.baseWidth),
      ];
    },
    build: (sd, opts) => new CifarResNeXt(sd, inferResNeXt(sd), { rng: opts.rng, inputNorm: opts.inputNorm }),
  },
  wrn28_10: {
    description: 'RobustBench WideResNet (Standard: WRN-28-10, no input normalisation)',
    expectedKeys: (sd) => wrnExpectedKeys(inferWrn(sd)),
    describe: (sd) => {
      const a = inferWrn(sd);
      return `depth ${a.depth}, widen factor ${dimText(a.widenFactor)}, ${a.numClasses} classes`;
    },
    check: (sd, e) => {
      const a = inferWrn(sd);
      const out = mismatch('depth', e.depth, a.depth);
      // Cardinality / base width do not exist for a WideResNet: a pinned value is a config error.
      if (e.cardinality !== undefined) out.push(`cardinality ${e.cardinality} given, but wrn28_10 has none (ResNeXt only)`);
      if (e.baseWidth !== undefined) out.push(`base width ${e.baseWidth} given, but wrn28_10 has none (ResNeXt only)`);
      return out;
    },
    build: (sd, opts) => new WideResNet(sd, inferWrn(sd), { rng: opts.rng, inputNorm: opts.inputNorm }),
  },
  resnet50: {
    description: 'torchvision ResNet-50 (IMAGENET1K_V1 key names, ImageNet mean/std inside the model); also RobustBench Hendrycks2020Many (model. prefix + normalize.mean/std)',
    expectedKeys: (sd) => resnetExpectedKeys(inferResNet(sd)),
    describe: (sd) => {
      const a = inferResNet(sd);
      const blocks = a.stages.map((s) => s.blocks).join('/');
      return `depth ${a.depth} (blocks ${blocks}), stem ${dimText(a.stem)}, groups ${dimText(a.groups)}, ${dimText(a.numClasses)} classes${a.prefix ? ', RobustBench model. prefix' : ''}`;
    },
    check: (sd, e) => {
      const a = inferResNet(sd);
      const out = [...mismatch('depth', e.depth, a.depth), ...mismatch('cardinality (3×3 conv groups)', e.cardinality, a.groups)];
      if (e.baseWidth !== undefined) out.push(`base width ${e.baseWidth} given, but resnet50 is checked by depth and groups only`);
      return out;
    },
    build: (sd, opts) => new ResNet50(sd, inferResNet(sd), { rng: opts.rng, inputNorm: opts.inputNorm }),
  },
  vit_b16: {
    description: 'timm vit_base_patch16_224 key names (12 heads, LayerNorm ε 1e-6, mean = std = 0.5 as for the augreg weights); adapts LayerNorms',
    expectedKeys: (sd) => vitExpectedKeys(inferVit(sd)),
    describe: (sd) => {
      const a = inferVit(sd);
      const side = a.grid === UNKNOWN || a.patch === UNKNOWN ? '?' : String(a.grid * a.patch);
      return `depth ${a.depth}, width ${dimText(a.dim)}, MLP ${dimText(a.mlpDim)}, patch ${dimText(a.patch)}, input ${side} px, ${dimText(a.numClasses)} classes`;
    },
    check: (sd, e) => {
      const a = inferVit(sd);
      const out = mismatch('depth (blocks)', e.depth, a.depth);
      if (e.cardinality !== undefined) out.push(`cardinality ${e.cardinality} given, but vit_b16 has none`);
      if (e.baseWidth !== undefined) out.push(`base width ${e.baseWidth} given, but vit_b16 has none`);
      const heads = e.heads ?? VIT_B16_CONFIG.heads;
      if (a.dim !== UNKNOWN && a.dim % heads !== 0) out.push(`width ${a.dim} is not divisible by the ${heads} heads of ${e.heads === undefined ? 'vit_b16' : 'the checkpoint'}`);
      const tokens = sd.get('pos_embed')?.shape[1];
      if (tokens !== undefined && a.grid === UNKNOWN) out.push(`pos_embed has ${tokens} tokens, not 1 class token + a square patch grid (register tokens / other pooling are not supported)`);
      return out;
    },
    // The model config (heads, mean/std, ε) travels with the architecture; --model vit_b16 always
    // means timm's augreg normalisation unless a caller passes another explicitly.
    build: (sd, opts) => {
      const config = { ...(opts.inputNorm ? { inputNorm: opts.inputNorm } : {}), ...(opts.expect?.heads !== undefined ? { heads: opts.expect.heads } : {}) };
      return new VisionTransformer(sd, inferVit(sd), Object.keys(config).length > 0 ? { config } : {});
    },
  },
} satisfies Record<string, ModelSpec>;

export type ModelName = keyof typeof MODELS;
export const MODEL_NAMES = Object.keys(MODELS) as ModelName[];

export function isModelName(name: string): name is ModelName {
  return Object.prototype.hasOwnProperty.call(MODELS, name);
}

function fitsExactly(spec: ModelSpec, weights: StateDict): boolean {
  const expected = spec.expectedKeys(weights);
  if (expected.size !== weights.size) return false;
  for (const [key, shape] of expected) {
    const have = weights.get(key);
    if (!have || have.shape.length !== shape.length || have.shape.some((d, i) => d !== shape[i])) return false;
  }
  return true;
}

const dimText = (n: number) => (n === UNKNOWN ? '?' : String(n));

/**
 * Validates `sd` against the architecture it implies and builds the model. Throws one CtaError
 * for: an unknown arch, any key mismatch (all listed at once), a non-float weight, or a pinned
 * depth/cardinality/base width that differs from the weights. `num_batches_tracked` is ignored.
 */
export function buildModel(arch: string, sd: StateDict, opts: BuildOptions): Classifier {
  if (!isModelName(arch)) {
    throw new CtaError(`unknown model '${arch}' (choose one of: ${MODEL_NAMES.join(', ')})`);
  }
  const spec: ModelSpec = MODELS[arch];
  const weights: StateDict = new Map([...sd].filter(([k]) => !isBatchCounter(k)));
  const expected = spec.expectedKeys(weights);
  // Dimensions the weights do not reveal (their source key is missing, and reported as such)
  // must not also be reported as wrong shapes elsewhere: take them from the file.
  for (const [key, shape] of expected) {
    const have = weights.get(key);
    if (have && shape.includes(UNKNOWN) && have.shape.length === shape.length) {
      expected.set(key, shape.map((d, i) => (d === UNKNOWN ? have.shape[i] : d)));
    }
  }
  // mu/sigma are expected as a pair as soon as either is present, so a lone one shows as missing.
  try {
    checkKeys(weights, expected, 'weights', `${arch} (${spec.describe(weights)})`);
  } catch (e) {
    // The usual cause is the wrong --model: say so when another architecture fits exactly.
    const fits = MODEL_NAMES.filter((other) => other !== arch && fitsExactly(MODELS[other], weights));
    if (e instanceof CtaError && fits.length > 0) throw new CtaError(`${e.message} (the weights fit --model ${fits[0]})`);
    throw e;
  }
  const nonFloat = [...weights].filter(([, t]) => !(t.data instanceof Float32Array)).map(([k, t]) => `${k} (${t.dtype})`);
  if (nonFloat.length > 0) {
    throw new CtaError(`weights: ${nonFloat.length} tensor(s) are not floating point: ${nonFloat.slice(0, 4).join(', ')}`);
  }
  const problems = spec.check(weights, opts.expect ?? {});
  if (problems.length > 0) {
    throw new CtaError(`weights do not match the configured ${arch}: ${problems.join('; ')}`);
  }
  return spec.build(weights, opts);
}
