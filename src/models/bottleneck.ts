/**
 * The bottleneck block shared by ResNeXt-29 and torchvision ResNet-50: its state_dict keys and
 * shapes by PyTorch module name, its layers, and its forward, which takes the folded conv → BN
 * (→ ReLU) twin (fold.ts) where no backward is needed and the PyTorch-order layers otherwise.
 */
import { tf } from '../tf.js';
import type { Conv2d, Conv2dSpec } from './ops/conv.js';
import { addRelu, relu } from './ops/relu-mask.js';
import { bnKeys, divDim } from './infer.js';
import type { BatchNormLayer } from './batch-norm.js';
import { concatChannels } from './kernels.js';
import { FoldedConvBn } from './fold.js';
import type { AdapterHooks, ConvSite } from './injection.js';

/**
 * A bottleneck block (ResNeXt / torchvision ResNet: 1×1 reduce → BN → ReLU → k×k conv, grouped
 * or not, carrying the stride → BN → ReLU → 1×1 expand → BN, plus an optional 1×1 conv → BN
 * shortcut; then ReLU(shortcut + branch)) with every conv → BN (→ ReLU) folded. The reduce conv is
 * folded per group of the k×k conv, so the grouped conv needs no channel split of its input.
 */
export interface FoldedBottleneck {
  reduce: FoldedConvBn;
  conv: FoldedConvBn;
  expand: FoldedConvBn;
  down: FoldedConvBn | null;
}

export interface BottleneckLayers {
  reduce: [Conv2d, BatchNormLayer];
  conv: [Conv2d, BatchNormLayer];
  expand: [Conv2d, BatchNormLayer];
  down: [Conv2d, BatchNormLayer] | null;
}

/** One stage of a bottleneck network (ResNeXt-29, ResNet-50): `blocks` blocks of these widths. */
export interface BottleneckStage {
  blocks: number;
  inner: number; // reduce / k×k conv width
  out: number; // expand width
  stride: number; // of block 0
}

/** Where one block sits and what it takes: its input width, stride and whether it downsamples. */
export interface BottleneckBlock {
  stage: number; // 0-based
  index: number; // within the stage
  st: BottleneckStage;
  inC: number;
  stride: number;
  /** The downsample branch: block 0 when the stride or the width changes (`_make_layer`). */
  down: boolean;
}

/**
 * PyTorch module names of a bottleneck's convs and BNs, relative to the block's prefix
 * (`downsample.0` / `.1` are common to both families).
 */
export interface BottleneckNames {
  reduce: [conv: string, bn: string];
  conv: [conv: string, bn: string];
  expand: [conv: string, bn: string];
}

/** The state_dict keys (and PyTorch shapes) of block `b` under `prefix`, in module order. */
export function bottleneckKeys(out: Map<string, number[]>, prefix: string, n: BottleneckNames, b: BottleneckBlock, groups: number): void {
  const { st, inC } = b;
  out.set(`${prefix}.${n.reduce[0]}.weight`, [st.inner, inC, 1, 1]);
  bnKeys(out, `${prefix}.${n.reduce[1]}`, st.inner);
  out.set(`${prefix}.${n.conv[0]}.weight`, [st.inner, divDim(st.inner, groups), 3, 3]);
  bnKeys(out, `${prefix}.${n.conv[1]}`, st.inner);
  out.set(`${prefix}.${n.expand[0]}.weight`, [st.out, st.inner, 1, 1]);
  bnKeys(out, `${prefix}.${n.expand[1]}`, st.out);
  if (b.down) {
    out.set(`${prefix}.downsample.0.weight`, [st.out, inC, 1, 1]);
    bnKeys(out, `${prefix}.downsample.1`, st.out);
  }
}

/** Builds block `b`'s layers from the model's weights (`conv` / `norm`: the model's loaders). */
export function bottleneckLayers(
  prefix: string,
  n: BottleneckNames,
  b: BottleneckBlock,
  groups: number,
  conv: (name: string, spec: Conv2dSpec) => Conv2d,
  norm: (name: string) => BatchNormLayer,
): BottleneckLayers {
  const { stride } = b;
  return {
    reduce: [conv(`${prefix}.${n.reduce[0]}`, { stride: 1, pad: 0, groups: 1 }), norm(`${prefix}.${n.reduce[1]}`)],
    conv: [conv(`${prefix}.${n.conv[0]}`, { stride, pad: 1, groups }), norm(`${prefix}.${n.conv[1]}`)],
    expand: [conv(`${prefix}.${n.expand[0]}`, { stride: 1, pad: 0, groups: 1 }), norm(`${prefix}.${n.expand[1]}`)],
    down: b.down ? [conv(`${prefix}.downsample.0`, { stride, pad: 0, groups: 1 }), norm(`${prefix}.downsample.1`)] : null,
  };
}

/** Calls `visit` for every block in module order; returns the last block's output width. */
export function forEachBottleneck(stages: readonly BottleneckStage[], stem: number, visit: (b: BottleneckBlock) => void): number {
  let inC = stem;
  stages.forEach((st, stage) => {
    for (let index = 0; index < st.blocks; index++) {
      const first = index === 0;
      visit({ stage, index, st, inC, stride: first ? st.stride : 1, down: first && (st.stride !== 1 || inC !== st.out) });
      inC = st.out;
    }
  });
  return inC;
}

/** A bottleneck's layers and their folded twin, built together with the model. */
export interface Bottleneck {
  layers: BottleneckLayers;
  folded: FoldedBottleneck;
  /** Its 1×1 convs as injection sites (src/models/injection.ts). */
  sites: BottleneckSites | null;
}

export interface BottleneckSites {
  reduce: ConvSite;
  expand: ConvSite;
  down: ConvSite | null;
}

/** The 1×1 conv sites of block `b` (the `index`-th block in forward order) under `prefix`. */
export function bottleneckSites(prefix: string, n: BottleneckNames, b: BottleneckBlock, index: number): BottleneckSites {
  const site = (name: string, role: ConvSite['role'], inChannels: number, outChannels: number, stride: number): ConvSite => ({ kind: 'conv1x1', name: `${prefix}.${name}`, block: index, role, inChannels, outChannels, stride });
  return {
    reduce: site(n.reduce[0], 'reduce', b.inC, b.st.inner, 1),
    expand: site(n.expand[0], 'expand', b.st.inner, b.st.out, 1),
    down: b.down ? site('downsample.0', 'shortcut', b.inC, b.st.out, b.stride) : null,
  };
}

/** `own` registers each folded layer with the model, which disposes it. */
export function bottleneck(l: BottleneckLayers, own: <T extends { dispose(): void }>(o: T) => T, sites: BottleneckSites | null = null): Bottleneck {
  const folded: FoldedBottleneck = {
    reduce: own(new FoldedConvBn(l.reduce[0], l.reduce[1], true, l.conv[0].groups)),
    conv: own(new FoldedConvBn(l.conv[0], l.conv[1], true)),
    expand: own(new FoldedConvBn(l.expand[0], l.expand[1], false)),
    down: l.down ? own(new FoldedConvBn(l.down[0], l.down[1], false)) : null,
  };
  return { layers: l, folded, sites };
}

const convBn = ([conv, bn]: [Conv2d, BatchNormLayer], x: tf.Tensor4D) => bn.apply(conv.apply(x));

/**
 * One bottleneck forward: the folded layers when `fold` (see `foldable`), otherwise conv → BN as
 * the PyTorch modules compute them, in any norm mode and under a gradient tape.
 */
export function runBottleneck(b: Bottleneck, x: tf.Tensor4D, fold: boolean, hooks: AdapterHooks | null = null): tf.Tensor4D {
  if (hooks?.conv && b.sites) {
    // A module set acts on the 1×1 conv outputs before their BN, so nothing is folded.
    const s = b.sites;
    const at = (site: ConvSite | null, [conv, bn]: [Conv2d, BatchNormLayer], xi: tf.Tensor4D) => bn.apply(site ? hooks.conv!(site, xi, conv.apply(xi)) : conv.apply(xi));
    const l = b.layers;
    const h = at(s.expand, l.expand, relu(convBn(l.conv, relu(at(s.reduce, l.reduce, x)))));
    return addRelu(l.down ? at(s.down, l.down, x) : x, h);
  }
  if (fold) {
    const f = b.folded;
    const groups = f.conv.applyParts(f.reduce.applyParts(x));
    const h = f.expand.apply(groups.length === 1 ? groups[0] : concatChannels(groups));
    const residual = f.down ? f.down.apply(x) : x;
    return tf.relu(tf.add(residual, h)) as tf.Tensor4D;
  }
  const l = b.layers;
  const h = convBn(l.expand, relu(convBn(l.conv, relu(convBn(l.reduce, x)))));
  return addRelu(l.down ? convBn(l.down, x) : x, h);
}
