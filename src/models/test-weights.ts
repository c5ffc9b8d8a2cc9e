/**
 * Test-only helper (not imported by library code): a random state_dict for a list of key names and
 * shapes, with values that keep activations in range through a deep network (He-scaled conv
 * filters, small linear weights, identity-like norm layers), so a full-size ResNet-50 or ViT-B/16
 * can be built and run without any real checkpoint.
 */
import type { RawTensor, StateDict } from '../io/types.js';
import { Rng } from '../util/rng.js';
import type { ResNeXtArch } from './resnext.js';

export interface KeyShape {
  name: string;
  shape: number[];
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

/** Uniform values with standard deviation `std` (uniform on ±std·√3: cheap and bounded). */
function fill(out: Float32Array, rng: Rng, std: number, mean = 0): void {
  const a = std * Math.sqrt(3);
  for (let i = 0; i < out.length; i++) out[i] = mean + (2 * rng.next() - 1) * a;
}

/**
 * Norm parameters: weight ≈ 1, bias ≈ 0, running_var ≈ 1. Convs: He (std √(2/fan_in)).
 * Linear weights: std 1/√fan_in (·0.5 inside transformer blocks, whose residual stream grows).
 * Tokens/embeddings: std 0.02 (timm's init). Other biases: small.
 */
export function randomStateDictForKeys(keys: readonly KeyShape[], seed = 1): StateDict {
  const rng = new Rng(seed);
  const sd: StateDict = new Map();
  for (const { name, shape } of keys) {
    const data = new Float32Array(numel(shape));
    const leaf = name.split('.').pop()!;
    const isNorm = /(^|\.)(bn\d*|norm\d*|downsample\.1)\./.test(name) || name.startsWith('norm.');
    if (name.endsWith('running_var')) fill(data, rng, 0.1, 1);
    else if (name.endsWith('running_mean')) fill(data, rng, 0.05);
    else if (isNorm && leaf === 'weight') fill(data, rng, 0.05, 1);
    else if (isNorm && leaf === 'bias') fill(data, rng, 0.02);
    else if (name === 'normalize.mean') data.set([0.485, 0.456, 0.406]);
    else if (name === 'normalize.std') data.set([0.229, 0.224, 0.225]);
    else if (name === 'cls_token' || name === 'pos_embed') fill(data, rng, 0.02);
    else if (leaf === 'bias') fill(data, rng, 0.01);
    else if (shape.length === 4) fill(data, rng, Math.sqrt(2 / numel(shape.slice(1))));
    else if (shape.length === 2) fill(data, rng, (name.startsWith('blocks.') ? 0.5 : 1) / Math.sqrt(shape[1]));
    else fill(data, rng, 0.02);
    const t: RawTensor = { dtype: 'float32', shape: [...shape], data };
    sd.set(name, t);
  }
  return sd;
}

/** Deterministic uint8 NHWC pixels scaled to [0, 1] (a smooth pattern plus noise). */
export function testImages(n: number, size: number, seed = 3): Float32Array {
  const rng = new Rng(seed);
  const out = new Float32Array(n * size * size * 3);
  let k = 0;
  for (let i = 0; i < n; i++) {
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        for (let c = 0; c < 3; c++) {
          const v = 128 + 60 * Math.sin((x * (c + 1)) / 17 + (y * (i + 1)) / 23) + 40 * (rng.next() - 0.5);
          out[k++] = Math.max(0, Math.min(255, Math.round(v))) / 255;
        }
      }
    }
  }
  return out;
}

/**
 * A reduced ResNeXt for the memory tests: the RobustBench block structure (stem, cardinality 4,
 * three stages) at small widths, 2 + 1 + 1 blocks.
 */
export const SMALL_RESNEXT: ResNeXtArch = {
  stem: 16,
  cardinality: 4,
  stages: [
    { blocks: 2, inner: 32, out: 64, stride: 1 },
    { blocks: 1, inner: 64, out: 128, stride: 2 },
    { blocks: 1, inner: 128, out: 256, stride: 2 },
  ],
  numClasses: 10,
  hasInputNorm: true,
  depth: 14,
  baseWidth: 32,
};
