/**
 * RobustBench CifarResNeXt (`Hendrycks2020AugMix_ResNeXt` = depth 29, cardinality 4, base width 32;
 * docs/data-formats.md#resnext-29, docs/protocol.md#models), NHWC on tfjs:
 *
 *   [(x − mu)/sigma] → conv_1_3x3 → bn_1 → relu
 *   → stage_1..3 × ResNeXtBottleneck:
 *       conv_reduce 1×1 → bn_reduce → relu → conv_conv 3×3 grouped (stride on block 0 of stages
 *       2, 3; pad 1) → bn → relu → conv_expand 1×1 → bn_expand;
 *       residual = downsample.0 (1×1, stride) → downsample.1 on block 0; relu(residual + branch)
 *   → global average pool (AvgPool2d(8) on the 8×8 map) → classifier (Linear).
 *
 * The widths, blocks per stage and cardinality are read from the state_dict shapes, so reduced
 * variants (the test fixtures) load with the same code.
 */
import { tf } from '../tf.js';
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
import { UNKNOWN, bnKeys, childCount, dimOf, divDim } from './infer.js';
import { bottleneck, bottleneckKeys, bottleneckLayers, bottleneckSites, forEachBottleneck, runBottleneck } from './bottleneck.js';
import { FoldedConvBn, foldable } from './fold.js';
import { GradCheckpoint } from './grad-checkpoint.js';
import type { Bottleneck, BottleneckBlock, BottleneckNames, BottleneckStage } from './bottleneck.js';

const STAGES = 3;
const EXPANSION = 4; // ResNeXtBottleneck.expansion

/** inner: D = dim·cardinality (conv_reduce / conv_conv / bn width); out: planes·4. */
export type ResNeXtStage = BottleneckStage;

export interface ResNeXtArch {
  stem: number;
  cardinality: number;
  stages: ResNeXtStage[];
  numClasses: number;
  hasInputNorm: boolean;
  /** 9·blocks + 2 for equal stages (each bottleneck has 3 convs, plus stem and classifier). */
  depth: number;
  /** base_width with dim = floor(planes·base_width/64) = D/cardinality, planes = out/4. */
  baseWidth: number;
}

export function inferResNeXt(sd: StateDict): ResNeXtArch {
  const stem = dimOf(sd, ['conv_1_3x3.weight', 'bn_1.weight'], 0);
  const cardinality = divDim(
    dimOf(sd, ['stage_1.0.conv_conv.weight'], 0),
    dimOf(sd, ['stage_1.0.conv_conv.weight'], 1),
  );
  const stages: ResNeXtStage[] = [];
  for (let s = 1; s <= STAGES; s++) {
    const p = `stage_${s}.0`;
    stages.push({
      blocks: childCount(sd, `stage_${s}.`),
      inner: dimOf(sd, [`${p}.conv_reduce.weight`, `${p}.bn_reduce.weight`, `${p}.conv_conv.weight`], 0),
      out: dimOf(sd, [`${p}.conv_expand.weight`, `${p}.bn_expand.weight`], 0),
      stride: s === 1 ? 1 : 2,
    });
  }
  const numClasses = dimOf(sd, ['classifier.weight', 'classifier.bias'], 0);
  const dim = divDim(stages[0].inner, cardinality);
  const planes = divDim(stages[0].out, EXPANSION);
  return {
    stem,
    cardinality,
    stages,
    numClasses: numClasses === UNKNOWN ? 10 : numClasses,
    hasInputNorm: sd.has('mu') || sd.has('sigma'),
    depth: 2 + 3 * stages.reduce((a, st) => a + st.blocks, 0),
    baseWidth: dim === UNKNOWN || planes === UNKNOWN ? UNKNOWN : (dim * 64) / planes,
  };
}

/** RobustBench ResNeXtBottleneck's module names. */
const NAMES: BottleneckNames = { reduce: ['conv_reduce', 'bn_reduce'], conv: ['conv_conv', 'bn'], expand: ['conv_expand', 'bn_expand'] };
const blockPrefix = (b: BottleneckBlock) => `stage_${b.stage + 1}.${b.index}`;

/** Every state_dict key (num_batches_tracked excluded) with its PyTorch shape, in module order. */
export function resnextExpectedKeys(arch: ResNeXtArch): Map<string, number[]> {
  const out = new Map<string, number[]>();
  if (arch.hasInputNorm) {
    out.set('mu', [1, 3, 1, 1]);
    out.set('sigma', [1, 3, 1, 1]);
  }
  out.set('conv_1_3x3.weight', [arch.stem, 3, 3, 3]);
  bnKeys(out, 'bn_1', arch.stem);
  const last = forEachBottleneck(arch.stages, arch.stem, (b) => bottleneckKeys(out, blockPrefix(b), NAMES, b, arch.cardinality));
  out.set('classifier.weight', [arch.numClasses, last]);
  out.set('classifier.bias', [arch.numClasses]);
  return out;
}

export interface ResNeXtOptions {
  rng: Rng;
  /** Input normalisation when the weights carry no mu/sigma buffers. */
  inputNorm?: InputNorm | null;
  /** Conv filters and the classifier as tf.Variables with gradients (source training, src/train). */
  trainWeights?: boolean;
}

export class CifarResNeXt extends BaseClassifier {
  readonly arch = 'resnext29';
  readonly numClasses: number;
  readonly architecture: ResNeXtArch;
  private readonly stem: Conv2d;
  private readonly stemBn: BatchNormLayer;
  private readonly stemFolded: FoldedConvBn;
  private readonly blocks: Bottleneck[] = [];
  private readonly classifier: Linear;
  readonly gradCheckpoint: GradCheckpoint;

  /** `sd` must already match `resnextExpectedKeys(arch)` (the registry checks it). */
  constructor(sd: StateDict, arch: ResNeXtArch, private readonly opts: ResNeXtOptions) {
    super(sd, opts.rng, { trainable: opts.trainWeights === true });
    this.architecture = arch;
    this.numClasses = arch.numClasses;
    // Layers are created in PyTorch module order, which is also the stateDict() order.
    try {
      this.inputNormalization(opts.inputNorm);
      this.stem = this.conv('conv_1_3x3', { stride: 1, pad: 1, groups: 1 });
      this.stemBn = this.norm('bn_1');
      this.stemFolded = this.own(new FoldedConvBn(this.stem, this.stemBn, true));
      const prefixes: string[] = [];
      forEachBottleneck(arch.stages, arch.stem, (b) => {
        const layers = bottleneckLayers(blockPrefix(b), NAMES, b, arch.cardinality, (n, spec) => this.conv(n, spec), (n) => this.norm(n));
        this.blocks.push(bottleneck(layers, (o) => this.own(o), bottleneckSites(blockPrefix(b), NAMES, b, this.blocks.length)));
        prefixes.push(blockPrefix(b));
      });
      this.gradCheckpoint = new GradCheckpoint(this, arch.stages.map((st) => st.blocks), prefixes);
      this.classifier = this.linear('classifier');
      this.finishBuild();
    } catch (e) {
      this.dispose(); // a half-built model must not leak its tensors
      throw e;
    }
  }

  protected rebuild(sd: StateDict): CifarResNeXt {
    return new CifarResNeXt(sd, this.architecture, this.opts);
  }

  /** Every bottleneck's 1×1 convs, forward order (src/models/injection.ts). */
  adapterSites(): readonly AdapterSite[] {
    return this.blocks.flatMap((b) => (b.sites ? [b.sites.reduce, b.sites.expand, ...(b.sites.down ? [b.sites.down] : [])] : []));
  }

  forwardFeatures(x: tf.Tensor4D): ClassifierOutput {
    this.checkInput(x);
    const fold = foldable(this.normMode);
    return tf.tidy(() => {
      let h = tf.tidy(() => {
        const xn = this.normalizeInput(x);
        return fold ? this.stemFolded.apply(xn) : relu(this.stemBn.apply(this.stem.apply(xn)));
      });
      // Each block input is freed once the next block has run, not at the end of the outer tidy
      // (inference peak memory); a recording tape keeps what it needs through its own saved
      // tensors. With --grad-checkpoint-segments the stages run in segments (grad-checkpoint.ts).
      h = this.gradCheckpoint.run(this.blocks, h, (b, xb) => runBottleneck(b, xb, fold, this.adapterHooks), true);
      const features = globalAvgPool(h);
      return { features, logits: this.classifier.apply(features) };
    });
  }
}
