/**
 * RobustBench WideResNet (`Standard` = WRN-28-10; docs/data-formats.md#wrn-28-10), NHWC on tfjs:
 *
 *   conv1 3×3 → block1/2/3 (strides 1, 2, 2) of BasicBlocks → bn1 → relu → global avg pool → fc
 *
 * BasicBlock, RobustBench semantics (pre-activation with a shared activation on width changes):
 *   if in ≠ out: x ← relu(bn1(x)); out = conv1(x)          (shortcut = convShortcut(x), 1×1, stride)
 *   else:        out = conv1(relu(bn1(x)))                 (shortcut = x)
 *   out = conv2(relu(bn2(out)));  return shortcut + out
 * conv1 is 3×3 with the block stride and pad 1, conv2 3×3 stride 1 pad 1. Widths and layers per
 * group are read from the state_dict shapes (depth = 6n + 4, widen factor = width/16).
 */
import { tf } from '../tf.js';
import type { Rng } from '../util/rng.js';
import type { StateDict } from '../io/types.js';
import type { ClassifierOutput } from './types.js';
import type { AdapterSite, ConvSite } from './injection.js';
import { BaseClassifier } from './base.js';
import { GradCheckpoint } from './grad-checkpoint.js';
import type { InputNorm } from './base.js';
import type { BatchNormLayer } from './batch-norm.js';
import { add, globalAvgPool } from './ops/lean.js';
import { relu } from './ops/relu-mask.js';
import type { Conv2d } from './ops/conv.js';
import type { Linear } from './ops/linear.js';
import { UNKNOWN, bnKeys, childCount, dimOf } from './infer.js';

const GROUPS = 3;
const GROUP_STRIDES = [1, 2, 2];

export interface WrnGroup {
  layers: number;
  width: number;
  stride: number;
}

export interface WrnArch {
  stem: number; // conv1 output channels (16 in RobustBench)
  groups: WrnGroup[];
  numClasses: number;
  depth: number; // 6n + 4 for equal groups
  widenFactor: number; // group-1 width / 16
}

export function inferWrn(sd: StateDict): WrnArch {
  const stem = dimOf(sd, ['conv1.weight'], 0);
  const groups: WrnGroup[] = [];
  for (let g = 1; g <= GROUPS; g++) {
    const p = `block${g}.layer.0`;
    groups.push({
      layers: childCount(sd, `block${g}.layer.`),
      width: dimOf(sd, [`${p}.conv1.weight`, `${p}.bn2.weight`, `${p}.conv2.weight`], 0),
      stride: GROUP_STRIDES[g - 1],
    });
  }
  const numClasses = dimOf(sd, ['fc.weight', 'fc.bias'], 0);
  return {
    stem,
    groups,
    numClasses: numClasses === UNKNOWN ? 10 : numClasses,
    depth: 4 + 2 * groups.reduce((a, g) => a + g.layers, 0),
    widenFactor: groups[0].width === UNKNOWN ? UNKNOWN : groups[0].width / 16,
  };
}

export function wrnExpectedKeys(arch: WrnArch): Map<string, number[]> {
  const out = new Map<string, number[]>();
  out.set('conv1.weight', [arch.stem, 3, 3, 3]);
  let inC = arch.stem;
  arch.groups.forEach((grp, gi) => {
    for (let i = 0; i < grp.layers; i++) {
      const p = `block${gi + 1}.layer.${i}`;
      // Module registration order in BasicBlock: bn1, conv1, bn2, conv2, convShortcut.
      bnKeys(out, `${p}.bn1`, inC);
      out.set(`${p}.conv1.weight`, [grp.width, inC, 3, 3]);
      bnKeys(out, `${p}.bn2`, grp.width);
      out.set(`${p}.conv2.weight`, [grp.width, grp.width, 3, 3]);
      if (inC !== grp.width) out.set(`${p}.convShortcut.weight`, [grp.width, inC, 1, 1]);
      inC = grp.width;
    }
  });
  bnKeys(out, 'bn1', inC);
  out.set('fc.weight', [arch.numClasses, inC]);
  out.set('fc.bias', [arch.numClasses]);
  return out;
}

interface BasicBlock {
  bn1: BatchNormLayer;
  conv1: Conv2d;
  bn2: BatchNormLayer;
  conv2: Conv2d;
  shortcut: Conv2d | null; // present iff in ≠ out
  /** The shortcut as an injection site (src/models/injection.ts). */
  site: ConvSite | null;
}

export interface WrnOptions {
  rng: Rng;
  /** Input normalisation (RobustBench `Standard` has none; the model takes [0, 1] pixels). */
  inputNorm?: InputNorm | null;
}

export class WideResNet extends BaseClassifier {
  readonly arch = 'wrn28_10';
  readonly numClasses: number;
  readonly architecture: WrnArch;
  private readonly stem: Conv2d;
  private readonly blocks: BasicBlock[] = [];
  private readonly finalBn: BatchNormLayer;
  private readonly fc: Linear;
  readonly gradCheckpoint: GradCheckpoint;

  constructor(sd: StateDict, arch: WrnArch, private readonly opts: WrnOptions) {
    super(sd, opts.rng);
    this.architecture = arch;
    this.numClasses = arch.numClasses;
    try {
      this.inputNormalization(opts.inputNorm);
      this.stem = this.conv('conv1', { stride: 1, pad: 1, groups: 1 });
      let inC = arch.stem;
      const prefixes: string[] = [];
      arch.groups.forEach((grp, gi) => {
        for (let i = 0; i < grp.layers; i++) {
          const p = `block${gi + 1}.layer.${i}`;
          const stride = i === 0 ? grp.stride : 1;
          const bn1 = this.norm(`${p}.bn1`);
          const conv1 = this.conv(`${p}.conv1`, { stride, pad: 1, groups: 1 });
          const bn2 = this.norm(`${p}.bn2`);
          const conv2 = this.conv(`${p}.conv2`, { stride: 1, pad: 1, groups: 1 });
          const shortcut = inC !== grp.width ? this.conv(`${p}.convShortcut`, { stride, pad: 0, groups: 1 }) : null;
          const site: ConvSite | null = shortcut ? { kind: 'conv1x1', name: `${p}.convShortcut`, block: this.blocks.length, role: 'shortcut', inChannels: inC, outChannels: grp.width, stride } : null;
          this.blocks.push({ bn1, conv1, bn2, conv2, shortcut, site });
          prefixes.push(p);
          inC = grp.width;
        }
      });
      this.gradCheckpoint = new GradCheckpoint(this, arch.groups.map((g) => g.layers), prefixes);
      this.finalBn = this.norm('bn1');
      this.fc = this.linear('fc');
      this.finishBuild();
    } catch (e) {
      this.dispose(); // a half-built model must not leak its tensors
      throw e;
    }
  }

  protected rebuild(sd: StateDict): WideResNet {
    return new WideResNet(sd, this.architecture, this.opts);
  }

  /** The 1×1 shortcut convs (src/models/injection.ts). */
  adapterSites(): readonly AdapterSite[] {
    return this.blocks.flatMap((b) => (b.site ? [b.site] : []));
  }

  private block(b: BasicBlock, x: tf.Tensor4D): tf.Tensor4D {
    const act = relu(b.bn1.apply(x));
    // Width change: the activation feeds both the conv path and the 1×1 shortcut. Otherwise the
    // shortcut is the raw block input.
    const hooks = this.adapterHooks;
    const shortcut = b.shortcut ? (hooks?.conv && b.site ? hooks.conv(b.site, act, b.shortcut.apply(act)) : b.shortcut.apply(act)) : x;
    const out = b.conv2.apply(relu(b.bn2.apply(b.conv1.apply(act))));
    return add(shortcut, out);
  }

  forwardFeatures(x: tf.Tensor4D): ClassifierOutput {
    this.checkInput(x);
    return tf.tidy(() => {
      // see CifarResNeXt.forward: block inputs freed early; groups in segments with
      // --grad-checkpoint-segments (grad-checkpoint.ts)
      const h = this.gradCheckpoint.run(this.blocks, this.stem.apply(this.normalizeInput(x)), (b, xb) => this.block(b, xb), true);
      const features = globalAvgPool(relu(this.finalBn.apply(h)));
      return { features, logits: this.fc.apply(features) };
    });
  }
}
