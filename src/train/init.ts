/**
 * A freshly initialised RobustBench CifarResNeXt state_dict (the exact key names and PyTorch shapes
 * `buildModel('resnext29', …)` expects), from the constructor arguments of
 * `CifarResNeXt(ResNeXtBottleneck, depth, cardinality, base_width, num_classes)` plus a `width`
 * that scales RobustBench's fixed 64-channel stem (stage planes width, 2·width, 4·width; 64 gives
 * the published model).
 *
 * Initialisation is RobustBench's (robustbench/model_zoo/architectures/resnext.py):
 * conv weights N(0, sqrt(2/n)) with n = k·k·out_channels; BN γ = 1, β = 0, running mean 0,
 * running var 1; classifier weight kaiming_normal_ (fan_in, gain √2: N(0, sqrt(2/in))), bias 0.
 * `mu`/`sigma` [1,3,1,1] are the input normalisation buffers (per-channel mean/std of the data).
 */
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import type { RawTensor, StateDict } from '../io/types.js';
import { inferResNeXt, resnextExpectedKeys } from '../models/resnext.js';

export interface ResNeXtConfig {
  /** 9·blocks + 2 (29 for RobustBench's model; 11 = one block per stage). */
  depth: number;
  cardinality: number;
  /** RobustBench base_width: dim = floor(planes·baseWidth/64) channels per group. */
  baseWidth: number;
  /** Stem width = stage-1 planes (RobustBench: 64); stages use width, 2·width, 4·width. */
  width: number;
  numClasses: number;
}

const EXPANSION = 4;

/** Checks the configuration and returns blocks per stage. */
export function checkResNeXtConfig(c: ResNeXtConfig): number {
  const ints: [string, number, number][] = [
    ['depth', c.depth, 11],
    ['cardinality', c.cardinality, 1],
    ['base-width', c.baseWidth, 1],
    ['width', c.width, 1],
    ['num-classes', c.numClasses, 2],
  ];
  for (const [name, v, min] of ints) {
    if (!Number.isInteger(v) || v < min) throw new CtaError(`--${name}: expected an integer ≥ ${min}, got ${v}`);
  }
  if ((c.depth - 2) % 9 !== 0) {
    throw new CtaError(`--depth ${c.depth}: a CifarResNeXt has depth 9·blocks + 2 (11, 20, 29, 38, …)`);
  }
  if (Math.floor((c.width * c.baseWidth) / 64) < 1) {
    throw new CtaError(`--width ${c.width} with --base-width ${c.baseWidth} gives 0 channels per group (need width·base_width ≥ 64)`);
  }
  return (c.depth - 2) / 9;
}

function normal(rng: Rng, n: number, std: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * std;
  return out;
}

const f32 = (shape: number[], data: Float32Array): RawTensor => ({ dtype: 'float32', shape, data });

/** Shapes of every key of the configured model (in module order). */
export function resnextShapes(c: ResNeXtConfig, withInputNorm = true): Map<string, number[]> {
  const blocks = checkResNeXtConfig(c);
  // Build a skeleton state dict with only the keys inferResNeXt reads, then let the model code
  // list every key: the architecture rules live in one place (resnext.ts).
  const probe: StateDict = new Map();
  const z = (shape: number[]): RawTensor => f32(shape, new Float32Array(0));
  if (withInputNorm) probe.set('mu', z([1, 3, 1, 1]));
  probe.set('conv_1_3x3.weight', z([c.width, 3, 3, 3]));
  let inC = c.width;
  for (let s = 0; s < 3; s++) {
    const planes = c.width * 2 ** s;
    const d = Math.floor((planes * c.baseWidth) / 64) * c.cardinality;
    for (let i = 0; i < blocks; i++) {
      const p = `stage_${s + 1}.${i}`;
      probe.set(`${p}.conv_reduce.weight`, z([d, inC, 1, 1]));
      probe.set(`${p}.conv_conv.weight`, z([d, d / c.cardinality, 3, 3]));
      probe.set(`${p}.conv_expand.weight`, z([planes * EXPANSION, d, 1, 1]));
      inC = planes * EXPANSION;
    }
  }
  probe.set('classifier.weight', z([c.numClasses, inC]));
  return resnextExpectedKeys(inferResNeXt(probe));
}

/** Randomly initialised state dict (float32; no num_batches_tracked keys). */
export function initResNeXt(c: ResNeXtConfig, rng: Rng, inputNorm: { mean: number[]; std: number[] }): StateDict {
  const sd: StateDict = new Map();
  for (const [key, shape] of resnextShapes(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    let data: Float32Array;
    if (key === 'mu') data = Float32Array.from(inputNorm.mean);
    else if (key === 'sigma') data = Float32Array.from(inputNorm.std);
    else if (key === 'classifier.weight') data = normal(rng, n, Math.sqrt(2 / shape[1]));
    else if (key.endsWith('.weight') && shape.length === 4) data = normal(rng, n, Math.sqrt(2 / (shape[2] * shape[3] * shape[0])));
    else if (key.endsWith('.weight') || key.endsWith('.running_var')) data = new Float32Array(n).fill(1); // BN γ, var
    else data = new Float32Array(n); // BN β, running mean, classifier bias
    sd.set(key, f32(shape, data));
  }
  return sd;
}

/** Number of float parameters and buffers (what the weight file holds, num_batches_tracked aside). */
export function countValues(shapes: Map<string, number[]>): number {
  let n = 0;
  for (const s of shapes.values()) n += s.reduce((a, b) => a * b, 1);
  return n;
}
