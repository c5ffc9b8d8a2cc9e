/**
 * Random state dicts with the exact RobustBench key names and shapes, for memory profiling and
 * tests without a weights file (`profile-mem --synthetic`). Values are He-normal convolutions,
 * BN weight 1 / bias 0 / running mean 0 / running var 1, input mu = sigma = 0.5 and a random
 * classifier: numerically tame, but of course not a trained model — memory and time figures
 * depend only on the shapes.
 */
import type { RawTensor, StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import { resnextExpectedKeys, type ResNeXtArch } from '../models/resnext.js';
import { wrnExpectedKeys, type WrnArch } from '../models/wrn.js';
import { resnetExpectedKeys } from '../models/resnet50.js';
import { vitExpectedKeys } from '../models/vit.js';
import { CtaError } from '../util/errors.js';

/** RobustBench Hendrycks2020AugMix_ResNeXt: depth 29, cardinality 4, base width 32. */
export function robustbenchResNeXtArch(numClasses = 10): ResNeXtArch {
  return {
    stem: 64,
    cardinality: 4,
    stages: [
      { blocks: 3, inner: 128, out: 256, stride: 1 },
      { blocks: 3, inner: 256, out: 512, stride: 2 },
      { blocks: 3, inner: 512, out: 1024, stride: 2 },
    ],
    numClasses,
    hasInputNorm: true,
    depth: 29,
    baseWidth: 32,
  };
}

/** RobustBench Standard WRN-28-10. */
export function robustbenchWrnArch(numClasses = 10): WrnArch {
  return {
    stem: 16,
    groups: [
      { layers: 4, width: 160, stride: 1 },
      { layers: 4, width: 320, stride: 2 },
      { layers: 4, width: 640, stride: 2 },
    ],
    numClasses,
    depth: 28,
    widenFactor: 10,
  };
}

/** Classifier weights of the registry models (RobustBench ResNeXt / WRN, torchvision, timm). */
const HEADS = /^(classifier|fc|head)\.weight$/;

function fill(shape: number[], key: string, rng: Rng): Float32Array {
  const size = shape.reduce((a, d) => a * d, 1);
  const out = new Float32Array(size);
  const leaf = key.slice(key.lastIndexOf('.') + 1);
  if (key === 'mu') return out.fill(0.5);
  if (key === 'sigma') return out.fill(0.5);
  if (leaf === 'running_var' || (leaf === 'weight' && shape.length === 1)) return out.fill(1);
  if (leaf === 'running_mean' || leaf === 'bias') return out; // zeros
  // Conv [out, in/g, k, k] and linear [out, in]: He-normal on the fan-in. The classifier head
  // gets 3× that, so that random inputs get confident predictions (entropy ≈ 0.1–0.8 < EATA's
  // E0 = 0.4·ln 10 on random images) and EATA selects samples and runs its backward, as it would
  // on a trained model. Only the head: 3× on every linear layer of a ViT block blows up the
  // residual stream over 12 blocks and the model predicts one class for every input.
  const fanIn = shape.slice(1).reduce((a, d) => a * d, 1);
  const std = Math.sqrt(2 / fanIn) * (shape.length === 2 && HEADS.test(key) ? 3 : 1);
  for (let i = 0; i < size; i++) out[i] = rng.normal() * std;
  return out;
}

function fromShapes(shapes: Map<string, number[]>, seed: number): StateDict {
  const rng = new Rng(seed);
  const sd: StateDict = new Map();
  for (const [key, shape] of shapes) {
    const t: RawTensor = { dtype: 'float32', shape: [...shape], data: fill(shape, key, rng) };
    sd.set(key, t);
  }
  return sd;
}

/** Full-size key → shape lists: RobustBench CIFAR models, torchvision ResNet-50, timm ViT-B/16. */
const FULL_SIZE: Record<string, (numClasses?: number) => Map<string, number[]>> = {
  resnext29: (c) => resnextExpectedKeys(robustbenchResNeXtArch(c)),
  wrn28_10: (c) => wrnExpectedKeys(robustbenchWrnArch(c)),
  resnet50: (c = 1000) =>
    resnetExpectedKeys({
      prefix: '',
      hasNormalize: false,
      stem: 64,
      groups: 1,
      stages: [
        { blocks: 3, inner: 64, out: 256, stride: 1 },
        { blocks: 4, inner: 128, out: 512, stride: 2 },
        { blocks: 6, inner: 256, out: 1024, stride: 2 },
        { blocks: 3, inner: 512, out: 2048, stride: 2 },
      ],
      numClasses: c,
      depth: 50,
    }),
  vit_b16: (c = 1000) => vitExpectedKeys({ dim: 768, depth: 12, mlpDim: 3072, patch: 16, grid: 14, numClasses: c, qkvBias: true }),
};

/** A random state dict for `model` at its published full size (every registry architecture). */
export function randomStateDict(model: string, opts: { numClasses?: number; seed?: number } = {}): StateDict {
  const shapes = FULL_SIZE[model];
  if (!shapes) throw new CtaError(`no random-weight template for model '${model}'`);
  return fromShapes(shapes(opts.numClasses), opts.seed ?? 0);
}

/** A random state dict for any ResNeXt shape (small variants for tests). */
export function randomResNeXt(arch: ResNeXtArch, seed = 0): StateDict {
  return fromShapes(resnextExpectedKeys(arch), seed);
}
