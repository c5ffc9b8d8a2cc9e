/**
 * torchvision ResNet-50 (IMAGENET1K_V1 key names; docs/data-formats.md#resnet-50,
 * docs/protocol.md#models), NHWC:
 *
 *   (x − mean)/std → conv1 7×7/2 pad 3 → bn1 → relu → max-pool 3×3/2 pad 1
 *   → layer1..4 × Bottleneck (torchvision "v1.5": the stride sits in the 3×3 conv2, as in EATA's
 *     ResNet code):
 *       conv1 1×1 → bn1 → relu → conv2 3×3 (stride, pad 1, groups) → bn2 → relu → conv3 1×1 → bn3;
 *       residual = downsample.0 (1×1, stride) → downsample.1 on block 0 when the stride or width
 *       changes; relu(residual + branch)
 *   → global average pool → fc.
 *
 * Two key layouts are accepted: torchvision's (`conv1.weight`, …) and RobustBench's wrapped model
 * (`Hendrycks2020Many`, `Standard_R50`): every key under `model.` plus the `normalize.mean/std`
 * buffers [1,3,1,1] of its input normaliser, whose values then replace the ImageNet constants.
 * Widths, blocks per stage, groups and classes are read from the shapes, so the reduced test
 * models (and wide / grouped variants) load with the same code.
 */
import { tf } from '../tf.js';
import { CtaError } from '../util/errors.js';
import type { Rng } from '../util/rng.js';
import type { StateDict } from '../io/types.js';
import type { ClassifierOutput } from './types.js';
import type { AdapterSite } from './injection.js';
import { BaseClassifier } from './base.js';
import type { InputNorm } from './base.js';
import type { BatchNormLayer } from './batch-norm.js';
import { globalAvgPool } from './ops/lean.js';
import { relu } from './ops/relu-mask.js';
import type { Conv2d } from './ops/conv.js';
import type { Linear } from './ops/linear.js';
import { bnKeys, childCount, dimOf, divDim } from './infer.js';
import { bottleneck, bottleneckKeys, bottleneckLayers, bottleneckSites, forEachBottleneck, runBottleneck } from './bottleneck.js';
import { FoldedConvBn, foldable } from './fold.js';
import { GradCheckpoint } from './grad-checkpoint.js';
import type { Bottleneck, BottleneckBlock, BottleneckNames, BottleneckStage } from './bottleneck.js';

const STAGES = 4;
/** ImageNet mean/std (torchvision transforms; RobustBench's ImageNormalizer defaults). */
export const IMAGENET_NORM: Readonly<InputNorm> = Object.freeze({ mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] });

/** inner: conv1 / conv2 width (planes · base_width/64 · groups); out: conv3 width (planes · 4). */
export type ResNetStage = BottleneckStage;

export interface ResNetArch {
  /** '' (torchvision) or 'model.' (RobustBench wrapper). */
  prefix: string;
  hasNormalize: boolean;
  stem: number;
  groups: number;
  stages: ResNetStage[];
  numClasses: number;
  /** 3·blocks + 2 (each bottleneck has 3 convs, plus stem and fc): 50 for [3, 4, 6, 3]. */
  depth: number;
}

export function inferResNet(sd: StateDict): ResNetArch {
  const prefix = sd.has('model.conv1.weight') || [...sd.keys()].some((k) => k.startsWith('model.layer1.')) ? 'model.' : '';
  const stem = dimOf(sd, [`${prefix}conv1.weight`, `${prefix}bn1.weight`], 0);
  const stages: ResNetStage[] = [];
  for (let s = 1; s <= STAGES; s++) {
    const p = `${prefix}layer${s}.0`;
    stages.push({
      blocks: childCount(sd, `${prefix}layer${s}.`),
      inner: dimOf(sd, [`${p}.conv1.weight`, `${p}.bn1.weight`, `${p}.conv2.weight`], 0),
      out: dimOf(sd, [`${p}.conv3.weight`, `${p}.bn3.weight`], 0),
      stride: s === 1 ? 1 : 2,
    });
  }
  const p1 = `${prefix}layer1.0.conv2.weight`;
  return {
    prefix,
    hasNormalize: sd.has('normalize.mean') || sd.has('normalize.std'),
    stem,
    groups: divDim(dimOf(sd, [p1], 0), dimOf(sd, [p1], 1)),
    stages,
    numClasses: dimOf(sd, [`${prefix}fc.weight`, `${prefix}fc.bias`], 0),
    depth: 2 + 3 * stages.reduce((a, st) => a + st.blocks, 0),
  };
}

/** torchvision Bottleneck's module names. */
const NAMES: BottleneckNames = { reduce: ['conv1', 'bn1'], conv: ['conv2', 'bn2'], expand: ['conv3', 'bn3'] };
const blockPrefix = (p: string, b: BottleneckBlock) => `${p}layer${b.stage + 1}.${b.index}`;

/** Every state_dict key (num_batches_tracked excluded) with its PyTorch shape, in module order. */
export function resnetExpectedKeys(a: ResNetArch): Map<string, number[]> {
  const out = new Map<string, number[]>();
  if (a.hasNormalize) {
    out.set('normalize.mean', [1, 3, 1, 1]);
    out.set('normalize.std', [1, 3, 1, 1]);
  }
  const p = a.prefix;
  out.set(`${p}conv1.weight`, [a.stem, 3, 7, 7]);
  bnKeys(out, `${p}bn1`, a.stem);
  const last = forEachBottleneck(a.stages, a.stem, (b) => bottleneckKeys(out, blockPrefix(p, b), NAMES, b, a.groups));
  out.set(`${p}fc.weight`, [a.numClasses, last]);
  out.set(`${p}fc.bias`, [a.numClasses]);
  return out;
}

export interface ResNetOptions {
  rng: Rng;
  /** Input normalisation when the weights carry no `normalize.*` buffers (default ImageNet's). */
  inputNorm?: InputNorm | null;
  /** Square input side (default 224; the network itself accepts any size ≥ 32). */
  inputSize?: number;
}

export class ResNet50 extends BaseClassifier {
  readonly arch = 'resnet50';
  readonly numClasses: number;
  override readonly inputShape: readonly [number, number, number];
  readonly architecture: ResNetArch;
  private readonly stem: Conv2d;
  private readonly stemBn: BatchNormLayer;
  private readonly stemFolded: FoldedConvBn;
  private readonly blocks: Bottleneck[] = [];
  private readonly fc: Linear;
  readonly gradCheckpoint: GradCheckpoint;
  /** The input normalisation in use (from `normalize.*`, the option, or ImageNet's). */
  private normValues: { mean: number[]; std: number[] };
  private normTensors: [tf.Tensor1D, tf.Tensor1D] | null = null;

  /** `sd` must already match `resnetExpectedKeys(arch)` (the registry checks it). */
  constructor(sd: StateDict, arch: ResNetArch, private readonly opts: ResNetOptions) {
    super(sd, opts.rng);
    this.architecture = arch;
    this.numClasses = arch.numClasses;
    const side = opts.inputSize ?? 224;
    this.inputShape = [side, side, 3];
    const fallback = opts.inputNorm ?? IMAGENET_NORM;
    this.normValues = arch.hasNormalize
      ? { mean: Array.from(sd.get('normalize.mean')!.data), std: Array.from(sd.get('normalize.std')!.data) }
      : { mean: [...fallback.mean], std: [...fallback.std] };
    try {
      this.setNorm(this.normValues.mean, this.normValues.std);
      const p = arch.prefix;
      this.stem = this.conv(`${p}conv1`, { stride: 2, pad: 3, groups: 1 });
      this.stemBn = this.norm(`${p}bn1`);
      this.stemFolded = this.own(new FoldedConvBn(this.stem, this.stemBn, true));
      const prefixes: string[] = [];
      forEachBottleneck(arch.stages, arch.stem, (b) => {
        const layers = bottleneckLayers(blockPrefix(p, b), NAMES, b, arch.groups, (n, spec) => this.conv(n, spec), (n) => this.norm(n));
        this.blocks.push(bottleneck(layers, (o) => this.own(o), bottleneckSites(blockPrefix(p, b), NAMES, b, this.blocks.length)));
        prefixes.push(blockPrefix(p, b));
      });
      this.gradCheckpoint = new GradCheckpoint(this, arch.stages.map((st) => st.blocks), prefixes);
      this.fc = this.linear(`${p}fc`);
      this.finishBuild();
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  private setNorm(mean: readonly number[], std: readonly number[]): void {
    if (mean.length !== 3 || std.length !== 3 || std.some((v) => !(v > 0))) {
      throw new CtaError(`resnet50: input normalisation needs 3 means and 3 positive stds, got [${mean.join(',')}] / [${std.join(',')}]`);
    }
    const next: [tf.Tensor1D, tf.Tensor1D] = [
      tf.keep(tf.tensor1d(Float32Array.from(mean))),
      tf.keep(tf.tensor1d(Float32Array.from(std, (v) => 1 / v))),
    ];
    this.normTensors?.forEach((t) => t.dispose());
    this.normTensors = next;
    this.normValues = { mean: [...mean], std: [...std] };
  }

  /** `normalize.*` come with `sd` when the weights had them; otherwise `opts` gives the same fallback. */
  protected rebuild(sd: StateDict): ResNet50 {
    return new ResNet50(sd, this.architecture, this.opts);
  }

  /** The input normalisation (mean, std) the model applies. */
  get inputNorm(): InputNorm {
    return { mean: [...this.normValues.mean], std: [...this.normValues.std] };
  }

  /** Every bottleneck's 1×1 convs, forward order (src/models/injection.ts). */
  adapterSites(): readonly AdapterSite[] {
    return this.blocks.flatMap((b) => (b.sites ? [b.sites.reduce, b.sites.expand, ...(b.sites.down ? [b.sites.down] : [])] : []));
  }

  forwardFeatures(x: tf.Tensor4D): ClassifierOutput {
    this.checkInput(x);
    const [mean, invStd] = this.normTensors!;
    const fold = foldable(this.normMode);
    return tf.tidy(() => {
      let h = tf.tidy(() => {
        const xn = tf.mul(tf.sub(x, mean), invStd) as tf.Tensor4D;
        const s = fold ? this.stemFolded.apply(xn) : relu(this.stemBn.apply(this.stem.apply(xn)));
        // MaxPool2d(3, 2, padding=1): PyTorch pads with −inf. The input is a ReLU output (≥ 0) and
        // every window holds at least one real value, so zero padding gives the same maxima; and
        // an explicit pad + 'valid' pool avoids tfjs 'same' (asymmetric at stride 2) and the WASM
        // MaxPoolGrad's handling of numeric padding. A zero that wins a window passes its
        // gradient nowhere in either case: the ReLU's gradient is 0 there.
        return tf.maxPool(tf.pad(s, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, 2, 'valid') as tf.Tensor4D;
      });
      // see resnext.ts: block inputs freed early; stages in segments with --grad-checkpoint-segments
      h = this.gradCheckpoint.run(this.blocks, h, (b, xb) => runBottleneck(b, xb, fold, this.adapterHooks), true);
      const features = globalAvgPool(h);
      return { features, logits: this.fc.apply(features) };
    });
  }

  /** Includes RobustBench's `normalize.mean/std` buffers when the weights had them. */
  override stateDict(): Map<string, tf.Tensor> {
    const inner = super.stateDict();
    if (!this.architecture.hasNormalize) return inner;
    const out = new Map<string, tf.Tensor>([
      ['normalize.mean', tf.tensor4d(Float32Array.from(this.normValues.mean), [1, 3, 1, 1])],
      ['normalize.std', tf.tensor4d(Float32Array.from(this.normValues.std), [1, 3, 1, 1])],
    ]);
    for (const [k, v] of inner) out.set(k, v);
    return out;
  }

  override loadStateDict(sd: Map<string, tf.Tensor>): void {
    if (!this.architecture.hasNormalize) {
      super.loadStateDict(sd);
      return;
    }
    const mean = sd.get('normalize.mean');
    const std = sd.get('normalize.std');
    if (!mean || !std || mean.size !== 3 || std.size !== 3) {
      throw new CtaError(`loadStateDict: state does not match ${this.arch}: normalize.mean / normalize.std [1,3,1,1] missing`);
    }
    const rest = new Map([...sd].filter(([k]) => k !== 'normalize.mean' && k !== 'normalize.std'));
    super.loadStateDict(rest);
    this.setNorm(Array.from(mean.dataSync()), Array.from(std.dataSync()));
  }

  override dispose(): void {
    super.dispose();
    this.normTensors?.forEach((t) => t.dispose());
    this.normTensors = null;
  }
}

